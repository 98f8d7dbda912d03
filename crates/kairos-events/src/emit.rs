//! The one builder of the events Kairos emits itself: threshold crossings, user actions, identity
//! changes, budget settings, and what new projections announce.
//!
//! Each event's id is derived from what it says — its type, source, subject, time and data —
//! unless the caller names the fact it records ([`Emit::id`]): emitting the same fact again (a
//! retry after a crash, a replay re-publishing its outbox, two processes deciding the same thing)
//! is a duplicate on the stream, never a second fact.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::{Event, EventError};

/// An event Kairos emits, before it is built.
#[derive(Debug, Clone)]
pub struct Emit {
    ty: &'static str,
    source: String,
    subject: Option<String>,
    time: Option<DateTime<Utc>>,
    id: Option<String>,
    data: Value,
}

impl Emit {
    /// An event of type `ty` from `source` (`kairos/api`, `kairos/budgets`, …) carrying `data`.
    pub fn new(ty: &'static str, source: impl Into<String>, data: Value) -> Self {
        Self {
            ty,
            source: source.into(),
            subject: None,
            time: None,
            id: None,
            data,
        }
    }

    /// The project it belongs to (its CloudEvent `subject`).
    pub fn subject(mut self, project: impl Into<String>) -> Self {
        self.subject = Some(project.into());
        self
    }

    /// When it happened.
    pub fn time(mut self, at: DateTime<Utc>) -> Self {
        self.time = Some(at);
        self
    }

    /// Names the fact it records, instead of deriving the id from its content: a threshold
    /// crossing is `<project>/<period>/<threshold>`, whatever the event's time.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// The id derived from the content: `k-` and 32 hex digits of SHA-256 over type, source,
    /// subject, time and data (its JSON text).
    fn derived_id(&self, time: Option<&str>) -> String {
        let mut h = Sha256::new();
        for part in [
            self.ty,
            &self.source,
            self.subject.as_deref().unwrap_or(""),
            time.unwrap_or(""),
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        h.update(self.data.to_string().as_bytes());
        let digest = h.finalize();
        let mut id = String::with_capacity(34);
        id.push_str("k-");
        for b in &digest[..16] {
            id.push_str(&format!("{b:02x}"));
        }
        id
    }

    /// The event, validated as every door validates one.
    pub fn build(self) -> Result<Event, EventError> {
        let time = self
            .time
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Micros, true));
        let id = match &self.id {
            Some(id) => id.clone(),
            None => self.derived_id(time.as_deref()),
        };
        let mut envelope = json!({
            "specversion": "1.0", "id": id, "source": self.source, "type": self.ty,
            "datacontenttype": "application/json", "data": self.data,
        });
        if let Some(s) = self.subject {
            envelope["subject"] = json!(s);
        }
        if let Some(t) = time {
            envelope["time"] = json!(t);
        }
        Event::from_value(envelope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::USER_ACTION;

    fn action(actor: &str) -> Emit {
        Emit::new(
            USER_ACTION,
            "kairos/api",
            json!({"actor": actor, "action": "budget.set", "resource": "/v1/x", "outcome": "success"}),
        )
        .time("2026-11-20T12:00:00Z".parse().unwrap())
    }

    #[test]
    fn the_same_fact_gets_the_same_id_and_another_fact_another() {
        let a = action("ana@example.com").build().unwrap();
        let again = action("ana@example.com").build().unwrap();
        assert_eq!(a.id(), again.id());
        assert_eq!(
            a.msg_id(),
            again.msg_id(),
            "so JetStream and the projections dedupe it"
        );
        assert!(a.id().starts_with("k-") && a.id().len() == 34, "{}", a.id());
        let other = action("bo@example.com").build().unwrap();
        assert_ne!(a.id(), other.id());
        let later = action("ana@example.com")
            .time("2026-11-20T12:00:01Z".parse().unwrap())
            .build()
            .unwrap();
        assert_ne!(a.id(), later.id());
    }

    #[test]
    fn a_named_fact_keeps_its_name_and_the_build_validates() {
        let e = action("ana@example.com").id("fact-1").build().unwrap();
        assert_eq!(e.id(), "fact-1");
        assert_eq!(e.source(), "kairos/api");
        let bad = Emit::new(USER_ACTION, "kairos/api", json!({"actor": 5})).build();
        assert!(bad.is_err(), "what the schema refuses is refused here too");
    }
}
