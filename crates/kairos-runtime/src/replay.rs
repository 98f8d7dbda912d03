//! Rebuilding a projection from the stream into a fresh generation, beside the live one.
//!
//! The generation is a copy of the live schema's tables (`<schema>_next`), filled by folding the
//! stream from sequence 1 with the projection's own code, checkpointed like the live tables so an
//! interrupted replay resumes where it stopped. The switch pauses live writes (the projection's
//! writer lock), brings the generation to the live checkpoint, renames the schemas and moves the
//! checkpoint and dedupe keys in one transaction: readers see the old tables or the new ones,
//! never a half-built generation, and the live runner carries on from the same sequence.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kairos_bus::{BatchReader, Bus};
use kairos_events::StreamSeq;
use sqlx::{PgPool, Row};
use tracing::{info, warn};

use crate::apply::{Decoded, Delivered, Failure, Target, apply_batch, decode, writer_lock};
use crate::store::{self, Advance};
use crate::{Projection, RunnerError};

/// How to replay.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Stop at this sequence and keep the generation beside the live one, without switching.
    pub until_seq: Option<StreamSeq>,
    /// Keep the previous live tables (renamed `<schema>_old_<unix time>`) after the switch.
    pub keep_old: bool,
    /// Throw away a half-built generation instead of resuming it.
    pub restart: bool,
    /// Replay even though the stream no longer holds its first events (retention).
    pub allow_partial: bool,
    pub batch_size: usize,
    /// Sequences between the generation's snapshots (as `projections.snapshot_every`).
    pub snapshot_every: u64,
    /// Identities a replay into a new generation keeps in memory at most (16 bytes each, ~35
    /// with the set's overhead) before it gives the generation's identity table its key and
    /// deduplicates against the table instead, as the live runner does (0: from the start).
    pub identities_in_memory: usize,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        Self {
            until_seq: None,
            keep_old: false,
            restart: false,
            allow_partial: false,
            batch_size: 5_000,
            snapshot_every: crate::apply::DEFAULT_SNAPSHOT_EVERY,
            identities_in_memory: DEFAULT_IDENTITIES_IN_MEMORY,
        }
    }
}

/// Where a replay stands, for progress displays.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub at: u64,
    pub target: u64,
    pub events_per_sec: f64,
}

impl Progress {
    pub fn eta(&self) -> Option<Duration> {
        (self.events_per_sec > 0.0).then(|| {
            Duration::from_secs_f64(
                self.target.saturating_sub(self.at) as f64 / self.events_per_sec,
            )
        })
    }
}

/// [`ReplayOptions::identities_in_memory`] unless configured otherwise (~70 MB).
pub const DEFAULT_IDENTITIES_IN_MEMORY: usize = 2_000_000;

