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

/// Locks the checkpoint row for the rest of the transaction and returns it.
pub(crate) async fn lock_checkpoint(
    tx: &mut PgConnection,
    projection: &str,
) -> Result<StreamSeq, sqlx::Error> {
    let seq: i64 = sqlx::query_scalar(
        "SELECT last_seq FROM kairos.checkpoints WHERE projection = $1 FOR UPDATE",
    )
    .bind(projection)
    .fetch_one(&mut *tx)
    .await?;
    Ok(StreamSeq(to_u64(seq)))
}

/// Creates, if missing, the table of identities a projection folded, in its schema: each
/// generation has its own, so switching generations moves it with a rename.
pub(crate) async fn ensure_applied_table(pool: &PgPool, schema: &str) -> Result<(), sqlx::Error> {
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM information_schema.tables WHERE table_schema = $1 AND table_name = 'kairos_applied')",
    )
    .bind(schema)
    .fetch_one(pool)
    .await?;
    if !exists {
        let ddl = format!(
            "CREATE TABLE IF NOT EXISTS \"{}\".kairos_applied (
                 identity bytea PRIMARY KEY CHECK (length(identity) = 32), seq bigint NOT NULL)",
            schema.replace('"', "\"\"")
        );
        sqlx::query(sqlx::AssertSqlSafe(ddl)).execute(pool).await?;
    }
    Ok(())
}

/// Records identities; returns the positions (in `identities`) that were new.
pub(crate) async fn claim_identities(
    tx: &mut PgConnection,
    identities: &[[u8; 32]],
    seqs: &[i64],
) -> Result<Vec<bool>, sqlx::Error> {
    if identities.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Vec<u8>> = identities.iter().map(|i| i.to_vec()).collect();
    let fresh: Vec<Vec<u8>> = sqlx::query_scalar(
        "INSERT INTO kairos_applied (identity, seq)
         SELECT i, s FROM unnest($1::bytea[], $2::int8[]) AS t(i, s)
         ON CONFLICT DO NOTHING
         RETURNING identity",
    )
    .bind(&ids)
    .bind(seqs)
    .fetch_all(&mut *tx)
    .await?;
    let fresh: std::collections::HashSet<Vec<u8>> = fresh.into_iter().collect();
    Ok(ids.iter().map(|i| fresh.contains(i)).collect())
}

pub(crate) struct Advance {
    pub to: StreamSeq,
    pub applied: i64,
    pub duplicates: i64,
    pub dead_lettered: i64,
}

/// Moves the checkpoint and tells listeners (`kairos_checkpoint`, delivered on commit).
pub(crate) async fn advance(
    tx: &mut PgConnection,
    projection: &str,
    a: &Advance,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE kairos.checkpoints
         SET last_seq = $2, events_applied = events_applied + $3, duplicates = duplicates + $4,
             dead_lettered = dead_lettered + $5, updated_at = now()
         WHERE projection = $1",
    )
    .bind(projection)
    .bind(to_i64(a.to))
    .bind(a.applied)
    .bind(a.duplicates)
    .bind(a.dead_lettered)
    .execute(&mut *tx)
    .await?;
    sqlx::query("SELECT pg_notify('kairos_checkpoint', $1)")
        .bind(format!("{projection}:{}", a.to))
        .execute(&mut *tx)
        .await?;
    Ok(())
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

/// Stores the projection's state at `seq` when `every` sequences passed since the last snapshot.
pub(crate) async fn maybe_snapshot<P: crate::Projection>(
    tx: &mut PgConnection,
    projection: &P,
    key: &str,
    seq: StreamSeq,
    every: u64,
) -> Result<(), sqlx::Error> {
    let last: Option<i64> =
        sqlx::query_scalar("SELECT max(seq) FROM kairos.snapshots WHERE projection = $1")
            .bind(key)
            .fetch_one(&mut *tx)
            .await?;
    if seq.0 < last.map_or(0, to_u64) + every {
        return Ok(());
    }
    if let Some(state) = projection.snapshot(&mut *tx).await? {
        sqlx::query("INSERT INTO kairos.snapshots (projection, seq, state) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind(key)
            .bind(to_i64(seq))
            .bind(state)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}
