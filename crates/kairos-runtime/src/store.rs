//! The runtime's SQL: checkpoints, applied identities, outbox.

use chrono::{DateTime, Utc};
use kairos_events::StreamSeq;
use serde::Serialize;
use sqlx::{PgConnection, PgPool, Row};

/// Where a projection stands.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Checkpoint {
    pub projection: String,
    pub last_seq: u64,
    pub events_applied: u64,
    pub duplicates: u64,
    pub dead_lettered: u64,
    pub updated_at: DateTime<Utc>,
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(crate) fn to_i64(seq: StreamSeq) -> i64 {
    i64::try_from(seq.0).unwrap_or(i64::MAX)
}

fn row_to_checkpoint(row: &sqlx::postgres::PgRow) -> Result<Checkpoint, sqlx::Error> {
    Ok(Checkpoint {
        projection: row.try_get("projection")?,
        last_seq: to_u64(row.try_get("last_seq")?),
        events_applied: to_u64(row.try_get("events_applied")?),
        duplicates: to_u64(row.try_get("duplicates")?),
        dead_lettered: to_u64(row.try_get("dead_lettered")?),
        updated_at: row.try_get("updated_at")?,
    })
}

/// The checkpoint of one projection, if it ever ran.
pub async fn checkpoint(
    pool: &PgPool,
    projection: &str,
) -> Result<Option<Checkpoint>, sqlx::Error> {
    sqlx::query("SELECT * FROM kairos.checkpoints WHERE projection = $1")
        .bind(projection)
        .fetch_optional(pool)
        .await?
        .as_ref()
        .map(row_to_checkpoint)
        .transpose()
}

/// Every projection's checkpoint.
pub async fn checkpoints(pool: &PgPool) -> Result<Vec<Checkpoint>, sqlx::Error> {
    sqlx::query("SELECT * FROM kairos.checkpoints ORDER BY projection")
        .fetch_all(pool)
        .await?
        .iter()
        .map(row_to_checkpoint)
        .collect()
}

pub(crate) async fn ensure_checkpoint(
    pool: &PgPool,
    projection: &str,
) -> Result<StreamSeq, sqlx::Error> {
    sqlx::query("INSERT INTO kairos.checkpoints (projection) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(projection)
        .execute(pool)
        .await?;
    let seq: i64 =
        sqlx::query_scalar("SELECT last_seq FROM kairos.checkpoints WHERE projection = $1")
            .bind(projection)
            .fetch_one(pool)
            .await?;
    Ok(StreamSeq(to_u64(seq)))
}

/// A checkpoint `key` that, when it is new, starts where the checkpoint `base` is (a partition
/// starts where its projection stood unpartitioned, or where a replay left it).
pub(crate) async fn ensure_checkpoint_from(
    pool: &PgPool,
    key: &str,
    base: &str,
) -> Result<StreamSeq, sqlx::Error> {
    ensure_checkpoint(pool, base).await?;
    sqlx::query(
        "INSERT INTO kairos.checkpoints (projection, last_seq)
         SELECT $1, last_seq FROM kairos.checkpoints WHERE projection = $2
         ON CONFLICT DO NOTHING",
    )
    .bind(key)
    .bind(base)
    .execute(pool)
    .await?;
    ensure_checkpoint(pool, key).await
}

/// The partition checkpoints of `projection` (`<projection>/<k>of<n>`).
pub(crate) async fn partition_keys(
    pool: &PgPool,
    projection: &str,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT projection FROM kairos.checkpoints
         WHERE starts_with(projection, $1 || '/') ORDER BY projection",
    )
    .bind(projection)
    .fetch_all(pool)
    .await
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum PartitionsError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Other(String),
}

/// Creates the checkpoints of all `count` partitions of `projection` at once, each where the
/// projection stands, so that the lowest of them is always a true position. Refuses another
/// count than the one the partitions were made with.
pub(crate) async fn ensure_partitions(
    pool: &PgPool,
    projection: &str,
    count: u32,
) -> Result<(), PartitionsError> {
    let suffix = format!("of{count}");
    let other: Vec<String> = partition_keys(pool, projection)
        .await?
        .into_iter()
        .filter(|k| !k.ends_with(&suffix))
        .collect();
    if let Some(k) = other.first() {
        return Err(PartitionsError::Other(format!(
            "{projection} is already partitioned otherwise (checkpoint {k}), not into {count}: \
             to change the number of partitions, stop every runner of {projection}, run \
             `kairos replay {projection}`, and start them with the new projections.partitions"
        )));
    }
    ensure_checkpoint(pool, projection).await?;
    let keys: Vec<String> = (0..count)
        .map(|k| format!("{projection}/{k}of{count}"))
        .collect();
    sqlx::query(
        "INSERT INTO kairos.checkpoints (projection, last_seq)
         SELECT k, b.last_seq FROM unnest($1::text[]) AS k, kairos.checkpoints b
         WHERE b.projection = $2
         ON CONFLICT DO NOTHING",
    )
    .bind(&keys)
    .bind(projection)
    .execute(pool)
    .await?;
    Ok(())
}

