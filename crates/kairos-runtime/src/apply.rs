//! Applying one contiguous batch of stream messages to a projection: decode, dead-letter, dedupe,
//! fold and checkpoint in one transaction. Shared by the live runner and by replay.

use std::collections::HashMap;

use kairos_bus::Bus;
use kairos_events::StreamSeq;
use sqlx::PgPool;
use tracing::{debug, warn};

use crate::partition::Partition;
use crate::store::{self, Advance};
use crate::{ApplyError, Projection, Rejection};

/// A message as delivered from the stream, whatever consumer delivered it.
pub use kairos_bus::StoredMessage as Delivered;

/// The stored message behind a consumer delivery.
pub(crate) fn delivered(m: &async_nats::jetstream::Message) -> Option<Delivered> {
    let info = m.info().ok()?;
    Some(Delivered::delivered(m, &info))
}

/// Sequences between snapshots unless configured otherwise.
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 1_000;

/// Where a batch is applied: the live tables, or a generation being rebuilt beside them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// PostgreSQL schema holding the tables (the projection's own SQL names tables unqualified).
    pub schema: String,
    /// Checkpoint and dedupe key.
    pub key: String,
    /// Live: dead letters and emitted events are published. A rebuild only rebuilds tables.
    pub live: bool,
    /// Take a snapshot whenever this many sequences passed since the last one (0: never).
    pub snapshot_every: u64,
    /// The partition written, when the projection runs partitioned (see [`crate::partition`]).
    pub partition: Option<crate::partition::Partition>,
}

impl Target {
    pub fn live<P: Projection>(p: &P) -> Self {
        Self {
            schema: p.schema().to_owned(),
            key: p.name().to_owned(),
            live: true,
            snapshot_every: DEFAULT_SNAPSHOT_EVERY,
            partition: None,
        }
    }

    /// The generation a replay builds: schema `<schema>_next`, checkpoint `<name>@next`.
    pub fn next<P: Projection>(p: &P) -> Self {
        Self {
            schema: format!("{}_next", p.schema()),
            key: format!("{}@next", p.name()),
            live: false,
            snapshot_every: DEFAULT_SNAPSHOT_EVERY,
            partition: None,
        }
    }
}

pub(crate) enum Failure {
    /// The database or NATS is unavailable: retry the same batch, forever, with backoff.
    Transient(String),
    /// The data made the transaction fail (constraint, overflow): retry, then isolate.
    Data(String),
    /// Someone else moved the checkpoint: re-read it.
    Moved,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Transient(r) | Failure::Data(r) => f.write_str(r),
            Failure::Moved => f.write_str("the checkpoint moved"),
        }
    }
}

/// Data errors (SQLSTATE classes 22 and 23) are the event's fault; the rest are the system's.
pub(crate) fn classify(e: sqlx::Error) -> Failure {
    match &e {
        sqlx::Error::Database(db)
            if db
                .code()
                .is_some_and(|c| c.starts_with("22") || c.starts_with("23")) =>
        {
            Failure::Data(e.to_string())
        }
        _ => Failure::Transient(e.to_string()),
    }
}

/// Starts a transaction writing to `target`: its schema first on the search path and, for the
/// live tables, the projection's writer lock (a replay's switch takes it to pause live writes).
/// `BEGIN` and the search path go in one round trip: on a machine that NATS, PostgreSQL and
/// Kairos share, each round trip costs more than the statement.
pub(crate) async fn begin(
    pool: &PgPool,
    target: &Target,
    projection: &str,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let ident = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    // A generation being rebuilt does not wait for its commits to reach the disk: a crash can
    // lose its last few batches, never part of one (the checkpoint is in the same transaction),
    // and the replay resumes from the checkpoint that survived.
    let durability = if target.live {
        ""
    } else {
        "; SET LOCAL synchronous_commit TO off"
    };
    // A partition's SQL keeps to its own projects with `kairos.in_partition(project)`.
    let partition = target.partition.map_or(String::new(), |p| {
        format!("; SET LOCAL kairos.partition TO '{}'", p.setting())
    });
    let sql = format!(
        "BEGIN; SET LOCAL search_path TO {}, public{durability}{partition}",
        ident(&target.schema)
    );
    let mut tx = pool.begin_with(sqlx::AssertSqlSafe(sql)).await?;
    // Not in the BEGIN statement: a lock wait that fails or is cancelled there would leave the
    // pooled connection inside a transaction nobody owns.
    if target.live {
        sqlx::query("SELECT pg_advisory_xact_lock_shared(hashtextextended($1, 0))")
            .bind(writer_lock(projection))
            .execute(&mut *tx)
            .await?;
    }
    Ok(tx)
}

