//! Waiting for a projection to reach a stream sequence (read-your-writes).

use std::collections::HashMap;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::watch;
use tracing::warn;

use crate::store;

#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("projection {projection} reached sequence {reached}, not {wanted}, within {waited:?}")]
    Timeout {
        projection: String,
        wanted: u64,
        reached: u64,
        waited: Duration,
    },
    #[error("projection database: {0}")]
    Database(#[from] sqlx::Error),
}

/// Follows every projection's checkpoint through PostgreSQL notifications (sent in the same
/// transaction as the checkpoint), so it works whichever process runs the projection.
#[derive(Clone)]
pub struct CheckpointWatch {
    pool: PgPool,
    seen: watch::Receiver<HashMap<String, u64>>,
}

impl CheckpointWatch {
    /// Starts listening on `kairos_checkpoint` in a background task.
    pub async fn start(pool: PgPool) -> Result<Self, sqlx::Error> {
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen("kairos_checkpoint").await?;
        let (tx, rx) = watch::channel(HashMap::new());
        tokio::spawn(async move {
            loop {
                // Ends when every watcher is gone, releasing the listener's connection.
                let next = tokio::select! {
                    n = listener.recv() => n,
                    () = tx.closed() => return,
                };
                match next {
                    Ok(n) => {
                        if let Some((name, seq)) = n.payload().rsplit_once(':')
                            && let Ok(seq) = seq.parse::<u64>()
                        {
                            tx.send_modify(|m| {
                                let e: &mut u64 = m.entry(name.to_owned()).or_default();
                                *e = (*e).max(seq);
                            });
                        }
                    }
                    Err(sqlx::Error::PoolClosed) => return,
                    Err(e) => {
                        // PgListener reconnects on the next recv; waiters also poll meanwhile.
                        warn!(error = %e, "checkpoint listener interrupted");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        Ok(Self { pool, seen: rx })
    }

    /// The last checkpoint of `projection` a notification announced, if any did since this
    /// watch started (no query).
    pub fn announced(&self, projection: &str) -> Option<u64> {
        self.seen.borrow().get(projection).copied()
    }

    /// Every projection's last announced checkpoint, changed with each notification (a live
    /// page waits on it).
    pub fn changes(&self) -> watch::Receiver<HashMap<String, u64>> {
        self.seen.clone()
    }

    /// Returns once `projection` has applied stream sequence `seq`, or fails after `timeout`.
    pub async fn wait_for(
        &self,
        projection: &str,
        seq: u64,
        timeout: Duration,
    ) -> Result<u64, WaitError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut seen = self.seen.clone();
        let mut poll = true;
        loop {
            if let Some(&reached) = seen.borrow_and_update().get(projection)
                && reached >= seq
            {
                return Ok(reached);
            }
            // The table is the truth, read first and whenever no notification came for a while;
            // notifications alone make the wait short without a query each.
            let reached = if poll {
                let r = store::checkpoint(&self.pool, projection)
                    .await?
                    .map_or(0, |c| c.last_seq);
                if r >= seq {
                    return Ok(r);
                }
                r
            } else {
                seen.borrow().get(projection).copied().unwrap_or(0)
            };
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(WaitError::Timeout {
                    projection: projection.to_owned(),
                    wanted: seq,
                    reached,
                    waited: timeout,
                });
            }
            let nap = (deadline - now).min(Duration::from_millis(250));
            poll = !matches!(tokio::time::timeout(nap, seen.changed()).await, Ok(Ok(())));
            if poll && seen.has_changed().is_err() {
                // The listener is gone: fall back to polling at the nap interval.
                tokio::time::sleep(nap).await;
            }
        }
    }
}
