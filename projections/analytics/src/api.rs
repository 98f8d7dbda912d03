//! The analytics module: its routes and their handlers. It has no `kairos.toml` section: the
//! prices come from the catalog's events.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Path, State};
use chrono::{DateTime, TimeDelta, Utc};
use kairos_api::extract::{QueryParams, ReadAt, project_query, text_param, time_param};
use kairos_api::{
    ApiError, AppState, Caller, Configured, ErrorBody, Guard, Module, ModuleConfig, ModuleError,
    Permission, Routes,
};
use kairos_runtime::AnyProjection;
use serde::{Deserialize, Serialize};
use sqlx::migrate::Migrator;
use utoipa_axum::routes;

use crate::{
    Analytics, BucketView, Grain, MAX_BUCKETS, ModelsQuery, NAME, ProjectTotals, RELATIVE_ERROR,
};

/// Why `as_of` is refused.
const NO_HISTORY: &str =
    "analytics keep no point-in-time history; omit as_of and choose the range with from and to";

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The analytics module, registered by the binary.
pub struct AnalyticsModule;

/// The value the binary registers.
pub static MODULE: AnalyticsModule = AnalyticsModule;

impl Module for AnalyticsModule {
    fn name(&self) -> &'static str {
        NAME
    }

    fn migrations(&self) -> &'static Migrator {
        &MIGRATOR
    }

    fn configure(&self, _config: &ModuleConfig) -> Result<Box<dyn Configured>, ModuleError> {
        Ok(Box::new(AnalyticsConfigured))
    }
}

/// The analytics module configured (there is nothing to configure).
struct AnalyticsConfigured;

impl Configured for AnalyticsConfigured {
    fn projection(&self) -> Arc<dyn AnyProjection> {
        Arc::new(Analytics)
    }

    fn routes(&self) -> Routes {
        use Guard::Key;
        use Permission::ReadProjections;
        Routes::new()
            .route(
                routes!(get_models),
                Key(ReadProjections),
                "analytics.models",
            )
            .route(
                routes!(get_project),
                Key(ReadProjections),
                "analytics.project",
            )
    }
}

/// The range read when `from` or `to` is left out: the 24 hours before `to`.
const DEFAULT_SPAN_HOURS: i64 = 24;

/// The query of `GET /v1/analytics/models` (`min_seq` and `as_of` are read by [`ReadAt`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelsParams {
    project: Option<String>,
    model: Option<String>,
    from: Option<String>,
    to: Option<String>,
    bucket: Option<String>,
    #[allow(dead_code)]
    min_seq: Option<String>,
    #[allow(dead_code)]
    as_of: Option<String>,
}

/// The query of `GET /v1/analytics/projects/{project}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RangeParams {
    from: Option<String>,
    to: Option<String>,
    #[allow(dead_code)]
    min_seq: Option<String>,
    #[allow(dead_code)]
    as_of: Option<String>,
}

/// `[from, to)` from the query: RFC 3339 times, by default the 24 hours before `now` (or before
/// `to`); `from` must come before `to`.
fn range(
    from: Option<&str>,
    to: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(DateTime<Utc>, DateTime<Utc>), ApiError> {
    for (raw, field) in [(from, "from"), (to, "to")] {
        if let Some(raw) = raw {
            text_param(raw, field, 64)?;
        }
    }
    let to = time_param(to, "to")?.unwrap_or(now);
    let from = time_param(from, "from")?.unwrap_or(to - TimeDelta::hours(DEFAULT_SPAN_HOURS));
    if from >= to {
        return Err(ApiError::bad(
            "invalid_query",
            "from",
            format!(
                "from ({}) must come before to ({})",
                from.to_rfc3339(),
                to.to_rfc3339()
            ),
        ));
    }
    Ok((from, to))
}

/// What `GET /v1/analytics/models` answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ModelsAnswer {
    /// The granularity: minute, hour or day.
    bucket: Grain,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    /// One per (bucket start, project, model, provider) with calls, by start, project, model
    /// and provider.
    items: Vec<BucketView>,
    /// The relative error of every latency percentile (0.01).
    latency_relative_error: f64,
    /// The stream sequence the analytics projection had applied.
    as_of_seq: u64,
}

fn too_many(message: String) -> ApiError {
    ApiError::bad("too_many_buckets", "from", message)
}

