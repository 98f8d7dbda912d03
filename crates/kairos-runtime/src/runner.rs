//! The loop that feeds one projection from its durable consumer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull::Config as PullConfig;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::{AckKind, Message};
use futures_util::StreamExt;
use kairos_bus::{Bus, BusError};
use kairos_events::{Event, StreamSeq};
use serde::Deserialize;
use sqlx::PgPool;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::Projection;
use crate::apply::{Decoded, Delivered, Failure, Target, apply_batch, decode, delivered};
use crate::partition::Partition;
use crate::store::{self, Advance};

/// How long an immediate pull may go without its next message. async-nats bounds a pull only
/// when it has an expiry; a no-wait pull sent as nats-server went away is never answered, and
/// the runner waited on it forever (6 of 8 projections stopped after a NATS restart under
/// load, found by `tests/restart.rs`). A live server streams a pull's messages without pauses.
const FETCH_STALL: Duration = Duration::from_secs(5);

/// How a runner consumes. Defaults suit production; tests shorten `ack_wait`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RunnerConfig {
    /// Most events applied in one transaction.
    pub batch_size: usize,
    /// How long JetStream waits for an ack before redelivering, in milliseconds.
    pub ack_wait_ms: u64,
    /// How long one idle pull waits for the next event, in milliseconds.
    pub idle_wait_ms: u64,
    /// Failures of the same data error before the batch is split and, event by event, the one
    /// that keeps failing is dead-lettered.
    pub max_attempts: u32,
    /// Stream sequences between snapshots used by point-in-time reads (0: no snapshots).
    pub snapshot_every: u64,
    /// Identities a replay into a new generation keeps in memory at most (see
    /// [`crate::ReplayOptions::identities_in_memory`]).
    pub replay_identities_in_memory: usize,
    /// Partitions a partitionable projection is split into, shared by every process running
    /// it (see [`crate::partition`]); 1: one active runner, the others standing by.
    pub partitions: u32,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            batch_size: 10_000,
            ack_wait_ms: 30_000,
            idle_wait_ms: 5_000,
            max_attempts: 3,
            snapshot_every: crate::apply::DEFAULT_SNAPSHOT_EVERY,
            replay_identities_in_memory: crate::replay::DEFAULT_IDENTITIES_IN_MEMORY,
            partitions: 1,
        }
    }
}

