//! Scale-out: one projection folded by several processes at once.
//!
//! A projection that declares itself partitionable ([`crate::Projection::partitionable`]: the
//! state of a project depends only on that project's events and the global ones) can be split
//! into `projections.partitions` partitions. A message belongs to the partition its project
//! (the subject's last token) hashes to ([`partition_of`]); a global message (`_global`, say a
//! catalog change) belongs to every partition. Each partition has
//!
//! - its own durable consumer (`<name>-p<k>of<n>`) over the whole stream: nats-server 2.9 has one
//!   filter subject per consumer and no subject mapping on streams, so a partition cannot be
//!   selected on the server, and each consumer passes over the other partitions' messages
//!   without parsing them;
//! - its own checkpoint (`<name>/<k>of<n>`), moved with its batch in one transaction, fenced
//!   like every checkpoint (an advance from a position it is no longer at rolls back);
//! - `kairos.partition` set to `<k>/<n>` in its transactions, for the projection's SQL that
//!   reaches across projects (`kairos.in_partition(project)`).
//!
//! The projection's own checkpoint (`<name>`) is raised to the lowest partition's after each
//! batch, so readers waiting for a sequence, the lag figures and a replay see one position.
//!
//! Processes share the partitions through PostgreSQL advisory locks, held by one session per
//! process. Each takes a member slot (`kairos.member.<name>.<slot>`); every second it counts the members holding one, works out
//! its fair share (`n / members`, one more for the first `n % members` by slot) and takes free
//! partitions (`kairos.partition.<name>/<k>of<n>`) up to it, or lets go of the ones above it.
//! A process that dies loses its session and with it its locks: the others take its
//! partitions on their next count. The new holder recreates the partition's consumer at the
//! partition's checkpoint, so nothing the dead one had pulled waits for its ack deadline.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kairos_bus::Bus;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::{Projection, Runner, RunnerConfig, RunnerError};

/// Most partitions a projection can be split into, and most member processes.
pub const MAX_PARTITIONS: u32 = 64;

/// How often a member counts the others and rebalances.
const TICK: Duration = Duration::from_secs(1);

/// One partition of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Partition {
    pub index: u32,
    pub count: u32,
}

/// The partition (of `count`) project `project` belongs to: the first four bytes of the SHA-256
/// of its id, big-endian, modulo `count`. `kairos.partition_of` in SQL computes the same.
pub fn partition_of(project: &str, count: u32) -> u32 {
    let d = Sha256::digest(project.as_bytes());
    u32::from_be_bytes([d[0], d[1], d[2], d[3]]) % count.max(1)
}

/// The project a subject (`<prefix>.events.<category>.<project>`) is stored under; `None` for
/// a global event.
fn subject_project(subject: &str) -> Option<&str> {
    subject.rsplit('.').next().filter(|p| *p != "_global")
}

impl Partition {
    /// The checkpoint key: `<projection>/<index>of<count>`.
    pub fn key(&self, projection: &str) -> String {
        format!("{projection}/{}of{}", self.index, self.count)
    }

    /// The durable consumer's name (JetStream names take no `/`).
    pub fn consumer(&self, projection: &str) -> String {
        format!("{projection}-p{}of{}", self.index, self.count)
    }

    /// The value of `kairos.partition` in its transactions.
    pub(crate) fn setting(&self) -> String {
        format!("{}/{}", self.index, self.count)
    }

    /// Whether the message stored on `subject` is folded by this partition: its projects'
    /// messages, and every global one.
    pub fn holds(&self, subject: &str) -> bool {
        subject_project(subject).is_none_or(|p| partition_of(p, self.count) == self.index)
    }

    /// The dedupe key of an event in this partition. A project's event has one partition, and
    /// keeps its identity; a global event is folded by every partition, once each, so its
    /// identity is taken with the partition's.
    pub(crate) fn identity(&self, subject: &str, identity: [u8; 32]) -> [u8; 32] {
        if subject_project(subject).is_some() {
            return identity;
        }
        let mut h = Sha256::new();
        h.update(identity);
        h.update(b"kairos.partition");
        h.update(self.index.to_be_bytes());
        h.update(self.count.to_be_bytes());
        h.finalize().into()
    }
}

/// How many of `count` partitions the member at `rank` of `members` should hold.
fn share(count: u32, members: u32, rank: u32) -> u32 {
    let members = members.max(1);
    count / members + u32::from(rank < count % members)
}