/// `GET /v1/analytics/models?project=&model=&from=&to=&bucket=&min_seq=`
#[utoipa::path(get, path = "/v1/analytics/models", tag = "analytics",
    params(
        ("project" = Option<String>, Query, description = "Only this project"),
        ("model" = Option<String>, Query, description = "Only this model"),
        ("from" = Option<String>, Query, description = "RFC 3339: buckets starting at or after (default: 24 h before to)"),
        ("to" = Option<String>, Query, description = "RFC 3339: buckets starting before (default: now)"),
        ("bucket" = Option<String>, Query, description = "minute, hour (the default) or day, UTC"),
        ("min_seq" = Option<u64>, Query, description = "Wait until the analytics projection applied this stream sequence"),
    ),
    responses(
        (status = 200, description = "The buckets of the range", body = ModelsAnswer),
        (status = 400, description = "A parameter is malformed, or the answer would hold more than 10,000 buckets", body = ErrorBody),
        (status = 403, description = "The role does not reach the project", body = ErrorBody),
        (status = 503, description = "Not applied within the wait, or a store is unavailable", body = ErrorBody),
    ))]
async fn get_models(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    read: ReadAt,
    QueryParams(q): QueryParams<ModelsParams>,
) -> Result<Json<ModelsAnswer>, ApiError> {
    read.no_history(NO_HISTORY)?;
    let principal = caller.principal()?;
    let project = q.project.as_deref().map(project_query).transpose()?;
    if let Some(model) = &q.model {
        text_param(model, "model", 200)?;
    }
    let grain = match q.bucket.as_deref() {
        None => Grain::Hour,
        Some(raw) => {
            text_param(raw, "bucket", 16)?;
            Grain::parse(raw).ok_or_else(|| {
                ApiError::bad(
                    "invalid_query",
                    "bucket",
                    "bucket must be minute, hour or day",
                )
            })?
        }
    };
    let (from, to) = range(q.from.as_deref(), q.to.as_deref(), st.clock.now())?;
    let starts = grain.count(from, to);
    if starts > MAX_BUCKETS as i64 {
        return Err(too_many(format!(
            "from..to holds {starts} {} buckets, more than the {MAX_BUCKETS} an answer holds: \
             narrow from and to, or ask for a coarser bucket",
            grain.as_str()
        )));
    }
    if let Some(p) = &project {
        caller.reach(p.as_str())?;
    }
    read.wait(&st, NAME).await?;
    let query = ModelsQuery {
        grain,
        from,
        to,
        project: project.map(|p| p.as_str().to_owned()),
        model: q.model,
        // A role narrowed to projects sees only those.
        only: principal.projects.clone(),
        limit: MAX_BUCKETS + 1,
    };
    let (items, as_of_seq) = crate::models(&st.pool, &query).await?;
    if items.len() > MAX_BUCKETS {
        return Err(too_many(format!(
            "more than {MAX_BUCKETS} buckets have calls in from..to: narrow from and to, filter \
             by project or model, or ask for a coarser bucket"
        )));
    }
    Ok(Json(ModelsAnswer {
        bucket: grain,
        from,
        to,
        items,
        latency_relative_error: RELATIVE_ERROR,
        as_of_seq,
    }))
}

/// `GET /v1/analytics/projects/{project}?from=&to=&min_seq=`
#[utoipa::path(get, path = "/v1/analytics/projects/{project}", tag = "analytics",
    params(
        ("project" = String, Path, description = "The project id"),
        ("from" = Option<String>, Query, description = "RFC 3339: calls from this minute on (default: 24 h before to)"),
        ("to" = Option<String>, Query, description = "RFC 3339: calls of minutes starting before (default: now)"),
        ("min_seq" = Option<u64>, Query, description = "Wait until the analytics projection applied this stream sequence"),
    ),
    responses(
        (status = 200, description = "The project's totals per model and in all", body = ProjectTotals),
        (status = 400, description = "A parameter is malformed", body = ErrorBody),
        (status = 403, description = "The role does not reach the project", body = ErrorBody),
        (status = 503, description = "Not applied within the wait, or a store is unavailable", body = ErrorBody),
    ))]
async fn get_project(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
    read: ReadAt,
    QueryParams(q): QueryParams<RangeParams>,
) -> Result<Json<ProjectTotals>, ApiError> {
    read.no_history(NO_HISTORY)?;
    let project = project_query(&project)?;
    let (from, to) = range(q.from.as_deref(), q.to.as_deref(), st.clock.now())?;
    caller.reach(project.as_str())?;
    read.wait(&st, NAME).await?;
    Ok(Json(
        crate::project(&st.pool, project.as_str(), from, to).await?,
    ))
}
