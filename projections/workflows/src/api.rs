//! The workflows module: its `[workflows]` section, its routes and their handlers.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Path, State};
use chrono::TimeDelta;
use futures_util::future::BoxFuture;
use kairos_api::extract::{
    QueryParams, ReadAt, int_param, project_query, project_scope, text_param,
};
use kairos_api::{
    ApiError, AppState, Caller, Configured, ErrorBody, Guard, Host, Module, ModuleConfig,
    ModuleError, Permission, Routes, Started,
};
use kairos_runtime::AnyProjection;
use serde::Deserialize;
use sqlx::migrate::Migrator;
use utoipa_axum::routes;

use crate::projection::{Limits, Workflows};
use crate::read::{self, SuggestionsAnswer};
use crate::{NAME, read::PatternsAnswer};

/// Why `as_of` is refused.
const NO_HISTORY: &str = "workflows keep no point-in-time history; omit as_of";

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The workflows module, registered by the binary.
pub struct WorkflowsModule;

/// The value the binary registers.
pub static MODULE: WorkflowsModule = WorkflowsModule;

/// The `[workflows]` section of `kairos.toml`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WorkflowSettings {
    /// A session (workflow run) ends once idle this long (stream time).
    #[serde(default = "default_idle")]
    pub idle_seconds: u32,
    /// The steps a session keeps (its newest), and so the longest prefix the model sees.
    #[serde(default = "default_session_tasks")]
    pub max_session_tasks: usize,
    /// Most (context, next task) counters of the next-task model per project.
    #[serde(default = "default_counts")]
    pub max_counts: u32,
    /// Most ended sessions kept per project (the newest).
    #[serde(default = "default_keep")]
    pub keep_sessions: u32,
    /// Most sessions (the newest) a pattern, family or actor read mines.
    #[serde(default = "default_mine")]
    pub mine_sessions: u32,
}

fn default_idle() -> u32 {
    1800
}
fn default_session_tasks() -> usize {
    200
}
fn default_counts() -> u32 {
    500_000
}
fn default_keep() -> u32 {
    5_000
}
fn default_mine() -> u32 {
    2_000
}

impl Default for WorkflowSettings {
    fn default() -> Self {
        Self {
            idle_seconds: default_idle(),
            max_session_tasks: default_session_tasks(),
            max_counts: default_counts(),
            keep_sessions: default_keep(),
            mine_sessions: default_mine(),
        }
    }
}

impl WorkflowSettings {
    fn check(&self, config: &ModuleConfig) -> Result<(), ModuleError> {
        if !(1..=604_800).contains(&self.idle_seconds) {
            return Err(config.invalid("idle_seconds", "must be 1 to 604800 (a week)"));
        }
        if !(2..=10_000).contains(&self.max_session_tasks) {
            return Err(config.invalid("max_session_tasks", "must be 2 to 10000"));
        }
        if !(100..=100_000_000).contains(&self.max_counts) {
            return Err(config.invalid("max_counts", "must be 100 to 100000000"));
        }
        if !(10..=1_000_000).contains(&self.keep_sessions) {
            return Err(config.invalid("keep_sessions", "must be 10 to 1000000"));
        }
        if !(10..=20_000).contains(&self.mine_sessions) {
            return Err(config.invalid("mine_sessions", "must be 10 to 20000"));
        }
        Ok(())
    }

    pub fn limits(&self) -> Limits {
        Limits {
            idle: TimeDelta::seconds(i64::from(self.idle_seconds)),
            max_session_tasks: self.max_session_tasks,
            max_counts: i64::from(self.max_counts),
            keep_sessions: i64::from(self.keep_sessions),
        }
    }
}

impl Module for WorkflowsModule {
    fn name(&self) -> &'static str {
        NAME
    }

    fn migrations(&self) -> &'static Migrator {
        &MIGRATOR
    }

    fn config_section(&self) -> Option<&'static str> {
        Some("workflows")
    }

    fn configure(&self, config: &ModuleConfig) -> Result<Box<dyn Configured>, ModuleError> {
        let settings: WorkflowSettings = config.get()?;
        settings.check(config)?;
        Ok(Box::new(WorkflowsConfigured {
            settings: Arc::new(settings),
        }))
    }
}