impl RunnerConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=10_000).contains(&self.batch_size) {
            return Err("projections.batch_size must be between 1 and 10000".into());
        }
        if self.ack_wait_ms < 500 {
            return Err("projections.ack_wait_ms must be at least 500".into());
        }
        if !(10..=60_000).contains(&self.idle_wait_ms) {
            return Err("projections.idle_wait_ms must be between 10 and 60000".into());
        }
        if !(1..=crate::partition::MAX_PARTITIONS).contains(&self.partitions) {
            return Err(format!(
                "projections.partitions must be between 1 and {}",
                crate::partition::MAX_PARTITIONS
            ));
        }
        if self.max_attempts == 0 {
            return Err("projections.max_attempts must be at least 1".into());
        }
        if self.replay_identities_in_memory > 100_000_000 {
            return Err(
                "projections.replay_identities_in_memory must be at most 100000000 (~3.5 GB)"
                    .into(),
            );
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("projection database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("JetStream consumer {consumer}: {message}")]
    Consumer { consumer: String, message: String },
    #[error("replay of {projection}: {message}")]
    Replay { projection: String, message: String },
}

/// Runs one projection: `Runner::new(projection, bus, pool, config).run().await`.
pub struct Runner<P: Projection> {
    projection: Arc<P>,
    bus: Bus,
    pool: PgPool,
    config: RunnerConfig,
    target: Target,
    /// The durable consumer's name: the projection's, or its partition's.
    consumer_name: String,
}

/// Messages pulled ahead, with what decoding them gave (if it ran).
type Fetched<I> = (Vec<Message>, Option<Decoded<I>>);

#[derive(Debug, PartialEq, Eq)]
enum Handled {
    Done,
    /// Nothing applicable: the next events after the checkpoint were not delivered.
    Gap,
}

struct State {
    checkpoint: StreamSeq,
    failures: u32,
    /// While set, batches are one event long, until the checkpoint passes this sequence.
    isolate_until: Option<StreamSeq>,
    last_lag_report: Instant,
}

impl<P: Projection> Runner<P> {
    pub fn new(projection: P, bus: Bus, pool: PgPool, config: RunnerConfig) -> Self {
        let mut target = Target::live(&projection);
        target.snapshot_every = config.snapshot_every;
        Self {
            consumer_name: projection.name().to_owned(),
            projection: Arc::new(projection),
            bus,
            pool,
            config,
            target,
        }
    }

    /// The runner of one partition (see [`crate::partition`]). A partition keeps no snapshots:
    /// its tables hold the other partitions' rows at other positions.
    pub(crate) fn partitioned(
        projection: Arc<P>,
        bus: Bus,
        pool: PgPool,
        config: RunnerConfig,
        partition: Partition,
    ) -> Self {
        let mut target = Target::live(projection.as_ref());
        target.key = partition.key(projection.name());
        target.partition = Some(partition);
        target.snapshot_every = 0;
        Self {
            consumer_name: partition.consumer(projection.name()),
            projection,
            bus,
            pool,
            config,
            target,
        }
    }

    /// Re-reads this runner's checkpoint (a partition's starts where its projection stands).
    async fn reread_checkpoint(&self) -> Result<StreamSeq, sqlx::Error> {
        match self.target.partition {
            Some(_) => {
                store::ensure_checkpoint_from(&self.pool, &self.target.key, self.name()).await
            }
            None => store::ensure_checkpoint(&self.pool, self.name()).await,
        }
    }

    /// After a partition moved its checkpoint: raise the projection's to the lowest partition's.
    async fn raise_base(&self) {
        if let Some(p) = self.target.partition
            && let Err(e) = store::raise_base(&self.pool, self.name(), p.count).await
        {
            debug!(projection = self.name(), error = %e, "could not raise the checkpoint; the next batch will");
        }
    }

    fn name(&self) -> &'static str {
        self.projection.name()
    }

    fn consumer_error(&self, e: impl std::fmt::Display) -> RunnerError {
        RunnerError::Consumer {
            consumer: self.name().to_owned(),
            message: e.to_string(),
        }
    }

    /// Consumes until the task is dropped or a fatal error occurs. Transient NATS and database
    /// failures are retried with backoff, not returned. With `projections.partitions` above 1,
    /// a partitionable projection runs as a member sharing the partitions with the other
    /// processes running it (see [`crate::partition`]).
    pub async fn run(self) -> Result<(), RunnerError> {
        let name = self.name();
        if self.config.partitions > 1 {
            if self.projection.partitionable() {
                return crate::partition::run_member(
                    self.projection,
                    self.bus,
                    self.pool,
                    self.config.clone(),
                    self.config.partitions,
                )
                .await;
            }
            info!(
                projection = name,
                "projections.partitions is set, but this projection folds across projects: one runner"
            );
        }
        self.refuse_if_partitioned().await?;
        // One active runner per projection; others wait here as hot standbys.
        let mut lock = self.pool.acquire().await?.detach();
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
            .bind(format!("kairos.projection.{name}"))
            .fetch_one(&mut lock)
            .await?;
        if !got {
            info!(projection = name, "another runner is active; standing by");
            sqlx::query("SELECT pg_advisory_lock(hashtextextended($1, 0))")
                .bind(format!("kairos.projection.{name}"))
                .execute(&mut lock)
                .await?;
            // Partitioned members may have run while this one stood by.
            self.refuse_if_partitioned().await?;
        }
        self.consume(false).await
    }

    /// Partitioned runs left their checkpoints: one runner starting from the projection's would
    /// fold some events twice (the partitions are at different places).
    async fn refuse_if_partitioned(&self) -> Result<(), RunnerError> {
        let name = self.name();
        match store::partition_keys(&self.pool, name).await?.first() {
            Some(k) => Err(self.consumer_error(format!(
                "{name} runs partitioned (checkpoint {k}): set projections.partitions as its other \
                 runners have it, or stop them and run `kairos replay {name}` to go back to one runner"
            ))),
            None => Ok(()),
        }
    }

    /// The loop itself, once this runner may write: `fresh` recreates the durable consumer at
    /// the checkpoint (a partition taken over from another process: what that one had pulled
    /// would otherwise wait for its ack deadline).
    pub(crate) async fn consume(self, fresh: bool) -> Result<(), RunnerError> {
        let name = self.name();
        let checkpoint = self.reread_checkpoint().await?;
        store::ensure_applied_table(&self.pool, &self.target.schema).await?;
        info!(
            projection = name,
            key = %self.target.key,
            checkpoint = checkpoint.0,
            "projection running"
        );
        if let Err(e) = self.drain_outbox().await {
            warn!(projection = name, error = %e, "outbox not drained yet; will retry after the next batch");
        }
        if fresh {
            self.delete_consumer().await;
        }
        let mut consumer = self.consumer(checkpoint).await?;
        let mut state = State {
            checkpoint,
            failures: 0,
            isolate_until: None,
            last_lag_report: Instant::now(),
        };
        let mut backoff = Duration::from_millis(100);
        let mut prefetched: Option<Fetched<P::Item>> = None;
        loop {
            let max = if state.isolate_until.is_some() {
                1
            } else {
                self.config.batch_size
            };
            let fetched = match prefetched.take() {
                Some((msgs, decoded)) if !msgs.is_empty() => Ok((msgs, decoded)),
                _ => self.next_batch(&consumer, max).await.map(|m| (m, None)),
            };
            let (msgs, decoded) = match fetched {
                Ok(fetched) => {
                    backoff = Duration::from_millis(100);
                    fetched
                }
                Err(e) => {
                    warn!(projection = name, error = %e, "pull failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            if msgs.is_empty() {
                continue;
            }
            // While this batch is applied, the next one is pulled and, chunk by chunk as it
            // arrives, decoded on other threads: NATS, PostgreSQL and the decoding work at the
            // same time. A prefetched batch after a failed one arrives out of order and is
            // handed back (nak) by the gap check, so order is never at risk; what was decoded
            // ahead is used only for the messages applied.
            let isolating = state.isolate_until.is_some();
            let prefetch = async {
                if isolating {
                    return None;
                }
                self.fetch_decoded(&consumer, max).await
            };
            let (handled, next) = tokio::join!(self.handle(&mut state, msgs, decoded), prefetch);
            prefetched = next;
            if handled == Handled::Gap {
                // Events after the checkpoint are missing. Usually they are out for redelivery;
                // but when the consumer already acknowledged past the checkpoint (the tables
                // were rebuilt or restored behind it) they never come back: start over at the
                // checkpoint.
                let mut c = consumer.clone();
                let ahead = c
                    .info()
                    .await
                    .is_ok_and(|i| i.ack_floor.stream_sequence > state.checkpoint.0);
                if ahead {
                    match self.consumer(state.checkpoint).await {
                        Ok(c) => consumer = c,
                        Err(e) => {
                            warn!(projection = name, error = %e, "cannot recreate the consumer")
                        }
                    }
                }
            }
            if state.last_lag_report.elapsed() > Duration::from_secs(10) {
                state.last_lag_report = Instant::now();
                let mut c = consumer.clone();
                if let Ok(info) = c.info().await {
                    info!(
                        projection = name,
                        checkpoint = state.checkpoint.0,
                        lag = info.num_pending + info.num_ack_pending as u64,
                        "progress"
                    );
                }
            }
        }
    }

    /// The projection's durable consumer, (re)created at the PostgreSQL checkpoint when the
    /// consumer is missing or ahead of it (tables restored or dropped for a rebuild).
    async fn consumer(&self, checkpoint: StreamSeq) -> Result<PullConsumer, RunnerError> {
        let name = self.consumer_name.as_str();
        let stream = self
            .bus
            .jetstream()
            .get_stream(self.bus.stream_name())
            .await
            .map_err(|e| self.consumer_error(e))?;
        if let Ok(mut existing) = stream.get_consumer::<PullConfig>(name).await {
            let info = existing.info().await.map_err(|e| self.consumer_error(e))?;
            if info.ack_floor.stream_sequence <= checkpoint.0 {
                return Ok(existing);
            }
            warn!(
                projection = name,
                ack_floor = info.ack_floor.stream_sequence,
                checkpoint = checkpoint.0,
                "consumer is ahead of the checkpoint; recreating it at the checkpoint"
            );
            stream
                .delete_consumer(name)
                .await
                .map_err(|e| self.consumer_error(e))?;
        }
        let config = PullConfig {
            durable_name: Some(name.to_owned()),
            description: Some(format!("Kairos projection {}", self.target.key)),
            deliver_policy: if checkpoint.0 == 0 {
                DeliverPolicy::All
            } else {
                DeliverPolicy::ByStartSequence {
                    start_sequence: checkpoint.0 + 1,
                }
            },
            ack_policy: AckPolicy::All,
            ack_wait: Duration::from_millis(self.config.ack_wait_ms),
            max_deliver: -1,
            // No filter: the events stream holds only `<prefix>.events.>` (Kairos creates it
            // so), and nats-server delivers a filtered consumer's messages more slowly — 12-14%
            // in `kairos bench` with a filter equal to the stream's subject (AckAll, pulls of
            // 5,000). A consumer created by an earlier version keeps its filter, to the same
            // effect.
            filter_subject: String::new(),
            max_ack_pending: 50_000,
            ..Default::default()
        };
        stream
            .get_or_create_consumer(name, config)
            .await
            .map_err(|e| self.consumer_error(e))
    }

    /// Deletes the durable consumer, if there is one.
    async fn delete_consumer(&self) {
        if let Ok(stream) = self
            .bus
            .jetstream()
            .get_stream(self.bus.stream_name())
            .await
        {
            let _ = stream.delete_consumer(&self.consumer_name).await;
        }
    }

    /// What is available now (up to `max`), or, when nothing is, the next event as soon as it
    /// arrives followed by whatever came with it.
    async fn next_batch(
        &self,
        consumer: &PullConsumer,
        max: usize,
    ) -> Result<Vec<Message>, RunnerError> {
        let mut msgs = self.fetch_now(consumer, max).await?;
        if msgs.is_empty() {
            let mut waiting = consumer
                .batch()
                .max_messages(1)
                .expires(Duration::from_millis(self.config.idle_wait_ms))
                .messages()
                .await
                .map_err(|e| self.consumer_error(e))?;
            while let Some(m) = waiting.next().await {
                msgs.push(m.map_err(|e| self.consumer_error(e))?);
            }
            if !msgs.is_empty() && max > 1 {
                msgs.extend(self.fetch_now(consumer, max - 1).await?);
            }
        }
        Ok(msgs)
    }

    /// What is available now (up to `max`), decoded: chunks are decoded on other threads while
    /// the rest is still arriving. `None` when the pull failed (nothing is lost: what was not
    /// acknowledged comes back).
    async fn fetch_decoded(&self, consumer: &PullConsumer, max: usize) -> Option<Fetched<P::Item>> {
        const CHUNK: usize = 250;
        let mut fetched = consumer.fetch().max_messages(max).messages().await.ok()?;
        // A pull that fails half-way keeps what it received, and a chunk whose decoding failed
        // is decoded again when its batch is applied: nothing received is dropped unanswered.
        let door = crate::Door::of(&self.bus);
        let partition = self.target.partition;
        let spawn = |chunk: Vec<Delivered>| {
            let (projection, door) = (Arc::clone(&self.projection), door.clone());
            tokio::task::spawn_blocking(move || {
                decode(projection.as_ref(), &door, partition, &chunk)
            })
        };
        let mut msgs = Vec::with_capacity(max);
        let mut chunk = Vec::with_capacity(CHUNK.min(max));
        let mut decoding = Vec::new();
        while let Ok(Some(Ok(m))) = tokio::time::timeout(FETCH_STALL, fetched.next()).await {
            chunk.extend(delivered(&m));
            msgs.push(m);
            if chunk.len() == CHUNK {
                decoding.push(spawn(std::mem::replace(
                    &mut chunk,
                    Vec::with_capacity(CHUNK),
                )));
            }
        }
        if !chunk.is_empty() {
            decoding.push(spawn(chunk));
        }
        let mut decoded: Option<Decoded<P::Item>> = None;
        for d in decoding {
            let Ok(d) = d.await else { continue };
            match &mut decoded {
                Some(all) => all.extend(d),
                None => decoded = Some(d),
            }
        }
        Some((msgs, decoded))
    }

    async fn fetch_now(
        &self,
        consumer: &PullConsumer,
        max: usize,
    ) -> Result<Vec<Message>, RunnerError> {
        let mut fetched = consumer
            .fetch()
            .max_messages(max)
            .messages()
            .await
            .map_err(|e| self.consumer_error(e))?;
        let mut msgs = Vec::new();
        loop {
            match tokio::time::timeout(FETCH_STALL, fetched.next()).await {
                Ok(Some(m)) => msgs.push(m.map_err(|e| self.consumer_error(e))?),
                Ok(None) => break,
                // What arrived is applied; the rest comes back after its ack deadline.
                Err(_) if !msgs.is_empty() => break,
                Err(_) => {
                    return Err(self.consumer_error(format!(
                        "the pull got no answer within {} s",
                        FETCH_STALL.as_secs()
                    )));
                }
            }
        }
        Ok(msgs)
    }

    async fn handle(
        &self,
        state: &mut State,
        msgs: Vec<Message>,
        decoded: Option<Decoded<P::Item>>,
    ) -> Handled {
        let name = self.name();
        let mut expected = state.checkpoint.0 + 1;
        let (mut batch, mut later, mut stale) = (Vec::new(), Vec::new(), None);
        for m in msgs {
            let Ok(info) = m.info() else { continue };
            let seq = info.stream_sequence;
            if seq <= state.checkpoint.0 {
                stale = Some(m); // applied before a crash or redelivered: ack, don't apply
            } else if seq == expected {
                expected += 1;
                batch.push(m);
            } else {
                later.push(m);
            }
        }
        if let Some(m) = stale {
            let _ = m.ack().await;
        }
        let kept_from = if batch.is_empty() && !later.is_empty() {
            self.history_starts_after(state).await
        } else {
            None
        };
        if let Some(kept_from) = kept_from {
            // Retention removed events the projection never saw: start at the oldest one kept
            // (not at the first one delivered here: the events between the two may still be
            // out for redelivery, and they come back as usual).
            let first = later
                .iter()
                .filter_map(|m| m.info().ok().map(|i| i.stream_sequence))
                .min()
                .map_or(kept_from, |delivered| delivered.min(kept_from));
            warn!(
                projection = name,
                checkpoint = state.checkpoint.0,
                first,
                "events before the stream's first sequence are gone; continuing from it"
            );
            let skipped = Advance {
                to: StreamSeq(first.saturating_sub(1)),
                applied: 0,
                duplicates: 0,
                dead_lettered: 0,
            };
            // Recorded, not only remembered: the next batch's fenced advance starts from it.
            if let Err(e) = self
                .advance_alone(state, &skipped, || async { Ok(()) })
                .await
            {
                warn!(projection = name, error = %e, "could not record the jump; will retry");
                for m in later {
                    let _ = m.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
                }
                return Handled::Done;
            }
            return Box::pin(self.handle(state, later, decoded)).await;
        }
        let gap = batch.is_empty() && !later.is_empty();
        for m in later {
            // A gap: an earlier event is still out for redelivery. Apply in order or not at all.
            let _ = m
                .ack_with(AckKind::Nak(Some(Duration::from_millis(250))))
                .await;
        }
        if batch.is_empty() {
            return if gap { Handled::Gap } else { Handled::Done };
        }
        let first_seq = state.checkpoint.0 + 1;
        let last_seq = expected - 1;
        let span = info_span!(
            "batch",
            projection = name,
            first_seq,
            last_seq,
            events = batch.len()
        );
        let started = Instant::now();
        let outcome = self.apply(state, &batch, decoded).instrument(span).await;
        match outcome {
            Ok(emitted) => {
                crate::metrics::batch_applied(name, batch.len(), started.elapsed());
                state.checkpoint = StreamSeq(last_seq);
                state.failures = 0;
                if state.isolate_until.is_some_and(|u| u.0 <= last_seq) {
                    state.isolate_until = None;
                }
                if let Some(last) = batch.last()
                    && let Err(e) = last.ack().await
                {
                    // Harmless: the redelivery is skipped by sequence.
                    debug!(projection = name, error = %e, "ack failed");
                }
                if emitted && let Err(e) = self.drain_outbox().await {
                    warn!(projection = name, error = %e, "outbox publish failed; will retry");
                }
                self.raise_base().await;
            }
            Err(failure) => self.recover(state, batch, failure).await,
        }
        Handled::Done
    }

    /// The stream's first sequence, when events right after the checkpoint are no longer kept.
    async fn history_starts_after(&self, state: &State) -> Option<u64> {
        let mut stream = self
            .bus
            .jetstream()
            .get_stream(self.bus.stream_name())
            .await
            .ok()?;
        let first = stream.info().await.ok()?.state.first_sequence;
        (first > state.checkpoint.0 + 1).then_some(first)
    }

    async fn recover(&self, state: &mut State, batch: Vec<Message>, failure: Failure) {
        let name = self.name();
        match failure {
            Failure::Moved => {
                if let Ok(seq) = self.reread_checkpoint().await {
                    warn!(
                        projection = name,
                        checkpoint = seq.0,
                        "checkpoint moved by another writer; resynchronising"
                    );
                    state.checkpoint = seq;
                }
            }
            Failure::Transient(reason) => {
                state.failures = state.failures.saturating_add(1);
                error!(projection = name, failures = state.failures, %reason, "batch failed; will retry");
            }
            Failure::Data(reason) => {
                state.failures = state.failures.saturating_add(1);
                error!(projection = name, failures = state.failures, %reason, "batch failed on its data");
                if state.failures >= self.config.max_attempts {
                    if batch.len() > 1 {
                        let last = batch
                            .last()
                            .and_then(|m| m.info().ok())
                            .map_or(0, |i| i.stream_sequence);
                        warn!(
                            projection = name,
                            until = last,
                            "isolating events one by one to find the one that fails"
                        );
                        state.isolate_until = Some(StreamSeq(last));
                        state.failures = 0;
                    } else if let Some(m) = batch.first() {
                        match self.dead_letter_alone(state, m, &reason).await {
                            Ok(true) => {
                                state.failures = 0;
                                let _ = m.ack().await;
                                return;
                            }
                            Ok(false) => {
                                // Another writer moved the checkpoint: nothing was published.
                                state.failures = 0;
                                let _ = m.ack_with(AckKind::Nak(None)).await;
                                return;
                            }
                            Err(e) => {
                                error!(projection = name, error = %e, "could not dead-letter")
                            }
                        }
                    }
                }
            }
        }
        let backoff = Duration::from_millis(100 * 2u64.pow(state.failures.min(6)));
        tokio::time::sleep(backoff.min(Duration::from_secs(5))).await;
        for m in batch {
            let _ = m.ack_with(AckKind::Nak(None)).await;
        }
    }

    /// Applies one contiguous batch; returns whether events were emitted to the outbox.
    async fn apply(
        &self,
        state: &State,
        batch: &[Message],
        decoded: Option<Decoded<P::Item>>,
    ) -> Result<bool, Failure> {
        let delivered: Vec<Delivered> = batch.iter().filter_map(delivered).collect();
        apply_batch(
            self.projection.as_ref(),
            &self.bus,
            &self.pool,
            &self.target,
            state.checkpoint,
            &delivered,
            decoded,
            None,
        )
        .await
    }

    /// The single event at the checkpoint keeps failing on its data: dead-letter it and move on.
    /// `false` when another writer had moved the checkpoint (then nothing is published).
    async fn dead_letter_alone(
        &self,
        state: &mut State,
        m: &Message,
        reason: &str,
    ) -> Result<bool, RunnerError> {
        let name = self.name();
        let seq = StreamSeq(
            m.info()
                .map_err(|e| self.consumer_error(e))?
                .stream_sequence,
        );
        let advance = Advance {
            to: seq,
            applied: 0,
            duplicates: 0,
            dead_lettered: 1,
        };
        // Published inside the transaction that moves the checkpoint, after the fence held:
        // a commit that fails after it leaves a second copy with the same message id, which
        // JetStream drops within its duplicate window.
        let moved = self
            .advance_alone(state, &advance, || async {
                self.bus
                    .dead_letter(
                        name,
                        &m.subject,
                        seq,
                        m.payload.clone(),
                        "apply_failed",
                        reason,
                    )
                    .await
                    .map(|_| ())
            })
            .await?;
        if moved {
            warn!(
                projection = name,
                seq = seq.0,
                reason,
                "event kept failing; dead-lettered"
            );
        }
        Ok(moved)
    }

    /// Moves the checkpoint without folding anything, running `before_commit` once the fence
    /// held. `false` (and the checkpoint re-read) when another writer had moved it.
    async fn advance_alone<F, Fut>(
        &self,
        state: &mut State,
        advance: &Advance,
        before_commit: F,
    ) -> Result<bool, RunnerError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(), BusError>>,
    {
        let name = self.name();
        let mut tx = crate::apply::begin(&self.pool, &self.target, name).await?;
        if !store::advance(&mut tx, &self.target.key, state.checkpoint, advance).await? {
            drop(tx);
            state.checkpoint = self.reread_checkpoint().await?;
            warn!(
                projection = name,
                checkpoint = state.checkpoint.0,
                "checkpoint moved by another writer; resynchronising"
            );
            return Ok(false);
        }
        before_commit().await?;
        tx.commit().await?;
        state.checkpoint = advance.to;
        self.raise_base().await;
        Ok(true)
    }

    /// Publishes what the projection emitted, oldest first, deleting each row once acked.
    async fn drain_outbox(&self) -> Result<(), RunnerError> {
        loop {
            let rows = store::pending_outbox(&self.pool, self.name()).await?;
            if rows.is_empty() {
                return Ok(());
            }
            let mut ids = Vec::with_capacity(rows.len());
            let mut events = Vec::with_capacity(rows.len());
            for (id, bytes) in rows {
                ids.push(id);
                match Event::from_slice(&bytes) {
                    Ok(e) => events.push(e),
                    Err(e) => {
                        error!(projection = self.name(), outbox_id = id, error = %e, "dropping an invalid outbox event")
                    }
                }
            }
            for result in self.bus.publish_events(&events).await {
                result?;
            }
            store::delete_outbox(&self.pool, &ids).await?;
        }
    }
}
