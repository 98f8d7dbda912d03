//! Requests refused for want of a valid key, audited in aggregate: one `kairos.user.action.v1`
//! per client address per minute, counting them and why, instead of one event each. Anyone can
//! send such requests, and the stream keeps what it is given forever; the count keeps the log's
//! size bounded by the number of addresses, not by the requests.
//!
//! A minute's tally is published once the clock has left it (a task looks every second), and
//! every tally when the server stops. A tally whose publish fails is kept and tried again.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use kairos_bus::Bus;
use kairos_events::Clock;
use kairos_events::types::USER_ACTION;
use serde_json::json;

/// How many (minute, address) tallies are kept at once; refusals from further addresses are
/// counted under [`OTHERS`] until the minute is published.
const MAX_TALLIES: usize = 10_000;

/// How many distinct reasons (and request lines) one tally names; the rest are counted as
/// `other`.
const MAX_NAMED: usize = 10;

/// The address a tally counts refusals under once [`MAX_TALLIES`] addresses are being counted.
pub const OTHERS: &str = "other addresses";

/// The action of an aggregated entry.
pub const ACTION: &str = "auth.refused";

/// The refusals of one address in one minute.
#[derive(Debug, Default, Clone)]
struct Tally {
    requests: u64,
    reasons: BTreeMap<String, u64>,
    requested: BTreeMap<String, u64>,
}

impl Tally {
    fn add(&mut self, request: &str, reason: &str) {
        self.requests += 1;
        count(&mut self.reasons, reason);
        count(&mut self.requested, request);
    }

    fn merge(&mut self, other: Tally) {
        self.requests += other.requests;
        for (k, n) in other.reasons {
            *self.reasons.entry(k).or_default() += n;
        }
        for (k, n) in other.requested {
            *self.requested.entry(k).or_default() += n;
        }
    }
}

/// Counts `key` in `map`, under `other` once the map names [`MAX_NAMED`] keys.
fn count(map: &mut BTreeMap<String, u64>, key: &str) {
    let key: String = key.chars().take(200).collect();
    let key = if map.contains_key(&key) || map.len() < MAX_NAMED {
        key
    } else {
        "other".to_owned()
    };
    *map.entry(key).or_default() += 1;
}

/// `a ×3, b ×1`, the most frequent first.
fn listed(map: &BTreeMap<String, u64>) -> String {
    let mut items: Vec<_> = map.iter().collect();
    items.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    items
        .iter()
        .map(|(k, n)| format!("{k} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

struct Inner {
    bus: Bus,
    clock: Clock,
    /// Tells this process's entries apart from another's for the same address and minute.
    instance: String,
    tallies: Mutex<BTreeMap<(i64, String), Tally>>,
}

/// The refusals being counted; clones share them.
#[derive(Clone)]
pub struct Refusals(Arc<Inner>);

impl std::fmt::Debug for Refusals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refusals").finish_non_exhaustive()
    }
}

impl Refusals {
    /// Counts refusals published on `bus`, their minutes told by `clock`. Inside a Tokio runtime
    /// a task publishes each minute once it has passed, until the last clone is dropped.
    pub fn new(bus: Bus, clock: Clock) -> Self {
        let refusals = Self(Arc::new(Inner {
            bus,
            clock,
            instance: uuid::Uuid::new_v4().simple().to_string(),
            tallies: Mutex::default(),
        }));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(publish_each_minute(Arc::downgrade(&refusals.0)));
        }
        refusals
    }

    fn tallies(&self) -> std::sync::MutexGuard<'_, BTreeMap<(i64, String), Tally>> {
        self.0.tallies.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one refused request (`request`: method and route) from `ip`.
    pub fn add(&self, ip: Option<&str>, request: &str, reason: &str) {
        let minute = self.0.clock.now().timestamp().div_euclid(60);
        let ip = ip.unwrap_or("unknown");
        let mut tallies = self.tallies();
        let key = if tallies.len() < MAX_TALLIES || tallies.contains_key(&(minute, ip.to_owned())) {
            (minute, ip.to_owned())
        } else {
            (minute, OTHERS.to_owned())
        };
        tallies.entry(key).or_default().add(request, reason);
    }

    /// Publishes the tallies of the minutes the clock has left (every tally with `all`); returns
    /// how many entries were published. Those that could not be are kept for the next try.
    pub async fn publish(&self, all: bool) -> usize {
        let now = self.0.clock.now().timestamp().div_euclid(60);
        let due: Vec<((i64, String), Tally)> = {
            let mut tallies = self.tallies();
            let keep = if all {
                BTreeMap::new()
            } else {
                tallies.split_off(&(now, String::new()))
            };
            std::mem::replace(&mut *tallies, keep).into_iter().collect()
        };
        let mut published = 0;
        for ((minute, ip), tally) in due {
            match self.publish_one(minute, &ip, &tally).await {
                Ok(()) => published += 1,
                Err(error) => {
                    tracing::error!(%error, ip, "could not record the refused requests; will retry");
                    self.tallies().entry((minute, ip)).or_default().merge(tally);
                }
            }
        }
        published
    }

    async fn publish_one(&self, minute: i64, ip: &str, tally: &Tally) -> Result<(), String> {
        let start = chrono::DateTime::from_timestamp(minute * 60, 0).unwrap_or_default();
        let data = json!({
            "actor": "anonymous",
            "action": ACTION,
            "resource": "requests without a valid key",
            "outcome": "denied",
            "reason": format!(
                "{} {} without a valid key in the minute from {}: {}; requested {}",
                tally.requests,
                if tally.requests == 1 { "request" } else { "requests" },
                start.format("%Y-%m-%dT%H:%M:%SZ"),
                listed(&tally.reasons),
                listed(&tally.requested),
            )
            .chars()
            .take(1000)
            .collect::<String>(),
            "ip": ip,
        });
        // One id per process, address and minute: a retry after a lost acknowledgement is a
        // duplicate of the first, not a second count.
        let event = kairos_events::Emit::new(USER_ACTION, "kairos/api", data)
            .id(format!("refused-{}-{minute}-{ip}", self.0.instance))
            .time(start + chrono::TimeDelta::seconds(60))
            .build()
            .map_err(|e| e.to_string())?;
        self.0
            .bus
            .publish_event(&event)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// Publishes the minutes that have passed, every second, while `refusals` lives.
async fn publish_each_minute(refusals: Weak<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = refusals.upgrade() else {
            return;
        };
        Refusals(inner).publish(false).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_names_its_most_frequent_reasons_and_counts_the_rest() {
        let mut t = Tally::default();
        for i in 0..15 {
            t.add("POST /v1/events", &format!("reason {i}"));
        }
        t.add("POST /v1/events", "reason 3");
        assert_eq!(t.requests, 16);
        assert_eq!(t.reasons.len(), MAX_NAMED + 1);
        assert_eq!(t.reasons["other"], 5);
        assert!(listed(&t.reasons).starts_with("other ×5, reason 3 ×2, reason 0 ×1"));
        assert_eq!(listed(&t.requested), "POST /v1/events ×16");
    }
}