struct WorkflowsConfigured {
    settings: Arc<WorkflowSettings>,
}

impl Configured for WorkflowsConfigured {
    fn projection(&self) -> Arc<dyn AnyProjection> {
        Arc::new(Workflows {
            limits: Arc::new(self.settings.limits()),
        })
    }

    fn routes(&self) -> Routes {
        use Guard::Key;
        use Permission::ReadProjections;
        Routes::new()
            .route(
                routes!(get_suggestions),
                Key(ReadProjections),
                "workflows.suggestions",
            )
            .route(
                routes!(get_patterns),
                Key(ReadProjections),
                "workflows.patterns",
            )
            .route(
                routes!(get_families),
                Key(ReadProjections),
                "workflows.families",
            )
            .route(
                routes!(get_actors),
                Key(ReadProjections),
                "workflows.actors",
            )
    }

    fn start<'a>(&'a self, _host: &'a Host) -> BoxFuture<'a, Result<Started, ModuleError>> {
        let settings = self.settings.clone();
        Box::pin(async move { Ok(Started::default().with_extension(settings)) })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SuggestionsParams {
    project: Option<String>,
    k: Option<String>,
    #[allow(dead_code)]
    min_seq: Option<String>,
    #[allow(dead_code)]
    as_of: Option<String>,
}

/// `GET /v1/workflows/sessions/{session}/suggestions?k=&project=&min_seq=`
#[utoipa::path(get, path = "/v1/workflows/sessions/{session}/suggestions", tag = "workflows",
    params(
        ("session" = String, Path, description = "The workflow id (the session) of the task events"),
        ("k" = Option<u32>, Query, description = "How many suggestions, 1 to 20 (default 3)"),
        ("project" = Option<String>, Query, description = "The session's project; needed only when the id names sessions of several projects the key reaches"),
        ("min_seq" = Option<u64>, Query, description = "Wait until the workflows projection applied this stream sequence"),
    ),
    responses(
        (status = 200, description = "The top-k next tasks, each with its probability and the pattern behind it", body = SuggestionsAnswer),
        (status = 400, description = "A parameter is malformed, or the id names sessions of several projects", body = ErrorBody),
        (status = 403, description = "The role does not reach the project", body = ErrorBody),
        (status = 404, description = "No session has this id in the projects the key reaches", body = ErrorBody),
        (status = 503, description = "Not applied within the wait, or a store is unavailable", body = ErrorBody),
    ))]
async fn get_suggestions(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(session): Path<String>,
    read: ReadAt,
    QueryParams(q): QueryParams<SuggestionsParams>,
) -> Result<Json<SuggestionsAnswer>, ApiError> {
    read.no_history(NO_HISTORY)?;
    text_param(&session, "session", 200)?;
    let k = int_param(q.k.as_deref(), "k", 1, 20, 3)?;
    let only = project_scope(&caller, q.project.as_deref())?;
    read.wait(&st, NAME).await?;
    let answer = read::suggestions(&st.pool, &session, only.as_deref(), k as usize).await?;
    Ok(Json(answer))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatternsParams {
    project: String,
    actor: Option<String>,
    min_support: Option<String>,
    limit: Option<String>,
    #[allow(dead_code)]
    min_seq: Option<String>,
    #[allow(dead_code)]
    as_of: Option<String>,
}

/// `GET /v1/workflows/patterns?project=&actor=&min_support=&limit=&min_seq=`
#[utoipa::path(get, path = "/v1/workflows/patterns", tag = "workflows",
    params(
        ("project" = String, Query, description = "The project"),
        ("actor" = Option<String>, Query, description = "Only the sessions this actor started"),
        ("min_support" = Option<u32>, Query, description = "Sessions a pattern must occur in (default 3)"),
        ("limit" = Option<u32>, Query, description = "Most patterns, 1 to 1000 (default 100)"),
        ("min_seq" = Option<u64>, Query, description = "Wait until the workflows projection applied this stream sequence"),
    ),
    responses(
        (status = 200, description = "Frequent contiguous and gapped task sequences, with support, confidence, first and last seen and example sessions", body = PatternsAnswer),
        (status = 400, description = "A parameter is malformed", body = ErrorBody),
        (status = 403, description = "The role does not reach the project", body = ErrorBody),
        (status = 503, description = "Not applied within the wait, or a store is unavailable", body = ErrorBody),
    ))]
