//! What the binary's tests share.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A suffix no other run uses, for stream names, subject prefixes and databases.
pub fn unique_tag() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_nanos();
    format!("{nanos:x}")
}

/// Batch `n` of the load tests: `size` LLM calls of project `load`, $0.01 each, with ids of
/// their own (`b<n>-<i>`), so a batch sent again is recognised.
#[allow(dead_code)] // not every test binary sends load
pub fn load_batch(source: &str, n: usize, size: usize) -> Value {
    let events: Vec<Value> = (0..size)
        .map(|i| {
            json!({
                "specversion": "1.0", "id": format!("b{n}-{i}"), "source": source,
                "type": "kairos.llm.call.completed.v1", "subject": "load",
                "time": "2026-11-20T12:00:00Z",
                "data": {"project": "load", "model": "gpt-4o", "provider": "openai",
                         "input_tokens": 10, "output_tokens": 5, "cost": "0.01",
                         "latency_ms": 100, "status": "ok"}
            })
        })
        .collect();
    Value::Array(events)
}

/// Project `load`'s November budget once it has applied sequence `last`. Asked again until
/// then (projections restarted under load can take longer than one read's wait); any answer
/// but success, 503 (not caught up) or 408 (its wait ran out) fails the test.
#[allow(dead_code)]
pub async fn load_budget_at(http: &reqwest::Client, url: &str, key: &str, last: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let r = http
            .get(format!(
                "{url}/v1/projects/load/budget?period=2026-11&min_seq={last}"
            ))
            .bearer_auth(key)
            .send()
            .await;
        let answer = match r {
            Ok(r) if r.status().is_success() => r.json::<Value>().await.ok(),
            Ok(r) => {
                let status = r.status().as_u16();
                assert!(
                    status == 503 || status == 408,
                    "the budget read answered {status}"
                );
                None
            }
            Err(_) => None,
        };
        if let Some(a) = answer {
            return a;
        }
        assert!(Instant::now() < deadline, "budgets did not reach {last}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A child process killed when the test ends, however it ends (a failed assertion must not
/// leave a `kairos serve` behind).
#[allow(dead_code)]
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
