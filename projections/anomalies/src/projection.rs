//! The fold: LLM calls and metric samples into scored points, alerts, circuit breakers and
//! lowered limits.
//!
//! **Memory.** One [`Detector`] and one [`Alerting`] per series live in memory between batches
//! (a detector is ~83 KB; see `docs/anomalies.md` for the bound). Each batch writes its scored
//! points, the series' figures and the open buckets of the derived series, and marks the
//! sequence it folded through. A series' detector state is saved every `save_every` points. A
//! process whose memory does not match the mark it finds (it just started, its last
//! transaction did not commit, or another process folded meanwhile) reloads it: the saved
//! states, then the points scored after each was saved, folded in again. The detector is
//! deterministic, so the reloaded memory is the one an uninterrupted run would have.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use kairos_events::types::{
    ALERT_ACKNOWLEDGED, ALERT_RAISED, ALERT_RESOLVED, BREAKER_CHANGED, CATALOG_CHANGED, CallStatus,
    CatalogChanged, LLM_CALL_COMPLETED, LlmCallCompleted, METRIC_RECORDED, ModelSpec,
};
use kairos_events::{Emit, Event};
use kairos_runtime::{ApplyError, Projection, Rejection, StoredEvent};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::{PgConnection, Row};
use tokio::sync::Mutex;

use crate::NAME;
use crate::alert::{AlertConfig, AlertEvent, Alerting};
use crate::detector::{Detector, DetectorConfig};
use crate::series::{Buckets, Call, Kind, Point, SeriesKey};

/// The CloudEvent `source` of what the projection emits.
pub const SOURCE: &str = "kairos/anomalies";

/// What an alert on a project's cost series does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CostAction {
    /// Raise the alert; nothing else.
    Warn,
    /// Lower the project's effective budget limit (in routing) until an admin acknowledges.
    LowerLimit,
}

/// The fold's rules, from `[anomalies]`.
#[derive(Debug, Clone)]
pub struct Rules {
    pub width_ms: i64,
    pub grace_ms: i64,
    pub min_calls: u64,
    pub max_series: usize,
    /// At `max_series`, how long (series time) a series must have been without a point, and
    /// without an open alert, for a new one to take its place.
    pub evict_idle_ms: i64,
    pub keep_points: i64,
    /// Resolved alerts are deleted once they resolved this long before the newest point.
    pub keep_alerts_ms: i64,
    pub save_every: i64,
    pub detector: DetectorConfig,
    pub alert: AlertConfig,
    /// Whether alerts on a model's error-rate and latency series open its circuit breaker.
    pub breaker: bool,
    /// How long (series time) a breaker stays open before it lets probe calls through.
    pub probe_after: TimeDelta,
    /// Half-open: probe calls each API process lets through per bucket.
    pub probe_calls: u32,
    pub cost_action: CostAction,
    pub limit_factor: f64,
}

/// The anomalies projection.
#[derive(Clone)]
pub struct Anomalies {
    pub rules: Arc<Rules>,
    memory: Arc<Mutex<Memory>>,
}

impl Anomalies {
    pub fn new(rules: Rules) -> Self {
        Self {
            rules: Arc::new(rules),
            memory: Arc::default(),
        }
    }
}

/// One event, decoded.
#[derive(Debug, Clone)]
pub enum Item {
    Call {
        seq: i64,
        call: Call,
    },
    Metric {
        seq: i64,
        key: SeriesKey,
        at_ms: i64,
        value: f64,
    },
    Ack {
        seq: i64,
        alert_id: String,
        by: String,
        at: DateTime<Utc>,
    },
    /// The model catalog changed: calls without a cost are priced with it from now on.
    Catalog {
        seq: i64,
        models: Vec<ModelSpec>,
    },
}

impl Item {
    fn seq(&self) -> i64 {
        match self {
            Item::Call { seq, .. }
            | Item::Metric { seq, .. }
            | Item::Ack { seq, .. }
            | Item::Catalog { seq, .. } => *seq,
        }
    }
}

/// What a series keeps between points.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SeriesState {
    detector: Detector,
    alerting: Alerting,
}

struct Slot {
    key: SeriesKey,
    sid: i32,
    state: SeriesState,
    first_at: i64,
    last_at: Option<i64>,
    points: i64,
    saved_points: i64,
    /// The state as of `saved_points`, not yet written.
    unsaved: Option<Vec<u8>>,
    last_value: f64,
    last_score: f64,
    open_alert: Option<String>,
    dropped: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BreakerState {
    Open,
    HalfOpen,
}

impl BreakerState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug, Clone)]
struct Breaker {
    state: BreakerState,
    alerts: BTreeSet<String>,
    since: i64,
    changed_at: i64,
    reason: String,
}

