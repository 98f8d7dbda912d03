//! Signatures on the facts only Kairos may state.
//!
//! Every event Kairos states carries an HMAC-SHA256 of its envelope in the extension attribute
//! `kairossig`, under the key every Kairos process is given (`nats.signing_key`) and that is
//! stored neither on the stream nor in the database. Kairos states the types only it may publish
//! ([`crate::is_signed`]: identity events, budget settings, threshold crossings, reservations,
//! catalog changes, router decisions, alerts, audit checkpoints) and whatever else it publishes
//! under a `kairos/` source (its user actions). A process holding the key signs each such event as it publishes it.
//! A projection folds a type only Kairos may publish only when its signature holds (one that a
//! NATS user allowed to publish there forged, or that a producer sent with a signature of its own
//! making, is refused); an event of another type that names a `kairos/` source without Kairos'
//! signature is folded as what a producer claims, not as what Kairos recorded
//! ([`Signer::vouches`]).
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

    /// `event` with its signature set, when Kairos states it ([`states`]); `None` otherwise. A
    /// signature it already carries is replaced.
    pub fn sign(&self, event: &Event) -> Result<Option<Event>, EventError> {
        if !states(event) {
            return Ok(None);
        }
        let mut envelope = event.json().clone();
        let signature = crate::hex::encode(&self.mac(&envelope).finalize().into_bytes());
        envelope[SIGNATURE_ATTRIBUTE] = Value::String(signature);
        Event::from_value(envelope).map(Some)
    }

    /// Whether `event` may be folded, and as what: an error for a type only Kairos publishes
    /// without this key's signature; otherwise whether what it says in Kairos' name is Kairos'
    /// (false for an unsigned event of another type under a `kairos/` source).
    pub fn check(&self, event: &Event) -> Result<bool, EventError> {
        if crate::is_signed(event.event_type().as_str()) {
            return self.verify(event).map(|()| true);
        }
        Ok(!states(event) || self.vouches(event))
    }

    /// Whether `event` carries this key's signature: what Kairos recorded under a `kairos/`
    /// source, as opposed to a producer's claim to speak for it.
    pub fn vouches(&self, event: &Event) -> bool {
        self.verify(event).is_ok()
    }

    fn verify(&self, event: &Event) -> Result<(), EventError> {
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

/// Whether Kairos states `event`: a type only Kairos publishes, or a `kairos/` source.
pub fn states(event: &Event) -> bool {
    crate::is_signed(event.event_type().as_str()) || event.source().starts_with(KAIROS_SOURCE)
}

/// The prefix of the sources Kairos publishes under; the HTTP door refuses it from producers.
pub const KAIROS_SOURCE: &str = "kairos/";

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
        assert!(key.check(&signed).unwrap());
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
    fn what_kairos_states_is_signed_and_only_its_own_types_must_be() {
        let key = Signer::new(b"k");
        let action = |source: &str| {
            Emit::new(
                USER_ACTION,
                source,
                json!({"actor": "a", "action": "x", "resource": "r", "outcome": "success"}),
            )
            .build()
            .unwrap()
        };
        // A user action Kairos records is signed; one a producer reports is not.
        let recorded = key.sign(&action("kairos/api")).unwrap().expect("signed");
        assert!(key.vouches(&recorded));
        assert!(key.sign(&action("gateway/eu")).unwrap().is_none());
        // Unsigned, or signed with another key, it is not vouched for, but a producer type is
        // still no signed type: the check lets it through to be folded as a claim.
        let forged = action("kairos/api");
        assert!(!key.vouches(&forged));
        assert!(!key.check(&forged).unwrap(), "folded as a claim");
        let other = Signer::new(b"another");
        assert!(!key.vouches(&other.sign(&forged).unwrap().unwrap()));
        let mut changed = recorded.json().clone();
        changed["data"]["actor"] = json!("mallory");
        assert!(!key.vouches(&Event::from_value(changed).unwrap()));
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
