//! Typed payloads of the core event types that Kairos itself folds or emits. The JSON Schemas in
//! `events-schema/` are the contract; these structs read what the schemas have already admitted.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{Money, ProjectId};

pub const LLM_CALL_COMPLETED: &str = "kairos.llm.call.completed.v1";
pub const BUDGET_SET: &str = "kairos.budget.set.v1";
pub const BUDGET_THRESHOLD_CROSSED: &str = "kairos.budget.threshold_crossed.v1";
pub const USER_ACTION: &str = "kairos.user.action.v1";
pub const METRIC_RECORDED: &str = "kairos.metric.recorded.v1";
pub const TASK_STARTED: &str = "kairos.task.started.v1";
pub const TASK_COMPLETED: &str = "kairos.task.completed.v1";
pub const MEMBER_INVITED: &str = "kairos.member.invited.v1";
pub const MEMBER_JOINED: &str = "kairos.member.joined.v1";
pub const MEMBER_REMOVED: &str = "kairos.member.removed.v1";
pub const INVITATION_REVOKED: &str = "kairos.member.invitation_revoked.v1";
pub const ROLE_ASSIGNED: &str = "kairos.role.assigned.v1";
pub const API_KEY_ISSUED: &str = "kairos.api_key.issued.v1";
pub const API_KEY_REVOKED: &str = "kairos.api_key.revoked.v1";
pub const CATALOG_CHANGED: &str = "kairos.catalog.changed.v1";
pub const ROUTER_DECISION: &str = "kairos.router.decision.v1";
pub const BUDGET_RESERVED: &str = "kairos.budget.reserved.v1";
pub const BUDGET_RESERVED_BATCH: &str = "kairos.budget.reserved_batch.v1";
pub const BUDGET_RESERVATION_SETTLED: &str = "kairos.budget.reservation_settled.v1";
pub const BUDGET_RESERVATION_EXPIRED: &str = "kairos.budget.reservation_expired.v1";
pub const ALERT_RAISED: &str = "kairos.alert.raised.v1";
pub const ALERT_RESOLVED: &str = "kairos.alert.resolved.v1";
pub const ALERT_ACKNOWLEDGED: &str = "kairos.alert.acknowledged.v1";
pub const BREAKER_CHANGED: &str = "kairos.alert.breaker_changed.v1";
pub const AUDIT_CHECKPOINT: &str = "kairos.audit.checkpoint.v1";

/// `kairos.audit.checkpoint.v1`: the head of the audit hash chain, as the projection wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditCheckpoint {
    /// The stream sequence of the newest entry.
    pub head_seq: u64,
    /// Its hash, in hex.
    pub head_hash: String,
    /// How many entries the chain held, that one included.
    pub entries: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallStatus {
    Ok,
    Error,
}

/// `kairos.llm.call.completed.v1`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LlmCallCompleted {
    pub project: ProjectId,
    pub model: String,
    pub provider: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// What the producer says the call cost; `None`: priced from the catalog in force at the
    /// call's time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<Money>,
    pub latency_ms: u64,
    pub status: CallStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The `POST /v1/route` decision this call followed: its reservation is settled to `cost`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision_id: Option<String>,
}

/// How a task ended (`kairos.task.completed.v1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Ok,
    Error,
    Cancelled,
}

/// `kairos.task.started.v1`, and the common part of `kairos.task.completed.v1`: a task of a
/// workflow run (a session).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStarted {
    pub project: ProjectId,
    pub workflow_id: String,
    pub task_id: String,
    pub task_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
}

/// `kairos.task.completed.v1`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCompleted {
    pub project: ProjectId,
    pub workflow_id: String,
    pub task_id: String,
    pub task_type: String,
    pub status: TaskStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
}

/// What happens to calls once a project's monthly budget is spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnExceeded {
    /// Route further calls to a local model.
    FallbackToLocal,
    /// Refuse further calls.
    Block,
}

impl OnExceeded {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FallbackToLocal => "fallback_to_local",
            Self::Block => "block",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "fallback_to_local" => Some(Self::FallbackToLocal),
            "block" => Some(Self::Block),
            _ => None,
        }
    }
}

/// `kairos.budget.set.v1`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetSet {
    pub project: ProjectId,
    pub monthly_limit: Money,
    pub warn_at_percent: u8,
    pub on_exceeded: OnExceeded,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Threshold {
    Warning,
    Exceeded,
}

impl Threshold {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Warning => "warning",
            Self::Exceeded => "exceeded",
        }
    }
}

/// `kairos.budget.threshold_crossed.v1`, emitted by the budgets projection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThresholdCrossed {
    pub project: ProjectId,
    pub period: String,
    pub threshold: Threshold,
    pub limit: Money,
    pub spent: Money,
    pub warn_at_percent: u8,
    pub on_exceeded: OnExceeded,
    pub stream_seq: u64,
}