/// Raises the checkpoint of a partitioned `projection` to the lowest of its `count` partitions'
/// (only up: two of these racing each other settle on the higher), and tells listeners.
pub(crate) async fn raise_base(
    pool: &PgPool,
    projection: &str,
    count: u32,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE kairos.checkpoints b SET last_seq = m.low, updated_at = now()
         FROM (SELECT min(last_seq) AS low, count(*) AS n FROM kairos.checkpoints
               WHERE starts_with(projection, $1 || '/') AND right(projection, length($3)) = $3) m
         WHERE b.projection = $1 AND m.n = $2 AND m.low > b.last_seq
         RETURNING pg_notify('kairos_checkpoint', $1 || ':' || m.low) IS NULL",
    )
    .bind(projection)
    .bind(i64::from(count))
    .bind(format!("of{count}"))
    .fetch_optional(pool)
    .await?;
    Ok(())
}

/// The key under which an event's identity is recorded: the first 16 bytes of its SHA-256
/// ([`kairos_events::Event::identity`]) as a `uuid`, a fixed-width key half the size of the
/// digest (a collision needs ~2^64 events).
pub(crate) fn applied_key(identity: &[u8; 32]) -> uuid::Uuid {
    let mut key = [0u8; 16];
    key.copy_from_slice(&identity[..16]);
    uuid::Uuid::from_bytes(key)
}

/// Creates, if missing, the table of identities a projection folded, in its schema: each
/// generation has its own, so switching generations moves it with a rename. A table of an
/// earlier version (32-byte `bytea` identities) is converted in place.
pub(crate) async fn ensure_applied_table(pool: &PgPool, schema: &str) -> Result<(), sqlx::Error> {
    // Processes starting together (the members of a partitioned projection) must not create it
    // at the same time: two `CREATE TABLE IF NOT EXISTS` racing fail on the catalog's keys.
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("kairos.applied.{schema}"))
        .execute(&mut *tx)
        .await?;
    let ty: Option<String> = sqlx::query_scalar(
        "SELECT data_type::text FROM information_schema.columns
         WHERE table_schema = $1 AND table_name = 'kairos_applied' AND column_name = 'identity'",
    )
    .bind(schema)
    .fetch_optional(&mut *tx)
    .await?;
    let table = format!("\"{}\".kairos_applied", schema.replace('"', "\"\""));
    let ddl = match ty.as_deref() {
        None => format!(
            "CREATE TABLE IF NOT EXISTS {table} (identity uuid PRIMARY KEY, seq bigint NOT NULL)"
        ),
        // Checked again under the table's lock: a runner and a replay starting together both
        // saw `bytea`, and the second must not convert a converted table.
        Some("bytea") => format!(
            "DO $convert$ BEGIN
               LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE;
               IF (SELECT atttypid = 'bytea'::regtype FROM pg_attribute
                   WHERE attrelid = '{literal}'::regclass AND attname = 'identity') THEN
                 ALTER TABLE {table} DROP CONSTRAINT IF EXISTS kairos_applied_identity_check;
                 ALTER TABLE {table} ALTER COLUMN identity TYPE uuid
                     USING encode(substring(identity FROM 1 FOR 16), 'hex')::uuid;
               END IF;
             END $convert$",
            literal = table.replace('\'', "''")
        ),
        Some(_) => {
            tx.commit().await?;
            return ensure_applied_key(pool, schema).await;
        }
    };
    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    ensure_applied_key(pool, schema).await
}