#[derive(Default)]
struct Memory {
    /// The sequence the memory has folded through and the id of the `memory` table it was
    /// written to (`None`: not loaded, or not written yet).
    mark: Option<(i64, i64)>,
    series: HashMap<String, Slot>,
    buckets: Buckets,
    breakers: BTreeMap<String, Breaker>,
    /// Series refused for being past `max_series`.
    refused: u64,
    /// Series evicted to make room (see [`Rules::evict_idle_ms`]).
    evicted: u64,
    /// No series without an open alert had a point before this, at the last scan for one to
    /// evict (`None`: scan).
    idle_floor: Option<i64>,
    /// The `sid` the next new series gets.
    next_sid: i32,
    /// The time of the newest point folded (series time).
    newest_ms: i64,
    /// The model catalog in force, as last folded.
    catalog: Vec<ModelSpec>,
    catalog_changed: bool,
}

#[derive(Deserialize)]
struct MetricData {
    project: String,
    name: String,
    value: f64,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct AckData {
    alert_id: String,
    by: String,
}

fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// A point's time: the event's, but never after the stream stored it.
fn point_time(stored: &StoredEvent) -> i64 {
    millis(stored.occurred_at().min(stored.stored_at))
}

impl Projection for Anomalies {
    type Item = Item;
    type Carry = ();

    fn name(&self) -> &'static str {
        NAME
    }

    fn schema(&self) -> &'static str {
        NAME
    }

    fn categories(&self) -> Option<&'static [&'static str]> {
        Some(&["llm", "metric", "alert", "catalog"])
    }

    fn decode(&self, stored: &StoredEvent) -> Result<Option<Item>, Rejection> {
        let seq = i64::try_from(stored.seq.0).unwrap_or(i64::MAX);
        Ok(Some(match stored.event.event_type().as_str() {
            LLM_CALL_COMPLETED => {
                let c: LlmCallCompleted = stored.event.data_as()?;
                Item::Call {
                    seq,
                    call: Call {
                        at_ms: point_time(stored),
                        model: c.model,
                        project: c.project.to_string(),
                        error: c.status == CallStatus::Error,
                        latency_ms: c.latency_ms as f64,
                        tokens: u128::from(c.input_tokens) + u128::from(c.output_tokens),
                        input_tokens: c.input_tokens,
                        output_tokens: c.output_tokens,
                        cost_nanos: c.cost.map(kairos_events::Money::nanos),
                    },
                }
            }
            METRIC_RECORDED => {
                let m: MetricData = stored.event.data_as()?;
                if !m.value.is_finite() {
                    return Err(Rejection {
                        code: "invalid_data",
                        reason: "data.value must be a finite number".into(),
                    });
                }
                Item::Metric {
                    seq,
                    key: SeriesKey::metric(&m.project, &m.name, m.labels.unwrap_or_default()),
                    at_ms: point_time(stored),
                    value: m.value,
                }
            }
            CATALOG_CHANGED => {
                let c: CatalogChanged = stored.event.data_as()?;
                Item::Catalog {
                    seq,
                    models: c.models,
                }
            }
            ALERT_ACKNOWLEDGED => {
                let a: AckData = stored.event.data_as()?;
                Item::Ack {
                    seq,
                    alert_id: a.alert_id,
                    by: a.by,
                    at: stored.occurred_at(),
                }
            }
            _ => return Ok(None),
        }))
    }

    async fn apply(
        &self,
        tx: &mut PgConnection,
        items: Vec<Item>,
        _carry: &mut (),
    ) -> Result<Vec<Event>, ApplyError> {
        let Some(last_seq) = items.last().map(Item::seq) else {
            return Ok(Vec::new());
        };
        let mut memory = self.memory.lock().await;
        // The mark and the table's own id: a replay's generation, switched in, has the same
        // mark but is another table.
        let (mark, table): (Option<i64>, i64) = sqlx::query_as(
            "SELECT (SELECT mark FROM memory WHERE id = 1), 'memory'::regclass::oid::int8",
        )
        .fetch_one(&mut *tx)
        .await?;
        let db_mark = Some((mark.unwrap_or(0), table));
        if memory.mark.is_none() || memory.mark != db_mark {
            *memory = load(tx, &self.rules).await?;
        }
        // Until this batch is written, the memory is not the database's: a failure on the way
        // makes the next batch reload it.
        memory.mark = None;
        let mut fold = Fold {
            rules: &self.rules,
            memory: &mut memory,
            out: Output::default(),
        };
        for item in items {
            match item {
                Item::Call { seq, mut call } => {
                    if call.cost_nanos.is_none() {
                        call.cost_nanos = fold
                            .memory
                            .catalog
                            .iter()
                            .find(|m| m.name == call.model)
                            .and_then(|m| {
                                m.cost_at(time(call.at_ms), call.input_tokens, call.output_tokens)
                            })
                            .map(kairos_events::Money::nanos);
                    }
                    let r = fold.rules;
                    let points =
                        fold.memory
                            .buckets
                            .add(&call, r.width_ms, r.grace_ms, r.min_calls);
                    for p in points {
                        fold.point(seq, p)?;
                    }
                    fold.probe_due(seq)?;
                }
                Item::Metric {
                    seq,
                    key,
                    at_ms,
                    value,
                } => fold.point(seq, Point { key, at_ms, value })?,
                Item::Ack {
                    alert_id, by, at, ..
                } => fold.out.acks.push((alert_id, by, at)),
                Item::Catalog { models, .. } => {
                    fold.memory.catalog = models;
                    fold.memory.catalog_changed = true;
                }
            }
        }
        let out = std::mem::take(&mut fold.out);
        write(tx, &mut memory, out.rows, last_seq).await?;
        write_alerts(tx, &self.rules, &out.alerts, &out.acks).await?;
        // Every batch, so that whatever the batches, the alerts left are those resolved within
        // `keep_alerts_ms` of the newest point — and those whose lowered limit still waits for
        // the acknowledgement that lifts it.
        sqlx::query(
            "DELETE FROM alerts WHERE status = 'resolved' AND resolved_at < $1
             AND NOT EXISTS (SELECT 1 FROM limits l WHERE l.alert_id = alerts.id)",
        )
        .bind(time(
            memory.newest_ms.saturating_sub(self.rules.keep_alerts_ms),
        ))
        .execute(&mut *tx)
        .await?;
        memory.mark = Some((last_seq, table));
        Ok(out.events)
    }
}

