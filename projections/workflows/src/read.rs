//! The reads: suggestions from the stored counts, patterns, families and actors mined from the
//! stored sessions. Each read is one snapshot (with the checkpoint it reflects).

use chrono::{DateTime, Utc};
use kairos_api::ApiError;
use serde::Serialize;

use sqlx::{PgPool, Postgres, Row, Transaction};

use crate::families::{self, FamilyConfig};
use crate::mining::{self, DeviationConfig, MinSupport, MiningConfig, Session};
use crate::next::{self, Counts, Next};
use crate::projection::stored_key;

const CHECKPOINT_SQL: &str =
    "SELECT coalesce((SELECT last_seq FROM kairos.checkpoints WHERE projection = 'workflows'), 0)";

/// A read-only transaction whose reads share one snapshot, and the checkpoint in it.
async fn snapshot(pool: &PgPool) -> Result<(Transaction<'static, Postgres>, u64), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let seq: i64 = sqlx::query_scalar(CHECKPOINT_SQL)
        .fetch_one(&mut *tx)
        .await?;
    Ok((tx, u64::try_from(seq).unwrap_or(0)))
}

/// Runs CPU-bound mining off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::StreamUnavailable(format!("mining failed: {e}")))
}

/// Why a task is suggested: the pattern (context) whose counts support it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Because {
    /// The tasks the pattern stands for, in order (the session's recent steps it matched).
    pub pattern: String,
    /// Sessions at this pattern that went on to the suggested task.
    pub count: u64,
    /// Sessions at this pattern.
    pub total: u64,
    /// The same in words.
    pub text: String,
}

/// One suggested next task.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SuggestionView {
    /// The task type; `null` when the suggestion is that the session ends.
    pub task: Option<String>,
    /// Whether the suggestion is that the session ends here.
    pub end: bool,
    /// The model's probability, 0 to 1.
    pub probability: f64,
    pub because: Because,
}

/// What `GET /v1/workflows/sessions/{session}/suggestions` answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SuggestionsAnswer {
    pub project: String,
    pub session: String,
    /// Whether the session is still open (not idle past `idle_seconds`).
    pub open: bool,
    /// How many steps the session has had.
    pub steps: i32,
    /// Its last steps (at most 20), oldest first.
    pub recent_tasks: Vec<String>,
    /// Most likely first.
    pub suggestions: Vec<SuggestionView>,
    /// The stream sequence the workflows projection had applied.
    pub as_of_seq: u64,
}

/// "you usually run `deploy` after `test` → `build`: 14 of 16 times"; "… at the start of a
/// session", "… after any task".
fn phrase(task: Option<&str>, key: &str, pattern: &str, count: u64, total: u64) -> String {
    let what = match task {
        Some(t) => format!("you usually run `{t}`"),
        None => "sessions usually end".to_owned(),
    };
    let link = match next::contexts::<&str>(&[]).first() {
        Some(start) if start.key == key => "at",
        _ => "after",
    };
    format!("{what} {link} {pattern}: {count} of {total} times")
}

