//! Commands: decide against an aggregate's state as of the last event on its own subject, then
//! append with optimistic concurrency.
//!
//! An aggregate (a project's budget, the organisation's members and keys) is the fold of the
//! events on one subject. [`AggregateStore`] keeps that fold in memory, brought up to the
//! subject's last stored sequence (JetStream's last message by subject) when a command needs
//! it. [`AggregateStore::execute`] runs the command's decide function on that state and appends
//! the event it decides with `Nats-Expected-Last-Subject-Sequence`: if another writer (another
//! Kairos, or anything else appending to the subject) got there first, the server refuses, and
//! the command reads the newer events and decides again, a bounded number of times.
//!
//! Nothing waits for a projection, no database connection or lock is held, and the stream's
//! other subjects (the flood of LLM calls) are never read. Commands on one aggregate run one
//! at a time within a process (an async mutex: queued commands hold nothing else), so they do
//! not conflict with each other; processes conflict only with each other.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use kairos_bus::{Bus, BusError, ReadFrom};
use kairos_events::{Event, StreamSeq};
use tokio::sync::Mutex;

use crate::StoredEvent;

/// The fold of an aggregate's events.
pub trait Aggregate: Default + Send + Sync + 'static {
    /// Folds one event stored on the aggregate's subject, in stream order; events it has no use
    /// for (of other types) are passed over.
    fn fold(&mut self, event: &StoredEvent);
}

/// What a decide function concluded: the event to append (none: nothing to change), and what
/// the caller gets back.
pub struct Decision<T> {
    pub event: Option<Event>,
    pub value: T,
}

impl<T> Decision<T> {
    /// Append `event`, answer `value`.
    pub fn append(event: Event, value: T) -> Self {
        Self {
            event: Some(event),
            value,
        }
    }

    /// Append nothing, answer `value`.
    pub fn nothing(value: T) -> Self {
        Self { event: None, value }
    }
}

/// What a command did.
#[derive(Debug)]
pub struct Executed<T> {
    /// Where its event was stored (`None` when it decided to append nothing).
    pub seq: Option<StreamSeq>,
    pub value: T,
    /// Decisions taken: 1 without a conflict.
    pub attempts: u32,
}

/// Why a command did not append.
#[derive(Debug, thiserror::Error)]
pub enum CommandError<E> {
    /// The decide function refused (the command is invalid against the current state).
    #[error(transparent)]
    Rejected(E),
    /// Other writers kept changing the aggregate: every attempt conflicted.
    #[error("{subject} kept changing under the command ({attempts} attempts); try again")]
    Conflict { subject: String, attempts: u32 },
    #[error(transparent)]
    Bus(#[from] BusError),
}

struct Folded<A> {
    /// The stream sequence of the last message of the subject folded (0: none).
    seq: u64,
    loaded: bool,
    state: A,
}

/// An aggregate's state, folded from its subject, and the one place its commands append.
pub struct AggregateStore<A> {
    bus: Bus,
    /// The subject the aggregate's events are appended to.
    subject: String,
    /// Subjects an earlier layout stored its events under: folded at the first load, never
    /// appended to.
    legacy: Vec<String>,
    state: RwLock<Folded<A>>,
    /// One command at a time per process.
    turn: Mutex<()>,
    attempts: u32,
}

/// How long a read of the subject waits for a message the server said was there.
const READ_WAIT: Duration = Duration::from_secs(10);

impl<A: Aggregate> AggregateStore<A> {
    /// The store of the aggregate on `subject` (see [`AggregateStore::with_legacy`]); nothing is
    /// read until the first command or [`AggregateStore::catch_up`].
    pub fn new(bus: Bus, subject: String) -> Arc<Self> {
        Self::with_legacy(bus, subject, Vec::new())
    }

