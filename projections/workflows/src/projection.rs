//! The fold: task events into sessions and the next-task model's counts.
//!
//! A session is a workflow run: the task events of one `(project, workflow_id)`, in stream
//! order. Its steps are its tasks as they start (`kairos.task.started.v1`); a completion
//! (`kairos.task.completed.v1`) whose start was never seen is a step too, so producers that send
//! only completions are followed as well. Each step teaches the model "this prefix was followed
//! by this task"; a session's end teaches it "this prefix was followed by the end".
//!
//! **When a session ends.** There is no end event: a session ends once it has been idle for
//! `idle_seconds` of *stream* time (when JetStream stored the events, which a producer cannot
//! set and a replay sees again). An event of an ended session's workflow id starts a new
//! incarnation of it. Ends are found at the end of each batch, against the latest stream time
//! seen; stream time only moves forward, so which sessions have ended once all the events are
//! applied does not depend on how they were cut into batches, and a replay ends up with the same
//! state as the live build.
//!
//! **Bounds.** A session keeps its last `max_session_tasks` steps; a project keeps its newest
//! `keep_sessions` ended sessions (the oldest are deleted once a tenth over) and at most
//! `max_counts` (context, next) counters (past it, the rarest contexts are pruned). See
//! `docs/workflows.md` for how the model grows.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use kairos_events::Event;
use kairos_events::types::{TASK_COMPLETED, TASK_STARTED, TaskCompleted, TaskStarted, TaskStatus};
use kairos_runtime::{ApplyError, Projection, Rejection, StoredEvent};
use sqlx::{PgConnection, Row};

use crate::NAME;
use crate::next::{self, Next};

/// The bounds and the idle time, from `[workflows]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub idle: TimeDelta,
    pub max_session_tasks: usize,
    /// Most (context, next) counters per project.
    pub max_counts: i64,
    pub keep_sessions: i64,
}

/// The workflows projection.
#[derive(Clone)]
pub struct Workflows {
    pub limits: Arc<Limits>,
}

/// One task event, decoded.
#[derive(Debug, Clone)]
pub struct TaskEvent {
    seq: i64,
    stored_at: DateTime<Utc>,
    at: DateTime<Utc>,
    project: String,
    workflow_id: String,
    task_id: String,
    task_type: String,
    actor: Option<String>,
    error: bool,
}

/// A session as the fold holds it.
#[derive(Debug, Clone)]
struct Session {
    project: String,
    workflow_id: String,
    started_seq: i64,
    /// The sequence of its last event: what its end is learned at, whichever batch finds it.
    last_seq: i64,
    actor: Option<String>,
    open: bool,
    first_at: DateTime<Utc>,
    last_at: DateTime<Utc>,
    last_stored: DateTime<Utc>,
    tasks: Vec<String>,
    times: Vec<DateTime<Utc>>,
    task_ids: Vec<String>,
    steps: i32,
    errors: i32,
}

/// Most task ids a session remembers to match completions with their starts.
const TASK_IDS_KEPT: usize = 64;

/// The key a context's counts are stored under: the 64-bit FNV-1a hash of its
/// [`next::Context::key`], as a signed integer. Fixed width keeps the index small; with 64 bits,
/// two contexts of one project share a key with odds of about n²/2⁶⁵ (10⁻⁸ for a million).
pub fn stored_key(key: &str) -> i64 {
    i64::from_ne_bytes(kairos_events::fnv1a64(key).to_ne_bytes())
}

/// Count increments of one batch: `(project, stored key, next (encoded)) → n`.
#[derive(Default)]
struct Deltas {
    counts: HashMap<(String, i64, String), i64>,
    learned: HashMap<String, i64>,
}

impl Deltas {
    fn learn(&mut self, project: &str, prefix: &[String], next: &Next) {
        for (context, next) in next::increments(prefix, next) {
            *self
                .counts
                .entry((
                    project.to_owned(),
                    stored_key(&context),
                    next.encode().to_owned(),
                ))
                .or_default() += 1;
        }
        *self.learned.entry(project.to_owned()).or_default() += 1;
    }
}

