//! The Kairos projection runtime.
//!
//! A projection is a fold from events to PostgreSQL tables. It implements [`Projection`]: decode
//! an event into what it folds (pure, no I/O), and apply a batch of those inside a transaction.
//! The runtime supplies everything else, once, for every projection:
//!
//! - a durable JetStream pull consumer per projection, applied strictly in stream order;
//! - batch apply and checkpoint in one PostgreSQL transaction, then the ack (effectively-once);
//! - dedupe of CloudEvent identities (`source` + `id`) that outlives JetStream's duplicate window;
//! - a dead-letter subject (`<prefix>.dlq.<projection>`) for events that fail validation or keep
//!   failing, so one bad event never blocks the ones behind it;
//! - an outbox for events a projection emits, published after commit;
//! - one active consumer per projection (a PostgreSQL advisory lock), so extra processes stand by
//!   instead of double counting; or, for a projection whose projects fold independently,
//!   partitions shared by every process running it ([`partition`]);
//! - [`CheckpointWatch`] so a reader can wait until a projection reached a stream sequence.
//!
//! It is not a place for projection logic: nothing here knows what a budget is.

mod apply;
mod command;
mod dynamic;
mod history;
pub mod metrics;
mod migrate;
pub mod partition;
mod replay;
mod runner;
mod store;
mod watch;

use std::future::Future;

use chrono::{DateTime, Utc};
use kairos_events::{Event, StreamSeq};

pub use apply::{Delivered, Target, writer_lock};
pub use command::{Aggregate, AggregateStore, CommandError, Decision, Executed, Grouped};
pub use dynamic::AnyProjection;
pub use history::{
    AsOfSpan, Decoded, HistoryError, SpanItems, StreamDecoder, as_of_span, first_applied,
    items_between, seq_at_time, snapshot_at,
};
pub use migrate::{MigrationError, RUNTIME_MIGRATIONS, migrate, module_table};
pub use partition::{Partition, partition_of};
pub use replay::{Progress, ReplayOptions, ReplayReport, Seat, replay, shared_read};
pub use runner::{Runner, RunnerConfig, RunnerError};

pub use store::{Checkpoint, checkpoint, checkpoints};
pub use watch::{CheckpointWatch, WaitError};

/// An event as it sits on the stream.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub seq: StreamSeq,
    pub subject: String,
    /// When JetStream stored it: the fallback for events without `time`.
    pub stored_at: DateTime<Utc>,
    pub event: Event,
    /// Whether what it says in Kairos' name is Kairos': false for an event under a `kairos/`
    /// source without Kairos' signature (a producer allowed to publish its type claiming to be
    /// Kairos), true otherwise, and always true where no signing key is set.
    pub vouched: bool,
}

impl StoredEvent {
    /// When the event happened: its `time`, else when the stream stored it. Deterministic on
    /// replay, unlike the wall clock.
    pub fn occurred_at(&self) -> DateTime<Utc> {
        self.event.time().unwrap_or(self.stored_at)
    }
}

/// Why a projection refuses one event: it goes to the dead-letter subject with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {reason}")]
pub struct Rejection {
    pub code: &'static str,
    pub reason: String,
}

impl From<kairos_events::EventError> for Rejection {
    fn from(e: kairos_events::EventError) -> Self {
        Self {
            code: e.code,
            reason: e.to_string(),
        }
    }
}