/// Gives the identity table in `schema` its primary key if it has none: a replay fills a new
/// generation's table without it (see [`record_identities`]) and builds it once, at the end,
/// which costs a fraction of keeping it up to date event by event. The key must be there
/// before anything claims identities against the table ([`claim_identities`]).
pub(crate) async fn ensure_applied_key(pool: &PgPool, schema: &str) -> Result<(), sqlx::Error> {
    let table = format!("\"{}\".kairos_applied", schema.replace('"', "\"\""));
    // Checked under the table's lock: two processes finding it without must not both add it.
    let ddl = format!(
        "DO $key$ BEGIN
           IF NOT EXISTS (SELECT 1 FROM pg_constraint
                          WHERE conrelid = '{literal}'::regclass AND contype = 'p') THEN
             LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE;
             IF NOT EXISTS (SELECT 1 FROM pg_constraint
                            WHERE conrelid = '{literal}'::regclass AND contype = 'p') THEN
               ALTER TABLE {table} ADD PRIMARY KEY (identity);
             END IF;
           END IF;
         END $key$",
        literal = table.replace('\'', "''")
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
        .execute(pool)
        .await?;
    Ok(())
}

/// Records identities in one plain insert, without looking any up: a replay's own record of
/// what it folded says they are new (into a generation's table that has no key yet).
pub(crate) async fn record_identities(
    tx: &mut PgConnection,
    identities: &[uuid::Uuid],
    seqs: &[i64],
) -> Result<(), sqlx::Error> {
    if identities.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO kairos_applied (identity, seq) SELECT * FROM unnest($1::uuid[], $2::int8[])",
    )
    .bind(identities)
    .bind(seqs)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Records identities (keys from [`applied_key`], with the sequence of each) that are usually
/// all new, with [`record_identities`]: `false` when one of them was recorded before, and then
/// the transaction failed and the batch is to be claimed again in a new one, with
/// [`claim_identities`]. Most batches hold no identity seen before, and a plain insert costs
/// less than half of one that first looks each key up (5,000 random keys into 1,000,000: ~10
/// ms against ~23 ms for the look-ups alone). Not under a savepoint: that is a round trip more
/// on every batch, to spare the rare batch with a duplicate a transaction begun again.
pub(crate) async fn record_new_identities(
    tx: &mut PgConnection,
    identities: &[uuid::Uuid],
    seqs: &[i64],
) -> Result<bool, sqlx::Error> {
    match record_identities(tx, identities, seqs).await {
        Ok(()) => Ok(true),
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("23505") => Ok(false),
        Err(e) => Err(e),
    }
}

/// Records identities, looking each one up first; returns the positions that were new.
pub(crate) async fn claim_identities(
    tx: &mut PgConnection,
    identities: &[uuid::Uuid],
    seqs: &[i64],
) -> Result<Vec<bool>, sqlx::Error> {
    if identities.is_empty() {
        return Ok(Vec::new());
    }
    // Not `ON CONFLICT DO NOTHING`: its speculative insertion costs a quarter more here (5,000
    // keys into 200,000: 23-27 ms against 18-20). Only a second writer racing this one can make
    // the insert hit a key the anti-join did not see; the caller treats that unique violation
    // as the checkpoint having moved, which is what it means.
    let fresh: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO kairos_applied (identity, seq)
         SELECT k.identity, k.seq FROM unnest($1::uuid[], $2::int8[]) AS k(identity, seq)
         WHERE NOT EXISTS (SELECT 1 FROM kairos_applied a WHERE a.identity = k.identity)
         RETURNING seq",
    )
    .bind(identities)
    .bind(seqs)
    .fetch_all(&mut *tx)
    .await?;
    let fresh: std::collections::HashSet<i64> = fresh.into_iter().collect();
    Ok(seqs.iter().map(|s| fresh.contains(s)).collect())
}

/// The sequence each of `identities` was first recorded with, for those recorded.
pub(crate) async fn first_seqs(
    tx: &mut PgConnection,
    identities: &[uuid::Uuid],
) -> Result<std::collections::HashMap<uuid::Uuid, i64>, sqlx::Error> {
    let rows: Vec<(uuid::Uuid, i64)> =
        sqlx::query_as("SELECT identity, seq FROM kairos_applied WHERE identity = ANY($1)")
            .bind(identities)
            .fetch_all(&mut *tx)
            .await?;
    Ok(rows.into_iter().collect())
}

pub(crate) struct Advance {
    pub to: StreamSeq,
    pub applied: i64,
    pub duplicates: i64,
    pub dead_lettered: i64,
}

/// Moves the checkpoint from `from` (and tells listeners: `kairos_checkpoint`, delivered on
/// commit). `false` when the checkpoint is no longer at `from`: another writer moved it, and
/// the caller rolls back. The row stays locked until the transaction ends.
pub(crate) async fn advance(
    tx: &mut PgConnection,
    projection: &str,
    from: StreamSeq,
    a: &Advance,
) -> Result<bool, sqlx::Error> {
    let moved = sqlx::query(
        "UPDATE kairos.checkpoints
         SET last_seq = $2, events_applied = events_applied + $3, duplicates = duplicates + $4,
             dead_lettered = dead_lettered + $5, updated_at = now()
         WHERE projection = $1 AND last_seq = $6
         RETURNING pg_notify('kairos_checkpoint', $7) IS NULL",
    )
    .bind(projection)
    .bind(to_i64(a.to))
    .bind(a.applied)
    .bind(a.duplicates)
    .bind(a.dead_lettered)
    .bind(to_i64(from))
    .bind(format!("{projection}:{}", a.to))
    .fetch_optional(&mut *tx)
    .await?;
    Ok(moved.is_some())
}

