//! Turning a stream of anomaly scores into alerts a person can act on: hysteresis, cool-down,
//! deduplication and gaps in time.
//!
//! * **Raise**: the score is at or above [`AlertConfig::raise_above`] for
//!   [`AlertConfig::raise_points`] consecutive points.
//! * **Resolve**: the score is below [`AlertConfig::resolve_below`] for
//!   [`AlertConfig::resolve_points`] consecutive points (scores between the two thresholds keep a
//!   firing alert firing and a quiet one quiet: that band is what stops flapping).
//! * **Cool-down**: after a resolve, no alert is raised for [`AlertConfig::cooldown`].
//! * **Deduplication**: one alert per episode; scores while firing only update its peak.
//! * **Gaps**: when two points are more than [`AlertConfig::max_gap`] apart, nothing before the
//!   gap counts for what comes after: pending raise and resolve counts restart, a cool-down
//!   in progress ends, and a firing alert is resolved at the last point before the gap (it can
//!   no longer be confirmed).
//! * **Constant series**: the detector scores a constant series `0`, and nothing here divides,
//!   so it never alerts.
//! * **Expected range** (with [`Alerting::observe_value`]): the alert carries the range the
//!   series' last [`RECENT`] values spanned before it (their 2nd to 98th percentile, widened by
//!   half its width). A low score resolves it only while the value is back in that range, so a
//!   detector that has grown used to a broken state does not end the alert; after
//!   [`AlertConfig::new_normal_points`] low scores in a row the new level is accepted anyway
//!   (reason `new_normal`; `0` never accepts it, as for the series a circuit breaker follows).

use chrono::{NaiveDateTime, TimeDelta};
use serde::{Deserialize, Serialize};

/// Alerting thresholds and timings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertConfig {
    pub raise_above: f64,
    pub raise_points: usize,
    pub resolve_below: f64,
    pub resolve_points: usize,
    pub cooldown: TimeDelta,
    pub max_gap: TimeDelta,
    /// Low scores in a row after which a firing alert resolves even though its value stays
    /// outside the expected range (`0`: never).
    #[serde(default)]
    pub new_normal_points: usize,
}

/// How many recent values the expected range is taken from.
pub const RECENT: usize = 120;

impl Default for AlertConfig {
    /// Raise at the detector's confident level ([`crate::detector::ALERT_LEVEL`]) at once;
    /// resolve after 12 points below `0.2`; an hour of cool-down; a six-hour gap resets.
    fn default() -> Self {
        Self {
            raise_above: crate::detector::ALERT_LEVEL,
            raise_points: 1,
            resolve_below: 0.2,
            resolve_points: 12,
            cooldown: TimeDelta::hours(1),
            max_gap: TimeDelta::hours(6),
            new_normal_points: 0,
        }
    }
}

/// What an observation changed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AlertEvent {
    /// An alert started at `at` with this score; `expected` is the range the recent values
    /// spanned (none: no values were given).
    Raised {
        at: NaiveDateTime,
        score: f64,
        expected: Option<(f64, f64)>,
    },
    /// The alert raised at `raised_at` ended at `at`; `peak` is its highest score.
    Resolved {
        raised_at: NaiveDateTime,
        at: NaiveDateTime,
        peak: f64,
        reason: ResolveReason,
    },
}

/// Why an alert ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolveReason {
    /// The score stayed low long enough.
    Recovered,
    /// The series went quiet for longer than the maximum gap.
    Gap,
    /// The score stayed low while the value stayed outside the expected range: the new level
    /// is accepted.
    NewNormal,
}

impl ResolveReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Recovered => "recovered",
            Self::Gap => "gap",
            Self::NewNormal => "new_normal",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
enum State {
    Quiet {
        high_run: usize,
    },
    Firing {
        since: NaiveDateTime,
        peak: f64,
        low_run: usize,
        #[serde(default)]
        calm_run: usize,
        #[serde(default)]
        expected: Option<(f64, f64)>,
    },
    Cooling {
        until: NaiveDateTime,
    },
}

/// The alert state of one series: plain data, saved and restored with
/// [`Alerting::to_bytes`] and [`Alerting::from_bytes`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alerting {
    config: AlertConfig,
    state: State,
    last: Option<NaiveDateTime>,
    /// The last [`RECENT`] values given (oldest first), for the expected range.
    #[serde(default)]
    recent: std::collections::VecDeque<f64>,
}