    /// As [`AggregateStore::new`], also folding what `legacy` subjects hold.
    pub fn with_legacy(bus: Bus, subject: String, legacy: Vec<String>) -> Arc<Self> {
        let store = Arc::new(Self {
            bus,
            subject,
            legacy,
            state: RwLock::new(Folded {
                seq: 0,
                loaded: false,
                state: A::default(),
            }),
            turn: Mutex::new(()),
            attempts: 5,
        });
        // Shown from the start, at 0, rather than after the first conflict.
        metrics::counter!("kairos_command_conflicts_total", "aggregate" => store.aggregate().to_owned())
            .increment(0);
        store
    }

    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Reads the state as folded so far (no I/O; see [`AggregateStore::catch_up`]).
    pub fn read<R>(&self, f: impl FnOnce(&A) -> R) -> R {
        let folded = self
            .state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&folded.state)
    }

    /// The sequence the state reflects: the last message of the subject folded.
    pub fn seq(&self) -> u64 {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .seq
    }

    /// Brings the state up to the last message stored on the subject; its sequence.
    pub async fn catch_up(&self) -> Result<u64, BusError> {
        let last = self.bus.last_seq_on(&self.subject).await?;
        let (from, loaded) = {
            let f = self
                .state
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            (f.seq, f.loaded)
        };
        let mut events = Vec::new();
        if !loaded {
            for legacy in &self.legacy {
                let upto = self.bus.last_seq_on(legacy).await?;
                events.extend(self.read_subject(legacy, 1, upto).await?);
            }
        }
        if last > from {
            events.extend(self.read_subject(&self.subject, from + 1, last).await?);
        }
        events.sort_by_key(|e| e.seq);
        let mut f = self
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A concurrent catch-up (the follower's and a command's) may have folded some already.
        for e in &events {
            if e.seq.0 > f.seq {
                f.state.fold(e);
                f.seq = e.seq.0;
            }
        }
        f.seq = f.seq.max(last);
        f.loaded = true;
        Ok(f.seq)
    }

