//! The routing rules: a pure function of the request, the catalog, the budget and the models'
//! health, so a decision can be explained, tested as a table and replayed.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::HashMap;

use chrono::{DateTime, Utc};
use kairos_analytics::Health;
use kairos_events::Money;
use kairos_events::types::{ModelSpec, OnExceeded};
use serde::{Deserialize, Serialize};

/// What `POST /v1/route` asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RouteRequest {
    pub project: String,
    pub input_tokens: u64,
    pub expected_output_tokens: u64,
    /// The `max_tokens` the call will be sent with: the worst case a reservation holds
    /// (default: the model's own maximum output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_tier: Option<u8>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// The project's budget as a decision sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BudgetState {
    /// The month, as 2026-11.
    pub period: String,
    /// USD, a decimal string (lowered when an open cost alert lowers it).
    #[schema(value_type = String)]
    pub limit: Money,
    #[schema(value_type = String)]
    pub spent: Money,
    /// Calls without a cost the catalog could not price: while there are any, the budget
    /// counts as exceeded (it fails closed: their cost is unknown, never zero).
    #[serde(default)]
    pub unpriced_calls: i64,
    /// Held by open reservations (and settled calls the spend did not count yet).
    #[schema(value_type = String)]
    pub reserved: Money,
    pub warn_at_percent: u8,
    /// `fallback_to_local` or `block`.
    #[schema(value_type = String)]
    pub on_exceeded: OnExceeded,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_model: Option<String>,
}

impl BudgetState {
    /// The limit an open cost alert lowered to `factor` of itself (rounded down, never above
    /// the limit nor below zero).
    pub fn lower_limit(&mut self, factor: f64) {
        let lowered = (self.limit.nanos() as f64 * factor).floor() as i64;
        self.limit = Money::from_nanos(lowered.clamp(0, self.limit.nanos()));
    }

    /// Spent and reserved together.
    pub fn committed(&self) -> Money {
        self.spent.checked_add(self.reserved).unwrap_or(Money::MAX)
    }

    /// What new reservations may take.
    pub fn available(&self) -> Money {
        self.limit
            .checked_sub(self.committed())
            .unwrap_or(Money::ZERO)
    }

    /// `ok`, `warning` or `exceeded`, on what is spent and reserved.
    /// The budgets' own status ([`kairos_budgets::status`]) of what is spent and reserved;
    /// `exceeded` while any call is unpriced.
    pub fn status(&self) -> &'static str {
        use kairos_budgets::Status;
        if self.unpriced_calls > 0 {
            return "exceeded";
        }
        match kairos_budgets::status(self.limit, self.warn_at_percent, self.committed()) {
            Status::Ok => "ok",
            Status::Warning => "warning",
            Status::Exceeded => "exceeded",
        }
    }
}

/// How a decision ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A model that needs no reservation (local, or a project without a budget).
    Routed,
    /// A paid model, its worst-case cost reserved against the budget.
    Reserved,
    /// No model's window holds the task (422).
    NoModelFits,
    /// The budget admits no call (402).
    BudgetBlocked,
}

/// The chosen model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Choice {
    pub model: String,
    pub provider: String,
    pub local: bool,
    pub tier: u8,
    /// Input plus expected output at the price in force.
    pub estimated_cost: Money,
    /// Input plus maximum output: what a reservation holds.
    pub worst_case_cost: Money,
}

/// A model that was not chosen, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Alternative {
    pub model: String,
    pub provider: String,
    /// Its place in the ranking (1: the best after the chosen one); none if it was ruled out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<usize>,
    /// USD, a decimal string: input plus expected output at its price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub estimated_cost: Option<Money>,
    /// Why it lost, or why it was ruled out.
    pub reason: String,
}

/// A decision: the model, the rule that decided, and every other model with why it lost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub outcome: Outcome,
    pub rule: String,
    pub chosen: Option<Choice>,
    pub alternatives: Vec<Alternative>,
    pub reason: String,
}

/// A candidate that passed the filters.
struct Candidate<'a> {
    model: &'a ModelSpec,
    estimated: Money,
    worst: Money,
    health: Option<&'a Health>,
}