/// The range `values` span: their 2nd to 98th percentile, widened by half its width on each
/// side (by a hair when they are all equal).
pub fn expected_range(values: &std::collections::VecDeque<f64>) -> Option<(f64, f64)> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    let (lo, hi) = (at(0.02), at(0.98));
    // Halved before the difference, so that values near f64::MAX do not overflow; a range that
    // is still not finite is no range.
    let margin = (hi * 0.5 - lo * 0.5).max(1e-9 * lo.abs().max(hi.abs()).max(1.0));
    let (lo, hi) = (lo - margin, hi + margin);
    (lo.is_finite() && hi.is_finite()).then_some((lo, hi))
}

impl Alerting {
    pub fn new(config: AlertConfig) -> Self {
        Self {
            config,
            state: State::Quiet { high_run: 0 },
            last: None,
            recent: std::collections::VecDeque::new(),
        }
    }

    /// The alert's expected range, while one is firing.
    pub fn expected(&self) -> Option<(f64, f64)> {
        match self.state {
            State::Firing { expected, .. } => expected,
            _ => None,
        }
    }

    /// The whole state (JSON), to restore with [`Alerting::from_bytes`].
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Restores an alerting state saved by [`Alerting::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Whether an alert is firing.
    pub fn is_firing(&self) -> bool {
        matches!(self.state, State::Firing { .. })
    }

    /// Takes the next score; returns the events it caused (at most a gap's resolve and a raise).
    /// Points out of order (not after the last one) are ignored.
    pub fn observe(&mut self, at: NaiveDateTime, score: f64) -> Vec<AlertEvent> {
        self.observe_point(at, score, None)
    }

    /// [`Alerting::observe`] of a point whose value is known: the alert carries the expected
    /// range, and resolves only once the value is back in it (see the module's notes).
    pub fn observe_value(&mut self, at: NaiveDateTime, score: f64, value: f64) -> Vec<AlertEvent> {
        self.observe_point(at, score, Some(value))
    }

    fn observe_point(
        &mut self,
        at: NaiveDateTime,
        score: f64,
        value: Option<f64>,
    ) -> Vec<AlertEvent> {
        let mut events = Vec::new();
        if let Some(last) = self.last {
            if at <= last {
                return events;
            }
            if at - last > self.config.max_gap {
                if let State::Firing { since, peak, .. } = self.state {
                    events.push(AlertEvent::Resolved {
                        raised_at: since,
                        at: last,
                        peak,
                        reason: ResolveReason::Gap,
                    });
                }
                self.state = State::Quiet { high_run: 0 };
            }
        }
        self.last = Some(at);
        let score = if score.is_finite() { score } else { 0.0 };
        let before = value.and_then(|_| expected_range(&self.recent));
        if let Some(v) = value.filter(|v| v.is_finite()) {
            if self.recent.len() == RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back(v);
        }
        let c = &self.config;
        if let State::Cooling { until } = self.state
            && at >= until
        {
            self.state = State::Quiet { high_run: 0 };
        }
        self.state = match self.state {
            State::Cooling { until } => State::Cooling { until },
            State::Quiet { high_run } => {
                let high_run = if score >= c.raise_above {
                    high_run + 1
                } else {
                    0
                };
                if high_run >= c.raise_points.max(1) {
                    events.push(AlertEvent::Raised {
                        at,
                        score,
                        expected: before,
                    });
                    State::Firing {
                        since: at,
                        peak: score,
                        low_run: 0,
                        calm_run: 0,
                        expected: before,
                    }
                } else {
                    State::Quiet { high_run }
                }
            }
            State::Firing {
                since,
                peak,
                low_run,
                calm_run,
                expected,
            } => {
                let calm = score < c.resolve_below;
                let in_range = match (value, expected) {
                    (Some(v), Some((lo, hi))) => (lo..=hi).contains(&v),
                    _ => true,
                };
                let low_run = if calm && in_range { low_run + 1 } else { 0 };
                let calm_run = if calm { calm_run + 1 } else { 0 };
                let peak = peak.max(score);
                let reason = if low_run >= c.resolve_points.max(1) {
                    Some(ResolveReason::Recovered)
                } else if c.new_normal_points > 0 && calm_run >= c.new_normal_points {
                    Some(ResolveReason::NewNormal)
                } else {
                    None
                };
                if let Some(reason) = reason {
                    events.push(AlertEvent::Resolved {
                        raised_at: since,
                        at,
                        peak,
                        reason,
                    });
                    State::Cooling {
                        until: at + c.cooldown,
                    }
                } else {
                    State::Firing {
                        since,
                        peak,
                        low_run,
                        calm_run,
                        expected,
                    }
                }
            }
        };
        events
    }
}

impl Default for Alerting {
    fn default() -> Self {
        Self::new(AlertConfig::default())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::detector::Detector;

    fn t(i: usize) -> NaiveDateTime {
        crate::nab::parse_timestamp("2024-01-01 00:00:00").unwrap()
            + TimeDelta::minutes(5 * i as i64)
    }

    fn noise(seed: u64, n: usize) -> Vec<f64> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
            })
            .collect()
    }

    /// A daily cycle (5-minute points) with noise, changed by `change`.
    fn series(n: usize, change: impl Fn(usize) -> f64) -> Vec<f64> {
        let e = noise(11, n);
        (0..n)
            .map(|i| {
                20.0 + 4.0 * (i as f64 * std::f64::consts::TAU / 288.0).sin()
                    + 0.4 * e[i]
                    + change(i)
            })
            .collect()
    }

    /// Runs the detector and the alerting over a series, returning the raise indices.
    fn raises(values: &[f64]) -> Vec<usize> {
        let mut detector = Detector::default();
        let mut alerting = Alerting::default();
        let mut out = Vec::new();
        for (i, v) in values.iter().enumerate() {
            let s = detector.update(*v);
            for e in alerting.observe(t(i), s) {
                if matches!(e, AlertEvent::Raised { .. }) {
                    out.push(i);
                }
            }
        }
        out
    }

    fn raised_within(raises: &[usize], from: usize, to: usize) -> usize {
        raises.iter().filter(|i| (from..to).contains(*i)).count()
    }

    #[test]
    fn step_change_raises_one_alert_at_the_step() {
        let r = raises(&series(5000, |i| if i >= 3000 { 10.0 } else { 0.0 }));
        assert_eq!(raised_within(&r, 3000, 3010), 1, "{r:?}");
        assert_eq!(raised_within(&r, 600, 3000), 0, "{r:?}");
    }

    #[test]
    fn spike_raises_one_alert() {
        let r = raises(&series(5000, |i| if i == 3000 { 25.0 } else { 0.0 }));
        assert_eq!(raised_within(&r, 3000, 3003), 1, "{r:?}");
        assert_eq!(raised_within(&r, 600, 5000), 1, "{r:?}");
    }

    #[test]
    fn slow_drift_is_eventually_raised() {
        // From point 3000 the level climbs by one noise amplitude every 20 points.
        let r = raises(&series(5000, |i| {
            if i >= 3000 {
                (i - 3000) as f64 * 0.02
            } else {
                0.0
            }
        }));
        assert_eq!(raised_within(&r, 600, 3000), 0, "{r:?}");
        assert!(raised_within(&r, 3000, 5000) >= 1, "{r:?}");
    }

    #[test]
    fn constant_series_never_alerts() {
        assert!(raises(&vec![3.25; 4000]).is_empty());
    }

    #[test]
    fn flapping_score_gives_one_alert() {
        let mut a = Alerting::default();
        let mut events = Vec::new();
        // Fifty swings between 0.9 and 0.4 (inside the hysteresis band), then calm.
        for i in 0..100 {
            events.extend(a.observe(t(i), if i % 2 == 0 { 0.9 } else { 0.4 }));
        }
        for i in 100..120 {
            events.extend(a.observe(t(i), 0.0));
        }
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(matches!(events[0], AlertEvent::Raised { at, .. } if at == t(0)));
        assert!(matches!(
            events[1],
            AlertEvent::Resolved { reason: ResolveReason::Recovered, peak, .. } if peak == 0.9
        ));
    }

    #[test]
    fn cooldown_suppresses_a_quick_relapse() {
        let mut a = Alerting::default();
        let mut raised = 0;
        let scores = [0.9].into_iter().chain([0.0; 12]).chain([0.9, 0.9]);
        for (i, s) in scores.enumerate() {
            raised += a
                .observe(t(i), s)
                .iter()
                .filter(|e| matches!(e, AlertEvent::Raised { .. }))
                .count();
        }
        assert_eq!(raised, 1);
        // After the hour of cool-down, a new episode raises again.
        let events = a.observe(t(14) + TimeDelta::hours(1), 0.9);
        assert!(matches!(events[..], [AlertEvent::Raised { .. }]));
    }

    #[test]
    fn gap_resolves_a_firing_alert_and_resets_counts() {
        let config = AlertConfig {
            raise_points: 3,
            ..AlertConfig::default()
        };
        let mut a = Alerting::new(config.clone());
        a.observe(t(0), 0.9);
        a.observe(t(1), 0.9);
        // A day's gap: the two high points before it no longer count.
        let later = t(1) + TimeDelta::days(1);
        assert!(a.observe(later, 0.9).is_empty());
        let events = a.observe(later + TimeDelta::minutes(5), 0.9);
        assert!(events.is_empty());
        let events = a.observe(later + TimeDelta::minutes(10), 0.9);
        assert!(matches!(events[..], [AlertEvent::Raised { .. }]));
        // A firing alert is resolved by a gap, at the last point before it.
        let last = later + TimeDelta::minutes(10);
        let events = a.observe(last + TimeDelta::days(1), 0.0);
        assert!(matches!(
            events[..],
            [AlertEvent::Resolved { reason: ResolveReason::Gap, at, .. }] if at == last
        ));
        assert!(!a.is_firing());
        // Out-of-order points are ignored.
        assert!(a.observe(t(0), 0.9).is_empty());
    }

    #[test]
    fn restored_alerting_behaves_as_the_uninterrupted_one() {
        let scores: Vec<f64> = (0..200)
            .map(|i| match i % 50 {
                0..=2 => 0.9,
                3..=8 => 0.3,
                _ => 0.05,
            })
            .collect();
        let mut whole = Alerting::default();
        let expected: Vec<Vec<AlertEvent>> = scores
            .iter()
            .enumerate()
            .map(|(i, s)| whole.observe(t(i), *s))
            .collect();
        // Saved and restored after every point: raising, firing, cooling and quiet states.
        let mut a = Alerting::default();
        for (i, s) in scores.iter().enumerate() {
            let bytes = a.to_bytes();
            a = Alerting::from_bytes(&bytes).unwrap();
            assert_eq!(a.observe(t(i), *s), expected[i], "at {i}");
        }
        assert_eq!(a, whole);
        assert!(a.to_bytes().len() < 512, "{} bytes", a.to_bytes().len());
    }

    #[test]
    fn an_alert_resolves_only_once_the_value_is_back_in_its_range() {
        let mut a = Alerting::new(AlertConfig {
            resolve_points: 3,
            new_normal_points: 20,
            ..AlertConfig::default()
        });
        let mut events = Vec::new();
        // 120 values around 10, then a jump to 50 that scores high once.
        for i in 0..120 {
            events.extend(a.observe_value(t(i), 0.0, 10.0 + (i % 5) as f64 * 0.1));
        }
        events.extend(a.observe_value(t(120), 0.9, 50.0));
        let Some(AlertEvent::Raised {
            expected: Some((lo, hi)),
            ..
        }) = events.last().copied()
        else {
            panic!("raised with a range: {events:?}");
        };
        assert!(lo < 10.0 && hi > 10.4 && hi < 11.0, "{lo} {hi}");
        // The detector calms down while the value stays at 50: still open…
        for i in 121..135 {
            assert!(a.observe_value(t(i), 0.0, 50.0).is_empty(), "at {i}");
        }
        assert!(a.is_firing());
        // …until the value is back: three points in range resolve it.
        let mut back = Vec::new();
        for i in 135..138 {
            back.extend(a.observe_value(t(i), 0.0, 10.2));
        }
        assert!(
            matches!(
                back[..],
                [AlertEvent::Resolved {
                    reason: ResolveReason::Recovered,
                    ..
                }]
            ),
            "{back:?}"
        );
        // A level that stays new is accepted after `new_normal_points` calm points.
        let mut b = Alerting::new(AlertConfig {
            new_normal_points: 20,
            cooldown: TimeDelta::zero(),
            ..AlertConfig::default()
        });
        for i in 0..50 {
            b.observe_value(t(i), 0.0, 1.0);
        }
        b.observe_value(t(50), 0.9, 9.0);
        let mut later = Vec::new();
        for i in 51..71 {
            later.extend(b.observe_value(t(i), 0.0, 9.0));
        }
        assert!(
            matches!(
                later[..],
                [AlertEvent::Resolved {
                    reason: ResolveReason::NewNormal,
                    ..
                }]
            ),
            "{later:?}"
        );
        // Saved and restored mid-alert, the state (with its recent values) is the same.
        let restored = Alerting::from_bytes(&a.to_bytes()).unwrap();
        assert_eq!(restored, a);
    }

    #[test]
    fn values_near_the_float_limit_give_no_infinite_range() {
        let values: std::collections::VecDeque<f64> = [-1e308, 1e308, 0.0].into_iter().collect();
        assert_eq!(expected_range(&values), None);
        let values: std::collections::VecDeque<f64> = [1e307, 2e307].into_iter().collect();
        let (lo, hi) = expected_range(&values).unwrap();
        assert!(lo.is_finite() && hi.is_finite() && lo < 1e307 && hi > 2e307);
    }
}
