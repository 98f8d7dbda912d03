//! `task_stats`: completed tasks per project and task type, how they ended and how long they
//! took. The module that `docs/tutorials/hello-projection.md` builds, step by step.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Path, State};
use futures_util::future::BoxFuture;
use kairos_api::extract::{ReadAt, project_param};
use kairos_api::{
    ApiError, AppState, Caller, Configured, ErrorBody, Guard, Host, Module, ModuleConfig,
    ModuleError, Permission, Routes, Started,
};
use kairos_events::Event;
use kairos_events::types::{TASK_COMPLETED, TaskCompleted, TaskStatus};
use kairos_runtime::{AnyProjection, ApplyError, Projection, Rejection, StoredEvent};
use serde::Serialize;
use sqlx::PgConnection;
use sqlx::migrate::Migrator;
use utoipa_axum::routes;

/// The projection's name, its schema and its consumer's name.
pub const NAME: &str = "task_stats";

/// One completed task, as the fold needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    pub project: String,
    pub task_type: String,
    pub status: TaskStatus,
    pub duration_ms: Option<u64>,
}

/// What a batch adds to one (project, task type) row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub ok: i64,
    pub failed: i64,
    pub cancelled: i64,
    pub timed: i64,
    pub duration_ms: i64,
}

/// The fold, without I/O: a batch's tasks summed per (project, task type). A duration too large
/// to add up is a data error: the runtime isolates the event at fault and dead-letters it.
pub fn tally(items: &[Done]) -> Result<BTreeMap<(&str, &str), Tally>, ApplyError> {
    let mut rows: BTreeMap<(&str, &str), Tally> = BTreeMap::new();
    for done in items {
        let row = rows
            .entry((done.project.as_str(), done.task_type.as_str()))
            .or_default();
        match done.status {
            TaskStatus::Ok => row.ok += 1,
            TaskStatus::Error => row.failed += 1,
            TaskStatus::Cancelled => row.cancelled += 1,
        }
        if let Some(ms) = done.duration_ms {
            row.timed += 1;
            row.duration_ms = i64::try_from(ms)
                .ok()
                .and_then(|ms| row.duration_ms.checked_add(ms))
                .ok_or_else(|| ApplyError::Data(format!("duration_ms {ms} overflows")))?;
        }
    }
    Ok(rows)
}

/// The projection: reads the `task` subjects, folds `kairos.task.completed.v1`.
#[derive(Debug, Clone, Copy)]
pub struct TaskStats;

impl Projection for TaskStats {
    type Item = Done;
    type Carry = ();

    fn name(&self) -> &'static str {
        NAME
    }

    fn schema(&self) -> &'static str {
        NAME
    }

    fn categories(&self) -> Option<&'static [&'static str]> {
        Some(&["task"])
    }

    fn decode(&self, stored: &StoredEvent) -> Result<Option<Done>, Rejection> {
        if stored.event.event_type().as_str() != TASK_COMPLETED {
            return Ok(None);
        }
        let task: TaskCompleted = stored.event.data_as()?;
        Ok(Some(Done {
            project: task.project.to_string(),
            task_type: task.task_type,
            status: task.status,
            duration_ms: task.duration_ms,
        }))
    }

    async fn apply(
        &self,
        tx: &mut PgConnection,
        items: Vec<Done>,
        _carry: &mut (),
    ) -> Result<Vec<Event>, ApplyError> {
        let rows = tally(&items)?;
        let column = |f: fn(&Tally) -> i64| rows.values().map(f).collect::<Vec<i64>>();
        let (projects, types): (Vec<&str>, Vec<&str>) = rows.keys().copied().unzip();
        // Unqualified: the runtime puts the live schema (or the one a replay builds) first on
        // the search path.
        sqlx::query(
            "INSERT INTO tasks (project, task_type, ok, failed, cancelled, timed, duration_ms)
             SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::int8[],
                                  $6::int8[], $7::int8[])
             ON CONFLICT (project, task_type) DO UPDATE SET
                 ok = tasks.ok + excluded.ok,
                 failed = tasks.failed + excluded.failed,
                 cancelled = tasks.cancelled + excluded.cancelled,
                 timed = tasks.timed + excluded.timed,
                 duration_ms = tasks.duration_ms + excluded.duration_ms",
        )
        .bind(&projects)
        .bind(&types)
        .bind(column(|t| t.ok))
        .bind(column(|t| t.failed))
        .bind(column(|t| t.cancelled))
        .bind(column(|t| t.timed))
        .bind(column(|t| t.duration_ms))
        .execute(&mut *tx)
        .await?;
        Ok(Vec::new())
    }
}

/// Its tables, built into the binary from `migrations/`.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The module.
pub struct TaskStatsModule;

/// The value the binary registers.
pub static MODULE: TaskStatsModule = TaskStatsModule;