/// What a replay did.
#[derive(Debug, Clone)]
pub struct ReplayReport {
    pub projection: String,
    /// The sequence the generation reached.
    pub reached: StreamSeq,
    /// Events read from the stream by this run (a resumed replay reads fewer).
    pub events_read: u64,
    pub elapsed: Duration,
    /// The generation became the live tables.
    pub switched: bool,
    /// Schema holding the generation (the live schema once switched).
    pub schema: String,
    /// The previous live tables, when kept.
    pub kept_old: Option<String>,
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn replay_error(projection: &str, message: impl std::fmt::Display) -> RunnerError {
    RunnerError::Replay {
        projection: projection.to_owned(),
        message: message.to_string(),
    }
}

/// Rebuilds `projection` from the stream. See the module documentation. With a [`Seat`], the
/// bulk of the history comes from a read shared with other replays.
pub async fn replay<P: Projection>(
    projection: P,
    bus: &Bus,
    pool: &PgPool,
    opts: &ReplayOptions,
    seat: Option<Seat>,
    mut on_progress: impl FnMut(Progress),
) -> Result<ReplayReport, RunnerError> {
    let projection = Arc::new(projection);
    let projection = &projection;
    let name = projection.name();
    let started = Instant::now();
    let live = Target::live(projection.as_ref());
    let next = Target::next(projection.as_ref());
    let mut stream = bus
        .jetstream()
        .get_stream(bus.stream_name())
        .await
        .map_err(|e| replay_error(name, e))?;
    let state = stream
        .info()
        .await
        .map_err(|e| replay_error(name, e))?
        .state
        .clone();
    if state.first_sequence > 1 && state.messages > 0 && !opts.allow_partial {
        return Err(replay_error(
            name,
            format!(
                "the stream no longer holds events 1..{} (retention, nats.max_age_days): a replay would \
                 rebuild from sequence {} only; pass --allow-partial to accept that",
                state.first_sequence - 1,
                state.first_sequence
            ),
        ));
    }
    let mut next = next;
    next.snapshot_every = opts.snapshot_every;
    // A generation built further than this replay asks for cannot be taken back: start over.
    let past_until = match (opts.until_seq, store::checkpoint(pool, &next.key).await?) {
        (Some(until), Some(cp)) => cp.last_seq > until.0,
        _ => false,
    };
    if past_until {
        info!(
            projection = name,
            "the generation left by an earlier replay is past --until; rebuilding it"
        );
    }
    let fresh = prepare_generation(pool, &live, &next, opts.restart || past_until).await?;
    // Without --until, build up to where the live tables are, not further: events after the
    // live checkpoint are the live runner's to apply, so that what they announce (threshold
    // events) is published; the switch then catches up the last stretch under the writer lock.
    let end = match opts.until_seq {
        Some(s) => s.0.min(state.last_sequence),
        None => store::ensure_checkpoint(pool, &live.key)
            .await?
            .0
            .min(state.last_sequence),
    };
    let mut read = 0;
    // A new generation's identities are kept in memory while it is filled, and its table gets
    // its key once, at the end of this pass, rather than event by event.
    let known = if fresh && opts.identities_in_memory > 0 {
        Some(HashMap::new())
    } else {
        store::ensure_applied_key(pool, &next.schema).await?;
        None
    };
    let reached = catch_up(
        projection,
        bus,
        pool,
        &next,
        end,
        opts.batch_size,
        seat,
        (known, opts.identities_in_memory),
        &mut read,
        &mut on_progress,
    )
    .await?;
    store::ensure_applied_key(pool, &next.schema).await?;
    if opts.until_seq.is_some() {
        info!(projection = name, reached = reached.0, schema = %next.schema, "generation built; not switched (--until)");
        return Ok(ReplayReport {
            projection: name.to_owned(),
            reached,
            events_read: read,
            elapsed: started.elapsed(),
            switched: false,
            schema: next.schema,
            kept_old: None,
        });
    }
    // Pause live writes: every live batch holds the writer lock shared for its transaction.
    let mut lock = pool.acquire().await?.detach();
    sqlx::query("SELECT pg_advisory_lock(hashtextextended($1, 0))")
        .bind(writer_lock(name))
        .execute(&mut lock)
        .await?;
    let result = async {
        let live_seq = store::ensure_checkpoint(pool, &live.key).await?;
        let reached = if live_seq > reached {
            catch_up(
                projection,
                bus,
                pool,
                &next,
                live_seq.0,
                opts.batch_size,
                None,
                (None, 0),
                &mut read,
                &mut on_progress,
            )
            .await?
        } else {
            reached
        };
        let old = switch(pool, &live, &next).await?;
        Ok::<_, RunnerError>((reached, old))
    }
    .await;
    let _ = sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
        .bind(writer_lock(name))
        .execute(&mut lock)
        .await;
    let (reached, old) = result?;
    let kept_old = if opts.keep_old {
        Some(old)
    } else {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA {} CASCADE",
            quote(&old)
        )))
        .execute(pool)
        .await?;
        None
    };
    info!(
        projection = name,
        reached = reached.0,
        "replayed generation is live"
    );
    Ok(ReplayReport {
        projection: name.to_owned(),
        reached,
        events_read: read,
        elapsed: started.elapsed(),
        switched: true,
        schema: live.schema,
        kept_old,
    })
}