/// A model's price from `valid_from` on (until the next entry's `valid_from`), in USD per
/// million tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceSpec {
    pub valid_from: DateTime<Utc>,
    pub input_per_mtok: Money,
    pub output_per_mtok: Money,
}

impl PriceSpec {
    /// What `input` and `output` tokens cost at this price, exactly: a price is a whole number
    /// of nano-dollars per token ([`CatalogChanged::check`] refuses others), so the cost of many
    /// calls is the cost of their summed tokens, and since prices change only at UTC midnights,
    /// the cost of a day's calls of one model is the cost of that day's tokens. `None` past
    /// [`Money::MAX`].
    pub fn cost(&self, input: u64, output: u64) -> Option<Money> {
        let per = |p: Money| i128::from(p.nanos());
        let nanos = (i128::from(input) * per(self.input_per_mtok)
            + i128::from(output) * per(self.output_per_mtok)
            + 500_000)
            / 1_000_000;
        (nanos <= i128::from(Money::MAX.nanos())).then(|| Money::from_nanos(nanos as i64))
    }
}

/// One model of the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// As producers name it in `kairos.llm.call.completed.v1` (`model`); unique.
    pub name: String,
    pub provider: String,
    /// Tokens of input and output together the model takes.
    pub context_window: u64,
    /// Most output tokens one call may produce (at most the window).
    pub max_output_tokens: u64,
    /// Self-hosted: no marginal cost, the fallback of exhausted budgets.
    #[serde(default)]
    pub local: bool,
    /// Quality, 1 (basic) to 5 (frontier).
    pub tier: u8,
    #[serde(default)]
    pub tags: Vec<String>,
    /// No longer routed to; its prices still price its calls. A model leaves the catalog this
    /// way: removing it would unprice the calls it priced.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retired: bool,
    /// Price history, by `valid_from`; none for a local model.
    #[serde(default)]
    pub prices: Vec<PriceSpec>,
}

impl ModelSpec {
    /// The price in force at `at`; a local model's is zero, a remote model without one in
    /// force has none (its calls are unpriced).
    pub fn price_at(&self, at: DateTime<Utc>) -> Option<PriceSpec> {
        if self.local {
            return Some(PriceSpec {
                valid_from: DateTime::<Utc>::UNIX_EPOCH,
                input_per_mtok: Money::ZERO,
                output_per_mtok: Money::ZERO,
            });
        }
        self.prices
            .iter()
            .filter(|p| p.valid_from <= at)
            .max_by_key(|p| p.valid_from)
            .cloned()
    }

    /// What a call of `input` and `output` tokens at `at` costs; `None` if unpriced then.
    pub fn cost_at(&self, at: DateTime<Utc>, input: u64, output: u64) -> Option<Money> {
        self.price_at(at)?.cost(input, output)
    }
}

/// `kairos.catalog.changed.v1`: the whole model catalog from this event on (by stream order).
/// Its stream sequence is the catalog's version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogChanged {
    pub models: Vec<ModelSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
}

/// The largest window Kairos accepts (10M tokens).
pub const MAX_CONTEXT_WINDOW: u64 = 10_000_000;

impl CatalogChanged {
    /// Whether the catalog is one Kairos can price and route by; otherwise the member at fault
    /// (`model[2].context_window`) and why.
    pub fn check(&self) -> Result<(), (String, String)> {
        let mut names = std::collections::HashSet::new();
        for (i, m) in self.models.iter().enumerate() {
            let key = |k: &str| format!("model[{i}].{k}");
            let text = |k: &str, v: &str, max: usize| {
                if v.is_empty() || v.len() > max || v.chars().any(char::is_control) {
                    Err((key(k), format!("must be 1-{max} printable characters")))
                } else {
                    Ok(())
                }
            };
            text("name", &m.name, 200)?;
            text("provider", &m.provider, 100)?;
            if !names.insert(m.name.as_str()) {
                return Err((key("name"), format!("{:?} is listed twice", m.name)));
            }
            if m.context_window == 0 || m.context_window > MAX_CONTEXT_WINDOW {
                return Err((
                    key("context_window"),
                    format!("must be 1 to {MAX_CONTEXT_WINDOW} tokens"),
                ));
            }
            if m.max_output_tokens == 0 || m.max_output_tokens > m.context_window {
                return Err((
                    key("max_output_tokens"),
                    "must be 1 to the context window".into(),
                ));
            }
            if !(1..=5).contains(&m.tier) {
                return Err((key("tier"), "must be 1 (basic) to 5 (frontier)".into()));
            }
            for (t, tag) in m.tags.iter().enumerate() {
                text(&format!("tags[{t}]"), tag, 64)?;
            }
            if m.local && !m.prices.is_empty() {
                return Err((
                    key("prices"),
                    "a local model costs nothing: leave its prices out".into(),
                ));
            }
            if !m.local && m.prices.is_empty() {
                return Err((
                    key("prices"),
                    "a remote model needs at least one price (or local = true)".into(),
                ));
            }
            let mut starts = std::collections::HashSet::new();
            for (j, p) in m.prices.iter().enumerate() {
                let pk = |k: &str| key(&format!("prices[{j}].{k}"));
                if !starts.insert(p.valid_from) {
                    return Err((
                        pk("valid_from"),
                        "two prices start at the same instant".into(),
                    ));
                }
                if p.valid_from.timestamp_subsec_nanos() != 0
                    || p.valid_from.timestamp() % 86_400 != 0
                {
                    return Err((
                        pk("valid_from"),
                        "must be a midnight, UTC (a price holds for whole UTC days)".into(),
                    ));
                }
                for (k, v) in [
                    ("input_per_mtok", p.input_per_mtok),
                    ("output_per_mtok", p.output_per_mtok),
                ] {
                    if v.nanos() % 1_000_000 != 0 {
                        return Err((
                            pk(k),
                            format!(
                                "{v} is finer than $0.001 per million tokens (a whole nano-dollar per token)"
                            ),
                        ));
                    }
                    if v.nanos() > 10_000 * Money::SCALE {
                        return Err((pk(k), "must be at most 10000 USD per million tokens".into()));
                    }
                }
            }
        }
        Ok(())
    }

