//! The router: which model the next LLM call should use, given what the project has left to
//! spend, how large the task is and how each model has performed.
//!
//! `POST /v1/route` decides with [`rules::decide`] against the catalog (folded from its
//! subject), the project's budget (its own subject's setting and open reservations, plus the
//! spend the budgets projection applied) and the last hour of model analytics. A paid call under
//! a budget is admitted by appending a `kairos.budget.reserved.v1` of its worst-case cost to the
//! budget's subject with optimistic concurrency, so concurrent routes can never together
//! reserve more than the budget has left. Every decision is a `kairos.router.decision.v1` with
//! the inputs that produced it; this crate's projection keeps them for
//! `GET /v1/route/decisions`.

use chrono::{DateTime, Utc};
use kairos_events::types::ROUTER_DECISION;
use kairos_events::{Event, Money};
use kairos_runtime::{ApplyError, Projection, Rejection, StoredEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgConnection;

mod api;
pub mod rules;
pub mod simulate;

pub use api::{MODULE, RouterModule, RouterSettings};
pub use rules::{Alternative, BudgetState, Choice, Outcome, Plan, RouteRequest, decide};

/// The name of the projection: consumer, checkpoint and dead-letter subject.
pub const NAME: &str = "router";
/// The CloudEvent `source` of decisions.
pub const SOURCE: &str = "kairos/router";

/// The `data` of a `kairos.router.decision.v1`: a decision and everything it was decided on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DecisionRecord {
    pub project: String,
    pub request: RouteRequest,
    pub outcome: Outcome,
    pub rule: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// USD, a decimal string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub estimated_cost: Option<Money>,
    /// The worst-case cost reserved (outcome `reserved` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub reserved: Option<Money>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation_expires_at: Option<DateTime<Utc>>,
    /// The catalog version (stream sequence of its change) decided against.
    pub catalog_version: u64,
    /// The budget as the decision saw it (none: the project has no budget).
    #[serde(default)]
    pub budget: Option<BudgetState>,
    /// The last-hour figures of the models that qualified, by model.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub health: Value,
    pub alternatives: Vec<Alternative>,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// What the anomalies projection's circuit breakers and lowered limits did to this
    /// decision (absent: nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub circuit: Option<Value>,
}

/// The projection keeping every decision.
#[derive(Debug, Clone, Default)]
pub struct Decisions;

/// One decision as stored.
#[derive(Debug)]
pub struct Stored {
    id: String,
    seq: u64,
    at: DateTime<Utc>,
    record: DecisionRecord,
    raw: Value,
}

impl Projection for Decisions {
    type Item = Stored;
    type Carry = ();

    fn name(&self) -> &'static str {
        NAME
    }

    fn schema(&self) -> &'static str {
        NAME
    }

    fn categories(&self) -> Option<&'static [&'static str]> {
        Some(&["router"])
    }

    fn decode(&self, stored: &StoredEvent) -> Result<Option<Stored>, Rejection> {
        if stored.event.event_type().as_str() != ROUTER_DECISION {
            return Ok(None);
        }
        let record: DecisionRecord = stored.event.data_as()?;
        Ok(Some(Stored {
            id: stored.event.id().to_owned(),
            seq: stored.seq.0,
            at: stored.occurred_at(),
            raw: stored
                .event
                .json()
                .get("data")
                .cloned()
                .unwrap_or(Value::Null),
            record,
        }))
    }

    async fn apply(
        &self,
        tx: &mut PgConnection,
        items: Vec<Stored>,
        _carry: &mut (),
    ) -> Result<Vec<Event>, ApplyError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let col = |f: &dyn Fn(&Stored) -> Option<String>| items.iter().map(f).collect::<Vec<_>>();
        let nanos = |m: Option<Money>| m.map(Money::nanos);
        sqlx::query(
            "INSERT INTO decisions (id, seq, project, decided_at, outcome, rule, model,
                                    estimated_cost_nanos, reserved_nanos, record)
             SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::timestamptz[],
                                  $5::text[], $6::text[], $7::text[], $8::int8[], $9::int8[],
                                  $10::jsonb[])
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(col(&|s| Some(s.id.clone())))
        .bind(
            items
                .iter()
                .map(|s| i64::try_from(s.seq).unwrap_or(i64::MAX))
                .collect::<Vec<_>>(),
        )
        .bind(col(&|s| Some(s.record.project.clone())))
        .bind(items.iter().map(|s| s.at).collect::<Vec<_>>())
        .bind(col(&|s| {
            serde_json::to_value(s.record.outcome)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
        }))
        .bind(col(&|s| Some(s.record.rule.clone())))
        .bind(col(&|s| s.record.model.clone()))
        .bind(
            items
                .iter()
                .map(|s| nanos(s.record.estimated_cost))
                .collect::<Vec<_>>(),
        )
        .bind(
            items
                .iter()
                .map(|s| nanos(s.record.reserved))
                .collect::<Vec<_>>(),
        )
        .bind(items.iter().map(|s| s.raw.clone()).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests;