/// A fold from events into PostgreSQL tables.
///
/// The runtime guarantees `apply` sees each event at most once (by stream sequence and by
/// CloudEvent identity), in stream order, inside the transaction that also moves the checkpoint.
pub trait Projection: Send + Sync + 'static {
    /// What one event decodes into.
    type Item: Send + Sync;

    /// Stable name: consumer name, checkpoint key, dead-letter subject token.
    fn name(&self) -> &'static str;

    /// The PostgreSQL schema of its live tables. The projection's writing SQL names its tables
    /// unqualified: the runtime puts the schema being written (live, or a generation being
    /// rebuilt by replay) first on the search path.
    fn schema(&self) -> &'static str;

    /// The subject categories (`<prefix>.events.<category>.<project>`) this projection reads;
    /// `None` (the default) reads every one. Messages on other subjects are passed over without
    /// being parsed (the checkpoint still moves over them): most of the stream is LLM calls,
    /// which the audit and access projections have no use for.
    fn categories(&self) -> Option<&'static [&'static str]> {
        None
    }

    /// Pure decoding: `Ok(None)` for events this projection ignores (unknown types included),
    /// `Err` for an event it must fold but cannot (dead-lettered).
    fn decode(&self, event: &StoredEvent) -> Result<Option<Self::Item>, Rejection>;

    /// What [`Projection::apply`] keeps from one call to the next within a batch: a batch is
    /// folded in segments that end at its snapshot marks, one `apply` each, in one
    /// transaction. Say, the rows it loaded, as it wrote them back, so the next segment does not
    /// load them again. A fresh `Default` for each batch, dropped with it.
    type Carry: Default + Send;

    /// Folds `items` (in stream order) into the projection's tables inside `tx`, returning
    /// events to emit once the transaction commits. `carry` is what the earlier segments of
    /// the same batch left (see [`Projection::Carry`]).
    fn apply(
        &self,
        tx: &mut sqlx::PgConnection,
        items: Vec<Self::Item>,
        carry: &mut Self::Carry,
    ) -> impl Future<Output = Result<Vec<Event>, ApplyError>> + Send;

    /// A query (tables unqualified) whose single row and column is the projection's whole
    /// state as JSON, for point-in-time reads. The runtime stores its result in the batch's
    /// transaction with one statement (`INSERT … SELECT (<query>)`), no round trip through
    /// Kairos. `None` (the default) means the projection keeps no snapshots.
    fn snapshot_query(&self) -> Option<&'static str> {
        None
    }

    /// Whether the projection can run as partitions ([`partition`]): what it keeps for a
    /// project depends only on that project's events (stored under its subject) and on the
    /// global ones (`_global`, folded by every partition), and whatever its `apply` reads or
    /// writes across projects at once it keeps to `kairos.in_partition(project)`. Rows shared
    /// by every project are kept per partition (`kairos.partition()`). `false` by default.
    fn partitionable(&self) -> bool {
        false
    }
}

/// Whether `projection` reads the message stored on `subject` (see [`Projection::categories`]).
pub fn reads<P: Projection>(projection: &P, subject: &str) -> bool {
    projection.categories().is_none_or(|cats| {
        subject
            .rsplit('.')
            .nth(1)
            .is_some_and(|c| cats.contains(&c))
    })
}

/// Parses a stored message into the event a projection decodes: it must be a valid event, stored
/// on the subject its type and project give (an event a producer published to NATS under another
/// subject would escape the projections reading its own).
pub(crate) fn stored_event(
    door: &Door,
    seq: StreamSeq,
    subject: &str,
    stored_at: DateTime<Utc>,
    payload: &[u8],
) -> Result<StoredEvent, Rejection> {
    let prefix = door.prefix.as_str();
    let event = Event::from_slice(payload)?;
    let mut vouched = true;
    if let Some(signer) = &door.signer {
        vouched = signer.check(&event)?;
    }
    if !event.belongs_on(prefix, subject) {
        return Err(Rejection {
            code: "subject_mismatch",
            reason: format!(
                "stored on {subject}, but a {} event belongs on {}",
                event.event_type().as_str(),
                event.nats_subject(prefix)
            ),
        });
    }
    Ok(StoredEvent {
        seq,
        subject: subject.to_owned(),
        stored_at,
        event,
        vouched,
    })
}

/// What every stored message is checked against before a projection decodes it: the subjects
/// it belongs on, and the key Kairos' own facts are signed with (when one is set, a signed type
/// without a valid signature is dead-lettered: `unsigned` or `bad_signature`).
#[derive(Debug, Clone)]
pub(crate) struct Door {
    prefix: String,
    signer: Option<kairos_events::Signer>,
}

impl Door {
    pub(crate) fn of(bus: &kairos_bus::Bus) -> Self {
        Self {
            prefix: bus.config().subject_prefix.clone(),
            signer: bus.config().signer(),
        }
    }
}

/// Why a batch could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The database failed; data errors (SQLSTATE classes 22, 23) count as [`ApplyError::Data`].
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The events cannot be folded (an overflow, an impossible state): retried, then the event
    /// at fault is isolated and dead-lettered.
    #[error("{0}")]
    Data(String),
}