impl Module for TaskStatsModule {
    fn name(&self) -> &'static str {
        NAME
    }

    fn migrations(&self) -> &'static Migrator {
        &MIGRATOR
    }

    fn configure(&self, _config: &ModuleConfig) -> Result<Box<dyn Configured>, ModuleError> {
        Ok(Box::new(TaskStatsConfigured))
    }
}

/// The module, configured: it has no settings.
struct TaskStatsConfigured;

impl Configured for TaskStatsConfigured {
    fn projection(&self) -> Arc<dyn AnyProjection> {
        Arc::new(TaskStats)
    }

    fn routes(&self) -> Routes {
        Routes::new().route(
            routes!(project_tasks),
            Guard::Key(Permission::ReadProjections),
            "task_stats.read",
        )
    }

    fn start<'a>(&'a self, _host: &'a Host) -> BoxFuture<'a, Result<Started, ModuleError>> {
        Box::pin(async { Ok(Started::default()) })
    }
}

/// One task type of a project.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TaskTypeStats {
    pub task_type: String,
    pub ok: i64,
    pub failed: i64,
    pub cancelled: i64,
    /// The mean of the durations reported, in milliseconds; null if none was.
    pub mean_duration_ms: Option<i64>,
}

/// A project's completed tasks, by task type.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProjectTasks {
    pub project: String,
    pub tasks: Vec<TaskTypeStats>,
}

/// A project's completed tasks, by task type.
#[utoipa::path(get, path = "/v1/task-stats/{project}", tag = "task_stats",
    params(
        ("project" = String, Path, description = "The project id"),
        ("min_seq" = Option<u64>, Query, description = "Wait until task_stats applied this stream sequence"),
    ),
    responses(
        (status = 200, description = "The project's tasks by type", body = ProjectTasks),
        (status = 400, description = "A parameter is malformed", body = ErrorBody),
        (status = 503, description = "Not applied within the wait, or a store is unavailable", body = ErrorBody),
    ))]
async fn project_tasks(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
    read: ReadAt,
) -> Result<Json<ProjectTasks>, ApiError> {
    let project = project_param(&project)?;
    caller.reach(project.as_str())?;
    if read.as_of.is_some() {
        return Err(ApiError::bad(
            "invalid_query",
            "as_of",
            "task stats keep no history; omit as_of",
        ));
    }
    read.wait(&st, NAME).await?;
    let rows: Vec<(String, i64, i64, i64, Option<i64>)> = sqlx::query_as(
        "SELECT task_type, ok, failed, cancelled, duration_ms / NULLIF(timed, 0)
         FROM task_stats.tasks WHERE project = $1 ORDER BY task_type",
    )
    .bind(project.as_str())
    .fetch_all(&st.pool)
    .await?;
    let tasks = rows
        .into_iter()
        .map(
            |(task_type, ok, failed, cancelled, mean_duration_ms)| TaskTypeStats {
                task_type,
                ok,
                failed,
                cancelled,
                mean_duration_ms,
            },
        )
        .collect();
    Ok(Json(ProjectTasks {
        project: project.to_string(),
        tasks,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(project: &str, task_type: &str, status: TaskStatus, ms: Option<u64>) -> Done {
        Done {
            project: project.into(),
            task_type: task_type.into(),
            status,
            duration_ms: ms,
        }
    }

    #[test]
    fn a_batch_is_summed_per_project_and_task_type() {
        let items = [
            done("p", "plan", TaskStatus::Ok, Some(100)),
            done("p", "plan", TaskStatus::Error, None),
            done("p", "plan", TaskStatus::Ok, Some(300)),
            done("p", "draft", TaskStatus::Cancelled, Some(5)),
            done("q", "plan", TaskStatus::Ok, None),
        ];
        let rows = tally(&items).expect("no overflow");
        let plan = Tally {
            ok: 2,
            failed: 1,
            cancelled: 0,
            timed: 2,
            duration_ms: 400,
        };
        assert_eq!(rows[&("p", "plan")], plan);
        assert_eq!(rows[&("p", "draft")].cancelled, 1);
        assert_eq!(rows[&("p", "draft")].duration_ms, 5);
        assert_eq!(rows[&("q", "plan")].ok, 1);
        assert_eq!(rows[&("q", "plan")].timed, 0);
        assert_eq!(rows.len(), 3);
    }

    #[test]
    fn a_duration_that_cannot_be_added_up_is_an_error_not_a_wrapped_sum() {
        let items = [
            done("p", "plan", TaskStatus::Ok, Some(i64::MAX as u64)),
            done("p", "plan", TaskStatus::Ok, Some(1)),
        ];
        let err = tally(&items).expect_err("overflows");
        assert!(
            matches!(err, ApplyError::Data(ref m) if m.contains("overflows")),
            "{err:?}"
        );
        let huge = [done("p", "plan", TaskStatus::Ok, Some(u64::MAX))];
        assert!(tally(&huge).is_err());
    }
}
