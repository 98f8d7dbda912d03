//! The series Kairos watches, and how the derived ones are computed from LLM calls.
//!
//! | id | kind | value of a point |
//! |---|---|---|
//! | `model:<model>:error_rate` | `llm.error_rate` | failed calls / calls of one bucket |
//! | `model:<model>:latency_p95_ms` | `llm.latency_p95_ms` | the 95th percentile of the bucket's latencies |
//! | `project:<project>:cost_usd_per_minute` | `llm.cost_usd_per_minute` | the bucket's cost (producer's `cost`) per minute |
//! | `project:<project>:tokens_per_minute` | `llm.tokens_per_minute` | the bucket's input + output tokens per minute |
//! | `metric:<project>:<name>{k="v",…}` | `metric` | each `kairos.metric.recorded.v1` sample |
//!
//! A point's time is the event's `time`, but never after the moment the stream stored it: a
//! producer cannot date points into the future. Calls fall into buckets of `bucket_seconds` by
//! that time. A bucket closes once a call at least `grace_seconds` past its end has been seen
//! (any model's, any project's: the watermark); a call for a bucket already closed is late and
//! not counted. A model's bucket with fewer than `min_calls` calls gives no point; a bucket
//! without calls gives none either.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// What a series measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Kind {
    #[serde(rename = "llm.error_rate")]
    ErrorRate,
    #[serde(rename = "llm.latency_p95_ms")]
    LatencyP95,
    #[serde(rename = "llm.cost_usd_per_minute")]
    CostPerMinute,
    #[serde(rename = "llm.tokens_per_minute")]
    TokensPerMinute,
    #[serde(rename = "metric")]
    Metric,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::ErrorRate,
        Kind::LatencyP95,
        Kind::CostPerMinute,
        Kind::TokensPerMinute,
        Kind::Metric,
    ];

    /// The kind named `s` (as [`Kind::as_str`] names it).
    pub fn parse(s: &str) -> Option<Kind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ErrorRate => "llm.error_rate",
            Self::LatencyP95 => "llm.latency_p95_ms",
            Self::CostPerMinute => "llm.cost_usd_per_minute",
            Self::TokensPerMinute => "llm.tokens_per_minute",
            Self::Metric => "metric",
        }
    }

    /// Whether an open alert on a series of this kind takes its model out of routing.
    pub fn trips_breaker(self) -> bool {
        matches!(self, Self::ErrorRate | Self::LatencyP95)
    }
}

/// Longest series id; a metric's label set that would make it longer is named by its hash.
pub const MAX_ID: usize = 400;

/// One series' identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesKey {
    pub id: String,
    pub kind: Kind,
    pub project: Option<String>,
    pub model: Option<String>,
    pub metric: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
}

impl SeriesKey {
    pub fn model(model: &str, kind: Kind) -> Self {
        let suffix = match kind {
            Kind::ErrorRate => "error_rate",
            _ => "latency_p95_ms",
        };
        Self {
            id: format!("model:{model}:{suffix}"),
            kind,
            project: None,
            model: Some(model.to_owned()),
            metric: None,
            labels: None,
        }
    }

    pub fn project(project: &str, kind: Kind) -> Self {
        let suffix = match kind {
            Kind::CostPerMinute => "cost_usd_per_minute",
            _ => "tokens_per_minute",
        };
        Self {
            id: format!("project:{project}:{suffix}"),
            kind,
            project: Some(project.to_owned()),
            model: None,
            metric: None,
            labels: None,
        }
    }

    /// A `metric.recorded` series: its labels sorted by name, values quoted as JSON strings.
    pub fn metric(project: &str, name: &str, labels: BTreeMap<String, String>) -> Self {
        let mut id = format!("metric:{project}:{name}");
        if !labels.is_empty() {
            let inner: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}={}", serde_json::Value::from(v.as_str())))
                .collect();
            id.push('{');
            id.push_str(&inner.join(","));
            id.push('}');
            if id.len() > MAX_ID {
                id = format!(
                    "metric:{project}:{name}{{#{:016x}}}",
                    kairos_events::fnv1a64(&id)
                );
            }
        }
        Self {
            id,
            kind: Kind::Metric,
            project: Some(project.to_owned()),
            model: None,
            metric: Some(name.to_owned()),
            labels: Some(labels),
        }
    }
}