/// Creates the generation's schema with a copy of every live table (empty; the identity table
/// without its key), or resumes it (with its key). `true` when the generation is new.
async fn prepare_generation(
    pool: &PgPool,
    live: &Target,
    next: &Target,
    restart: bool,
) -> Result<bool, RunnerError> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(&next.schema)
            .fetch_one(pool)
            .await?;
    let resumable = exists && !restart && store::checkpoint(pool, &next.key).await?.is_some();
    if resumable {
        info!(schema = %next.schema, "resuming the generation an earlier replay left");
        store::ensure_applied_table(pool, &next.schema).await?;
        return Ok(false);
    }
    store::ensure_applied_table(pool, &live.schema).await?;
    let mut tx = pool.begin().await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {} CASCADE",
        quote(&next.schema)
    )))
    .execute(&mut *tx)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA {}",
        quote(&next.schema)
    )))
    .execute(&mut *tx)
    .await?;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 AND table_type = 'BASE TABLE'",
    )
    .bind(&live.schema)
    .fetch_all(&mut *tx)
    .await?;
    for t in tables {
        let excluding = if t == "kairos_applied" {
            " EXCLUDING INDEXES"
        } else {
            ""
        };
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE {}.{} (LIKE {}.{} INCLUDING ALL{excluding})",
            quote(&next.schema),
            quote(&t),
            quote(&live.schema),
            quote(&t)
        )))
        .execute(&mut *tx)
        .await?;
    }
    for sql in [
        "DELETE FROM kairos.checkpoints WHERE projection = $1",
        "DELETE FROM kairos.snapshots WHERE projection = $1",
    ] {
        sqlx::query(sql).bind(&next.key).execute(&mut *tx).await?;
    }
    sqlx::query("INSERT INTO kairos.checkpoints (projection) VALUES ($1)")
        .bind(&next.key)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(true)
}

/// Folds the stream into `target` from its checkpoint up to `end`, in order. One side reads
/// and decodes (on another thread) the next batches while the other writes the current one.
/// Each batch is one transaction; its snapshots go at the multiples of `target.snapshot_every`
/// it passes. With `known` (every identity the target's table holds), identities are
/// deduplicated in memory (see [`apply_batch`]).
#[allow(clippy::too_many_arguments)]
async fn catch_up<P: Projection>(
    projection: &Arc<P>,
    bus: &Bus,
    pool: &PgPool,
    target: &Target,
    end: u64,
    batch_size: usize,
    seat: Option<Seat>,
    (mut known, known_at_most): (Option<HashMap<uuid::Uuid, i64>>, usize),
    read: &mut u64,
    on_progress: &mut impl FnMut(Progress),
) -> Result<StreamSeq, RunnerError> {
    let began = Instant::now();
    let name = projection.name();
    let mut checkpoint = store::ensure_checkpoint(pool, &target.key).await?;
    if checkpoint.0 >= end {
        return Ok(checkpoint);
    }
    let first = checkpoint.0;
    // Batches being decoded, in order: the reading side goes on reading while they decode, and
    // the writing side waits for each in turn.
    type Decoding<I> = tokio::task::JoinHandle<(Part, Decoded<I>)>;
    let (batches, arriving) = tokio::sync::mpsc::channel::<Decoding<P::Item>>(3);
    let reading = async move {
        let mut source = match seat {
            Some(seat) => Source::Shared(seat.take(first, end)),
            None => Source::Own(Box::new(
                bus.read_batches(StreamSeq(first + 1), batch_size)
                    .await
                    .map_err(|e| replay_error(name, e))?,
            )),
        };
        loop {
            let (batch, seq) = source
                .next(first, end)
                .await
                .map_err(|e| replay_error(name, e))?;
            if !batch.is_empty() {
                let (p, door) = (Arc::clone(projection), crate::Door::of(bus));
                let decoding = tokio::task::spawn_blocking(move || {
                    let decoded = decode(p.as_ref(), &door, None, &batch);
                    (batch, decoded)
                });
                if batches.send(decoding).await.is_err() {
                    return Ok(()); // the writing side stopped: its error is the one to report
                }
            }
            if seq >= end {
                if let Source::Own(reader) = source {
                    reader.close().await;
                }
                return Ok::<_, RunnerError>(());
            }
        }
    };
    let mut last_report = Instant::now();
    let writing = async {
        // Owned here: when writing fails the receiver goes with it, and the reading side's
        // next send fails instead of waiting forever on a full channel.
        let mut arriving = arriving;
        while let Some(decoding) = arriving.recv().await {
            let (batch, decoded) = decoding.await.map_err(|e| replay_error(name, e))?;
            *read += batch.len() as u64;
            checkpoint = apply_with_retry(
                projection.as_ref(),
                bus,
                pool,
                target,
                checkpoint,
                &batch[..],
                Some(decoded),
                known.as_mut(),
            )
            .await?;
            if known.as_ref().is_some_and(|k| k.len() > known_at_most) {
                store::ensure_applied_key(pool, &target.schema).await?;
                known = None;
            }
            if last_report.elapsed() > Duration::from_millis(500) || checkpoint.0 >= end {
                last_report = Instant::now();
                let secs = began.elapsed().as_secs_f64().max(1e-6);
                on_progress(Progress {
                    at: checkpoint.0,
                    target: end,
                    events_per_sec: (checkpoint.0 - first) as f64 / secs,
                });
            }
        }
        Ok::<_, RunnerError>(checkpoint)
    };
    let (read_result, written) = tokio::join!(reading, writing);
    let reached = written?;
    read_result?;
    Ok(reached)
}

