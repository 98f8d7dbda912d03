//! Property tests of the door every event passes: `Event::from_slice` never panics, whatever the
//! bytes, and an event it accepts reads back the same from its own bytes.

use kairos_events::{Event, parse_batch, parse_binary};
use proptest::prelude::*;
use serde_json::{Value, json};

/// A valid LLM call to mutate.
fn call() -> Value {
    json!({
        "specversion": "1.0", "id": "c-1", "source": "gw", "type": "kairos.llm.call.completed.v1",
        "subject": "p1", "time": "2026-11-20T12:00:00Z", "datacontenttype": "application/json",
        "data": {"project": "p1", "model": "gpt-4o", "provider": "openai", "input_tokens": 10,
                 "output_tokens": 5, "cost": "0.01", "latency_ms": 100, "status": "ok"}
    })
}

/// Any JSON value, a few levels deep, with strings of any characters.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// An accepted event and what its own bytes read back as are the same event.
fn reads_back(e: &Event) {
    let again = Event::from_slice(e.to_bytes()).expect("its own bytes are accepted");
    assert_eq!(again.id(), e.id());
    assert_eq!(again.source(), e.source());
    assert_eq!(again.event_type().as_str(), e.event_type().as_str());
    assert_eq!(again.project(), e.project());
    assert_eq!(again.json(), e.json());
    assert_eq!(again.msg_id(), e.msg_id());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(e) = Event::from_slice(&bytes) {
            reads_back(&e);
        }
    }

    #[test]
    fn a_valid_call_with_one_member_replaced_is_accepted_alike_or_refused(
        member in prop::sample::select(vec![
            "specversion", "id", "source", "type", "subject", "time", "datacontenttype", "data",
        ]),
        data_member in prop::sample::select(vec![
            "project", "model", "provider", "input_tokens", "output_tokens", "cost",
            "latency_ms", "status", "error", "session_id",
        ]),
        in_data in any::<bool>(),
        value in any_json(),
    ) {
        let mut event = call();
        if in_data {
            event["data"][data_member] = value;
        } else {
            event[member] = value;
        }
        let bytes = serde_json::to_vec(&event).expect("json");
        match Event::from_slice(&bytes) {
            Ok(e) => {
                reads_back(&e);
                // Whatever was accepted carries no control character a projection cannot store.
                prop_assert!(!String::from_utf8_lossy(e.to_bytes()).contains("\\u0000"));
            }
            Err(err) => {
                prop_assert!(!err.code.is_empty());
                prop_assert!(!err.message.contains('\0'));
            }
        }
    }

    #[test]
    fn arbitrary_json_objects_never_panic(value in any_json()) {
        let bytes = serde_json::to_vec(&value).expect("json");
        if let Ok(e) = Event::from_slice(&bytes) {
            reads_back(&e);
        }
    }

    #[test]
    fn batches_of_anything_never_panic(items in prop::collection::vec(any_json(), 0..8)) {
        let bytes = serde_json::to_vec(&items).expect("json");
        if let Ok(parsed) = parse_batch(&bytes) {
            prop_assert_eq!(parsed.len(), items.len());
            for e in parsed.into_iter().flatten() {
                reads_back(&e);
            }
        }
    }

    #[test]
    fn binary_mode_with_any_headers_never_panics(
        headers in prop::collection::vec(("ce-[a-z]{1,12}", prop::collection::vec(any::<u8>(), 0..40)), 0..8),
        content_type in proptest::option::of(".{0,30}"),
        body in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let ce = headers.iter().map(|(n, v)| (n.as_str(), v.as_slice()));
        if let Ok(e) = parse_binary(ce, content_type.as_deref(), &body) {
            reads_back(&e);
        }
    }
}