/// A change to the alerts, the breakers or the limits, in the order they happened.
enum AlertRow {
    Raised {
        id: String,
        key: SeriesKey,
        severity: &'static str,
        at: i64,
        value: f64,
        expected: Option<(f64, f64)>,
        score: f64,
        action: &'static str,
        seq: i64,
    },
    Resolved {
        id: String,
        at: i64,
        peak: f64,
        reason: &'static str,
    },
    Breaker {
        model: String,
        breaker: Option<Breaker>,
    },
    Limit {
        project: String,
        alert_id: String,
        factor: f64,
        at: i64,
    },
}

#[derive(Default)]
struct Rows {
    /// (sid, n, at, value, score)
    points: Vec<(i32, i64, i64, f64, f64)>,
    touched: BTreeSet<String>,
    /// (sid, cut): delete its points up to `cut`.
    prune: Vec<(i32, i64)>,
    /// (sid, id): series forgotten to make room, with their points.
    evict: Vec<(i32, String)>,
}

#[derive(Default)]
struct Output {
    rows: Rows,
    alerts: Vec<AlertRow>,
    acks: Vec<(String, String, DateTime<Utc>)>,
    events: Vec<Event>,
}

struct Fold<'a> {
    rules: &'a Rules,
    memory: &'a mut Memory,
    out: Output,
}

fn emit(
    ty: &'static str,
    id: String,
    subject: Option<&str>,
    at: i64,
    data: Value,
) -> Result<Event, ApplyError> {
    let mut e = Emit::new(ty, SOURCE, data).id(id).time(time(at));
    if let Some(s) = subject {
        e = e.subject(s);
    }
    e.build()
        .map_err(|e| ApplyError::Data(format!("an anomalies event would be invalid: {e}")))
}

fn fresh_state(rules: &Rules, key: &SeriesKey) -> SeriesState {
    let mut alert = rules.alert.clone();
    if key.kind.trips_breaker() && rules.breaker {
        // A breaker's model returns only once its series is back in range.
        alert.new_normal_points = 0;
    }
    SeriesState {
        detector: Detector::new(rules.detector.clone()),
        alerting: Alerting::new(alert),
    }
}