impl Projection for Workflows {
    type Item = TaskEvent;
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

    fn decode(&self, stored: &StoredEvent) -> Result<Option<TaskEvent>, Rejection> {
        let (project, workflow_id, task_id, task_type, actor, error) =
            match stored.event.event_type().as_str() {
                TASK_STARTED => {
                    let t: TaskStarted = stored.event.data_as()?;
                    (
                        t.project,
                        t.workflow_id,
                        t.task_id,
                        t.task_type,
                        t.actor,
                        false,
                    )
                }
                TASK_COMPLETED => {
                    let t: TaskCompleted = stored.event.data_as()?;
                    let error = t.status == TaskStatus::Error;
                    (
                        t.project,
                        t.workflow_id,
                        t.task_id,
                        t.task_type,
                        t.actor,
                        error,
                    )
                }
                _ => return Ok(None),
            };
        Ok(Some(TaskEvent {
            seq: i64::try_from(stored.seq.0).unwrap_or(i64::MAX),
            stored_at: stored.stored_at,
            at: stored.occurred_at(),
            project: project.to_string(),
            workflow_id,
            task_id,
            task_type,
            actor,
            error,
        }))
    }

    async fn apply(
        &self,
        tx: &mut PgConnection,
        items: Vec<TaskEvent>,
        _carry: &mut (),
    ) -> Result<Vec<Event>, ApplyError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let limits = &self.limits;
        let mut open = load_open(tx, &items).await?;
        let mut ended: Vec<Session> = Vec::new();
        let mut deltas = Deltas::default();
        let mut latest = load_watermark(tx).await?;
        for e in items {
            latest = Some(latest.map_or(e.stored_at, |l: DateTime<Utc>| l.max(e.stored_at)));
            let key = (e.project.clone(), e.workflow_id.clone());
            let idle = open
                .get(&key)
                .is_some_and(|s| e.stored_at - s.last_stored > limits.idle);
            if idle && let Some(mut s) = open.remove(&key) {
                s.open = false;
                deltas.learn(&s.project, &s.tasks, &Next::End);
                ended.push(s);
            }
            let s = open.entry(key).or_insert_with(|| Session {
                project: e.project.clone(),
                workflow_id: e.workflow_id.clone(),
                started_seq: e.seq,
                last_seq: e.seq,
                actor: e.actor.clone(),
                open: true,
                first_at: e.at,
                last_at: e.at,
                last_stored: e.stored_at,
                tasks: Vec::new(),
                times: Vec::new(),
                task_ids: Vec::new(),
                steps: 0,
                errors: 0,
            });
            s.last_stored = s.last_stored.max(e.stored_at);
            s.errors = s.errors.saturating_add(i32::from(e.error));
            if s.actor.is_none() {
                s.actor = e.actor.clone();
            }
            s.last_seq = e.seq;
            // A task's completion after its start, or a start sent twice, is not a new step.
            if s.task_ids.contains(&e.task_id) {
                continue;
            }
            deltas.learn(&s.project, &s.tasks, &Next::Task(e.task_type.clone()));
            s.tasks.push(e.task_type);
            s.times.push(e.at);
            if s.tasks.len() > limits.max_session_tasks {
                let cut = s.tasks.len() - limits.max_session_tasks;
                s.tasks.drain(..cut);
                s.times.drain(..cut);
            }
            s.task_ids.push(e.task_id);
            if s.task_ids.len() > TASK_IDS_KEPT {
                s.task_ids.remove(0);
            }
            s.steps = s.steps.saturating_add(1);
            s.last_at = s.last_at.max(e.at);
        }
        save_sessions(tx, ended.iter().chain(open.values())).await?;
        if let Some(latest) = latest {
            end_idle(tx, latest - limits.idle, &mut deltas).await?;
            save_watermark(tx, latest).await?;
        }
        if !deltas.counts.is_empty() {
            save_counts(tx, &deltas).await?;
        }
        bound(tx, limits).await?;
        Ok(Vec::new())
    }
}

