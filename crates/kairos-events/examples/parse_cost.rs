//! How long parsing and validating an LLM-call event takes (release build):
//! `cargo run --release -p kairos-events --example parse_cost`.
//!
//! The same events are timed twice: as they usually come, read the fast way (straight into typed
//! fields), and with an extension attribute, which sends them the general way (a JSON tree and
//! the schema).

use std::time::Instant;

fn events(extension: &str) -> Vec<Vec<u8>> {
    (0..100_000)
        .map(|i| {
            format!(
                r#"{{"specversion":"1.0","id":"call-{i}","source":"bench/gateway","type":"kairos.llm.call.completed.v1","subject":"p{p}","time":"2026-11-10T12:00:00Z","datacontenttype":"application/json"{extension},"data":{{"project":"p{p}","model":"gpt-4o","provider":"openai","input_tokens":1200,"output_tokens":300,"cost":"0.0123","latency_ms":840,"status":"ok"}}}}"#,
                p = i % 100
            )
            .into_bytes()
        })
        .collect()
}

/// Microseconds per event for `f` over `events`.
fn per_event(events: &[Vec<u8>], f: impl Fn(&[u8])) -> f64 {
    let t = Instant::now();
    for e in events {
        f(e);
    }
    t.elapsed().as_secs_f64() * 1e6 / events.len() as f64
}

fn main() {
    let plain = events("");
    let traced =
        events(r#","traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01""#);
    let json = per_event(&plain, |e| {
        let v: serde_json::Value = serde_json::from_slice(e).expect("valid JSON");
        std::hint::black_box(v);
    });
    let decode = |e: &[u8]| {
        let ev = kairos_events::Event::from_slice(e).expect("a valid event");
        let d: kairos_events::types::LlmCallCompleted = ev.data_as().expect("a valid LLM call");
        std::hint::black_box((ev.identity(), d));
    };
    let from_slice = |e: &[u8]| {
        std::hint::black_box(kairos_events::Event::from_slice(e).expect("a valid event"));
    };
    println!("serde_json Value alone: {json:.2} µs/event");
    for (way, events) in [("fast way", &plain), ("general way", &traced)] {
        println!(
            "{way}: Event::from_slice {:.2} µs; + identity + typed data {:.2} µs",
            per_event(events, from_slice),
            per_event(events, decode)
        );
    }
}