    /// The events stored on `subject` from `from` to `to`, inclusive. Messages that are not
    /// valid events (a projection dead-letters them) are passed over.
    async fn read_subject(
        &self,
        subject: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<StoredEvent>, BusError> {
        let mut out = Vec::new();
        if to < from {
            return Ok(out);
        }
        let mut reader = self
            .bus
            .read(ReadFrom::Seq(StreamSeq(from)), Some(subject.to_owned()))
            .await?;
        if reader.pending_at_start() == 0 {
            return Ok(out);
        }
        let door = &crate::Door::of(&self.bus);
        while let Some(m) = reader.next(READ_WAIT).await? {
            if m.seq.0 > to {
                break;
            }
            if let Ok(e) = crate::stored_event(door, m.seq, &m.subject, m.stored_at, &m.payload) {
                out.push(e);
            }
            if m.seq.0 >= to || m.pending == 0 {
                break;
            }
        }
        Ok(out)
    }

    /// Folds `event`, appended at `seq`, if the state has not seen it.
    fn fold_appended(&self, event: &Event, seq: StreamSeq) {
        let mut f = self
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seq.0 > f.seq {
            f.state.fold(&StoredEvent {
                seq,
                subject: self.subject.clone(),
                stored_at: event.time().unwrap_or_else(chrono::Utc::now),
                event: event.clone(),
                // This process appended it: signed if it signs.
                vouched: true,
            });
            f.seq = seq.0;
        }
    }

    /// Decides against the current state and appends what `decide` concludes, deciding again
    /// (on the newer state) when another writer appended first.
    pub async fn execute<T, E>(
        &self,
        decide: impl FnMut(&A) -> Result<Decision<T>, E>,
    ) -> Result<Executed<T>, CommandError<E>> {
        let result = self.decide_and_append(decide).await;
        let outcome = match &result {
            Ok(done) if done.seq.is_some() => "appended",
            Ok(_) => "unchanged",
            Err(CommandError::Rejected(_)) => "rejected",
            Err(CommandError::Conflict { .. }) => "conflict",
            Err(CommandError::Bus(_)) => "failed",
        };
        crate::metrics::command(self.aggregate(), outcome);
        result
    }

    /// The aggregate's kind, for metrics: its subject's category (`access`, `budget`).
    fn aggregate(&self) -> &str {
        self.subject.split('.').rev().nth(1).unwrap_or("")
    }

    async fn decide_and_append<T, E>(
        &self,
        mut decide: impl FnMut(&A) -> Result<Decision<T>, E>,
    ) -> Result<Executed<T>, CommandError<E>> {
        let _turn = self.turn.lock().await;
        let loaded = self
            .state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .loaded;
        if !loaded {
            self.catch_up().await?;
        }
        // A refusal is only as good as the state it was decided on: the first one is decided
        // again after reading what the subject holds beyond it (another process may have
        // created what the command names, or moved the version it expects).
        let mut verified = false;
        for attempt in 1..=self.attempts {
            let (expected, decision) = {
                let f = self
                    .state
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                (f.seq, decide(&f.state))
            };
            let decision = match decision {
                Ok(d) => d,
                Err(e) if verified => return Err(CommandError::Rejected(e)),
                Err(e) => {
                    verified = true;
                    if self.catch_up().await? == expected {
                        // Nothing new: the refusal stands on the latest state.
                        return Err(CommandError::Rejected(e));
                    }
                    continue;
                }
            };
            let Decision { event, value } = decision;
            let Some(event) = event else {
                return Ok(Executed {
                    seq: None,
                    value,
                    attempts: attempt,
                });
            };
            match self.bus.publish_if_last(&event, expected).await {
                Ok(receipt) if !receipt.duplicate => {
                    self.fold_appended(&event, receipt.seq);
                    return Ok(Executed {
                        seq: Some(receipt.seq),
                        value,
                        attempts: attempt,
                    });
                }
                // The same event (same id) was stored before: it is in the stream, though not
                // necessarily folded here yet.
                Ok(receipt) => {
                    self.catch_up().await?;
                    return Ok(Executed {
                        seq: Some(receipt.seq),
                        value,
                        attempts: attempt,
                    });
                }
                Err(BusError::Conflict { .. }) => {
                    crate::metrics::command_conflict(self.aggregate());
                    tracing::debug!(subject = %self.subject, attempt, "command conflicted; deciding again");
                    // Writers that met head on would meet again: a random pause of up to
                    // 2^attempt ms sets them apart (the clock's nanoseconds are random enough).
                    let nanos = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.subsec_nanos());
                    let pause = u64::from(nanos) % (1u64 << attempt.min(6));
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    self.catch_up().await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(CommandError::Conflict {
            subject: self.subject.clone(),
            attempts: self.attempts,
        })
    }

    /// Folds what other writers append to the subject as it arrives, so reads of the state
    /// (say, authentication) see them within moments; runs until the bus closes.
    pub async fn follow(self: Arc<Self>) {
        loop {
            if let Err(e) = self.follow_once().await {
                tracing::warn!(subject = %self.subject, error = %e, "following the aggregate failed; retrying");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn follow_once(&self) -> Result<(), BusError> {
        self.catch_up().await?;
        let mut reader = self
            .bus
            .read(
                ReadFrom::Seq(StreamSeq(self.seq() + 1)),
                Some(self.subject.clone()),
            )
            .await?;
        let door = crate::Door::of(&self.bus);
        loop {
            let Some(m) = reader.next(Duration::from_secs(60)).await? else {
                continue;
            };
            let event = crate::stored_event(&door, m.seq, &m.subject, m.stored_at, &m.payload);
            let mut f = self
                .state
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if m.seq.0 > f.seq {
                // A message that is no valid event is passed over, as the projections
                // dead-letter it; the sequence moves past it all the same.
                if let Ok(e) = event {
                    f.state.fold(&e);
                }
                f.seq = m.seq.0;
            }
        }
    }
}