/// The open sessions of the workflow ids the batch names.
async fn load_open(
    tx: &mut PgConnection,
    items: &[TaskEvent],
) -> Result<HashMap<(String, String), Session>, ApplyError> {
    let keys: HashSet<(&str, &str)> = items
        .iter()
        .map(|e| (e.project.as_str(), e.workflow_id.as_str()))
        .collect();
    let (projects, ids): (Vec<&str>, Vec<&str>) = keys.into_iter().unzip();
    let rows = sqlx::query(
        "SELECT s.* FROM sessions s JOIN unnest($1::text[], $2::text[]) AS k(project, workflow_id) \
         USING (project, workflow_id) WHERE s.open",
    )
    .bind(&projects)
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    rows.iter()
        .map(|r| {
            let s = session_from(r)?;
            Ok(((s.project.clone(), s.workflow_id.clone()), s))
        })
        .collect()
}

fn session_from(r: &sqlx::postgres::PgRow) -> Result<Session, ApplyError> {
    Ok(Session {
        project: r.try_get("project")?,
        workflow_id: r.try_get("workflow_id")?,
        started_seq: r.try_get("started_seq")?,
        last_seq: r.try_get("last_seq")?,
        actor: r.try_get("actor")?,
        open: r.try_get("open")?,
        first_at: r.try_get("first_at")?,
        last_at: r.try_get("last_at")?,
        last_stored: r.try_get("last_stored")?,
        tasks: r.try_get("tasks")?,
        times: r.try_get("times")?,
        task_ids: r.try_get("task_ids")?,
        steps: r.try_get("steps")?,
        errors: r.try_get("errors")?,
    })
}

/// Separates the elements of a session's arrays on their way to PostgreSQL, which has no ragged
/// arrays to bind: U+001F, a control character, which ingest refuses in every string.
const SEP: &str = "\u{1f}";

/// Upserts `sessions` in one statement (each array joined with [`SEP`]), and counts the new
/// ones per project.
async fn save_sessions<'a>(
    tx: &mut PgConnection,
    sessions: impl Iterator<Item = &'a Session>,
) -> Result<(), ApplyError> {
    let mut c = SessionColumns::default();
    for s in sessions {
        c.project.push(s.project.as_str());
        c.workflow_id.push(s.workflow_id.as_str());
        c.started_seq.push(s.started_seq);
        c.last_seq.push(s.last_seq);
        c.actor.push(s.actor.as_deref());
        c.open.push(s.open);
        c.first_at.push(s.first_at);
        c.last_at.push(s.last_at);
        c.last_stored.push(s.last_stored);
        c.tasks.push(s.tasks.join(SEP));
        c.times.push(
            s.times
                .iter()
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
                .collect::<Vec<_>>()
                .join(SEP),
        );
        c.task_ids.push(s.task_ids.join(SEP));
        c.steps.push(s.steps);
        c.errors.push(s.errors);
    }
    if c.project.is_empty() {
        return Ok(());
    }
    let created: Vec<(String, i64)> = sqlx::query_as(SAVE_SESSIONS_SQL)
        .bind(&c.project)
        .bind(&c.workflow_id)
        .bind(&c.started_seq)
        .bind(&c.last_seq)
        .bind(&c.actor)
        .bind(&c.open)
        .bind(&c.first_at)
        .bind(&c.last_at)
        .bind(&c.last_stored)
        .bind(&c.tasks)
        .bind(&c.times)
        .bind(&c.task_ids)
        .bind(&c.steps)
        .bind(&c.errors)
        .fetch_all(&mut *tx)
        .await?;
    let (projects, counts): (Vec<String>, Vec<i64>) = created.into_iter().unzip();
    sqlx::query(
        "INSERT INTO projects (project, counts, sessions, learned) \
         SELECT p, 0, n, 0 FROM unnest($1::text[], $2::int8[]) AS u(p, n) \
         ON CONFLICT (project) DO UPDATE SET sessions = projects.sessions + excluded.sessions",
    )
    .bind(&projects)
    .bind(&counts)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

#[derive(Default)]
struct SessionColumns<'a> {
    project: Vec<&'a str>,
    workflow_id: Vec<&'a str>,
    started_seq: Vec<i64>,
    last_seq: Vec<i64>,
    actor: Vec<Option<&'a str>>,
    open: Vec<bool>,
    first_at: Vec<DateTime<Utc>>,
    last_at: Vec<DateTime<Utc>>,
    last_stored: Vec<DateTime<Utc>>,
    tasks: Vec<String>,
    times: Vec<String>,
    task_ids: Vec<String>,
    steps: Vec<i32>,
    errors: Vec<i32>,
}

