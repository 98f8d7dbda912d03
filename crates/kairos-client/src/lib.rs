//! A typed producer for Kairos.
//!
//! One builder per core event type, each taking the required fields as arguments and the optional
//! ones as methods; [`Draft::build`] makes a CloudEvent with the CloudEvents SDK and validates it
//! against the same schemas the server uses, so a built event is one the server accepts.
//! [`Producer`] publishes straight to JetStream and returns once it acknowledged.
//!
//! ```
//! use kairos_client::LlmCall;
//! let event = LlmCall::new("checkout", "gpt-4o", "openai")
//!     .tokens(1200, 300)
//!     .cost("0.0123")
//!     .latency_ms(840)
//!     .session("s-42")
//!     .source("llm-gateway/eu-1")
//!     .build()
//!     .unwrap();
//! assert_eq!(event.nats_subject("kairos"), "kairos.events.llm.checkout");
//! ```

use chrono::{DateTime, Utc};
use cloudevents::EventBuilder;
use cloudevents::EventBuilderV10;
use kairos_bus::{Bus, BusError};
use kairos_events::Event;
use kairos_events::types;
use serde_json::{Map, Value, json};

pub use kairos_bus::{BusConfig, Receipt};
pub use kairos_events;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the event is not valid: {0}")]
    Invalid(#[from] kairos_events::EventError),
    #[error("the CloudEvents SDK refused the event: {0}")]
    Sdk(String),
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// An event being built: envelope plus `data`. Every typed builder derefs to one.
#[derive(Debug, Clone)]
pub struct Draft {
    ty: &'static str,
    id: Option<String>,
    source: String,
    subject: Option<String>,
    time: Option<DateTime<Utc>>,
    data: Map<String, Value>,
}

impl Draft {
    fn new(ty: &'static str, subject: Option<&str>, data: Value) -> Self {
        let data = match data {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        Self {
            ty,
            id: None,
            source: "kairos-client".into(),
            subject: subject.map(str::to_owned),
            time: None,
            data,
        }
    }

    /// The CloudEvent id; a UUIDv7 when not set. Re-sending the same id and source is safe.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Who produces the event, e.g. `llm-gateway/eu-1`.
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = source.into();
        self
    }

    /// When it happened; now when not set.
    pub fn time(mut self, time: DateTime<Utc>) -> Self {
        self.time = Some(time);
        self
    }

    /// Sets any data field (for fields without a typed setter).
    pub fn field(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.data.insert(name.to_owned(), value.into());
        self
    }

    /// Builds and validates the CloudEvent.
    pub fn build(self) -> Result<Event, ClientError> {
        let id = self.id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let mut b = EventBuilderV10::new()
            .id(id)
            .source(self.source)
            .ty(self.ty)
            .time(self.time.unwrap_or_else(Utc::now))
            .data("application/json", Value::Object(self.data));
        if let Some(s) = self.subject {
            b = b.subject(s);
        }
        let ce = b.build().map_err(|e| ClientError::Sdk(e.to_string()))?;
        let json = serde_json::to_value(&ce).map_err(|e| ClientError::Sdk(e.to_string()))?;
        Ok(Event::from_value(json)?)
    }
}

macro_rules! builder {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name(Draft);

        impl $name {
            pub fn id(self, id: impl Into<String>) -> Self { Self(self.0.id(id)) }
            pub fn source(self, source: impl Into<String>) -> Self { Self(self.0.source(source)) }
            pub fn time(self, time: DateTime<Utc>) -> Self { Self(self.0.time(time)) }
            pub fn field(self, name: &str, value: impl Into<Value>) -> Self { Self(self.0.field(name, value)) }
            pub fn build(self) -> Result<Event, ClientError> { self.0.build() }
        }
    };
}

builder!(
    /// `kairos.llm.call.completed.v1`: one call to a model.
    LlmCall
);
builder!(
    /// `kairos.user.action.v1`: something a person or machine did.
    UserAction
);
builder!(
    /// `kairos.metric.recorded.v1`: one sample of a metric.
    Metric
);
builder!(
    /// `kairos.task.started.v1`
    TaskStarted
);
builder!(
    /// `kairos.task.completed.v1`
    TaskCompleted
);
builder!(
    /// `kairos.budget.set.v1`: a project's monthly budget.
    BudgetSet
);

impl LlmCall {
    /// A successful call with zero tokens until set, and no cost: without
    /// [`LlmCall::cost`], Kairos prices it from the model catalog (never as free).
    pub fn new(project: &str, model: &str, provider: &str) -> Self {
        Self(Draft::new(
            types::LLM_CALL_COMPLETED,
            Some(project),
            json!({"project": project, "model": model, "provider": provider, "input_tokens": 0,
                   "output_tokens": 0, "latency_ms": 0, "status": "ok"}),
        ))
    }
    pub fn tokens(self, input: u64, output: u64) -> Self {
        self.field("input_tokens", input)
            .field("output_tokens", output)
    }
    /// Cost in USD as a decimal string, kept exact.
    pub fn cost(self, usd: &str) -> Self {
        self.field("cost", usd)
    }
    /// The `POST /v1/route` decision this call followed: its cost settles the reservation.
    pub fn decision(self, decision_id: &str) -> Self {
        self.field("decision_id", decision_id)
    }
    pub fn latency_ms(self, ms: u64) -> Self {
        self.field("latency_ms", ms)
    }
    pub fn failed(self, error: &str) -> Self {
        self.field("status", "error").field("error", error)
    }
    pub fn session(self, id: &str) -> Self {
        self.field("session_id", id)
    }
    pub fn workflow(self, id: &str) -> Self {
        self.field("workflow_id", id)
    }
    pub fn actor(self, actor: &str) -> Self {
        self.field("actor", actor)
    }
    pub fn context_tokens(self, n: u64) -> Self {
        self.field("context_tokens", n)
    }
}