/// Most latencies a bucket keeps for its percentile; past it, every other one is dropped and
/// then only every second one kept (a uniform thinning, the same on every replay).
const MAX_LATENCIES: usize = 4096;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct ModelBucket {
    calls: u64,
    errors: u64,
    latencies: Vec<f64>,
    /// Keep one latency in `stride`.
    stride: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct ProjectBucket {
    cost_nanos: i128,
    tokens: u128,
}

/// One LLM call as the buckets take it.
#[derive(Debug, Clone)]
pub struct Call {
    /// Milliseconds since the epoch.
    pub at_ms: i64,
    pub model: String,
    pub project: String,
    pub error: bool,
    pub latency_ms: f64,
    pub tokens: u128,
    /// Input and output tokens, to price a call that came without a cost.
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// The producer's cost, or (once priced from the catalog) the catalog's.
    pub cost_nanos: Option<i64>,
}

/// A point a closed bucket gives.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub key: SeriesKey,
    /// The bucket's start, milliseconds since the epoch.
    pub at_ms: i64,
    pub value: f64,
}

/// The open buckets of every derived series, and how far each group has closed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Buckets {
    models: BTreeMap<String, BTreeMap<i64, ModelBucket>>,
    projects: BTreeMap<String, BTreeMap<i64, ProjectBucket>>,
    /// The last closed bucket start of each group (`m:<model>`, `p:<project>`).
    closed: BTreeMap<String, i64>,
    /// Open buckets by (start, group), to close in order.
    open: BTreeSet<(i64, String)>,
    /// The latest call time seen (ms).
    pub watermark: i64,
    /// Calls that came for a closed bucket.
    pub late: u64,
    /// The watermark's hour when `closed` was last pruned.
    #[serde(default)]
    pruned: i64,
}

/// How long a group's last closed bucket is remembered: a call older than that for a group
/// without newer calls gives a point its series then drops as out of order, instead of
/// counting as late.
const REMEMBER_MS: i64 = 3_600_000;

impl Buckets {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Adds a call; returns the points of the buckets it closed, oldest first.
    pub fn add(&mut self, c: &Call, width_ms: i64, grace_ms: i64, min_calls: u64) -> Vec<Point> {
        let start = c.at_ms.div_euclid(width_ms) * width_ms;
        let (gm, gp) = (format!("m:{}", c.model), format!("p:{}", c.project));
        if self.closed.get(&gm).is_some_and(|&s| start <= s)
            || self.closed.get(&gp).is_some_and(|&s| start <= s)
        {
            self.late += 1;
        } else {
            let m = self
                .models
                .entry(c.model.clone())
                .or_default()
                .entry(start)
                .or_default();
            m.calls += 1;
            m.errors += u64::from(c.error);
            if m.stride == 0 {
                m.stride = 1;
            }
            if m.calls.is_multiple_of(m.stride) {
                m.latencies.push(c.latency_ms);
                if m.latencies.len() >= MAX_LATENCIES {
                    let kept: Vec<f64> = m.latencies.iter().copied().step_by(2).collect();
                    m.latencies = kept;
                    m.stride *= 2;
                }
            }
            let p = self
                .projects
                .entry(c.project.clone())
                .or_default()
                .entry(start)
                .or_default();
            p.cost_nanos += i128::from(c.cost_nanos.unwrap_or(0));
            p.tokens = p.tokens.saturating_add(c.tokens);
            self.open.insert((start, gm));
            self.open.insert((start, gp));
        }
        self.watermark = self.watermark.max(c.at_ms);
        let points = self.close_due(width_ms, grace_ms, min_calls);
        // Once an hour of the calls' time, forget the groups quiet for an hour: `closed` then
        // holds the groups of the last hour, not every model and project ever seen.
        let hour = self.watermark.div_euclid(REMEMBER_MS);
        if hour != self.pruned {
            self.pruned = hour;
            let horizon = self.watermark - REMEMBER_MS - width_ms - grace_ms;
            self.closed.retain(|_, start| *start >= horizon);
        }
        points
    }

