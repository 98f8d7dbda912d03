//! The event catalogue: every event type Kairos knows, declared once — its JSON Schema, the
//! members of `data` that are money, whether it is an identity event, and the typed payload it
//! must read into. Every door checks an event against its entry, so what one door refuses, every
//! door and every projection refuses alike. Who may publish a type is its module's rule
//! (`kairos_api::EventRule`); the category of its subject follows from its name
//! ([`crate::EventType::category`]).

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::types::{
    AuditCheckpoint, BudgetSet, CatalogChanged, LlmCallCompleted, ReservationClosed, Reserved,
    ReservedBatch, ThresholdCrossed,
};

/// One event type.
pub struct EventSpec {
    pub ty: &'static str,
    /// Its JSON Schema, `events-schema/<ty>.json`.
    pub schema: &'static str,
    /// Members of `data` that are amounts of money: exact decimals Kairos can keep (at most 9
    /// decimals, under a billion USD), refused at the door otherwise.
    pub money: &'static [&'static str],
    /// Who is a member, with which role and keys: one aggregate (the `access` subject), and
    /// their digests are redacted when the stream is listed.
    pub identity: bool,
    /// Whether only Kairos states it, signed ([`crate::Signer`]): the identity events, budget
    /// settings, threshold crossings, reservations, catalog changes, router decisions, alerts
    /// and audit checkpoints, facts a projection folds only when their signature holds.
    pub signed: bool,
    /// Reads `data` into the typed payload Kairos folds it as; a schema-valid event that does
    /// not fit is refused at the door rather than dead-lettered later.
    pub payload: Option<ReadsAs>,
}

/// Whether `data` reads as a type's payload; why not, if it does not.
pub type ReadsAs = fn(&Value) -> Result<(), String>;

fn reads_as<T: DeserializeOwned>(data: &Value) -> Result<(), String> {
    T::deserialize(data).map(drop).map_err(|e| e.to_string())
}

/// A batch of reservations must read as one and pass [`ReservedBatch::check`].
fn reads_as_batch(data: &Value) -> Result<(), String> {
    ReservedBatch::deserialize(data)
        .map_err(|e| e.to_string())?
        .check()
}

/// A catalog must read as one and pass [`CatalogChanged::check`]: a catalog Kairos could not
/// price or route by is refused at the door, not folded.
fn reads_as_catalog(data: &Value) -> Result<(), String> {
    let c = CatalogChanged::deserialize(data).map_err(|e| e.to_string())?;
    c.check().map_err(|(field, why)| format!("{field} {why}"))
}

macro_rules! spec {
    ($ty:literal, money: $money:expr, identity: $identity:expr, $(signed: $signed:expr,)?
     payload: $payload:expr $(,)?) => {
        EventSpec {
            ty: $ty,
            schema: include_str!(concat!("../../../events-schema/", $ty, ".json")),
            money: $money,
            identity: $identity,
            // Identity events are always signed.
            signed: $identity $(|| $signed)?,
            payload: $payload,
        }
    };
}

/// Every event type Kairos knows.
pub static CATALOGUE: &[EventSpec] = &[
    spec!("kairos.llm.call.completed.v1", money: &["cost"], identity: false,
        payload: Some(reads_as::<LlmCallCompleted>)),
    spec!("kairos.user.action.v1", money: &[], identity: false, payload: None),
    spec!("kairos.metric.recorded.v1", money: &[], identity: false, payload: None),
    spec!("kairos.task.started.v1", money: &[], identity: false, payload: None),
    spec!("kairos.task.completed.v1", money: &[], identity: false, payload: None),
    spec!("kairos.budget.set.v1", money: &["monthly_limit"], identity: false, signed: true,
        payload: Some(reads_as::<BudgetSet>)),
    spec!("kairos.budget.threshold_crossed.v1", money: &["limit", "spent"], identity: false,
        signed: true, payload: Some(reads_as::<ThresholdCrossed>)),
    spec!("kairos.budget.reserved.v1", money: &["amount"], identity: false, signed: true,
        payload: Some(reads_as::<Reserved>)),
    spec!("kairos.budget.reserved_batch.v1", money: &[], identity: false, signed: true,
        payload: Some(reads_as_batch)),
    spec!("kairos.budget.reservation_settled.v1", money: &["amount", "cost"], identity: false,
        signed: true, payload: Some(reads_as::<ReservationClosed>)),
    spec!("kairos.budget.reservation_expired.v1", money: &["amount"], identity: false, signed: true,
        payload: Some(reads_as::<ReservationClosed>)),
    spec!("kairos.catalog.changed.v1", money: &[], identity: false, signed: true,
        payload: Some(reads_as_catalog)),
    spec!("kairos.router.decision.v1", money: &["estimated_cost", "reserved"], identity: false,
        signed: true, payload: None),
    spec!("kairos.audit.checkpoint.v1", money: &[], identity: false, signed: true,
        payload: Some(reads_as::<AuditCheckpoint>)),
    spec!("kairos.alert.raised.v1", money: &[], identity: false, signed: true, payload: None),
    spec!("kairos.alert.resolved.v1", money: &[], identity: false, signed: true, payload: None),
    spec!("kairos.alert.acknowledged.v1", money: &[], identity: false, signed: true, payload: None),
    spec!("kairos.alert.breaker_changed.v1", money: &[], identity: false,
        signed: true, payload: None),
    spec!("kairos.member.invited.v1", money: &[], identity: true, payload: None),
    spec!("kairos.member.joined.v1", money: &[], identity: true, payload: None),
    spec!("kairos.member.removed.v1", money: &[], identity: true, payload: None),
    spec!("kairos.member.invitation_revoked.v1", money: &[], identity: true, payload: None),
    spec!("kairos.role.assigned.v1", money: &[], identity: true, payload: None),
    spec!("kairos.api_key.issued.v1", money: &[], identity: true, payload: None),
    spec!("kairos.api_key.revoked.v1", money: &[], identity: true, payload: None),
];

/// The entry of type `ty`, if Kairos knows it.
pub fn spec(ty: &str) -> Option<&'static EventSpec> {
    CATALOGUE.iter().find(|s| s.ty == ty)
}

/// Whether Kairos signs events of type `ty`.
pub fn is_signed(ty: &str) -> bool {
    spec(ty).is_some_and(|s| s.signed)
}

/// Whether `ty` is an identity event.
pub fn is_identity(ty: &str) -> bool {
    spec(ty).is_some_and(|s| s.identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_is_listed_once_with_its_own_schema() {
        for (i, s) in CATALOGUE.iter().enumerate() {
            assert!(
                CATALOGUE[i + 1..].iter().all(|o| o.ty != s.ty),
                "{} twice",
                s.ty
            );
            let schema: Value = serde_json::from_str(s.schema).expect("the schema is JSON");
            assert!(
                schema["$id"].as_str().is_some_and(|id| id.contains(s.ty)),
                "{}: $id {}",
                s.ty,
                schema["$id"]
            );
            for m in s.money {
                assert!(
                    schema["properties"].get(*m).is_some(),
                    "{}: money member {m} is not in its schema",
                    s.ty
                );
            }
        }
        // Every schema file has its entry.
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../events-schema");
        let files: Vec<String> = std::fs::read_dir(dir)
            .expect("events-schema/")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|f| f.strip_suffix(".json").map(str::to_owned))
            .collect();
        assert_eq!(files.len(), CATALOGUE.len(), "{files:?}");
        for f in files {
            assert!(
                spec(&f).is_some(),
                "events-schema/{f}.json has no catalogue entry"
            );
        }
    }
}