/// The suggestions for the newest session with id `session` among `only` (every project when
/// `None`).
pub async fn suggestions(
    pool: &PgPool,
    session: &str,
    only: Option<&[String]>,
    k: usize,
) -> Result<SuggestionsAnswer, ApiError> {
    // Two statements, no transaction: the suggestion read is on the hot path of agents, and
    // counts a moment newer than the session they are read for change nothing that matters.
    let rows = sqlx::query(
        "SELECT project, open, tasks, steps, (SELECT last_seq FROM kairos.checkpoints \
           WHERE projection = 'workflows') AS as_of_seq FROM workflows.sessions \
         WHERE workflow_id = $1 AND ($2::text[] IS NULL OR project = ANY($2)) \
         ORDER BY open DESC, last_stored DESC LIMIT 20",
    )
    .bind(session)
    .bind(only)
    .fetch_all(pool)
    .await?;
    let Some(first) = rows.first() else {
        return Err(ApiError::NotFound(format!(
            "no session {session} in the projects your key reaches"
        )));
    };
    let project: String = first.try_get("project")?;
    let mut projects: Vec<String> = rows
        .iter()
        .filter_map(|r| r.try_get::<String, _>("project").ok())
        .collect();
    projects.sort();
    projects.dedup();
    if projects.len() > 1 {
        return Err(ApiError::bad(
            "ambiguous_session",
            "project",
            format!(
                "session {session} exists in projects {}: name one with project=",
                projects.join(", ")
            ),
        ));
    }
    let open: bool = first.try_get("open")?;
    let as_of_seq: Option<i64> = first.try_get("as_of_seq")?;
    let as_of_seq = as_of_seq.and_then(|s| u64::try_from(s).ok()).unwrap_or(0);
    let tasks: Vec<String> = first.try_get("tasks")?;
    let steps: i32 = first.try_get("steps")?;
    let contexts = next::contexts(&tasks);
    let keys: Vec<i64> = contexts.iter().map(|c| stored_key(&c.key)).collect();
    let counted = sqlx::query(
        "SELECT c.context, c.next, c.count FROM workflows.counts c \
         WHERE c.project = $1 AND c.context = ANY($2)",
    )
    .bind(&project)
    .bind(&keys)
    .fetch_all(pool)
    .await?;
    let mut chain: Vec<(next::Context, Counts)> = contexts
        .into_iter()
        .map(|c| (c, Counts::default()))
        .collect();
    for r in &counted {
        let context: i64 = r.try_get("context")?;
        let task: String = r.try_get("next")?;
        let count: i64 = r.try_get("count")?;
        if let Some((_, counts)) = chain
            .iter_mut()
            .find(|(c, _)| stored_key(&c.key) == context)
        {
            counts.add(Next::decode(&task), u64::try_from(count).unwrap_or(0));
        }
    }
    let suggestions = next::combine(&chain, &next::Config::default())
        .into_iter()
        .take(k)
        .map(|s| {
            let task = match s.next {
                Next::Task(t) => Some(t),
                Next::End => None,
            };
            let support = s.support;
            SuggestionView {
                end: task.is_none(),
                probability: s.probability,
                because: Because {
                    text: phrase(
                        task.as_deref(),
                        &support.context.key,
                        &support.context.description,
                        support.count,
                        support.total,
                    ),
                    pattern: support.context.description,
                    count: support.count,
                    total: support.total,
                },
                task,
            }
        })
        .collect();
    let recent_tasks = tasks[tasks.len().saturating_sub(20)..].to_vec();
    Ok(SuggestionsAnswer {
        project,
        session: session.to_owned(),
        open,
        steps,
        recent_tasks,
        suggestions,
        as_of_seq,
    })
}

/// The newest `limit` sessions of `project` (of `actor`'s, when given), oldest first.
async fn sessions(
    tx: &mut Transaction<'static, Postgres>,
    project: &str,
    actor: Option<&str>,
    limit: usize,
) -> Result<Vec<Session>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT workflow_id, actor, tasks, times FROM workflows.sessions \
         WHERE project = $1 AND ($2::text IS NULL OR actor = $2) \
         ORDER BY last_stored DESC, workflow_id, started_seq LIMIT $3",
    )
    .bind(project)
    .bind(actor)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(&mut **tx)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows.iter().rev() {
        let tasks: Vec<String> = r.try_get("tasks")?;
        let times: Vec<DateTime<Utc>> = r.try_get("times")?;
        out.push(Session {
            id: r.try_get("workflow_id")?,
            actor: r.try_get("actor")?,
            tasks: tasks
                .into_iter()
                .zip(times)
                .map(|(task, at)| mining::Step { task, at })
                .collect(),
        });
    }
    Ok(out)
}