    /// The model called `name`.
    pub fn model(&self, name: &str) -> Option<&ModelSpec> {
        self.models.iter().find(|m| m.name == name)
    }

    /// Whether this catalog may follow `before`: every model of `before` stays, as local or
    /// remote as it was, and a remote one keeps a price from its first `valid_from` on. A change
    /// corrects and adds prices; it never unprices a call that was priced (retire a model with
    /// `retired = true` instead).
    pub fn may_follow(&self, before: &[ModelSpec]) -> Result<(), (String, String)> {
        for old in before {
            let Some((i, new)) = self
                .models
                .iter()
                .enumerate()
                .find(|(_, m)| m.name == old.name)
            else {
                return Err((
                    "model".into(),
                    format!(
                        "leaves out {:?}, which the catalog in force has: its calls are priced by it; \
                         set retired = true to stop routing to it",
                        old.name
                    ),
                ));
            };
            if new.local != old.local {
                return Err((
                    format!("model[{i}].local"),
                    format!(
                        "cannot change for {:?}: its past calls were priced as {}",
                        old.name,
                        if old.local { "local" } else { "remote" }
                    ),
                ));
            }
            let first = |m: &ModelSpec| m.prices.iter().map(|p| p.valid_from).min();
            if let (Some(was), Some(now)) = (first(old), first(new))
                && now > was
            {
                return Err((
                    format!("model[{i}].prices"),
                    format!(
                        "would leave {:?} unpriced before {now}: the catalog in force prices it from {was}",
                        old.name
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// `kairos.budget.reserved.v1`: `POST /v1/route` admitted a paid call and holds its worst-case
/// cost against the project's budget until the call settles it or it expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reserved {
    pub project: ProjectId,
    /// The decision's id; the LLM call that carries it as `decision_id` settles it.
    pub reservation_id: String,
    /// The budget month it counts against, as 2026-11.
    pub period: String,
    pub model: String,
    pub amount: Money,
    pub expires_at: DateTime<Utc>,
}

/// `kairos.budget.reserved_batch.v1`: several routes of one project admitted together, their
/// reservations appended as one event (a group commit on the budget's subject). Each holds as a
/// `kairos.budget.reserved.v1` of its own would.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReservedBatch {
    pub project: ProjectId,
    /// In the order they were decided; each names the batch's project.
    pub reservations: Vec<Reserved>,
}

impl ReservedBatch {
    /// At most this many reservations in one event.
    pub const MAX: usize = 1000;

    /// Refuses an empty or oversized batch, one whose reservations name another project, and
    /// a reservation id twice.
    pub fn check(&self) -> Result<(), String> {
        if self.reservations.is_empty() || self.reservations.len() > Self::MAX {
            return Err(format!(
                "reservations must hold 1 to {} reservations",
                Self::MAX
            ));
        }
        let mut ids = std::collections::HashSet::new();
        for (i, r) in self.reservations.iter().enumerate() {
            if r.project != self.project {
                return Err(format!(
                    "reservations[{i}].project is not the batch's project"
                ));
            }
            if !ids.insert(r.reservation_id.as_str()) {
                return Err(format!("reservations[{i}].reservation_id is repeated"));
            }
        }
        Ok(())
    }
}

/// `kairos.budget.reservation_settled.v1` (the call came: its cost replaces the reservation)
/// and `kairos.budget.reservation_expired.v1` (it did not come in time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationClosed {
    pub project: ProjectId,
    pub reservation_id: String,
    pub period: String,
    /// What was held.
    pub amount: Money,
    /// The call's real cost (settled only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<Money>,
    /// The call's stream sequence (settled only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_seq: Option<u64>,
}