    /// Closes every bucket that ended at least `grace_ms` before the watermark.
    fn close_due(&mut self, width_ms: i64, grace_ms: i64, min_calls: u64) -> Vec<Point> {
        let mut out = Vec::new();
        let minutes = width_ms as f64 / 60_000.0;
        while let Some((start, group)) = self.open.first().cloned() {
            if start.saturating_add(width_ms).saturating_add(grace_ms) > self.watermark {
                break;
            }
            self.open.pop_first();
            self.closed.insert(group.clone(), start);
            if let Some(model) = group.strip_prefix("m:") {
                let Some(b) = self.models.get_mut(model).and_then(|m| m.remove(&start)) else {
                    continue;
                };
                if self.models.get(model).is_some_and(BTreeMap::is_empty) {
                    self.models.remove(model);
                }
                if b.calls < min_calls.max(1) {
                    continue;
                }
                out.push(Point {
                    key: SeriesKey::model(model, Kind::ErrorRate),
                    at_ms: start,
                    value: b.errors as f64 / b.calls as f64,
                });
                let mut l = b.latencies;
                l.sort_by(f64::total_cmp);
                if !l.is_empty() {
                    let i = ((l.len() as f64 * 0.95).ceil() as usize).clamp(1, l.len()) - 1;
                    out.push(Point {
                        key: SeriesKey::model(model, Kind::LatencyP95),
                        at_ms: start,
                        value: l[i],
                    });
                }
            } else if let Some(project) = group.strip_prefix("p:") {
                let Some(b) = self
                    .projects
                    .get_mut(project)
                    .and_then(|m| m.remove(&start))
                else {
                    continue;
                };
                if self.projects.get(project).is_some_and(BTreeMap::is_empty) {
                    self.projects.remove(project);
                }
                out.push(Point {
                    key: SeriesKey::project(project, Kind::CostPerMinute),
                    at_ms: start,
                    value: b.cost_nanos as f64 / 1e9 / minutes,
                });
                out.push(Point {
                    key: SeriesKey::project(project, Kind::TokensPerMinute),
                    at_ms: start,
                    value: b.tokens as f64 / minutes,
                });
            }
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn call(at_s: i64, model: &str, error: bool, latency: f64) -> Call {
        Call {
            at_ms: at_s * 1000,
            model: model.into(),
            project: "p".into(),
            error,
            latency_ms: latency,
            tokens: 100,
            input_tokens: 80,
            output_tokens: 20,
            cost_nanos: Some(1_000_000),
        }
    }

    #[test]
    fn buckets_close_after_the_grace_and_late_calls_are_counted() {
        let mut b = Buckets::default();
        let (w, g) = (60_000, 10_000);
        for i in 0..10 {
            assert!(
                b.add(&call(i, "m", i < 3, 100.0 + i as f64), w, g, 3)
                    .is_empty()
            );
        }
        // Within the grace of the first minute's end: nothing closes, a call for it still counts.
        assert!(b.add(&call(65, "m", false, 1.0), w, g, 3).is_empty());
        assert!(b.add(&call(59, "m", false, 500.0), w, g, 3).is_empty());
        let points = b.add(&call(71, "m", false, 1.0), w, g, 3);
        let ids: Vec<&str> = points.iter().map(|p| p.key.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "model:m:error_rate",
                "model:m:latency_p95_ms",
                "project:p:cost_usd_per_minute",
                "project:p:tokens_per_minute"
            ]
        );
        assert!((points[0].value - 3.0 / 11.0).abs() < 1e-12);
        assert_eq!(points[1].value, 500.0);
        assert!((points[2].value - 0.011).abs() < 1e-12);
        assert_eq!(points[3].value, 1100.0);
        assert_eq!(points[0].at_ms, 0);
        // The first minute is closed: a call for it is late.
        assert!(b.add(&call(30, "m", true, 1.0), w, g, 3).is_empty());
        assert_eq!(b.late, 1);
        let restored = Buckets::from_bytes(&b.to_bytes()).unwrap();
        assert_eq!(restored, b);
    }

    #[test]
    fn groups_quiet_for_an_hour_are_forgotten() {
        let mut b = Buckets::default();
        for i in 0..5 {
            b.add(&call(i, "old", false, 1.0), 60_000, 0, 1);
        }
        b.add(&call(61, "old", false, 1.0), 60_000, 0, 1);
        assert!(b.closed.contains_key("m:old"));
        // Two hours on, another model's calls: "old" is no longer remembered.
        for i in 0..3 {
            b.add(&call(7200 + i * 60, "new", false, 1.0), 60_000, 0, 1);
        }
        assert!(!b.closed.contains_key("m:old"), "{:?}", b.closed);
        assert!(b.closed.contains_key("m:new"));
        assert!(b.closed.len() <= 4, "{:?}", b.closed);
    }

    #[test]
    fn a_bucket_with_too_few_calls_gives_no_model_point() {
        let mut b = Buckets::default();
        b.add(&call(1, "m", true, 1.0), 60_000, 0, 3);
        let points = b.add(&call(61, "n", false, 1.0), 60_000, 0, 3);
        assert!(points.iter().all(|p| p.key.model.is_none()), "{points:?}");
    }

    #[test]
    fn metric_ids_sort_and_quote_labels() {
        let labels = BTreeMap::from([("z".into(), "a\"b".into()), ("a".into(), "1".into())]);
        let k = SeriesKey::metric("p", "queue.depth", labels);
        assert_eq!(k.id, r#"metric:p:queue.depth{a="1",z="a\"b"}"#);
    }
}