impl Fold<'_> {
    /// At `max_series`, makes room for a new series whose first point is at `at_ms`: forgets
    /// the series idle longest (its last point the oldest; the smallest id on a tie, so a
    /// replay forgets the same), if it has had no point for `evict_idle_ms` and has no open
    /// alert. Its row and points are deleted with this batch; its alerts stay.
    fn evict_idle(&mut self, at_ms: i64) -> bool {
        // `idle_floor` is at or before the last point of every series without an open alert
        // (kept so by `point`): while it is not idle long enough, no series is, and a flood of
        // new series costs no scan each. It only skips scans that would find nothing, so a
        // process that reloaded (and scans) decides the same.
        if self
            .memory
            .idle_floor
            .is_some_and(|floor| at_ms.saturating_sub(floor) < self.rules.evict_idle_ms)
        {
            return false;
        }
        let idle = self
            .memory
            .series
            .iter()
            .filter(|(_, s)| s.open_alert.is_none())
            .map(|(id, s)| (s.last_at.unwrap_or(s.first_at), id))
            .min();
        let Some((last, id)) = idle else {
            return false;
        };
        if at_ms.saturating_sub(last) < self.rules.evict_idle_ms {
            self.memory.idle_floor = Some(last);
            return false;
        }
        self.memory.idle_floor = None;
        let id = id.clone();
        let Some(slot) = self.memory.series.remove(&id) else {
            return false;
        };
        self.memory.evicted += 1;
        if self.memory.evicted.is_power_of_two() {
            tracing::info!(series = %id, evicted = self.memory.evicted, max = self.rules.max_series, "anomalies: at max_series; the series idle longest is forgotten");
        }
        self.out.rows.touched.remove(&id);
        self.out.rows.evict.push((slot.sid, id));
        true
    }

    /// Scores one point of a series and acts on what its alerting says.
    fn point(&mut self, seq: i64, p: Point) -> Result<(), ApplyError> {
        let rules = self.rules;
        let id = p.key.id.clone();
        if !self.memory.series.contains_key(&id) {
            // A loop: after `max_series` was lowered, each new series brings the count down.
            let mut full = self.memory.series.len() >= rules.max_series;
            while full && self.evict_idle(p.at_ms) {
                full = self.memory.series.len() >= rules.max_series;
            }
            if full {
                self.memory.refused += 1;
                if self.memory.refused.is_power_of_two() {
                    tracing::warn!(series = %id, refused = self.memory.refused, max = rules.max_series, "anomalies: past max_series; new series are not watched");
                }
                return Ok(());
            }
            let state = fresh_state(rules, &p.key);
            let sid = self.memory.next_sid;
            self.memory.next_sid += 1;
            self.memory.series.insert(
                id.clone(),
                Slot {
                    key: p.key.clone(),
                    sid,
                    state,
                    first_at: p.at_ms,
                    last_at: None,
                    points: 0,
                    saved_points: 0,
                    unsaved: None,
                    last_value: p.value,
                    last_score: 0.0,
                    open_alert: None,
                    dropped: 0,
                },
            );
        }
        let Some(slot) = self.memory.series.get_mut(&id) else {
            return Ok(());
        };
        self.out.rows.touched.insert(id.clone());
        if slot.last_at.is_some_and(|l| p.at_ms <= l) {
            slot.dropped += 1;
            return Ok(());
        }
        self.memory.newest_ms = self.memory.newest_ms.max(p.at_ms);
        let score = slot.state.detector.update(p.value);
        let at = time(p.at_ms).naive_utc();
        let changes = slot.state.alerting.observe_value(at, score, p.value);
        slot.points += 1;
        slot.last_at = Some(p.at_ms);
        slot.last_value = p.value;
        slot.last_score = score;
        let n = slot.points;
        self.out
            .rows
            .points
            .push((slot.sid, n, p.at_ms, p.value, score));
        // Saved at fixed points of the series, whatever the batches, so a replay writes the
        // same; staggered by the series' number, so series fed together are not all saved in
        // the same batch.
        if (n + i64::from(slot.sid)) % rules.save_every == 0 {
            slot.unsaved = Some(crate::detector::encode(&slot.state));
            slot.saved_points = n;
        }
        let step = (rules.keep_points / 10).max(1);
        if n > rules.keep_points && n % step == 0 {
            self.out.rows.prune.push((slot.sid, n - rules.keep_points));
        }
        let sid = slot.sid;
        let expected_now = slot.state.alerting.expected();
        let open_before = slot.open_alert.clone();
        for change in changes {
            match change {
                AlertEvent::Raised {
                    score, expected, ..
                } => {
                    // The series number too: a series forgotten at `max_series` that comes back
                    // counts its points from 1 again, under a new number.
                    let alert_id = format!("alert-{:016x}-{sid}-{n}", kairos_events::fnv1a64(&id));
                    self.raised(seq, &p, &alert_id, score, expected)?;
                }
                AlertEvent::Resolved {
                    at: when,
                    peak,
                    reason,
                    ..
                } => {
                    let when = when.and_utc().timestamp_millis();
                    if let Some(alert_id) = self
                        .memory
                        .series
                        .get_mut(&id)
                        .and_then(|s| s.open_alert.take())
                    {
                        self.resolved(&p, &alert_id, when, score, peak, reason.as_str())?;
                    }
                }
            }
        }
        // A half-open breaker whose series is still off its expected range opens again.
        if let (Some(model), Some(alert_id)) = (&p.key.model, open_before) {
            // The value decides, not the score: the detector flags the return to normal as a
            // change too.
            let abnormal = match expected_now {
                Some((lo, hi)) => !(lo..=hi).contains(&p.value),
                None => score >= rules.alert.raise_above,
            };
            if let Some(b) = self.memory.breakers.get_mut(model)
                && b.state == BreakerState::HalfOpen
                && b.alerts.contains(&alert_id)
                && abnormal
            {
                b.state = BreakerState::Open;
                b.since = p.at_ms;
                b.changed_at = p.at_ms;
                b.reason = format!(
                    "probe calls of {model} still abnormal on {id}: {} (score {score:.3})",
                    p.value
                );
                let b = b.clone();
                self.breaker_changed(model, Some(b), p.at_ms)?;
            }
        }
        // Keep `idle_floor` a floor: a new series, or one whose alert just resolved, may have
        // its last point before it (series times need not agree across series).
        let eligible = self
            .memory
            .series
            .get(&id)
            .is_some_and(|s| s.open_alert.is_none());
        if eligible && let Some(floor) = self.memory.idle_floor.as_mut() {
            *floor = (*floor).min(p.at_ms);
        }
        Ok(())
    }

    fn raised(
        &mut self,
        seq: i64,
        p: &Point,
        alert_id: &str,
        score: f64,
        expected: Option<(f64, f64)>,
    ) -> Result<(), ApplyError> {
        let rules = self.rules;
        let kind = p.key.kind;
        let action = if kind.trips_breaker() && rules.breaker {
            "circuit_breaker"
        } else if kind == Kind::CostPerMinute && rules.cost_action == CostAction::LowerLimit {
            "lower_limit"
        } else {
            "warn"
        };
        let severity = if action == "warn" {
            "warning"
        } else {
            "critical"
        };
        if let Some(s) = self.memory.series.get_mut(&p.key.id) {
            s.open_alert = Some(alert_id.to_owned());
        }
        self.out.alerts.push(AlertRow::Raised {
            id: alert_id.to_owned(),
            key: p.key.clone(),
            severity,
            at: p.at_ms,
            value: p.value,
            expected,
            score,
            action,
            seq,
        });
        let mut data = json!({
            "alert_id": alert_id, "series": p.key.id, "kind": kind.as_str(),
            "severity": severity, "value": p.value, "score": score.clamp(0.0, 1.0),
            "started_at": time(p.at_ms), "action": action,
        });
        if let Some((lo, hi)) = expected {
            data["expected_low"] = json!(lo);
            data["expected_high"] = json!(hi);
        }
        if let Some(project) = &p.key.project {
            data["project"] = json!(project);
        }
        if let Some(model) = &p.key.model {
            data["model"] = json!(model);
        }
        if action == "lower_limit" {
            data["limit_factor"] = json!(rules.limit_factor);
        }
        let event = emit(
            ALERT_RAISED,
            alert_id.to_owned(),
            p.key.project.as_deref(),
            p.at_ms,
            data,
        )?;
        self.out.events.push(event);
        match (action, &p.key.model, &p.key.project) {
            ("circuit_breaker", Some(model), _) => {
                let reason = format!(
                    "alert {alert_id}: {} of {model} is {} (expected {})",
                    kind.as_str(),
                    p.value,
                    expected.map_or("?".into(), |(lo, hi)| format!("{lo:.4} to {hi:.4}"))
                );
                let b = match self.memory.breakers.remove(model) {
                    Some(mut b) => {
                        b.alerts.insert(alert_id.to_owned());
                        b.state = BreakerState::Open;
                        b.since = p.at_ms;
                        b.changed_at = p.at_ms;
                        b.reason = reason;
                        b
                    }
                    None => Breaker {
                        state: BreakerState::Open,
                        alerts: BTreeSet::from([alert_id.to_owned()]),
                        since: p.at_ms,
                        changed_at: p.at_ms,
                        reason,
                    },
                };
                self.memory.breakers.insert(model.clone(), b.clone());
                self.breaker_changed(model, Some(b), p.at_ms)?;
            }
            ("lower_limit", _, Some(project)) => self.out.alerts.push(AlertRow::Limit {
                project: project.clone(),
                alert_id: alert_id.to_owned(),
                factor: rules.limit_factor,
                at: p.at_ms,
            }),
            _ => {}
        }
        Ok(())
    }

    fn resolved(
        &mut self,
        p: &Point,
        alert_id: &str,
        at: i64,
        score: f64,
        peak: f64,
        reason: &'static str,
    ) -> Result<(), ApplyError> {
        self.out.alerts.push(AlertRow::Resolved {
            id: alert_id.to_owned(),
            at,
            peak,
            reason,
        });
        let mut data = json!({
            "alert_id": alert_id, "series": p.key.id, "kind": p.key.kind.as_str(),
            "resolved_at": time(at), "value": p.value, "score": score.clamp(0.0, 1.0),
            "peak": peak.clamp(0.0, 1.0), "reason": reason,
        });
        if let Some(project) = &p.key.project {
            data["project"] = json!(project);
        }
        if let Some(model) = &p.key.model {
            data["model"] = json!(model);
        }
        let event = emit(
            ALERT_RESOLVED,
            format!("{alert_id}/resolved"),
            p.key.project.as_deref(),
            at,
            data,
        )?;
        self.out.events.push(event);
        if let Some(model) = &p.key.model
            && let Some(mut b) = self.memory.breakers.remove(model)
        {
            b.alerts.remove(alert_id);
            if b.alerts.is_empty() {
                self.breaker_changed(model, None, at)?;
            } else {
                // Still open for the others; the table must forget this one too.
                self.out.alerts.push(AlertRow::Breaker {
                    model: model.clone(),
                    breaker: Some(b.clone()),
                });
                self.memory.breakers.insert(model.clone(), b);
            }
        }
        Ok(())
    }

    /// Breakers open for `probe_after` of the calls' time turn half-open.
    fn probe_due(&mut self, _seq: i64) -> Result<(), ApplyError> {
        let watermark = self.memory.buckets.watermark;
        let after = self.rules.probe_after.num_milliseconds();
        let due: Vec<String> = self
            .memory
            .breakers
            .iter()
            .filter(|(_, b)| b.state == BreakerState::Open && watermark >= b.since + after)
            .map(|(m, _)| m.clone())
            .collect();
        for model in due {
            if let Some(b) = self.memory.breakers.get_mut(&model) {
                b.state = BreakerState::HalfOpen;
                b.changed_at = watermark;
                b.reason = format!(
                    "open for {} s: a few probe calls of {model} go through",
                    after / 1000
                );
                let b = b.clone();
                self.breaker_changed(&model, Some(b), watermark)?;
            }
        }
        Ok(())
    }

    /// Records a breaker's new state (`None`: closed) and emits its event.
    fn breaker_changed(
        &mut self,
        model: &str,
        b: Option<Breaker>,
        at: i64,
    ) -> Result<(), ApplyError> {
        let (state, alerts, reason) = match &b {
            Some(b) => (
                b.state.as_str(),
                b.alerts.iter().cloned().collect::<Vec<_>>(),
                b.reason.clone(),
            ),
            None => (
                "closed",
                Vec::new(),
                format!("the alerts on {model} resolved: it is routed again"),
            ),
        };
        let data = json!({
            "model": model, "state": state, "alerts": alerts, "at": time(at), "reason": reason,
        });
        let event = emit(
            BREAKER_CHANGED,
            format!("breaker/{model}/{state}/{at}/{}", alerts.len()),
            None,
            at,
            data,
        )?;
        self.out.events.push(event);
        self.out.alerts.push(AlertRow::Breaker {
            model: model.to_owned(),
            breaker: b,
        });
        Ok(())
    }
}