/// Batches of stream messages as a shared read hands them out, each with the last sequence the
/// read has seen (past the batch when the messages after it are beyond every rider's end or
/// deleted).
type Fed = Result<(Arc<Vec<Delivered>>, u64), String>;
type Feed = tokio::sync::mpsc::Receiver<Fed>;

/// The messages of one batch of the stream that a replay applies: a run of the batch, which a
/// shared read hands to every replay without copying it.
struct Part {
    all: Arc<Vec<Delivered>>,
    range: std::ops::Range<usize>,
}

impl Part {
    /// The messages of `batch` in `(first, end]`.
    fn within(batch: Arc<Vec<Delivered>>, first: u64, end: u64) -> Self {
        let seq = |d: &Delivered| d.seq.0;
        if batch.is_sorted_by_key(seq) {
            let start = batch.partition_point(|d| seq(d) <= first);
            let stop = batch.partition_point(|d| seq(d) <= end).max(start);
            return Self {
                all: batch,
                range: start..stop,
            };
        }
        // Not in stream order (a reader never hands such a batch out): copy what is in range.
        let mine: Vec<Delivered> = batch
            .iter()
            .filter(|d| seq(d) > first && seq(d) <= end)
            .cloned()
            .collect();
        let range = 0..mine.len();
        Self {
            all: Arc::new(mine),
            range,
        }
    }
}

impl std::ops::Deref for Part {
    type Target = [Delivered];

    fn deref(&self) -> &[Delivered] {
        &self.all[self.range.clone()]
    }
}

/// Where a replay's messages come from: a read of its own, or a read shared with others.
enum Source {
    Own(Box<BatchReader>),
    Shared(Feed),
}

impl Source {
    /// The next batch of messages in `(first, end]` (maybe empty), and the last sequence seen:
    /// at or past `end`, the replay has all it needs.
    async fn next(&mut self, first: u64, end: u64) -> Result<(Part, u64), String> {
        let (batch, last) = match self {
            Source::Own(reader) => {
                let (batch, last) = next_batch(reader, end).await?;
                (Arc::new(batch), last)
            }
            Source::Shared(feed) => feed
                .recv()
                .await
                .ok_or("the shared read of the stream ended early")??,
        };
        Ok((Part::within(batch, first, end), last))
    }
}

/// A place in one read of the stream shared by several replays (`kairos replay --all`): the
/// server sends each message once instead of once per projection. Get the seats from
/// [`shared_read`], one per replay. The read starts once every seat is taken (by a replay that
/// has history to fold) or dropped, from the earliest sequence any of them needs, and goes on
/// to the furthest; each replay keeps what falls in its own range. It moves at the pace of the
/// slowest.
pub struct Seat {
    shared: Arc<std::sync::Mutex<Shared>>,
    taken: bool,
}

struct Shared {
    bus: Bus,
    open: usize,
    batch_size: usize,
    riders: Vec<Rider>,
}

struct Rider {
    first: u64,
    end: u64,
    feed: tokio::sync::mpsc::Sender<Fed>,
}

/// `seats` places in one shared read of the stream, batched as `opts` says.
pub fn shared_read(bus: &Bus, seats: usize, opts: &ReplayOptions) -> Vec<Seat> {
    let shared = Arc::new(std::sync::Mutex::new(Shared {
        bus: bus.clone(),
        open: seats,
        batch_size: opts.batch_size,
        riders: Vec::new(),
    }));
    (0..seats)
        .map(|_| Seat {
            shared: Arc::clone(&shared),
            taken: false,
        })
        .collect()
}

impl Seat {
    /// Takes the seat for the messages `(first, end]`.
    fn take(mut self, first: u64, end: u64) -> Feed {
        let (feed, fed) = tokio::sync::mpsc::channel(4);
        self.taken = true;
        let mut shared = self
            .shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        shared.riders.push(Rider { first, end, feed });
        shared.leave();
        fed
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        if !self.taken {
            self.shared
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .leave();
        }
    }
}