fn usd(m: Money) -> String {
    format!("${m}")
}

fn error_rate(c: &Candidate) -> f64 {
    c.health.map_or(0.0, |h| h.error_rate)
}

fn p95(c: &Candidate) -> f64 {
    c.health.and_then(|h| h.p95_ms).unwrap_or(f64::INFINITY)
}

/// Health breaks ties: the lower last-hour error rate, then the lower p95 latency (a model
/// without figures counts as error-free and slowest), then the name.
fn by_health(a: &Candidate, b: &Candidate) -> Ordering {
    error_rate(a)
        .total_cmp(&error_rate(b))
        .then(p95(a).total_cmp(&p95(b)))
        .then(a.model.name.cmp(&b.model.name))
}

/// Best quality first; within a tier, the cheapest; then health.
fn by_quality(a: &Candidate, b: &Candidate) -> Ordering {
    b.model
        .tier
        .cmp(&a.model.tier)
        .then(a.estimated.cmp(&b.estimated))
        .then_with(|| by_health(a, b))
}

/// Cheapest first, local before paid at the same cost; then the better tier; then health.
fn by_cost(a: &Candidate, b: &Candidate) -> Ordering {
    a.estimated
        .cmp(&b.estimated)
        .then(b.model.local.cmp(&a.model.local))
        .then(b.model.tier.cmp(&a.model.tier))
        .then_with(|| by_health(a, b))
}

/// Why `loser` ranked below `winner` under `rule`.
fn lost_to(rule: &str, winner: &Candidate, loser: &Candidate) -> String {
    let w = &winner.model;
    let l = &loser.model;
    let tie = || {
        let (ea, eb) = (error_rate(loser), error_rate(winner));
        if ea != eb {
            format!(
                "tied with {} on tier and cost; last-hour error rate {:.1}% against {:.1}%",
                w.name,
                ea * 100.0,
                eb * 100.0
            )
        } else if p95(loser) != p95(winner) {
            let show = |v: f64| {
                if v.is_finite() {
                    format!("{v:.0} ms")
                } else {
                    "unmeasured".to_owned()
                }
            };
            format!(
                "tied with {} on tier and cost; last-hour p95 latency {} against {}",
                w.name,
                show(p95(loser)),
                show(p95(winner))
            )
        } else {
            format!("tied with {} in every figure; the name decided", w.name)
        }
    };
    match rule {
        "best_quality" if l.tier != w.tier => {
            format!("tier {} below {}'s {}", l.tier, w.name, w.tier)
        }
        "best_quality" if loser.estimated != winner.estimated => format!(
            "same tier as {}, but costs {} against {}",
            w.name,
            usd(loser.estimated),
            usd(winner.estimated)
        ),
        "best_quality" => tie(),
        _ if loser.estimated != winner.estimated => format!(
            "costs {} against {}'s {}",
            usd(loser.estimated),
            w.name,
            usd(winner.estimated)
        ),
        _ if l.local != w.local => format!("same cost as {}, which is local", w.name),
        _ if l.tier != w.tier => {
            format!("same cost as {}, tier {} below {}", w.name, l.tier, w.tier)
        }
        _ => tie(),
    }
}

/// Records `m` as ruled out for `reason`.
fn ruled_out(out: &mut Vec<Alternative>, m: &ModelSpec, reason: String) {
    out.push(Alternative {
        model: m.name.clone(),
        provider: m.provider.clone(),
        rank: None,
        estimated_cost: None,
        reason,
    });
}

/// `models` without those a circuit breaker keeps out (`out`): the slice itself when none is.
pub fn without_tripped(models: &[ModelSpec], out: impl Fn(&str) -> bool) -> Cow<'_, [ModelSpec]> {
    match models.iter().any(|m| out(&m.name)) {
        false => Cow::Borrowed(models),
        true => models.iter().filter(|m| !out(&m.name)).cloned().collect(),
    }
}