/// Reads the memory back: saved states, the points after them folded in again, the open
/// buckets and the breakers.
async fn load(tx: &mut PgConnection, rules: &Rules) -> Result<Memory, ApplyError> {
    let mut memory = Memory::default();
    if let Some(row) = sqlx::query("SELECT groups, catalog, next_sid FROM memory WHERE id = 1")
        .fetch_optional(&mut *tx)
        .await?
    {
        memory.next_sid = row.try_get("next_sid")?;
        let bytes: Vec<u8> = row.try_get("groups")?;
        memory.buckets = Buckets::from_bytes(&bytes)
            .map_err(|e| ApplyError::Data(format!("anomalies: open buckets unreadable: {e}")))?;
        let catalog: Option<Value> = row.try_get("catalog")?;
        if let Some(c) = catalog {
            memory.catalog = serde_json::from_value(c)
                .map_err(|e| ApplyError::Data(format!("anomalies: catalog unreadable: {e}")))?;
        }
    }
    let rows = sqlx::query(
        "SELECT id, sid, kind, project, model, metric, labels, first_at, last_at, points,
                last_value, last_score, open_alert, state, state_points, dropped
         FROM series",
    )
    .fetch_all(&mut *tx)
    .await?;
    for r in rows {
        let kind: String = r.try_get("kind")?;
        let kind = Kind::parse(&kind)
            .ok_or_else(|| ApplyError::Data(format!("anomalies: series kind {kind:?}")))?;
        let labels: Option<Value> = r.try_get("labels")?;
        let key = SeriesKey {
            id: r.try_get("id")?,
            kind,
            project: r.try_get("project")?,
            model: r.try_get("model")?,
            metric: r.try_get("metric")?,
            labels: labels.and_then(|l| serde_json::from_value(l).ok()),
        };
        let state: Option<Vec<u8>> = r.try_get("state")?;
        let state_points: i64 = r.try_get("state_points")?;
        let state = match state {
            Some(bytes) => crate::detector::decode::<SeriesState>(&bytes)
                .and_then(|s| s.detector.check().map(|()| s))
                .map_err(|e| ApplyError::Data(format!("anomalies: state of {}: {e}", key.id)))?,
            None => fresh_state(rules, &key),
        };
        let first: DateTime<Utc> = r.try_get("first_at")?;
        let last: DateTime<Utc> = r.try_get("last_at")?;
        let sid: i32 = r.try_get("sid")?;
        memory.next_sid = memory.next_sid.max(sid + 1);
        memory.newest_ms = memory.newest_ms.max(millis(last));
        let slot = Slot {
            sid,
            state,
            first_at: millis(first),
            last_at: Some(millis(last)),
            points: r.try_get("points")?,
            saved_points: state_points,
            unsaved: None,
            last_value: r.try_get("last_value")?,
            last_score: r.try_get("last_score")?,
            open_alert: r.try_get("open_alert")?,
            dropped: r.try_get("dropped")?,
            key,
        };
        memory.series.insert(slot.key.id.clone(), slot);
    }
    // The points scored after each saved state, folded in again (their alerting changes were
    // acted on when they were first scored).
    let rows = sqlx::query(
        "SELECT s.id AS series, p.n, p.at, p.value FROM points p JOIN series s ON s.sid = p.sid
         WHERE p.n > s.state_points ORDER BY p.sid, p.n",
    )
    .fetch_all(&mut *tx)
    .await?;
    for r in rows {
        let id: String = r.try_get("series")?;
        let at: DateTime<Utc> = r.try_get("at")?;
        let value: f64 = r.try_get("value")?;
        if let Some(slot) = memory.series.get_mut(&id) {
            let score = slot.state.detector.update(value);
            slot.state
                .alerting
                .observe_value(at.naive_utc(), score, value);
        }
    }
    let rows = sqlx::query("SELECT model, state, alerts, since, changed_at, reason FROM breakers")
        .fetch_all(&mut *tx)
        .await?;
    for r in rows {
        let state: String = r.try_get("state")?;
        let alerts: Vec<String> = r.try_get("alerts")?;
        let since: DateTime<Utc> = r.try_get("since")?;
        let changed: DateTime<Utc> = r.try_get("changed_at")?;
        memory.breakers.insert(
            r.try_get("model")?,
            Breaker {
                state: if state == "open" {
                    BreakerState::Open
                } else {
                    BreakerState::HalfOpen
                },
                alerts: alerts.into_iter().collect(),
                since: millis(since),
                changed_at: millis(changed),
                reason: r.try_get("reason")?,
            },
        );
    }
    Ok(memory)
}