pub(crate) async fn enqueue_outbox(
    tx: &mut PgConnection,
    projection: &str,
    events: &[Vec<u8>],
) -> Result<(), sqlx::Error> {
    if events.is_empty() {
        return Ok(());
    }
    sqlx::query("INSERT INTO kairos.outbox (projection, event) SELECT $1, unnest($2::bytea[])")
        .bind(projection)
        .bind(events)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

pub(crate) async fn pending_outbox(
    pool: &PgPool,
    projection: &str,
) -> Result<Vec<(i64, Vec<u8>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, event FROM kairos.outbox WHERE projection = $1 ORDER BY id LIMIT 1000",
    )
    .bind(projection)
    .fetch_all(pool)
    .await
}

pub(crate) async fn delete_outbox(pool: &PgPool, ids: &[i64]) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM kairos.outbox WHERE id = ANY($1)")
        .bind(ids)
        .execute(pool)
        .await?;
    Ok(())
}

/// Stores the projection's state, as the transaction sees it now, as its state at `seq` (stored
/// by the stream at `stored_at`). Snapshots sit at fixed places of the stream (multiples of
/// `projections.snapshot_every`), whatever the batches were, so a point-in-time read folds fewer
/// than `snapshot_every` events after its snapshot.
pub(crate) async fn snapshot<P: crate::Projection>(
    tx: &mut PgConnection,
    projection: &P,
    key: &str,
    seq: StreamSeq,
    stored_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    if let Some(query) = projection.snapshot_query() {
        let sql = format!(
            "INSERT INTO kairos.snapshots (projection, seq, state, stored_at)
             SELECT $1, $2, ({query}), $3 ON CONFLICT DO NOTHING"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(key)
            .bind(to_i64(seq))
            .bind(stored_at)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn identity_table(pool: &PgPool) {
        sqlx::raw_sql(
            "CREATE TABLE kairos_applied (identity uuid PRIMARY KEY, seq bigint NOT NULL)",
        )
        .execute(pool)
        .await
        .unwrap();
    }

    /// As a batch claims its identities: a plain insert, and if one was there, the lookup in a
    /// transaction begun again.
    async fn claim(pool: &PgPool, ids: &[u128], seqs: &[i64]) -> Vec<bool> {
        let ids: Vec<uuid::Uuid> = ids.iter().map(|i| uuid::Uuid::from_u128(*i)).collect();
        let mut tx = pool.begin().await.unwrap();
        let fresh = if record_new_identities(&mut tx, &ids, seqs).await.unwrap() {
            vec![true; ids.len()]
        } else {
            tx.rollback().await.unwrap();
            tx = pool.begin().await.unwrap();
            claim_identities(&mut tx, &ids, seqs).await.unwrap()
        };
        tx.commit().await.unwrap();
        fresh
    }

    #[sqlx::test(migrations = false)]
    async fn identities_seen_before_are_not_claimed_again(pool: PgPool) {
        identity_table(&pool).await;
        assert_eq!(claim(&pool, &[1, 2], &[1, 2]).await, [true, true]);
        // The plain insert fails on identity 2: the batch is claimed again, looking each up.
        assert_eq!(
            claim(&pool, &[2, 3, 4], &[3, 4, 5]).await,
            [false, true, true]
        );
        let rows: Vec<(uuid::Uuid, i64)> =
            sqlx::query_as("SELECT identity, seq FROM kairos_applied ORDER BY seq")
                .fetch_all(&pool)
                .await
                .unwrap();
        let expected: Vec<(uuid::Uuid, i64)> = [(1, 1), (2, 2), (3, 4), (4, 5)]
            .iter()
            .map(|(i, s)| (uuid::Uuid::from_u128(*i), *s))
            .collect();
        assert_eq!(rows, expected, "identity 2 keeps its first sequence");
    }

    /// Two writers claiming the same identity: the second waits for the first, and records it
    /// only if the first rolled back.
    #[sqlx::test(migrations = false)]
    async fn a_claim_racing_another_writer_never_records_an_identity_twice(pool: PgPool) {
        identity_table(&pool).await;
        for first_commits in [true, false] {
            let id = if first_commits { 7 } else { 8 };
            let key = [uuid::Uuid::from_u128(id)];
            let mut first = pool.begin().await.unwrap();
            assert!(record_new_identities(&mut first, &key, &[1]).await.unwrap());
            let second = tokio::spawn({
                let pool = pool.clone();
                async move { claim(&pool, &[id], &[2]).await }
            });
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(
                !second.is_finished(),
                "the second writer waits for the first"
            );
            if first_commits {
                first.commit().await.unwrap();
            } else {
                first.rollback().await.unwrap();
            }
            assert_eq!(second.await.unwrap(), [!first_commits]);
            let seq: i64 = sqlx::query_scalar("SELECT seq FROM kairos_applied WHERE identity = $1")
                .bind(key[0])
                .fetch_one(&pool)
                .await
                .unwrap();
            assert_eq!(seq, if first_commits { 1 } else { 2 });
        }
    }
}