async fn get_patterns(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(settings): Extension<Arc<WorkflowSettings>>,
    read: ReadAt,
    QueryParams(q): QueryParams<PatternsParams>,
) -> Result<Json<PatternsAnswer>, ApiError> {
    read.no_history(NO_HISTORY)?;
    let project = project_query(&q.project)?;
    if let Some(actor) = &q.actor {
        text_param(actor, "actor", 200)?;
    }
    let min_support = int_param(q.min_support.as_deref(), "min_support", 1, 1_000_000, 3)?;
    let limit = int_param(q.limit.as_deref(), "limit", 1, 1000, 100)?;
    caller.reach(project.as_str())?;
    read.wait(&st, NAME).await?;
    let answer = read::patterns(
        &st.pool,
        project.as_str(),
        q.actor.as_deref(),
        min_support as usize,
        limit as usize,
        settings.mine_sessions as usize,
    )
    .await?;
    Ok(Json(answer))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectParams {
    project: String,
    #[allow(dead_code)]
    min_seq: Option<String>,
    #[allow(dead_code)]
    as_of: Option<String>,
}

/// `GET /v1/workflows/families?project=&min_seq=`
#[utoipa::path(get, path = "/v1/workflows/families", tag = "workflows",
    params(
        ("project" = String, Query, description = "The project"),
        ("min_seq" = Option<u64>, Query, description = "Wait until the workflows projection applied this stream sequence"),
    ),
    responses(
        (status = 200, description = "The project's sessions clustered into workflow families by their task n-gram profiles", body = read::FamiliesAnswer),
        (status = 400, description = "A parameter is malformed", body = ErrorBody),
        (status = 403, description = "The role does not reach the project", body = ErrorBody),
        (status = 503, description = "Not applied within the wait, or a store is unavailable", body = ErrorBody),
    ))]
async fn get_families(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(settings): Extension<Arc<WorkflowSettings>>,
    read: ReadAt,
    QueryParams(q): QueryParams<ProjectParams>,
) -> Result<Json<read::FamiliesAnswer>, ApiError> {
    read.no_history(NO_HISTORY)?;
    let project = project_query(&q.project)?;
    caller.reach(project.as_str())?;
    read.wait(&st, NAME).await?;
    let answer =
        read::families(&st.pool, project.as_str(), settings.mine_sessions as usize).await?;
    Ok(Json(answer))
}

/// `GET /v1/workflows/actors?project=&min_seq=`
#[utoipa::path(get, path = "/v1/workflows/actors", tag = "workflows",
    params(
        ("project" = String, Query, description = "The project"),
        ("min_seq" = Option<u64>, Query, description = "Wait until the workflows projection applied this stream sequence"),
    ),
    responses(
        (status = 200, description = "The project's actors, those whose recent sessions depart most from their usual ones first", body = read::Actors),
        (status = 400, description = "A parameter is malformed", body = ErrorBody),
        (status = 403, description = "The role does not reach the project", body = ErrorBody),
        (status = 503, description = "Not applied within the wait, or a store is unavailable", body = ErrorBody),
    ))]
async fn get_actors(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(settings): Extension<Arc<WorkflowSettings>>,
    read: ReadAt,
    QueryParams(q): QueryParams<ProjectParams>,
) -> Result<Json<read::Actors>, ApiError> {
    read.no_history(NO_HISTORY)?;
    let project = project_query(&q.project)?;
    caller.reach(project.as_str())?;
    read.wait(&st, NAME).await?;
    let answer = read::actors(&st.pool, project.as_str(), settings.mine_sessions as usize).await?;
    Ok(Json(answer))
}