impl Shared {
    /// One seat fewer to wait for; the last one starts the read.
    fn leave(&mut self) {
        self.open = self.open.saturating_sub(1);
        if self.open == 0 && !self.riders.is_empty() {
            let riders = std::mem::take(&mut self.riders);
            tokio::spawn(feed(self.bus.clone(), riders, self.batch_size));
        }
    }
}

/// The next batch of a read (the messages up to `end`), and the last sequence it saw.
async fn next_batch(reader: &mut BatchReader, end: u64) -> Result<(Vec<Delivered>, u64), String> {
    let mut batch = reader
        .next_batch(Duration::from_secs(30))
        .await
        .map_err(|e| e.to_string())?;
    let seq = batch
        .last()
        .ok_or("the stream stopped delivering for 30 s")?
        .seq
        .0;
    batch.retain(|d| d.seq.0 <= end);
    Ok((batch, seq))
}

/// Reads the stream once for every rider, handing each batch to all of them.
async fn feed(bus: Bus, mut riders: Vec<Rider>, batch_size: usize) {
    let first = riders.iter().map(|r| r.first).min().unwrap_or(0);
    let end = riders.iter().map(|r| r.end).max().unwrap_or(0);
    let mut reader = bus
        .read_batches(StreamSeq(first + 1), batch_size)
        .await
        .map_err(|e| e.to_string());
    loop {
        let next = match &mut reader {
            Ok(reader) => next_batch(reader, end).await,
            Err(e) => Err(e.clone()),
        };
        let (batch, seq) = match next {
            Ok(next) => next,
            Err(e) => {
                for r in riders {
                    let _ = r.feed.send(Err(e.clone())).await;
                }
                return;
            }
        };
        // At the end the riders hear of it even when the batch is empty: the message at `end`
        // may be gone (deleted), and what came after it is nobody's.
        let batch = Arc::new(batch);
        let mut still = Vec::with_capacity(riders.len());
        for r in riders {
            // A rider that stopped (its replay failed) or got to its end leaves.
            if r.feed.send(Ok((Arc::clone(&batch), seq))).await.is_ok() && seq < r.end {
                still.push(r);
            }
        }
        riders = still;
        if riders.is_empty() || seq >= end {
            if let Ok(reader) = reader {
                reader.close().await;
            }
            return;
        }
    }
}

/// Applies a batch; on a data error, applies its events one by one and skips (counts as dead
/// letters) the ones that fail, as the live runner did when it dead-lettered them.
#[allow(clippy::too_many_arguments)]
async fn apply_with_retry<P: Projection>(
    projection: &P,
    bus: &Bus,
    pool: &PgPool,
    target: &Target,
    checkpoint: StreamSeq,
    batch: &[Delivered],
    mut decoded: Option<Decoded<P::Item>>,
    mut known: Option<&mut HashMap<uuid::Uuid, i64>>,
) -> Result<StreamSeq, RunnerError> {
    let name = projection.name();
    let mut attempts = 0;
    loop {
        match apply_batch(
            projection,
            bus,
            pool,
            target,
            checkpoint,
            batch,
            decoded.take(),
            known.as_deref_mut(),
        )
        .await
        {
            Ok(_) => return Ok(batch.last().map_or(checkpoint, |d| d.seq)),
            Err(Failure::Data(reason)) if batch.len() > 1 => {
                warn!(projection = name, %reason, "batch failed on its data; applying one by one");
                let mut at = checkpoint;
                for d in batch {
                    at = Box::pin(apply_with_retry(
                        projection,
                        bus,
                        pool,
                        target,
                        at,
                        std::slice::from_ref(d),
                        None,
                        known.as_deref_mut(),
                    ))
                    .await?;
                }
                return Ok(at);
            }
            Err(Failure::Data(reason)) => {
                warn!(projection = name, seq = batch[0].seq.0, %reason, "skipping an event that cannot be applied");
                let mut tx = pool.begin().await?;
                let advance = Advance {
                    to: batch[0].seq,
                    applied: 0,
                    duplicates: 0,
                    dead_lettered: 1,
                };
                if !store::advance(&mut tx, &target.key, checkpoint, &advance).await? {
                    return Err(replay_error(
                        name,
                        "another replay of this projection is running",
                    ));
                }
                tx.commit().await?;
                return Ok(batch[0].seq);
            }
            Err(Failure::Moved) => {
                return Err(replay_error(
                    name,
                    "another replay of this projection is running",
                ));
            }
            Err(Failure::Transient(reason)) => {
                attempts += 1;
                if attempts > 10 {
                    return Err(replay_error(name, reason));
                }
                tokio::time::sleep(Duration::from_millis(200 * attempts)).await;
            }
        }
    }
}

