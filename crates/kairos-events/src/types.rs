//! Typed payloads of the core event types that Kairos itself folds or emits. The JSON Schemas in
//! `events-schema/` are the contract; these structs read what the schemas have already admitted.

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
pub const ROLE_ASSIGNED: &str = "kairos.role.assigned.v1";
pub const API_KEY_ISSUED: &str = "kairos.api_key.issued.v1";
pub const API_KEY_REVOKED: &str = "kairos.api_key.revoked.v1";

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
    pub cost: Money,
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