/// Decides a route for `req` at `at` against `models`, the project's budget (none: no budget
/// set) and the models' last-hour health.
pub fn decide(
    req: &RouteRequest,
    models: &[ModelSpec],
    at: DateTime<Utc>,
    budget: Option<&BudgetState>,
    health: &HashMap<String, Health>,
) -> Plan {
    let needed = req.input_tokens.saturating_add(req.expected_output_tokens);
    let min_tier = req.min_tier.unwrap_or(1);
    let mut out: Vec<Alternative> = Vec::new();
    // The window must hold input plus expected output.
    let mut fitting = Vec::new();
    for m in models {
        if m.context_window < needed {
            ruled_out(
                &mut out,
                m,
                format!(
                    "window of {} tokens cannot hold {} input + {} expected output",
                    m.context_window, req.input_tokens, req.expected_output_tokens
                ),
            );
            continue;
        }
        if m.retired {
            ruled_out(&mut out, m, "retired: no longer routed to".into());
            continue;
        }
        if let Some(tag) = req.tags.iter().find(|t| !m.tags.contains(t)) {
            ruled_out(&mut out, m, format!("lacks the tag {tag:?}"));
            continue;
        }
        let Some(price) = m.price_at(at) else {
            ruled_out(
                &mut out,
                m,
                "no price in force: an unpriced model is never routed to".into(),
            );
            continue;
        };
        let max_out = req
            .max_output_tokens
            .unwrap_or(m.max_output_tokens)
            .min(m.max_output_tokens)
            .min(m.context_window.saturating_sub(req.input_tokens))
            .max(req.expected_output_tokens);
        let (Some(estimated), Some(worst)) = (
            price.cost(req.input_tokens, req.expected_output_tokens),
            price.cost(req.input_tokens, max_out),
        ) else {
            ruled_out(
                &mut out,
                m,
                "its cost for this task is beyond what Kairos can count".into(),
            );
            continue;
        };
        fitting.push(Candidate {
            model: m,
            estimated,
            worst,
            health: health.get(&m.name),
        });
    }
    if fitting.is_empty()
        && !models.is_empty()
        && out.iter().all(|a| a.reason.starts_with("window"))
    {
        let largest = models.iter().map(|m| m.context_window).max().unwrap_or(0);
        return Plan {
            outcome: Outcome::NoModelFits,
            rule: "context_window".into(),
            chosen: None,
            alternatives: out,
            reason: format!(
                "no model's window holds {needed} tokens; the largest available is {largest}"
            ),
        };
    }
    let exceeded = budget.is_some_and(|b| b.status() == "exceeded");
    // Exceeded: local models only (quality relaxed: that is the fallback), or blocked.
    let (rule, mut ranked): (&str, Vec<Candidate>) = match budget {
        Some(b) if exceeded && b.on_exceeded == OnExceeded::Block => {
            for c in fitting {
                ruled_out(
                    &mut out,
                    c.model,
                    "the budget is exceeded and blocks calls".into(),
                );
            }
            return Plan {
                outcome: Outcome::BudgetBlocked,
                rule: "budget_exceeded_block".into(),
                chosen: None,
                alternatives: out,
                reason: match b.unpriced_calls {
                    0 => format!(
                        "the budget of {} is exceeded in {} ({} spent and reserved of {}) and blocks further calls",
                        req.project,
                        b.period,
                        usd(b.committed()),
                        usd(b.limit)
                    ),
                    n => format!(
                        "{n} calls of {} in {} have no price in the catalog: the budget fails closed and blocks further calls",
                        req.project, b.period
                    ),
                },
            };
        }
        Some(b) if exceeded => {
            let mut local = Vec::new();
            for c in fitting {
                if c.model.local {
                    local.push(c);
                } else {
                    let why = match b.unpriced_calls {
                        0 => format!(
                            "paid, and the budget is exceeded ({} spent and reserved of {})",
                            usd(b.committed()),
                            usd(b.limit)
                        ),
                        n => format!("paid, and the budget is exceeded: {n} calls are unpriced"),
                    };
                    ruled_out(&mut out, c.model, why);
                }
            }
            // The budget's own fallback model first, then the best local one.
            let preferred = b.fallback_model.as_deref();
            local.sort_by(|x, y| {
                (preferred != Some(x.model.name.as_str()))
                    .cmp(&(preferred != Some(y.model.name.as_str())))
                    .then_with(|| by_quality(x, y))
            });
            ("budget_exceeded_fallback", local)
        }
        _ => {
            let mut eligible = Vec::new();
            for c in fitting {
                if c.model.tier < min_tier {
                    ruled_out(
                        &mut out,
                        c.model,
                        format!("tier {} below min_tier {min_tier}", c.model.tier),
                    );
                } else {
                    eligible.push(c);
                }
            }
            let tight = budget.and_then(|b| {
                if b.status() == "warning" {
                    Some("budget_warning")
                } else {
                    let best = eligible.iter().min_by(|x, y| by_quality(x, y))?;
                    (best.estimated > b.available()).then_some("cost_above_remaining")
                }
            });
            match tight {
                Some(rule) => {
                    eligible.sort_by(by_cost);
                    (rule, eligible)
                }
                None => {
                    eligible.sort_by(by_quality);
                    ("best_quality", eligible)
                }
            }
        }
    };
    // The first candidate the budget admits: a paid one's worst case must fit what remains
    // (a fallback target's own budget is checked again).
    let available = budget.map(BudgetState::available);
    let admits = |c: &Candidate| c.model.local || available.is_none_or(|a| c.worst <= a);
    let Some(pos) = ranked.iter().position(admits) else {
        let reason = match (budget, ranked.is_empty()) {
            (_, true) => "no model meets the request (see the alternatives)".to_owned(),
            (Some(b), false) => format!(
                "no model's worst-case cost fits the {} the budget of {} has left, and no local model qualifies",
                usd(b.available()),
                req.project
            ),
            (None, false) => "no model qualifies".to_owned(),
        };
        for c in &ranked {
            ruled_out(
                &mut out,
                c.model,
                format!(
                    "worst case {} above the {} available",
                    usd(c.worst),
                    usd(available.unwrap_or(Money::ZERO))
                ),
            );
        }
        let outcome = match (ranked.is_empty(), budget) {
            (true, _) if rule != "budget_exceeded_fallback" => Outcome::NoModelFits,
            (_, Some(_)) => Outcome::BudgetBlocked,
            (_, None) => Outcome::NoModelFits,
        };
        return Plan {
            outcome,
            rule: rule.into(),
            chosen: None,
            alternatives: out,
            reason,
        };
    };
    let winner = ranked.remove(pos);
    let mut alternatives: Vec<Alternative> = Vec::new();
    for (i, c) in ranked.iter().enumerate() {
        let skipped = i < pos;
        alternatives.push(Alternative {
            model: c.model.name.clone(),
            provider: c.model.provider.clone(),
            rank: Some(i + 1),
            estimated_cost: Some(c.estimated),
            reason: if skipped {
                format!(
                    "worst case {} above the {} available",
                    usd(c.worst),
                    usd(available.unwrap_or(Money::ZERO))
                )
            } else {
                lost_to(rule, &winner, c)
            },
        });
    }
    alternatives.extend(out);
    let paid_with_budget = !winner.model.local && budget.is_some();
    let reason = match rule {
        "best_quality" => format!(
            "the best tier that fits ({}), the cheapest within it",
            winner.model.tier
        ),
        "budget_warning" => "the budget is past its warning threshold: the cheapest model that meets min_tier".into(),
        "cost_above_remaining" => "the best model's estimated cost is above what the budget has left: the cheapest that meets min_tier".into(),
        _ => "the budget is exceeded: a local model".into(),
    };
    Plan {
        outcome: if paid_with_budget {
            Outcome::Reserved
        } else {
            Outcome::Routed
        },
        rule: rule.into(),
        chosen: Some(Choice {
            model: winner.model.name.clone(),
            provider: winner.model.provider.clone(),
            local: winner.model.local,
            tier: winner.model.tier,
            estimated_cost: winner.estimated,
            worst_case_cost: winner.worst,
        }),
        alternatives,
        reason,
    }
}