/// Makes the generation live in one transaction; returns the name the old live schema got.
async fn switch(pool: &PgPool, live: &Target, next: &Target) -> Result<String, RunnerError> {
    let old = format!("{}_old_{}", live.schema, chrono::Utc::now().timestamp());
    let mut tx = pool.begin().await?;
    let next_cp = sqlx::query("SELECT * FROM kairos.checkpoints WHERE projection = $1 FOR UPDATE")
        .bind(&next.key)
        .fetch_one(&mut *tx)
        .await?;
    sqlx::query("SELECT 1 FROM kairos.checkpoints WHERE projection = $1 FOR UPDATE")
        .bind(&live.key)
        .execute(&mut *tx)
        .await?;
    for sql in [
        format!(
            "ALTER SCHEMA {} RENAME TO {}",
            quote(&live.schema),
            quote(&old)
        ),
        format!(
            "ALTER SCHEMA {} RENAME TO {}",
            quote(&next.schema),
            quote(&live.schema)
        ),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(
        "UPDATE kairos.checkpoints SET last_seq = $2, events_applied = $3, duplicates = $4,
                dead_lettered = $5, updated_at = now()
         WHERE projection = $1",
    )
    .bind(&live.key)
    .bind(next_cp.try_get::<i64, _>("last_seq")?)
    .bind(next_cp.try_get::<i64, _>("events_applied")?)
    .bind(next_cp.try_get::<i64, _>("duplicates")?)
    .bind(next_cp.try_get::<i64, _>("dead_lettered")?)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM kairos.checkpoints WHERE projection = $1")
        .bind(&next.key)
        .execute(&mut *tx)
        .await?;
    // Partitions built the old tables: each starts over where the new ones stand (a running
    // partition's next advance finds its checkpoint gone, and it re-reads it from this one).
    sqlx::query("DELETE FROM kairos.checkpoints WHERE starts_with(projection, $1 || '/')")
        .bind(&live.key)
        .execute(&mut *tx)
        .await?;
    for table in ["snapshots"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM kairos.{table} WHERE projection = $1"
        )))
        .bind(&live.key)
        .execute(&mut *tx)
        .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE kairos.{table} SET projection = $1 WHERE projection = $2"
        )))
        .bind(&live.key)
        .bind(&next.key)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query("SELECT pg_notify('kairos_checkpoint', $1)")
        .bind(format!(
            "{}:{}",
            live.key,
            next_cp.try_get::<i64, _>("last_seq")?
        ))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(seqs: &[u64]) -> Arc<Vec<Delivered>> {
        Arc::new(
            seqs.iter()
                .map(|&s| Delivered {
                    seq: StreamSeq(s),
                    subject: format!("k.events.llm.p{s}"),
                    stored_at: chrono::DateTime::UNIX_EPOCH,
                    payload: bytes::Bytes::new(),
                    pending: 0,
                })
                .collect(),
        )
    }

    fn seqs(part: &Part) -> Vec<u64> {
        part.iter().map(|d| d.seq.0).collect()
    }

    #[test]
    fn a_part_is_the_run_of_its_batch_within_its_bounds() {
        let all = batch(&[3, 4, 6, 7, 9]);
        let part = Part::within(Arc::clone(&all), 3, 7);
        assert_eq!(seqs(&part), [4, 6, 7]);
        assert!(Arc::ptr_eq(&part.all, &all), "shared, not copied");
        assert_eq!(
            seqs(&Part::within(Arc::clone(&all), 0, 100)),
            [3, 4, 6, 7, 9]
        );
        assert!(Part::within(Arc::clone(&all), 9, 100).is_empty());
        assert!(Part::within(Arc::clone(&all), 0, 2).is_empty());
        assert!(Part::within(Arc::clone(&all), 7, 5).is_empty());
        // Out of stream order, it is still exactly the messages within its bounds.
        let unordered = batch(&[6, 3, 9, 4]);
        assert_eq!(seqs(&Part::within(unordered, 3, 8)), [6, 4]);
    }
}