impl UserAction {
    /// `outcome` is `success`, `failure` or `denied`.
    pub fn new(actor: &str, action: &str, resource: &str, outcome: &str) -> Self {
        Self(Draft::new(
            types::USER_ACTION,
            None,
            json!({"actor": actor, "action": action, "resource": resource, "outcome": outcome}),
        ))
    }
    pub fn project(self, project: &str) -> Self {
        let mut s = self.field("project", project);
        s.0.subject = Some(project.to_owned());
        s
    }
    pub fn role(self, role: &str) -> Self {
        self.field("role", role)
    }
    pub fn ip(self, ip: &str) -> Self {
        self.field("ip", ip)
    }
}

impl Metric {
    pub fn new(project: &str, name: &str, value: f64) -> Self {
        Self(Draft::new(
            types::METRIC_RECORDED,
            Some(project),
            json!({"project": project, "name": name, "value": value}),
        ))
    }
    pub fn unit(self, unit: &str) -> Self {
        self.field("unit", unit)
    }
    pub fn label(mut self, name: &str, value: &str) -> Self {
        let labels = self.0.data.entry("labels").or_insert_with(|| json!({}));
        if let Some(m) = labels.as_object_mut() {
            m.insert(name.to_owned(), Value::from(value));
        }
        self
    }
}

impl TaskStarted {
    pub fn new(project: &str, workflow_id: &str, task_id: &str, task_type: &str) -> Self {
        Self(Draft::new(
            types::TASK_STARTED,
            Some(project),
            json!({"project": project, "workflow_id": workflow_id, "task_id": task_id, "task_type": task_type}),
        ))
    }
    /// Who or what started the task.
    pub fn actor(self, actor: &str) -> Self {
        self.field("actor", actor)
    }
}

impl TaskCompleted {
    /// `status` is `ok`, `error` or `cancelled`.
    pub fn new(
        project: &str,
        workflow_id: &str,
        task_id: &str,
        task_type: &str,
        status: &str,
    ) -> Self {
        Self(Draft::new(
            types::TASK_COMPLETED,
            Some(project),
            json!({"project": project, "workflow_id": workflow_id, "task_id": task_id,
                   "task_type": task_type, "status": status}),
        ))
    }
    pub fn duration_ms(self, ms: u64) -> Self {
        self.field("duration_ms", ms)
    }
    /// Who or what completed (or cancelled) the task.
    pub fn actor(self, actor: &str) -> Self {
        self.field("actor", actor)
    }
}

impl BudgetSet {
    /// Warns at 80 % and falls back to a local model when exceeded, until told otherwise.
    pub fn new(project: &str, monthly_limit: &str) -> Self {
        Self(Draft::new(
            types::BUDGET_SET,
            Some(project),
            json!({"project": project, "monthly_limit": monthly_limit, "warn_at_percent": 80,
                   "on_exceeded": "fallback_to_local"}),
        ))
    }
    pub fn warn_at_percent(self, percent: u8) -> Self {
        self.field("warn_at_percent", percent)
    }
    /// `fallback_to_local` or `block`.
    pub fn on_exceeded(self, policy: &str) -> Self {
        self.field("on_exceeded", policy)
    }
    pub fn fallback_model(self, model: &str) -> Self {
        self.field("fallback_model", model)
    }
}

/// Publishes events straight to the Kairos stream over NATS.
#[derive(Clone)]
pub struct Producer {
    bus: Bus,
}

impl Producer {
    pub async fn connect(config: &BusConfig) -> Result<Self, ClientError> {
        Ok(Self {
            bus: Bus::connect(config, "kairos-client").await?,
        })
    }

    pub fn from_bus(bus: Bus) -> Self {
        Self { bus }
    }

    /// Returns once JetStream stored the event.
    pub async fn publish(&self, event: &Event) -> Result<Receipt, ClientError> {
        Ok(self.bus.publish_event(event).await?)
    }

    /// Pipelined: sends all, then waits for every acknowledgement.
    pub async fn publish_all(&self, events: &[Event]) -> Vec<Result<Receipt, ClientError>> {
        self.bus
            .publish_events(events)
            .await
            .into_iter()
            .map(|r| r.map_err(ClientError::from))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builder_makes_a_valid_event() {
        let events = [
            LlmCall::new("p", "m", "x")
                .tokens(1, 2)
                .cost("0.5")
                .failed("boom")
                .session("s")
                .build(),
            UserAction::new("alice", "budget.set", "project:p", "success")
                .project("p")
                .role("admin")
                .ip("10.0.0.1")
                .build(),
            Metric::new("p", "latency_p99", 12.5)
                .unit("ms")
                .label("region", "eu")
                .build(),
            TaskStarted::new("p", "w", "t1", "retrieve").build(),
            TaskCompleted::new("p", "w", "t1", "retrieve", "ok")
                .duration_ms(5)
                .build(),
            BudgetSet::new("p", "10.00")
                .warn_at_percent(90)
                .on_exceeded("block")
                .build(),
        ];
        for e in events {
            let e = e.unwrap();
            assert_eq!(e.source(), "kairos-client");
        }
    }

    #[test]
    fn invalid_fields_are_refused_before_sending() {
        let err = LlmCall::new("p", "m", "x").cost("-1").build().unwrap_err();
        assert!(matches!(err, ClientError::Invalid(e) if e.field.as_deref() == Some("data.cost")));
        assert!(LlmCall::new("bad project", "m", "x").build().is_err());
    }
}