/// A held partition's task, aborted when dropped, so a member that stops leaves nothing running.
struct Held(JoinHandle<Result<(), RunnerError>>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn try_lock(conn: &mut PgConnection, key: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
        .bind(key)
        .fetch_one(conn)
        .await
}

fn slot_key(name: &str, slot: u32) -> String {
    format!("kairos.member.{name}.{slot}")
}

fn partition_lock(name: &str, p: Partition) -> String {
    format!("kairos.partition.{}", p.key(name))
}

/// The member slots held in this database, in order.
async fn live_slots(conn: &mut PgConnection, name: &str) -> Result<Vec<u32>, sqlx::Error> {
    let slots: Vec<i32> = sqlx::query_scalar(
        "SELECT s FROM generate_series(0, $2 - 1) AS s,
                LATERAL (SELECT hashtextextended($1 || s, 0) AS h) k
         WHERE EXISTS (
             SELECT 1 FROM pg_locks l
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND l.classid::bigint = ((k.h >> 32) & 4294967295)
               AND l.objid::bigint = (k.h & 4294967295))
         ORDER BY s",
    )
    .bind(format!("kairos.member.{name}."))
    .bind(MAX_PARTITIONS as i32)
    .fetch_all(conn)
    .await?;
    Ok(slots.into_iter().map(|s| s as u32).collect())
}

/// One member's session: it holds the projection's lock (shared with the other members; an
/// unpartitioned runner takes it exclusively), the member slot and the partitions' locks, all
/// released together when the session ends.
struct Session {
    conn: PgConnection,
    slot: u32,
}

impl Session {
    async fn open(pool: &PgPool, name: &str) -> Result<Self, RunnerError> {
        let mut conn = pool.acquire().await?.detach();
        let got: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock_shared(hashtextextended($1, 0))")
                .bind(format!("kairos.projection.{name}"))
                .fetch_one(&mut conn)
                .await?;
        if !got {
            info!(
                projection = name,
                "an unpartitioned runner is active; standing by"
            );
            sqlx::query("SELECT pg_advisory_lock_shared(hashtextextended($1, 0))")
                .bind(format!("kairos.projection.{name}"))
                .execute(&mut conn)
                .await?;
        }
        for slot in 0..MAX_PARTITIONS {
            if try_lock(&mut conn, &slot_key(name, slot)).await? {
                info!(projection = name, slot, "joined as a member");
                return Ok(Self { conn, slot });
            }
        }
        Err(RunnerError::Consumer {
            consumer: name.to_owned(),
            message: format!("more than {MAX_PARTITIONS} members; this one stays out"),
        })
    }
}

/// Runs one member of a partitioned projection: takes its share of the `count` partitions and
/// folds them, until the task is dropped or the database refuses the partitioning.
pub(crate) async fn run_member<P: Projection>(
    projection: Arc<P>,
    bus: Bus,
    pool: PgPool,
    config: RunnerConfig,
    count: u32,
) -> Result<(), RunnerError> {
    let name = projection.name();
    crate::store::ensure_partitions(&pool, name, count)
        .await
        .map_err(|e| match e {
            crate::store::PartitionsError::Database(e) => RunnerError::Database(e),
            crate::store::PartitionsError::Other(message) => RunnerError::Consumer {
                consumer: name.to_owned(),
                message,
            },
        })?;
    crate::store::ensure_applied_table(&pool, projection.schema()).await?;
    let mut session: Option<Session> = None;
    let mut held: BTreeMap<u32, Held> = BTreeMap::new();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        // The session's locks are what lets this member write: without it, nothing runs.
        if let Some(s) = session.as_mut()
            && let Err(e) = sqlx::query("SELECT 1").execute(&mut s.conn).await
        {
            warn!(projection = name, error = %e, "lost the member's session; stopping its partitions");
            session = None;
        }
        if session.is_none() {
            held.clear();
            match Session::open(&pool, name).await {
                Ok(s) => session = Some(s),
                Err(e) => {
                    warn!(projection = name, error = %e, "cannot join; will retry");
                    crate::metrics::partitions_held(name, 0);
                    continue;
                }
            }
        }
        let Some(s) = session.as_mut() else { continue };
        if let Err(e) = rebalance(&projection, &bus, &pool, &config, count, s, &mut held).await {
            warn!(projection = name, error = %e, "rebalancing failed; will retry");
        }
        crate::metrics::partitions_held(name, held.len());
    }
}

