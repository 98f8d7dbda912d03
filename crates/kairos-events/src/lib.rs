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
mod schema;
pub mod types;

pub use catalogue::{CATALOGUE, EventSpec, is_identity, spec};
pub use clock::Clock;
pub use domain::{EventType, Money, MoneyError, Period, ProjectId, StreamSeq};
pub use emit::Emit;
pub use envelope::{Event, MAX_EVENT_BYTES, parse_batch, parse_binary, parse_structured};
pub use error::{EventError, printable};
pub use schema::{known_type, known_types, schema_source};
