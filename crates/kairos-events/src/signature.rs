//! Signatures on the facts only Kairos may state.
//!
//! The identity events, budget settings and audit checkpoints ([`crate::is_signed`]) carry an
//! HMAC-SHA256 of their envelope in the extension attribute `kairossig`, under the key every
//! Kairos process is given (`nats.signing_key`) and that is stored neither on the stream nor in
//! the database. A process holding the key signs each such event as it publishes it, and checks
//! the signature of each it folds: one that a NATS user allowed to publish there forged, or that
//! a producer sent with a signature of its own making, is refused.
//!
//! The MAC covers the envelope as a JSON value without `kairossig`, serialised by `serde_json`,
//! so the signer and the checker agree whatever whitespace the stored text has.

use std::sync::Arc;

use hmac::{KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::{Event, EventError};

/// The extension attribute holding the signature: 64 lowercase hex digits.
pub const SIGNATURE_ATTRIBUTE: &str = "kairossig";

type HmacSha256 = hmac::Hmac<Sha256>;

/// Signs and checks events with one key.
#[derive(Clone)]
pub struct Signer(Arc<[u8]>);

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(***)")
    }
}

impl Signer {
    pub fn new(key: &[u8]) -> Self {
        Self(key.into())
    }

    /// The MAC of `envelope` with its signature attribute left out.
    fn mac(&self, envelope: &Value) -> HmacSha256 {
        let mut unsigned = envelope.clone();
        if let Some(attrs) = unsigned.as_object_mut() {
            attrs.remove(SIGNATURE_ATTRIBUTE);
        }
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(b"kairos-event-v1\0");
        mac.update(&serde_json::to_vec(&unsigned).unwrap_or_default());
        mac
    }

    /// `event` with its signature set, when its type is signed; unchanged otherwise. A signature
    /// it already carries is replaced.
    pub fn sign(&self, event: &Event) -> Result<Option<Event>, EventError> {
        if !crate::is_signed(event.event_type().as_str()) {
            return Ok(None);
        }
        let mut envelope = event.json().clone();
        let signature = crate::hex::encode(&self.mac(&envelope).finalize().into_bytes());
        envelope[SIGNATURE_ATTRIBUTE] = Value::String(signature);
        Event::from_value(envelope).map(Some)
    }

    /// Whether `event`'s signature holds, for a type that is signed (any other passes).
    pub fn check(&self, event: &Event) -> Result<(), EventError> {
        if !crate::is_signed(event.event_type().as_str()) {
            return Ok(());
        }
        let envelope = event.json();
        let Some(signature) = envelope.get(SIGNATURE_ATTRIBUTE).and_then(Value::as_str) else {
            return Err(EventError::field(
                "unsigned",
                SIGNATURE_ATTRIBUTE,
                format!(
                    "a {} event must carry Kairos' signature: only Kairos states it",
                    event.event_type().as_str()
                ),
            ));
        };
        let valid = crate::hex::decode32(signature)
            .is_some_and(|s| self.mac(envelope).verify_slice(&s).is_ok());
        if valid {
            Ok(())
        } else {
            Err(EventError::field(
                "bad_signature",
                SIGNATURE_ATTRIBUTE,
                format!(
                    "the signature of this {} event does not hold: it was not signed with this \
                     Kairos' key, or was changed after",
                    event.event_type().as_str()
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Emit;
    use crate::types::{ROLE_ASSIGNED, USER_ACTION};
    use serde_json::json;

    fn role(member: &str) -> Event {
        Emit::new(
            ROLE_ASSIGNED,
            "kairos/api",
            json!({"member_id": member, "role": "admin", "actor": "ana@example.com"}),
        )
        .build()
        .unwrap()
    }

    #[test]
    fn a_signed_event_checks_and_anything_changed_or_unsigned_does_not() {
        let key = Signer::new(b"a key of thirty-two bytes or so!");
        let signed = key
            .sign(&role("00000000-0000-4000-8000-000000000001"))
            .unwrap()
            .expect("identity events are signed");
        key.check(&signed).unwrap();
        // Read back from its stored bytes, as a projection does.
        key.check(&Event::from_slice(signed.to_bytes()).unwrap())
            .unwrap();
        assert_eq!(
            signed.id(),
            role("00000000-0000-4000-8000-000000000001").id(),
            "the identity stays"
        );

        let unsigned = role("00000000-0000-4000-8000-000000000001");
        assert_eq!(key.check(&unsigned).unwrap_err().code, "unsigned");

        let mut changed = signed.json().clone();
        changed["data"]["member_id"] = json!("00000000-0000-4000-8000-000000000002");
        let changed = Event::from_value(changed).unwrap();
        assert_eq!(key.check(&changed).unwrap_err().code, "bad_signature");

        let other = Signer::new(b"another key entirely, also long.");
        assert_eq!(other.check(&signed).unwrap_err().code, "bad_signature");
        let forged = other
            .sign(&role("00000000-0000-4000-8000-000000000001"))
            .unwrap()
            .unwrap();
        assert_eq!(key.check(&forged).unwrap_err().code, "bad_signature");

        let mut garbage = signed.json().clone();
        garbage[SIGNATURE_ATTRIBUTE] = json!("zz");
        let garbage = Event::from_value(garbage).unwrap();
        assert_eq!(key.check(&garbage).unwrap_err().code, "bad_signature");
    }

    #[test]
    fn only_signed_types_are_signed_or_checked() {
        let key = Signer::new(b"k");
        let action = Emit::new(
            USER_ACTION,
            "kairos/api",
            json!({"actor": "a", "action": "x", "resource": "r", "outcome": "success"}),
        )
        .build()
        .unwrap();
        assert!(key.sign(&action).unwrap().is_none());
        key.check(&action).unwrap();
        for ty in [
            "kairos.budget.set.v1",
            "kairos.audit.checkpoint.v1",
            "kairos.member.joined.v1",
            "kairos.api_key.revoked.v1",
        ] {
            assert!(crate::is_signed(ty), "{ty}");
        }
        assert!(!crate::is_signed("kairos.llm.call.completed.v1"));
    }
}