/// The advisory lock key every live batch of `projection` holds (shared) while it writes.
pub fn writer_lock(projection: &str) -> String {
    format!("kairos.writer.{projection}")
}

/// What one message decoded into, before any I/O.
pub(crate) enum Slot<I> {
    /// Not this projection's (another category, or a type it ignores).
    Skip,
    Item(uuid::Uuid, I),
    Rejected(Rejection),
}

/// A batch decoded ahead of its transaction (see [`decode`]), by stream sequence.
pub(crate) struct Decoded<I>(Vec<(StreamSeq, Slot<I>)>);

impl<I> Decoded<I> {
    /// Appends what decoding the messages after these gave.
    pub(crate) fn extend(&mut self, later: Self) {
        self.0.extend(later.0);
    }
}

/// Decodes messages for `projection`: pure CPU work, so a caller runs it on another thread
/// while the previous batch is written.
pub(crate) fn decode<P: Projection>(
    projection: &P,
    door: &crate::Door,
    partition: Option<Partition>,
    batch: &[Delivered],
) -> Decoded<P::Item> {
    Decoded(
        batch
            .iter()
            .map(|m| (m.seq, decode_one(projection, door, partition, m)))
            .collect(),
    )
}

/// What `projection` makes of one message: exactly what the runner folds from it.
pub(crate) fn decode_one<P: Projection>(
    projection: &P,
    door: &crate::Door,
    partition: Option<Partition>,
    m: &Delivered,
) -> Slot<P::Item> {
    if !crate::reads(projection, &m.subject) || partition.is_some_and(|p| !p.holds(&m.subject)) {
        return Slot::Skip;
    }
    let decoded =
        crate::stored_event(door, m.seq, &m.subject, m.stored_at, &m.payload).and_then(|stored| {
            let identity = stored.event.identity();
            let key = store::applied_key(
                &partition.map_or(identity, |p| p.identity(&m.subject, identity)),
            );
            projection
                .decode(&stored)
                .map(|item| item.map(|i| (key, i)))
        });
    match decoded {
        Ok(None) => Slot::Skip,
        Ok(Some((key, item))) => Slot::Item(key, item),
        Err(rejection) => Slot::Rejected(rejection),
    }
}

/// What a message repeating the identity of the one at `first` is: `None` for a retry (the same
/// content, or a first message the stream no longer holds to compare with), or the rejection of
/// an identity conflict, which says something else under the same `(source, id)`. The first
/// stays folded; the conflict is dead-lettered, not dropped as a retry that would hide a fact
/// (another project's call, say). Rare, so the first's text is fetched only here.
async fn repeated<'a>(
    bus: &Bus,
    batch: &'a [Delivered],
    m: &'a Delivered,
    first: StreamSeq,
) -> Result<Option<Rejection>, Failure> {
    if first >= m.seq {
        return Ok(None);
    }
    let stored = match batch.iter().find(|b| b.seq == first) {
        Some(b) => Some(b.payload.clone()),
        None => bus
            .payload_at(first)
            .await
            .map_err(|e| Failure::Transient(e.to_string()))?,
    };
    Ok(match stored {
        Some(text) if !kairos_events::same_content(&text, &m.payload) => Some(Rejection {
            code: "identity_conflict",
            reason: format!(
                "source and id were used by the event at seq {first}, which says something else"
            ),
        }),
        _ => None,
    })
}

/// Where the snapshots of a batch after `checkpoint` go: at each message that reaches a multiple
/// of `every` (the multiple itself on a stream without holes), with when it was stored.
fn snapshot_marks(
    checkpoint: StreamSeq,
    batch: &[Delivered],
    every: u64,
) -> Vec<(StreamSeq, chrono::DateTime<chrono::Utc>)> {
    if every == 0 {
        return Vec::new();
    }
    let mut prev = checkpoint.0;
    let mut marks = Vec::new();
    for m in batch {
        if prev / every != m.seq.0 / every {
            marks.push((m.seq, m.stored_at));
        }
        prev = m.seq.0;
    }
    marks
}