async fn rebalance<P: Projection>(
    projection: &Arc<P>,
    bus: &Bus,
    pool: &PgPool,
    config: &RunnerConfig,
    count: u32,
    session: &mut Session,
    held: &mut BTreeMap<u32, Held>,
) -> Result<(), RunnerError> {
    let name = projection.name();
    // A partition whose task ended (a fatal error) is let go, and taken again on a later count.
    let ended: Vec<u32> = held
        .iter()
        .filter(|(_, h)| h.0.is_finished())
        .map(|(k, _)| *k)
        .collect();
    for k in ended {
        if let Some(mut h) = held.remove(&k) {
            match (&mut h.0).await {
                Ok(Err(e)) => {
                    warn!(projection = name, partition = k, error = %e, "partition stopped")
                }
                Err(e) => {
                    warn!(projection = name, partition = k, error = %e, "partition task failed")
                }
                Ok(Ok(())) => {}
            }
            release(session, name, Partition { index: k, count }, h).await?;
        }
    }
    let live = live_slots(&mut session.conn, name).await?;
    let rank = live
        .iter()
        .position(|s| *s == session.slot)
        .unwrap_or(live.len()) as u32;
    let members = (live.len() as u32).max(rank + 1);
    let target = share(count, members, rank) as usize;
    while held.len() > target {
        let Some((k, h)) = held.pop_last() else { break };
        info!(
            projection = name,
            partition = k,
            members,
            "handing the partition over"
        );
        release(session, name, Partition { index: k, count }, h).await?;
    }
    if held.len() < target {
        // Start looking where this member's share would begin, so members starting together
        // do not all try the same partitions first.
        let start = rank * count / members;
        for i in 0..count {
            if held.len() >= target {
                break;
            }
            let k = (start + i) % count;
            if held.contains_key(&k) {
                continue;
            }
            let p = Partition { index: k, count };
            if !try_lock(&mut session.conn, &partition_lock(name, p)).await? {
                continue;
            }
            info!(
                projection = name,
                partition = k,
                count,
                members,
                "took the partition"
            );
            let runner = Runner::partitioned(
                Arc::clone(projection),
                bus.clone(),
                pool.clone(),
                config.clone(),
                p,
            );
            held.insert(k, Held(tokio::spawn(runner.consume(true))));
        }
    }
    Ok(())
}

/// Stops the partition's task, waits until it is gone, and lets go of its lock.
async fn release(
    session: &mut Session,
    name: &str,
    p: Partition,
    mut h: Held,
) -> Result<(), RunnerError> {
    h.0.abort();
    let _ = (&mut h.0).await;
    // A batch the task was committing when it was aborted may still commit: its checkpoint
    // advance is fenced, so a new holder that read the checkpoint before it rolls back.
    sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
        .bind(partition_lock(name, p))
        .execute(&mut session.conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_to_the_partitions() {
        for count in 1..=12 {
            for members in 1..=8 {
                let total: u32 = (0..members).map(|r| share(count, members, r)).sum();
                assert_eq!(total, count, "{count} partitions, {members} members");
                let most = (0..members)
                    .map(|r| share(count, members, r))
                    .max()
                    .unwrap();
                let least = (0..members)
                    .map(|r| share(count, members, r))
                    .min()
                    .unwrap();
                assert!(most - least <= 1);
            }
        }
    }

    #[test]
    fn a_project_has_one_partition_and_a_global_event_every_one() {
        let of = |k| Partition { index: k, count: 6 };
        let subject = "kairos.events.llm.acme";
        let holders: Vec<u32> = (0..6).filter(|k| of(*k).holds(subject)).collect();
        assert_eq!(holders, [partition_of("acme", 6)]);
        assert!((0..6).all(|k| of(k).holds("kairos.events.catalog._global")));
        // A project's event keeps its identity; a global one gets one per partition.
        let id = [7u8; 32];
        assert_eq!(of(1).identity(subject, id), id);
        let global: std::collections::HashSet<[u8; 32]> = (0..6)
            .map(|k| of(k).identity("kairos.events.catalog._global", id))
            .collect();
        assert_eq!(global.len(), 6);
        assert!(!global.contains(&id));
    }

    #[test]
    fn projects_spread_over_the_partitions() {
        let mut counts = [0u32; 6];
        for i in 0..6000 {
            counts[partition_of(&format!("project-{i}"), 6) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
    }

    /// The SQL function and the Rust one agree (the migration is the runtime's).
    #[sqlx::test(migrations = "../../migrations")]
    async fn sql_and_rust_put_a_project_in_the_same_partition(pool: PgPool) {
        for project in ["acme", "a", "project-42", "zz_top-9", "ünïcode"] {
            for n in [1u32, 2, 3, 6, 64] {
                let sql: i32 = sqlx::query_scalar("SELECT kairos.partition_of($1, $2)")
                    .bind(project)
                    .bind(n as i32)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                assert_eq!(sql as u32, partition_of(project, n), "{project} of {n}");
            }
        }
        let mut tx = pool.begin().await.unwrap();
        let outside: bool = sqlx::query_scalar("SELECT kairos.in_partition('acme')")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert!(outside, "outside a partitioned run every project is in");
        let k = partition_of("acme", 3);
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SET LOCAL kairos.partition TO '{}/3'",
            (k + 1) % 3
        )))
        .execute(&mut *tx)
        .await
        .unwrap();
        let other: bool = sqlx::query_scalar("SELECT kairos.in_partition('acme')")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert!(!other);
    }
}
