//! Where "now" comes from.
//!
//! Everything in Kairos that needs the current time (the default budget month of a read, the
//! `time` of an event Kairos emits, key and invitation expiry, the "not in the future" check of a
//! point-in-time read) asks one [`Clock`], handed in at start-up. A test pins it, so no assertion
//! depends on the day the suite runs or on the machine's time zone.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, TimeDelta, Utc};

/// The source of the current time: the system clock, or a manual one a test sets.
///
/// ```
/// use kairos_events::Clock;
/// let clock = Clock::fixed("2026-12-31T23:59:59.999Z".parse().unwrap());
/// clock.advance(chrono::TimeDelta::milliseconds(1));
/// assert_eq!(clock.now().to_rfc3339(), "2027-01-01T00:00:00+00:00");
/// ```
#[derive(Clone, Default)]
pub struct Clock(Option<Arc<AtomicI64>>);

impl Clock {
    /// The system's clock.
    pub fn system() -> Self {
        Self(None)
    }

    /// A manual clock standing at `at` until [`Clock::set`] or [`Clock::advance`] moves it.
    /// Clones share it: moving one moves every component it was handed to.
    pub fn fixed(at: DateTime<Utc>) -> Self {
        Self(Some(Arc::new(AtomicI64::new(nanos(at)))))
    }

    /// The current time.
    pub fn now(&self) -> DateTime<Utc> {
        match &self.0 {
            None => Utc::now(),
            Some(t) => DateTime::from_timestamp_nanos(t.load(Ordering::Relaxed)),
        }
    }

    /// Moves a manual clock to `at`; the system clock cannot be set (a no-op).
    pub fn set(&self, at: DateTime<Utc>) {
        if let Some(t) = &self.0 {
            t.store(nanos(at), Ordering::Relaxed);
        }
    }

    /// Moves a manual clock forward by `by` (backwards if negative).
    pub fn advance(&self, by: TimeDelta) {
        if let Some(t) = &self.0 {
            let by = by.num_nanoseconds().unwrap_or(i64::MAX);
            t.fetch_add(by, Ordering::Relaxed);
        }
    }

    /// Whether this is a manual clock.
    pub fn is_manual(&self) -> bool {
        self.0.is_some()
    }
}

/// Nanoseconds since the epoch; instants past the range of `i64` nanoseconds (years before 1677
/// or after 2262) are clamped, far outside any time Kairos deals with.
fn nanos(at: DateTime<Utc>) -> i64 {
    at.timestamp_nanos_opt().unwrap_or(if at.timestamp() < 0 {
        i64::MIN
    } else {
        i64::MAX
    })
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            None => f.write_str("Clock::system()"),
            Some(_) => write!(f, "Clock::fixed({})", self.now()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().expect("an RFC 3339 time")
    }

    #[test]
    fn a_manual_clock_stands_still_until_moved_and_clones_move_together() {
        let c = Clock::fixed(at("2026-12-31T23:59:59.999Z"));
        let shared = c.clone();
        assert_eq!(c.now(), at("2026-12-31T23:59:59.999Z"));
        assert_eq!(c.now(), c.now());
        shared.advance(TimeDelta::milliseconds(1));
        assert_eq!(c.now(), at("2027-01-01T00:00:00Z"));
        c.set(at("2030-06-01T00:00:00Z"));
        assert_eq!(shared.now(), at("2030-06-01T00:00:00Z"));
        assert!(c.is_manual());
    }

    #[test]
    fn the_system_clock_follows_the_system() {
        let c = Clock::system();
        c.set(at("2000-01-01T00:00:00Z"));
        assert!(!c.is_manual());
        // Only an ordering against the system's own reading: no assumption about the date.
        let before = Utc::now();
        assert!(c.now() >= before);
    }
}