/// Applies `batch` (contiguous, starting right after `checkpoint`); returns whether events were
/// written to the outbox. `decoded` is used for the messages it holds, the rest are decoded
/// here. With `known`, identities are deduplicated against that map (every identity the
/// target's table holds, with the sequence that carried it first, kept by a replay filling a
/// new generation) instead of the table, and the map gets this batch's once it committed.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn apply_batch<P: Projection>(
    projection: &P,
    bus: &Bus,
    pool: &PgPool,
    target: &Target,
    checkpoint: StreamSeq,
    batch: &[Delivered],
    decoded: Option<Decoded<P::Item>>,
    known: Option<&mut HashMap<uuid::Uuid, i64>>,
) -> Result<bool, Failure> {
    let name = projection.name();
    let mut items = Vec::new();
    let mut identities = Vec::new();
    let mut seqs = Vec::new();
    let mut dead = 0i64;
    let mut duplicates = 0i64;
    // Each identity's first message in the batch, and the later messages that repeat one: a
    // retry, or an identity conflict when it says something else.
    let mut seen = HashMap::new();
    let mut positions = Vec::new();
    let mut repeats: Vec<(usize, uuid::Uuid, StreamSeq)> = Vec::new();
    let mut rejected = Vec::new();
    let door = &crate::Door::of(bus);
    let mut ahead = decoded.map(|d| d.0.into_iter().peekable());
    for (at, m) in batch.iter().enumerate() {
        // Both are usually in the same order (a redelivery can break it: then the message is
        // decoded here); skip what the batch no longer holds.
        let slot = ahead
            .as_mut()
            .and_then(|a| {
                while a.next_if(|(seq, _)| *seq < m.seq).is_some() {}
                a.next_if(|(seq, _)| *seq == m.seq)
            })
            .map_or_else(
                || decode_one(projection, door, target.partition, m),
                |(_, slot)| slot,
            );
        match slot {
            Slot::Skip => {}
            Slot::Item(identity, item) => match seen.entry(identity) {
                std::collections::hash_map::Entry::Vacant(first) => {
                    first.insert(m.seq);
                    identities.push(identity);
                    seqs.push(store::to_i64(m.seq));
                    positions.push(at);
                    items.push(item);
                }
                std::collections::hash_map::Entry::Occupied(first) => {
                    repeats.push((at, *first.key(), *first.get()));
                }
            },
            Slot::Rejected(rejection) => {
                dead += 1;
                if target.live {
                    rejected.push((m, rejection));
                }
            }
        }
    }
    let last = batch.last().map_or(checkpoint, |m| m.seq);
    let mut tx = begin(pool, target, name).await.map_err(classify)?;
    // With `known`, the identities recorded here join it once the transaction committed.
    let (fresh, claimed) = match &known {
        Some(known) => {
            let fresh: Vec<bool> = identities.iter().map(|i| !known.contains_key(i)).collect();
            let (ids, at): (Vec<uuid::Uuid>, Vec<i64>) = identities
                .iter()
                .zip(&seqs)
                .zip(&fresh)
                .filter_map(|(pair, fresh)| fresh.then_some(pair))
                .unzip();
            store::record_identities(&mut tx, &ids, &at)
                .await
                .map_err(classify)?;
            (fresh, ids.into_iter().zip(at).collect())
        }
        None if store::record_new_identities(&mut tx, &identities, &seqs)
            .await
            .map_err(classify)? =>
        {
            (vec![true; identities.len()], Vec::new())
        }
        None => {
            // One of them was recorded before, and the transaction failed on it: begin again,
            // looking each one up.
            tx.rollback().await.map_err(classify)?;
            tx = begin(pool, target, name).await.map_err(classify)?;
            let fresh = store::claim_identities(&mut tx, &identities, &seqs)
                .await
                .map_err(|e| match &e {
                    // Another writer recorded one of these identities while this one ran: it
                    // moved the checkpoint too (or rolled back, and then this insert would have
                    // gone through).
                    sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => {
                        Failure::Moved
                    }
                    _ => classify(e),
                })?;
            (fresh, Vec::new())
        }
    };
    // An identity recorded before: the first message that carried it is the one folded.
    let recorded: Vec<uuid::Uuid> = identities
        .iter()
        .zip(&fresh)
        .filter_map(|(identity, fresh)| (!fresh).then_some(*identity))
        .collect();
    let mut firsts = HashMap::new();
    if !recorded.is_empty() {
        firsts = match &known {
            Some(known) => recorded
                .iter()
                .filter_map(|i| known.get(i).map(|seq| (*i, *seq)))
                .collect(),
            None => store::first_seqs(&mut tx, &recorded)
                .await
                .map_err(classify)?,
        };
        // Each repeats the event that carried its identity first. One without a recorded first
        // (none should be missing) names itself, and so counts as a retry.
        for (identity, at) in identities
            .iter()
            .zip(&positions)
            .zip(&fresh)
            .filter_map(|(pair, fresh)| (!fresh).then_some(pair))
        {
            repeats.push((*at, *identity, batch[*at].seq));
        }
    }
    for (at, identity, first) in repeats {
        // An identity recorded before this batch is compared with the event that carried it
        // first, not with its first message here (which may itself be a conflict).
        let first = firsts
            .get(&identity)
            .and_then(|seq| u64::try_from(*seq).ok())
            .map_or(first, StreamSeq);
        let m = &batch[at];
        match repeated(bus, batch, m, first).await? {
            None => duplicates += 1,
            Some(rejection) => {
                dead += 1;
                if target.live {
                    rejected.push((m, rejection));
                }
            }
        }
    }
    let mut items = items
        .into_iter()
        .zip(seqs)
        .zip(fresh)
        .filter_map(|(item, fresh)| fresh.then_some(item))
        .peekable();
    let mut applied = 0i64;
    let mut emitted = Vec::new();
    // The batch is folded in segments ending where a snapshot goes (each multiple of
    // `snapshot_every` it passes), so a snapshot holds the state at its own sequence whatever
    // the batch size: one transaction, several snapshots. Without a snapshot query there is
    // nothing to cut the batch for.
    let every = match projection.snapshot_query() {
        Some(_) => target.snapshot_every,
        None => 0,
    };
    let mut carry = P::Carry::default();
    for mark in snapshot_marks(checkpoint, batch, every)
        .into_iter()
        .map(Some)
        .chain([None])
    {
        let segment: Vec<P::Item> = std::iter::from_fn(|| {
            items
                .next_if(|(_, seq)| mark.is_none_or(|(at, _)| *seq <= store::to_i64(at)))
                .map(|(item, _)| item)
        })
        .collect();
        if !segment.is_empty() {
            applied += segment.len() as i64;
            emitted.extend(
                projection
                    .apply(&mut tx, segment, &mut carry)
                    .await
                    .map_err(|e| match e {
                        ApplyError::Database(e) => classify(e),
                        ApplyError::Data(reason) => Failure::Data(reason),
                    })?,
            );
        }
        if let Some((at, stored_at)) = mark {
            // Not the event's fault, whatever the error: never a reason to dead-letter it.
            store::snapshot(&mut tx, projection, &target.key, at, stored_at)
                .await
                .map_err(|e| Failure::Transient(format!("snapshot at {at}: {e}")))?;
        }
    }
    // A rebuilt generation folds the same events to the same state, but what they announced
    // is already on the stream: only the live tables emit.
    let emitted: Vec<Vec<u8>> = if target.live {
        emitted.iter().map(|e| e.to_bytes().to_vec()).collect()
    } else {
        Vec::new()
    };
    store::enqueue_outbox(&mut tx, name, &emitted)
        .await
        .map_err(classify)?;
    let advance = Advance {
        to: last,
        applied,
        duplicates,
        dead_lettered: dead,
    };
    // The checkpoint is checked last, where the transaction locks its row: another writer that
    // moved it first makes this one roll back (its identities, folded or not, with it).
    if !store::advance(&mut tx, &target.key, checkpoint, &advance)
        .await
        .map_err(classify)?
    {
        return Err(Failure::Moved);
    }
    // Dead letters go out once the fence held, before the commit: a writer that lost publishes
    // nothing, and a commit that fails after them leaves copies with the same message ids,
    // which JetStream drops within its duplicate window.
    for (m, rejection) in rejected {
        warn!(projection = name, seq = m.seq.0, code = rejection.code, reason = %rejection.reason, "dead-lettering event");
        bus.dead_letter(
            name,
            &m.subject,
            m.seq,
            m.payload.clone(),
            rejection.code,
            &rejection.reason,
        )
        .await
        .map_err(|e| Failure::Transient(e.to_string()))?;
    }
    tx.commit().await.map_err(classify)?;
    if let Some(known) = known {
        known.extend(claimed);
    }
    debug!(projection = name, key = %target.key, applied, duplicates, dead, "batch committed");
    Ok(!emitted.is_empty())
}
