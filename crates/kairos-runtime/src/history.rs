//! Reading a projection's past: the nearest snapshot, and the events after it, decoded and
//! deduplicated exactly as the live projection applied them.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kairos_bus::{Bus, StoredAt};
use kairos_events::StreamSeq;
use sqlx::PgPool;

use crate::Projection;
use crate::store::to_i64;

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("projection database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("reading the stream: {0}")]
    Stream(String),
    #[error(
        "the stream no longer holds events {from}..{to} (retention); this point in time cannot be reconstructed"
    )]
    Gone { from: u64, to: u64 },
}

/// The newest snapshot of `key` taken at or before `seq`.
pub async fn snapshot_at(
    pool: &PgPool,
    key: &str,
    seq: StreamSeq,
) -> Result<Option<(StreamSeq, serde_json::Value)>, sqlx::Error> {
    let row: Option<(i64, serde_json::Value)> = sqlx::query_as(
        "SELECT seq, state FROM kairos.snapshots WHERE projection = $1 AND seq <= $2 ORDER BY seq DESC LIMIT 1",
    )
    .bind(key)
    .bind(to_i64(seq))
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(s, v)| (StreamSeq(u64::try_from(s).unwrap_or(0)), v)))
}

/// The last sequence the stream stored at or before `at` (see [`Bus::seq_at_time`]), searched
/// between the two snapshots (of any projection) taken around `at`: each snapshot records when
/// the message it was taken at was stored.
pub async fn seq_at_time(
    bus: &Bus,
    pool: &PgPool,
    at: DateTime<Utc>,
) -> Result<StreamSeq, HistoryError> {
    type Row = (
        Option<i64>,
        Option<DateTime<Utc>>,
        Option<i64>,
        Option<DateTime<Utc>>,
    );
    let row: Row = sqlx::query_as(
        "SELECT lo.seq, lo.stored_at, hi.seq, hi.stored_at
             FROM (SELECT 1) one
             LEFT JOIN LATERAL (SELECT seq, stored_at FROM kairos.snapshots
                                WHERE stored_at <= $1 ORDER BY stored_at DESC LIMIT 1) lo ON true
             LEFT JOIN LATERAL (SELECT seq, stored_at FROM kairos.snapshots
                                WHERE stored_at > $1 ORDER BY stored_at LIMIT 1) hi ON true",
    )
    .bind(at)
    .fetch_one(pool)
    .await?;
    let at_seq = |seq: Option<i64>, time: Option<DateTime<Utc>>| {
        Some(StoredAt {
            seq: StreamSeq(u64::try_from(seq?).ok()?),
            time: time?,
        })
    };
    bus.seq_at_time_within(at, at_seq(row.0, row.1), at_seq(row.2, row.3))
        .await
        .map_err(|e| HistoryError::Stream(e.to_string()))
}

/// The items `projection` folded from the events after `after` up to `upto` (both stream
/// sequences, `upto` at most its checkpoint), in order. Events it dead-lettered are skipped, and
/// a retry of an event is skipped when the identity was first applied at an earlier sequence.
/// `filter` (a NATS subject pattern) narrows what is decoded to some subjects (say, one
/// project's), for a projection whose state splits along them. The stream is still read whole
/// from `after` and the rest skipped unparsed: a filtered consumer would make the server count
/// its pending messages over the rest of the stream, which on a long history costs more than
/// reading the few thousand messages since a snapshot.
pub async fn items_between<P: Projection>(
    projection: &P,
    bus: &Bus,
    pool: &PgPool,
    after: StreamSeq,
    upto: StreamSeq,
    filter: Option<String>,
) -> Result<Vec<P::Item>, HistoryError> {
    let (_, decoded) = read_after(projection, bus, after, upto, None, filter.as_deref()).await?;
    Ok(first_applied(projection, pool, decoded).await?)
}