/// Writes a batch's points, the touched series (with their state when due), the open buckets
/// and the mark.
async fn write(
    tx: &mut PgConnection,
    memory: &mut Memory,
    rows: Rows,
    mark: i64,
) -> Result<(), ApplyError> {
    if !rows.points.is_empty() {
        // COPY, a third of the time of an INSERT of the same rows. A point is written once: a
        // reload starts from what was committed, so the points it folds again are not new.
        use std::fmt::Write as _;
        let mut text = String::with_capacity(rows.points.len() * 64);
        for (s, i, t, v, sc) in &rows.points {
            let at = time(*t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            // `{}` of an f64 is the shortest text that reads back as the same bits.
            let _ = writeln!(text, "{s}\t{i}\t{at}\t{v}\t{sc}");
        }
        let mut copy = tx
            .copy_in_raw("COPY points (sid, n, at, value, score) FROM STDIN")
            .await?;
        copy.send(text.into_bytes()).await?;
        copy.finish().await?;
    }
    for (s, cut) in rows.prune {
        sqlx::query("DELETE FROM points WHERE sid = $1 AND n <= $2")
            .bind(s)
            .bind(cut)
            .execute(&mut *tx)
            .await?;
    }
    // Before the series are written: a series forgotten, then seen again in the same batch, is
    // written again as new (with a new `sid`).
    for (s, id) in rows.evict {
        sqlx::query("DELETE FROM points WHERE sid = $1")
            .bind(s)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM series WHERE id = $1 AND sid = $2")
            .bind(id)
            .bind(s)
            .execute(&mut *tx)
            .await?;
    }
    if !rows.touched.is_empty() {
        let mut cols = SeriesCols::default();
        for id in &rows.touched {
            let Some(slot) = memory.series.get_mut(id) else {
                continue;
            };
            let Some(last_at) = slot.last_at else {
                continue;
            };
            cols.state.push(slot.unsaved.take());
            cols.id.push(id.clone());
            cols.sid.push(slot.sid);
            cols.kind.push(slot.key.kind.as_str().to_owned());
            cols.project.push(slot.key.project.clone());
            cols.model.push(slot.key.model.clone());
            cols.metric.push(slot.key.metric.clone());
            cols.labels.push(slot.key.labels.as_ref().map(|l| json!(l)));
            cols.first_at.push(time(slot.first_at));
            cols.last_at.push(time(last_at));
            cols.points.push(slot.points);
            cols.last_value.push(slot.last_value);
            cols.last_score.push(slot.last_score);
            cols.open_alert.push(slot.open_alert.clone());
            cols.state_points.push(slot.saved_points);
            cols.dropped.push(slot.dropped);
        }
        sqlx::query(
            "INSERT INTO series (id, kind, project, model, metric, labels, first_at, last_at,
                                 points, last_value, last_score, open_alert, state, state_points,
                                 dropped, sid)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                  $6::jsonb[], $7::timestamptz[], $8::timestamptz[], $9::int8[],
                                  $10::float8[], $11::float8[], $12::text[], $13::bytea[],
                                  $14::int8[], $15::int8[], $16::int4[])
             ON CONFLICT (id) DO UPDATE SET
                 last_at = EXCLUDED.last_at, points = EXCLUDED.points,
                 last_value = EXCLUDED.last_value, last_score = EXCLUDED.last_score,
                 open_alert = EXCLUDED.open_alert,
                 state = COALESCE(EXCLUDED.state, series.state),
                 state_points = EXCLUDED.state_points, dropped = EXCLUDED.dropped",
        )
        .bind(cols.id)
        .bind(cols.kind)
        .bind(cols.project)
        .bind(cols.model)
        .bind(cols.metric)
        .bind(cols.labels)
        .bind(cols.first_at)
        .bind(cols.last_at)
        .bind(cols.points)
        .bind(cols.last_value)
        .bind(cols.last_score)
        .bind(cols.open_alert)
        .bind(cols.state)
        .bind(cols.state_points)
        .bind(cols.dropped)
        .bind(cols.sid)
        .execute(&mut *tx)
        .await?;
    }
    // The catalog is written when it changed (and always with the first row).
    let catalog = std::mem::take(&mut memory.catalog_changed).then(|| json!(memory.catalog));
    sqlx::query(
        "INSERT INTO memory (id, mark, groups, catalog, next_sid) VALUES (1, $1, $2, $3, $4)
         ON CONFLICT (id) DO UPDATE SET mark = EXCLUDED.mark, groups = EXCLUDED.groups,
             catalog = COALESCE(EXCLUDED.catalog, memory.catalog), next_sid = EXCLUDED.next_sid",
    )
    .bind(mark)
    .bind(memory.buckets.to_bytes())
    .bind(catalog)
    .bind(memory.next_sid)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

