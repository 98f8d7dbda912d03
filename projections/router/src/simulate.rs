//! What if? Replays the recorded route decisions and LLM calls of a range under another
//! catalog: each decision is decided again with the same request and health figures against the
//! other catalog and the budget as the simulation has spent it, and each call is costed by the
//! model it would have gone to, at the other catalog's price, with its real tokens. The circuit
//! breakers are taken as the decision recorded them: a model they kept out stays out, and a
//! limit an open cost alert lowered stays lowered.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use kairos_analytics::Health;
use kairos_bus::{Bus, ReadFrom};
use kairos_events::types::{
    BUDGET_SET, BudgetSet, CATALOG_CHANGED, CatalogChanged, LLM_CALL_COMPLETED, LlmCallCompleted,
    ModelSpec, ROUTER_DECISION,
};
use kairos_events::{Event, Money, Period, ProjectId, StreamSeq};
use serde::Serialize;
use serde_json::Value;

use crate::DecisionRecord;
use crate::rules::{BudgetState, Outcome, decide, without_tripped};

/// One event the simulation replays, with when it happened.
#[derive(Debug, Clone)]
pub enum SimEvent {
    Call(DateTime<Utc>, LlmCallCompleted),
    Decision(DateTime<Utc>, String, Box<DecisionRecord>),
    Budget(DateTime<Utc>, BudgetSet),
    Catalog(DateTime<Utc>, Vec<ModelSpec>),
}

/// The month a budget entered a state, as it was and as it would have been.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Crossed {
    /// The day the month's spend reached the warning threshold (`null`: never).
    pub warning: Option<NaiveDate>,
    /// The day it reached the limit (`null`: never).
    pub exceeded: Option<NaiveDate>,
}

/// One budget month.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct MonthReport {
    /// USD, a decimal string: the month's limit (absent without a budget).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub limit: Option<Money>,
    pub actual: Crossed,
    pub simulated: Crossed,
}

/// A project's report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ProjectReport {
    pub project: String,
    /// Calls in the range.
    pub calls: u64,
    pub decisions: u64,
    /// USD, a decimal string: what the calls cost.
    #[schema(value_type = String)]
    pub cost_actual: Money,
    /// USD, a decimal string: what they would have cost under the other catalog.
    #[schema(value_type = String)]
    pub cost_simulated: Money,
    /// Simulated less actual, as a signed decimal string.
    pub delta: String,
    /// Calls that would have gone to another model.
    pub rerouted: u64,
    /// Calls whose decision would have been refused (402/422): not made, costing nothing.
    pub refused: u64,
    /// Calls without a price in the catalog that recorded them (counted at 0 as it was).
    pub unpriced: u64,
    /// (from, to) → calls.
    pub moves: Vec<Move>,
    /// By month, as 2026-11.
    pub budgets: BTreeMap<String, MonthReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Move {
    pub from: String,
    pub to: String,
    pub calls: u64,
}

/// Signed `a - b` as a decimal string.
fn signed(a: Money, b: Money) -> String {
    match a.checked_sub(b) {
        Some(d) => d.to_string(),
        None => format!("-{}", b.checked_sub(a).unwrap_or(Money::ZERO)),
    }
}

fn add(a: Money, b: Money) -> Money {
    a.checked_add(b).unwrap_or(Money::MAX)
}

/// The health figures a decision recorded, as the rules take them.
fn recorded_health(v: &Value) -> HashMap<String, Health> {
    let Some(map) = v.as_object() else {
        return HashMap::new();
    };
    map.iter()
        .map(|(model, h)| {
            let n = |k: &str| h.get(k).and_then(Value::as_u64).unwrap_or(0);
            (
                model.clone(),
                Health {
                    calls: n("calls"),
                    errors: n("errors"),
                    error_rate: h.get("error_rate").and_then(Value::as_f64).unwrap_or(0.0),
                    p95_ms: h.get("p95_ms").and_then(Value::as_f64),
                },
            )
        })
        .collect()
}

fn cost_of(
    models: &[ModelSpec],
    model: &str,
    at: DateTime<Utc>,
    c: &LlmCallCompleted,
) -> Option<Money> {
    models
        .iter()
        .find(|m| m.name == model)?
        .cost_at(at, c.input_tokens, c.output_tokens)
}

#[derive(Default)]
struct Spend {
    actual: Money,
    simulated: Money,
}