/// Reads the stream after `after` up to `end` (and, with `until`, up to the last event stored
/// at or before it), decoding what `projection` would; returns the last sequence read (or
/// `after`) and what was decoded.
async fn read_after<P: Projection>(
    projection: &P,
    bus: &Bus,
    after: StreamSeq,
    end: StreamSeq,
    until: Option<DateTime<Utc>>,
    filter: Option<&str>,
) -> Result<(StreamSeq, SpanItems<P::Item>), HistoryError> {
    if end <= after {
        return Ok((after, SpanItems(Vec::new())));
    }
    let stream_err = |e: &dyn std::fmt::Display| HistoryError::Stream(e.to_string());
    let mut reader = bus
        .read_span(StreamSeq(after.0 + 1), end)
        .await
        .map_err(|e| stream_err(&e))?;
    let (mut last, mut decoded) = (after, Vec::new());
    let door = crate::Door::of(bus);
    let mut first = true;
    let mut more = reader.pending_at_start() > 0;
    while more {
        let Some(d) = reader
            .next(Duration::from_secs(10))
            .await
            .map_err(|e| stream_err(&e))?
        else {
            return Err(stream_err(
                &"the stream stopped delivering before the requested sequence",
            ));
        };
        // Only the first message tells: later ones may follow events this projection ignores.
        if std::mem::take(&mut first) && d.seq.0 > after.0 + 1 && d.seq.0 <= end.0 + 1 {
            // The first events after the snapshot are gone: answering would skip them silently.
            return Err(HistoryError::Gone {
                from: after.0 + 1,
                to: d.seq.0 - 1,
            });
        }
        if d.seq > end || until.is_some_and(|at| d.stored_at > at) {
            break;
        }
        last = d.seq;
        more = d.seq < end && d.pending > 0;
        decoded.extend(decode_stored(projection, &door, filter, &d));
    }
    Ok((last, SpanItems(decoded)))
}

/// Events decoded from a span of the stream, not yet checked against what the projection
/// applied (see [`first_applied`]).
pub struct SpanItems<I>(Vec<(uuid::Uuid, StreamSeq, I)>);

/// A point-in-time read's start and span, found in one pass over the stream.
pub struct AsOfSpan<I> {
    /// The last sequence the stream stored at or before the instant.
    pub seq: StreamSeq,
    /// The snapshot the read starts from: its sequence and state.
    pub snapshot: (StreamSeq, serde_json::Value),
    /// What the projection would decode from the events after it, up to `seq`.
    pub decoded: SpanItems<I>,
}

/// The snapshot of `key` taken before `at` and the events stored after it up to `at`, read in
/// one pass: the read goes forward from the snapshot and stops at the first message stored
/// after `at` (bounded by the next snapshot, which was stored after it), so finding the
/// instant's sequence costs no requests of its own. `None` when no snapshot records when it was
/// taken before `at` (an earlier version's snapshots, or none yet): then
/// [`seq_at_time`] and [`items_between`] answer instead. Pass the result to [`first_applied`]
/// once the projection has applied `seq`.
pub async fn as_of_span<P: Projection>(
    projection: &P,
    bus: &Bus,
    pool: &PgPool,
    key: &str,
    at: DateTime<Utc>,
    filter: Option<String>,
) -> Result<Option<AsOfSpan<P::Item>>, HistoryError> {
    // PostgreSQL keeps microseconds, the stream nanoseconds: a margin of one microsecond on
    // each side makes "stored before" and "stored after" sure.
    let margin = chrono::Duration::microseconds(1);
    type Row = (Option<i64>, Option<serde_json::Value>, Option<i64>);
    let (lo, state, hi): Row = sqlx::query_as(
        "SELECT lo.seq, lo.state, hi.seq
             FROM (SELECT 1) one
             LEFT JOIN LATERAL (SELECT seq, state FROM kairos.snapshots
                                WHERE projection = $1 AND stored_at < $2
                                ORDER BY stored_at DESC LIMIT 1) lo ON true
             LEFT JOIN LATERAL (SELECT seq FROM kairos.snapshots
                                WHERE projection = $1 AND stored_at > $3
                                ORDER BY stored_at LIMIT 1) hi ON true",
    )
    .bind(key)
    .bind(at - margin)
    .bind(at + margin)
    .fetch_one(pool)
    .await?;
    let (Some(lo), Some(state)) = (lo, state) else {
        return Ok(None);
    };
    let after = StreamSeq(u64::try_from(lo).unwrap_or(0));
    let end = match hi.and_then(|h| u64::try_from(h).ok()) {
        Some(h) => StreamSeq(h.saturating_sub(1)),
        None => bus
            .last_seq()
            .await
            .map_err(|e| HistoryError::Stream(e.to_string()))?,
    };
    let (seq, decoded) =
        read_after(projection, bus, after, end, Some(at), filter.as_deref()).await?;
    Ok(Some(AsOfSpan {
        seq,
        snapshot: (after, state),
        decoded,
    }))
}

/// What a projection makes of one message of the stream, read by [`StreamDecoder`].
pub enum Decoded<I> {
    /// An event it folds: its identity's key, its sequence and the item.
    Item(uuid::Uuid, StreamSeq, I),
    /// An event it must fold but refuses (the runner dead-letters it).
    Rejected(StreamSeq, crate::Rejection),
}