const SAVE_SESSIONS_SQL: &str = "
    WITH up AS (
        INSERT INTO sessions (project, workflow_id, started_seq, last_seq, actor, open, first_at,
                              last_at, last_stored, tasks, times, task_ids, steps, errors)
        SELECT u.p, u.w, u.ss, u.ls, u.a, u.o, u.fa, u.la, u.lst,
               string_to_array(u.t, E'\\x1f'), string_to_array(u.tm, E'\\x1f')::timestamptz[],
               string_to_array(u.ids, E'\\x1f'), u.st, u.er
        FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::text[], $6::bool[],
                    $7::timestamptz[], $8::timestamptz[], $9::timestamptz[], $10::text[],
                    $11::text[], $12::text[], $13::int4[], $14::int4[])
             AS u(p, w, ss, ls, a, o, fa, la, lst, t, tm, ids, st, er)
        ON CONFLICT (project, workflow_id, started_seq) DO UPDATE SET
            last_seq = excluded.last_seq, actor = excluded.actor, open = excluded.open,
            last_at = excluded.last_at, last_stored = excluded.last_stored,
            tasks = excluded.tasks, times = excluded.times, task_ids = excluded.task_ids,
            steps = excluded.steps, errors = excluded.errors
        RETURNING project, xmax = 0 AS created)
    SELECT project, count(*) FILTER (WHERE created) FROM up GROUP BY project";

async fn load_watermark(tx: &mut PgConnection) -> Result<Option<DateTime<Utc>>, ApplyError> {
    Ok(sqlx::query_scalar("SELECT last_stored FROM watermark")
        .fetch_optional(&mut *tx)
        .await?)
}