/// What `GET /v1/workflows/patterns` answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PatternsAnswer {
    pub project: String,
    pub actor: Option<String>,
    /// The sessions mined: the project's newest, at most `[workflows] mine_sessions`.
    pub sessions: usize,
    /// Sessions a pattern occurs in, at least.
    pub min_support: usize,
    /// False when the mining's work bound stopped it: longer or rarer patterns may be missing.
    pub complete: bool,
    /// By support, then length, then tasks: closed patterns only (none has a longer pattern of
    /// the same kind and support containing it).
    #[schema(value_type = Vec<Object>)]
    pub patterns: Vec<mining::Pattern>,
    /// The stream sequence the workflows projection had applied.
    pub as_of_seq: u64,
}

/// The frequent task sequences of `project`'s newest `mine` sessions (of `actor`'s, if given).
pub async fn patterns(
    pool: &PgPool,
    project: &str,
    actor: Option<&str>,
    min_support: usize,
    limit: usize,
    mine: usize,
) -> Result<PatternsAnswer, ApiError> {
    let (mut tx, as_of_seq) = snapshot(pool).await?;
    let sessions = sessions(&mut tx, project, actor, mine).await?;
    tx.commit().await?;
    let config = MiningConfig {
        min_support: MinSupport::Sessions(min_support),
        max_patterns: limit,
        ..MiningConfig::default()
    };
    let mined = blocking(move || mining::mine(&sessions, &config)).await?;
    Ok(PatternsAnswer {
        project: project.to_owned(),
        actor: actor.map(str::to_owned),
        sessions: mined.stats.sessions,
        min_support: mined.stats.min_support,
        complete: mined.stats.complete,
        patterns: mined.patterns,
        as_of_seq,
    })
}

/// The actors of `project` whose recent sessions depart from their earlier ones, and the score
/// of every actor scored.
pub async fn actors(pool: &PgPool, project: &str, mine: usize) -> Result<Actors, ApiError> {
    let (mut tx, as_of_seq) = snapshot(pool).await?;
    let sessions = sessions(&mut tx, project, None, mine).await?;
    tx.commit().await?;
    let defaults = DeviationConfig::default();
    let threshold = defaults.threshold;
    let config = DeviationConfig {
        threshold: 0.0,
        ..defaults
    };
    let (scored, sessions) = blocking(move || {
        let n = sessions.len();
        (mining::deviating_actors(&sessions, &config), n)
    })
    .await?;
    let deviating = scored
        .iter()
        .filter(|d| d.score >= threshold)
        .cloned()
        .collect();
    Ok(Actors {
        project: project.to_owned(),
        sessions,
        threshold,
        deviating,
        actors: scored,
        as_of_seq,
    })
}

/// A project's actors scored for deviation from their usual workflows.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Actors {
    pub project: String,
    /// Sessions looked at.
    pub sessions: usize,
    /// The score at or above which an actor deviates.
    pub threshold: f64,
    /// The actors that deviate (score at or above `threshold`, and a small p-value), most first.
    pub deviating: Vec<mining::Deviation>,
    /// Every actor scored.
    pub actors: Vec<mining::Deviation>,
    pub as_of_seq: u64,
}

/// A project's workflow families.
#[derive(Serialize, utoipa::ToSchema)]
pub struct FamiliesAnswer {
    pub project: String,
    #[serde(flatten)]
    pub found: families::Families,
    pub as_of_seq: u64,
}

/// The workflow families of `project`'s newest `mine` sessions.
pub async fn families(
    pool: &PgPool,
    project: &str,
    mine: usize,
) -> Result<FamiliesAnswer, ApiError> {
    let (mut tx, as_of_seq) = snapshot(pool).await?;
    let sessions = sessions(&mut tx, project, None, mine).await?;
    tx.commit().await?;
    let found = blocking(move || {
        families::cluster(
            &sessions,
            &FamilyConfig {
                max_sessions: mine,
                ..FamilyConfig::default()
            },
        )
    })
    .await?;
    Ok(FamiliesAnswer {
        project: project.to_owned(),
        found,
        as_of_seq,
    })
}