/// Reads the stream in order and decodes what `projection` reads, as its runner would, asking no
/// table what was applied: for checks that must not trust the projection's own tables.
pub struct StreamDecoder<'a, P: Projection> {
    projection: &'a P,
    door: crate::Door,
    reader: kairos_bus::EventReader,
    end: StreamSeq,
    more: bool,
}

impl<'a, P: Projection> StreamDecoder<'a, P> {
    /// From `from` up to `end`, both stream sequences.
    pub async fn open(
        projection: &'a P,
        bus: &Bus,
        from: StreamSeq,
        end: StreamSeq,
    ) -> Result<Self, HistoryError> {
        let reader = bus
            .read_span(from, end)
            .await
            .map_err(|e| HistoryError::Stream(e.to_string()))?;
        let more = end >= from && reader.pending_at_start() > 0;
        Ok(Self {
            projection,
            door: crate::Door::of(bus),
            reader,
            end,
            more,
        })
    }

    /// The next message the projection folds or refuses; `None` past `end`.
    pub async fn next(&mut self) -> Result<Option<Decoded<P::Item>>, HistoryError> {
        while self.more {
            let Some(d) = self
                .reader
                .next(Duration::from_secs(10))
                .await
                .map_err(|e| HistoryError::Stream(e.to_string()))?
            else {
                return Err(HistoryError::Stream(
                    "the stream stopped delivering before the requested sequence".into(),
                ));
            };
            if d.seq > self.end {
                break;
            }
            self.more = d.seq < self.end && d.pending > 0;
            match crate::apply::decode_one(self.projection, &self.door, None, &d) {
                crate::apply::Slot::Item(key, item) => {
                    return Ok(Some(Decoded::Item(key, d.seq, item)));
                }
                crate::apply::Slot::Rejected(r) => return Ok(Some(Decoded::Rejected(d.seq, r))),
                crate::apply::Slot::Skip => {}
            }
        }
        self.more = false;
        Ok(None)
    }
}

/// What the live projection folded from `d`: what it reads, parses and decodes.
fn decode_stored<P: Projection>(
    projection: &P,
    door: &crate::Door,
    filter: Option<&str>,
    d: &kairos_bus::StoredMessage,
) -> Option<(uuid::Uuid, StreamSeq, P::Item)> {
    if !filter.is_none_or(|f| subject_matches(f, &d.subject)) {
        return None;
    }
    match crate::apply::decode_one(projection, door, None, d) {
        crate::apply::Slot::Item(key, item) => Some((key, d.seq, item)),
        crate::apply::Slot::Skip | crate::apply::Slot::Rejected(_) => None,
    }
}

/// The decoded items the projection applied: events it dead-lettered are not there, and a retry
/// of an event is skipped when its identity was first applied at an earlier sequence. The
/// projection must have applied the span (its checkpoint at or past the last sequence).
pub async fn first_applied<P: Projection>(
    projection: &P,
    pool: &PgPool,
    decoded: SpanItems<P::Item>,
) -> Result<Vec<P::Item>, sqlx::Error> {
    let decoded = decoded.0;
    if decoded.is_empty() {
        return Ok(Vec::new());
    }
    // Which sequence first applied each identity.
    let ids: Vec<uuid::Uuid> = decoded.iter().map(|(i, _, _)| *i).collect();
    let sql = format!(
        "SELECT identity, seq FROM \"{}\".kairos_applied WHERE identity = ANY($1)",
        projection.schema()
    );
    let first: HashMap<uuid::Uuid, i64> =
        sqlx::query_as::<_, (uuid::Uuid, i64)>(sqlx::AssertSqlSafe(sql))
            .bind(&ids)
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect();
    Ok(decoded
        .into_iter()
        .filter(|(identity, seq, _)| first.get(identity).is_some_and(|s| *s == to_i64(*seq)))
        .map(|(_, _, item)| item)
        .collect())
}

/// Whether `subject` matches the NATS subject `pattern` (`*`: one token, `>`: the rest).
fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut subject = subject.split('.');
    for p in pattern.split('.') {
        match (p, subject.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (p, Some(t)) if p == t => {}
            _ => return false,
        }
    }
    subject.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::subject_matches;

    #[test]
    fn subjects_match_like_nats() {
        assert!(subject_matches("k.events.*.p1", "k.events.llm.p1"));
        assert!(!subject_matches("k.events.*.p1", "k.events.llm.p10"));
        assert!(!subject_matches("k.events.*.p1", "k.events.llm.p1.x"));
        assert!(subject_matches("k.events.>", "k.events.llm.p1"));
        assert!(!subject_matches("k.events.>", "k.events"));
        assert!(!subject_matches("k.dlq.*", "k.events.x"));
    }
}
