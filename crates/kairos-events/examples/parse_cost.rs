//! How long parsing and validating an LLM-call event takes (release build):
//! `cargo run --release -p kairos-events --example parse_cost`.

use std::time::Instant;

fn main() {
    let events: Vec<Vec<u8>> = (0..100_000)
        .map(|i| {
            format!(
                r#"{{"specversion":"1.0","id":"call-{i}","source":"bench/gateway","type":"kairos.llm.call.completed.v1","subject":"p{p}","time":"2026-11-10T12:00:00Z","datacontenttype":"application/json","data":{{"project":"p{p}","model":"gpt-4o","provider":"openai","input_tokens":1200,"output_tokens":300,"cost":"0.0123","latency_ms":840,"status":"ok"}}}}"#,
                p = i % 100
            )
            .into_bytes()
        })
        .collect();
    let t = Instant::now();
    for e in &events {
        let v: serde_json::Value = serde_json::from_slice(e).expect("valid JSON");
        std::hint::black_box(v);
    }
    let json = t.elapsed().as_secs_f64() * 1e6 / events.len() as f64;
    let t = Instant::now();
    for e in &events {
        let ev = kairos_events::Event::from_slice(e).expect("a valid event");
        std::hint::black_box(ev);
    }
    let full = t.elapsed().as_secs_f64() * 1e6 / events.len() as f64;
    let t = Instant::now();
    for e in &events {
        let ev = kairos_events::Event::from_slice(e).expect("a valid event");
        let d: kairos_events::types::LlmCallCompleted = ev.data_as().expect("a valid LLM call");
        std::hint::black_box((ev.identity(), d));
    }
    let decode = t.elapsed().as_secs_f64() * 1e6 / events.len() as f64;
    println!(
        "serde_json Value: {json:.2} µs/event; Event::from_slice: {full:.2} µs; + identity + typed data: {decode:.2} µs"
    );
}