async fn save_watermark(tx: &mut PgConnection, at: DateTime<Utc>) -> Result<(), ApplyError> {
    sqlx::query(
        "INSERT INTO watermark (id, last_stored) VALUES (true, $1) \
         ON CONFLICT (id) DO UPDATE SET last_stored = excluded.last_stored",
    )
    .bind(at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Ends the open sessions last stored before `before`, teaching the model their ends.
async fn end_idle(
    tx: &mut PgConnection,
    before: DateTime<Utc>,
    deltas: &mut Deltas,
) -> Result<(), ApplyError> {
    let rows =
        sqlx::query("UPDATE sessions SET open = false WHERE open AND last_stored < $1 RETURNING *")
            .bind(before)
            .fetch_all(&mut *tx)
            .await?;
    let mut ended: Vec<Session> = rows.iter().map(session_from).collect::<Result<_, _>>()?;
    // In a fixed order (the counts do not depend on it, but reading them is easier).
    ended.sort_by(|a, b| (&a.project, &a.workflow_id).cmp(&(&b.project, &b.workflow_id)));
    for s in &ended {
        deltas.learn(&s.project, &s.tasks, &Next::End);
    }
    Ok(())
}

async fn save_counts(tx: &mut PgConnection, deltas: &Deltas) -> Result<(), ApplyError> {
    // In key order: the index takes them in one pass.
    let mut rows: Vec<(&(String, i64, String), &i64)> = deltas.counts.iter().collect();
    rows.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let (mut cp, mut cc, mut cn, mut cv) = (vec![], vec![], vec![], vec![]);
    for ((project, context, next), n) in rows {
        cp.push(project.as_str());
        cc.push(*context);
        cn.push(next.as_str());
        cv.push(*n);
    }
    let created: Vec<(String, i64)> = sqlx::query_as(
        "WITH up AS (INSERT INTO counts (project, context, next, count) \
           SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::int8[]) \
           ON CONFLICT (project, context, next) DO UPDATE SET count = counts.count + excluded.count \
           RETURNING project, xmax = 0 AS created) \
         SELECT project, count(*) FILTER (WHERE created) FROM up GROUP BY project",
    )
    .bind(&cp)
    .bind(&cc)
    .bind(&cn)
    .bind(&cv)
    .fetch_all(&mut *tx)
    .await?;
    let mut projects: Vec<&str> = deltas.learned.keys().map(String::as_str).collect();
    projects.sort_unstable();
    let new_counts: HashMap<&str, i64> = created.iter().map(|(p, n)| (p.as_str(), *n)).collect();
    let added: Vec<i64> = projects
        .iter()
        .map(|p| new_counts.get(p).copied().unwrap_or(0))
        .collect();
    let learned: Vec<i64> = projects.iter().map(|p| deltas.learned[*p]).collect();
    sqlx::query(
        "INSERT INTO projects (project, counts, sessions, learned) \
         SELECT p, c, 0, l FROM unnest($1::text[], $2::int8[], $3::int8[]) AS u(p, c, l) \
         ON CONFLICT (project) DO UPDATE SET counts = projects.counts + excluded.counts, \
           learned = projects.learned + excluded.learned",
    )
    .bind(&projects)
    .bind(&added)
    .bind(&learned)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Prunes the projects past a bound back to nine tenths of it: whole contexts, the rarest first
/// (the smallest total, ties by the larger key), as [`next::prune`] chooses them; the oldest
/// ended sessions once a tenth over.
async fn bound(tx: &mut PgConnection, limits: &Limits) -> Result<(), ApplyError> {
    let over: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT project, counts, sessions FROM projects WHERE counts > $1 OR sessions > $2 + $2 / 10",
    )
    .bind(limits.max_counts)
    .bind(limits.keep_sessions)
    .fetch_all(&mut *tx)
    .await?;
    for (project, counts, sessions) in over {
        if counts > limits.max_counts {
            let keep = limits.max_counts - limits.max_counts / 10;
            // The rarest contexts go, whole, until at least `counts - keep` counters are gone.
            let gone: i64 = sqlx::query_scalar(
                "WITH totals AS (SELECT context, sum(count) AS total, count(*) AS n FROM counts \
                   WHERE project = $1 GROUP BY context), \
                 ranked AS (SELECT context, \
                   sum(n) OVER (ORDER BY total ASC, context DESC) - n AS before FROM totals), \
                 d AS (DELETE FROM counts c USING ranked r WHERE c.project = $1 \
                   AND c.context = r.context AND r.before < $2 RETURNING 1) \
                 SELECT count(*) FROM d",
            )
            .bind(&project)
            .bind(counts - keep)
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query("UPDATE projects SET counts = counts - $2 WHERE project = $1")
                .bind(&project)
                .bind(gone)
                .execute(&mut *tx)
                .await?;
        }
        if sessions > limits.keep_sessions + limits.keep_sessions / 10 {
            let keep = limits.keep_sessions - limits.keep_sessions / 10;
            let gone: i64 = sqlx::query_scalar(
                "WITH doomed AS (SELECT workflow_id, started_seq FROM sessions \
                   WHERE project = $1 AND NOT open \
                   ORDER BY last_stored ASC, workflow_id ASC, started_seq ASC LIMIT $2), \
                 d AS (DELETE FROM sessions s USING doomed \
                   WHERE s.project = $1 AND (s.workflow_id, s.started_seq) = \
                   (doomed.workflow_id, doomed.started_seq) RETURNING 1) \
                 SELECT count(*) FROM d",
            )
            .bind(&project)
            .bind((sessions - keep).max(0))
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query("UPDATE projects SET sessions = sessions - $2 WHERE project = $1")
                .bind(&project)
                .bind(gone)
                .execute(&mut *tx)
                .await?;
        }
    }
    Ok(())
}
