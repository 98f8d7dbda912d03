//! The Kairos event contract.
//!
//! Everything a producer can send to Kairos is a CloudEvents 1.0 JSON event. This crate is the one
//! place that knows what a valid event is: it parses the three HTTP/NATS encodings (structured,
//! batch and binary), checks the envelope, validates `data` against the JSON Schema of its type
//! (`events-schema/`), derives the NATS subject and `Nats-Msg-Id`, and decodes the typed payloads
//! projections fold. Every door (HTTP, NATS, CLI) and every projection uses the same code, so an
//! event that is refused at the HTTP door is exactly the event a projection would dead-letter.
//!
//! It does no I/O: no NATS, no database.

mod catalogue;
mod clock;
mod domain;
mod emit;
mod envelope;
mod error;
pub mod hex;
mod schema;
mod signature;
pub mod types;

pub use catalogue::{CATALOGUE, EventSpec, is_identity, is_signed, spec};
pub use clock::Clock;
pub use domain::{EventType, Money, MoneyError, Period, ProjectId, StreamSeq};
pub use emit::Emit;
pub use envelope::{
    Event, MAX_EVENT_BYTES, parse_batch, parse_binary, parse_structured, same_content,
};
pub use error::{EventError, printable};
pub use schema::{known_type, known_types, schema_source};
pub use signature::{KAIROS_SOURCE, SIGNATURE_ATTRIBUTE, Signer, states};

/// The 64-bit FNV-1a hash of `text`: a stable, fixed-width key for names that may be long (a
/// projection's stored keys, ids built from them). Not for anything an attacker may want to
/// collide on purpose.
pub fn fnv1a64(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