#[derive(Default)]
struct SeriesCols {
    id: Vec<String>,
    sid: Vec<i32>,
    kind: Vec<String>,
    project: Vec<Option<String>>,
    model: Vec<Option<String>>,
    metric: Vec<Option<String>>,
    labels: Vec<Option<Value>>,
    first_at: Vec<DateTime<Utc>>,
    last_at: Vec<DateTime<Utc>>,
    points: Vec<i64>,
    last_value: Vec<f64>,
    last_score: Vec<f64>,
    open_alert: Vec<Option<String>>,
    state: Vec<Option<Vec<u8>>>,
    state_points: Vec<i64>,
    dropped: Vec<i64>,
}

async fn write_alerts(
    tx: &mut PgConnection,
    rules: &Rules,
    alerts: &[AlertRow],
    acks: &[(String, String, DateTime<Utc>)],
) -> Result<(), ApplyError> {
    for a in alerts {
        match a {
            AlertRow::Raised {
                id,
                key,
                severity,
                at,
                value,
                expected,
                score,
                action,
                seq,
            } => {
                sqlx::query(
                    "INSERT INTO alerts (id, series, kind, project, model, severity, status,
                                         raised_at, value, expected_low, expected_high, score,
                                         peak, action, raised_seq)
                     VALUES ($1, $2, $3, $4, $5, $6, 'open', $7, $8, $9, $10, $11, $11, $12, $13)
                     ON CONFLICT (id) DO NOTHING",
                )
                .bind(id)
                .bind(&key.id)
                .bind(key.kind.as_str())
                .bind(&key.project)
                .bind(&key.model)
                .bind(severity)
                .bind(time(*at))
                .bind(value)
                .bind(expected.map(|e| e.0))
                .bind(expected.map(|e| e.1))
                .bind(score)
                .bind(action)
                .bind(seq)
                .execute(&mut *tx)
                .await?;
            }
            AlertRow::Resolved {
                id,
                at,
                peak,
                reason,
            } => {
                sqlx::query(
                    "UPDATE alerts SET status = 'resolved', resolved_at = $2, peak = $3,
                                       resolve_reason = $4
                     WHERE id = $1",
                )
                .bind(id)
                .bind(time(*at))
                .bind(peak)
                .bind(reason)
                .execute(&mut *tx)
                .await?;
            }
            AlertRow::Breaker { model, breaker } => match breaker {
                Some(b) => {
                    sqlx::query(
                        "INSERT INTO breakers (model, state, alerts, since, changed_at, reason,
                                               probe_calls, probe_window_ms)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                         ON CONFLICT (model) DO UPDATE SET state = EXCLUDED.state,
                             alerts = EXCLUDED.alerts, since = EXCLUDED.since,
                             changed_at = EXCLUDED.changed_at, reason = EXCLUDED.reason,
                             probe_calls = EXCLUDED.probe_calls,
                             probe_window_ms = EXCLUDED.probe_window_ms",
                    )
                    .bind(model)
                    .bind(b.state.as_str())
                    .bind(b.alerts.iter().cloned().collect::<Vec<_>>())
                    .bind(time(b.since))
                    .bind(time(b.changed_at))
                    .bind(&b.reason)
                    .bind(i32::try_from(rules.probe_calls).unwrap_or(i32::MAX))
                    .bind(rules.width_ms)
                    .execute(&mut *tx)
                    .await?;
                }
                None => {
                    sqlx::query("DELETE FROM breakers WHERE model = $1")
                        .bind(model)
                        .execute(&mut *tx)
                        .await?;
                }
            },
            AlertRow::Limit {
                project,
                alert_id,
                factor,
                at,
            } => {
                sqlx::query(
                    "INSERT INTO limits (project, alert_id, factor, since) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (project) DO UPDATE SET alert_id = EXCLUDED.alert_id,
                         factor = LEAST(limits.factor, EXCLUDED.factor), since = EXCLUDED.since",
                )
                .bind(project)
                .bind(alert_id)
                .bind(factor)
                .bind(time(*at))
                .execute(&mut *tx)
                .await?;
            }
        }
    }
    for (id, by, at) in acks {
        sqlx::query(
            "UPDATE alerts SET acknowledged_by = $2, acknowledged_at = $3
             WHERE id = $1 AND acknowledged_at IS NULL",
        )
        .bind(id)
        .bind(by)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM limits WHERE alert_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}