/// Replays `events` (in stream order) under the catalog `alternative`, reporting on the calls
/// and decisions in `[from, to)` of `project` (or every project). Spend before `from` in the
/// same month counts toward the budget states as it was, on both sides.
pub fn simulate(
    events: &[SimEvent],
    alternative: &[ModelSpec],
    tz: &chrono_tz::Tz,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    project: Option<&ProjectId>,
) -> Vec<ProjectReport> {
    let mut catalog: Vec<ModelSpec> = Vec::new();
    let mut limits: HashMap<ProjectId, BudgetSet> = HashMap::new();
    let mut spend: HashMap<(ProjectId, Period), Spend> = HashMap::new();
    // Decision id → the model it would have chosen (None: refused).
    let mut redecided: HashMap<String, Option<String>> = HashMap::new();
    let mut reports: BTreeMap<String, ProjectReport> = BTreeMap::new();
    let mut moves: HashMap<(String, String, String), u64> = HashMap::new();
    let within = |at: &DateTime<Utc>| *at >= from && *at < to;
    let wanted = |p: &ProjectId| project.is_none_or(|w| w == p);
    for e in events {
        match e {
            SimEvent::Catalog(_, models) => catalog.clone_from(models),
            SimEvent::Budget(_, set) => {
                limits.insert(set.project.clone(), set.clone());
            }
            SimEvent::Decision(at, id, record) => {
                let Ok(p) = ProjectId::parse(&record.project) else {
                    continue;
                };
                if !within(at) || !wanted(&p) {
                    continue;
                }
                let period = Period::containing(*at, tz);
                let mut budget = limits.get(&p).map(|set| {
                    let s = spend.get(&(p.clone(), period));
                    BudgetState {
                        period: period.to_string(),
                        limit: set.monthly_limit,
                        spent: s.map_or(Money::ZERO, |s| s.simulated),
                        unpriced_calls: 0,
                        reserved: Money::ZERO,
                        warn_at_percent: set.warn_at_percent,
                        on_exceeded: set.on_exceeded,
                        fallback_model: set.fallback_model.clone(),
                    }
                });
                // The circuit as it was: the models its breakers kept out stay out, and a
                // lowered limit stays lowered.
                let circuit = record.circuit.as_ref();
                let skipped: HashSet<&str> = circuit
                    .and_then(|c| c.get("skipped"))
                    .and_then(Value::as_object)
                    .map(|m| m.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                let factor = circuit
                    .and_then(|c| c.get("lowered_limit"))
                    .and_then(|l| l.get("factor"))
                    .and_then(Value::as_f64);
                if let (Some(b), Some(f)) = (budget.as_mut(), factor) {
                    b.lower_limit(f);
                }
                let models = without_tripped(alternative, |m| skipped.contains(m));
                let health = recorded_health(&record.health);
                let plan = decide(&record.request, &models, *at, budget.as_ref(), &health);
                let chosen = match plan.outcome {
                    Outcome::Routed | Outcome::Reserved => plan.chosen.map(|c| c.model),
                    Outcome::NoModelFits | Outcome::BudgetBlocked => None,
                };
                redecided.insert(id.clone(), chosen);
                reports
                    .entry(p.to_string())
                    .or_insert_with(|| ProjectReport {
                        project: p.to_string(),
                        ..Default::default()
                    })
                    .decisions += 1;
            }
            SimEvent::Call(at, call) => {
                let p = &call.project;
                let period = Period::containing(*at, tz);
                let recorded = call
                    .cost
                    .or_else(|| cost_of(&catalog, &call.model, *at, call));
                let actual = recorded.unwrap_or(Money::ZERO);
                let (simulated, moved) =
                    match call.decision_id.as_ref().and_then(|d| redecided.get(d)) {
                        Some(None) => (Money::ZERO, None),
                        Some(Some(m)) if *m != call.model => (
                            cost_of(alternative, m, *at, call).unwrap_or(Money::ZERO),
                            Some(m.clone()),
                        ),
                        _ => (
                            cost_of(alternative, &call.model, *at, call).unwrap_or(actual),
                            None,
                        ),
                    };
                let refused = matches!(
                    call.decision_id.as_ref().and_then(|d| redecided.get(d)),
                    Some(None)
                );
                let s = spend.entry((p.clone(), period)).or_default();
                s.actual = add(s.actual, actual);
                s.simulated = add(s.simulated, simulated);
                let after = (s.actual, s.simulated);
                if !wanted(p) || *at >= to {
                    continue;
                }
                let r = reports
                    .entry(p.to_string())
                    .or_insert_with(|| ProjectReport {
                        project: p.to_string(),
                        ..Default::default()
                    });
                if let Some(set) = limits.get(p) {
                    let day = at.with_timezone(tz).date_naive();
                    let m = r.budgets.entry(period.to_string()).or_default();
                    m.limit = Some(set.monthly_limit);
                    let status = |spent: Money| {
                        kairos_budgets::status(set.monthly_limit, set.warn_at_percent, spent)
                    };
                    for (spent, crossed) in [(after.0, &mut m.actual), (after.1, &mut m.simulated)]
                    {
                        let now = status(spent);
                        if now != kairos_budgets::Status::Ok && crossed.warning.is_none() {
                            crossed.warning = Some(day);
                        }
                        if now == kairos_budgets::Status::Exceeded && crossed.exceeded.is_none() {
                            crossed.exceeded = Some(day);
                        }
                    }
                }
                if !within(at) {
                    continue;
                }
                r.calls += 1;
                r.cost_actual = add(r.cost_actual, actual);
                r.cost_simulated = add(r.cost_simulated, simulated);
                r.unpriced += u64::from(recorded.is_none());
                if refused {
                    r.refused += 1;
                }
                if let Some(m) = moved {
                    r.rerouted += 1;
                    *moves
                        .entry((p.to_string(), call.model.clone(), m))
                        .or_default() += 1;
                }
            }
        }
    }
    let mut moves: Vec<_> = moves.into_iter().collect();
    moves.sort();
    for ((p, from, to), calls) in moves {
        if let Some(r) = reports.get_mut(&p) {
            r.moves.push(Move { from, to, calls });
        }
    }
    reports
        .into_values()
        .map(|mut r| {
            r.delta = signed(r.cost_simulated, r.cost_actual);
            r
        })
        .collect()
}

/// Reads what a simulation of `[from, to)` replays: every budget setting and catalog change
/// up to `to`, and the LLM calls and decisions from the first event stored at or after the
/// start of `from`'s month (its earlier spend counts toward the budget states) up to `to`. A
/// producer's retry of the same event (identity) is read once.
pub async fn load_history(
    bus: &Bus,
    pool: &sqlx::PgPool,
    tz: &chrono_tz::Tz,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<SimEvent>, String> {
    let prefix = bus.config().subject_prefix.clone();
    let month = Period::containing(from, tz).start(tz);
    let start = kairos_runtime::seq_at_time(bus, pool, month)
        .await
        .map_err(|e| e.to_string())?;
    // To the stream's head: events are selected by their own `time`, which a producer sets and
    // which need not follow the order they were stored in, so no stored sequence bounds them.
    let last = bus.last_seq().await.map_err(|e| e.to_string())?;
    let mut read: Vec<(StreamSeq, SimEvent)> = Vec::new();
    let mut seen: HashSet<[u8; 32]> = HashSet::new();
    for (category, from_seq) in [
        ("budget", StreamSeq(1)),
        ("catalog", StreamSeq(1)),
        ("llm", StreamSeq(start.0.max(1))),
        ("router", StreamSeq(start.0.max(1))),
    ] {
        let mut reader = bus
            .read(
                ReadFrom::Seq(from_seq),
                Some(format!("{prefix}.events.{category}.*")),
            )
            .await
            .map_err(|e| e.to_string())?;
        if reader.pending_at_start() == 0 {
            continue;
        }
        if from_seq > last {
            continue;
        }
        loop {
            let Some(m) = reader
                .next(Duration::from_secs(10))
                .await
                .map_err(|e| e.to_string())?
            else {
                return Err(format!(
                    "the stream stopped answering while {category} events were read; the simulation would be partial"
                ));
            };
            if m.seq > last {
                break;
            }
            let done = m.pending == 0 || m.seq >= last;
            if let Ok(e) = Event::from_slice(&m.payload) {
                let at = e.time().unwrap_or(m.stored_at);
                if at < to
                    && seen.insert(e.identity())
                    && let Some(s) = sim_event(&e, at)
                {
                    read.push((m.seq, s));
                }
            }
            if done {
                break;
            }
        }
    }
    read.sort_by_key(|(seq, _)| *seq);
    Ok(read.into_iter().map(|(_, e)| e).collect())
}

fn sim_event(e: &Event, at: DateTime<Utc>) -> Option<SimEvent> {
    match e.event_type().as_str() {
        LLM_CALL_COMPLETED => Some(SimEvent::Call(at, e.data_as().ok()?)),
        ROUTER_DECISION => Some(SimEvent::Decision(
            at,
            e.id().to_owned(),
            Box::new(e.data_as().ok()?),
        )),
        BUDGET_SET => Some(SimEvent::Budget(at, e.data_as().ok()?)),
        CATALOG_CHANGED => {
            let c: CatalogChanged = e.data_as().ok()?;
            c.check().ok()?;
            Some(SimEvent::Catalog(at, c.models))
        }
        _ => None,
    }
}
