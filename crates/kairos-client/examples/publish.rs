//! Publishes an LLM call and a budget straight to the Kairos stream over NATS, with the typed
//! builders, and prints the stream sequence JetStream acknowledged for each.
//!
//! Start Kairos first (`make run` creates the stream), then:
//!
//! ```sh
//! cargo run -p kairos-client --example publish
//! ```
//!
//! Environment, with defaults:
//!
//! | variable                     | default                 |
//! |------------------------------|-------------------------|
//! | `KAIROS_NATS_URL`            | `nats://127.0.0.1:4222` |
//! | `KAIROS_NATS_STREAM`         | `KAIROS_EVENTS`         |
//! | `KAIROS_NATS_SUBJECT_PREFIX` | `kairos`                |

use std::process::ExitCode;

use kairos_bus::BusConfig;
use kairos_client::{BudgetSet, LlmCall, Producer};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("publish: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), kairos_client::ClientError> {
    let mut config = BusConfig::new(
        env_or("KAIROS_NATS_URL", "nats://127.0.0.1:4222"),
        env_or("KAIROS_NATS_STREAM", "KAIROS_EVENTS"),
        env_or("KAIROS_NATS_SUBJECT_PREFIX", "kairos"),
    );
    // A producer of a locked-down server (nats.conf) signs in as its producer user.
    if let (Ok(user), Ok(password)) = (
        std::env::var("KAIROS_NATS_USER"),
        std::env::var("KAIROS_NATS_PASSWORD"),
    ) {
        config.user = Some(user);
        config.password = Some(password);
    }
    let producer = Producer::connect(&config).await?;

    // `build()` validates against the same JSON Schemas as the server: a built event is accepted.
    let budget = BudgetSet::new("example-project", "25.00")
        .warn_at_percent(80)
        .on_exceeded("fallback_to_local")
        .fallback_model("llama3.1:8b")
        .source("examples/publish")
        .build()?;
    let call = LlmCall::new("example-project", "gpt-4o-mini", "openai")
        .tokens(1250, 310)
        .cost("0.0003735")
        .latency_ms(842)
        .session("sess-7f3a")
        .actor("agent:support-bot")
        .source("examples/publish")
        .build()?;

    // Pipelined: both are sent, then both acknowledgements are awaited.
    for (event, receipt) in [&budget, &call]
        .into_iter()
        .zip(producer.publish_all(&[budget.clone(), call.clone()]).await)
    {
        let receipt = receipt?;
        println!(
            "{} id={} subject={} seq={}{}",
            event.event_type(),
            event.id(),
            event.nats_subject(&config.subject_prefix),
            receipt.seq,
            if receipt.duplicate {
                " (duplicate)"
            } else {
                ""
            },
        );
    }

    // Re-sending the same event (same source and id) is safe: it is stored and counted once.
    let again = producer.publish(&call).await?;
    println!(
        "retry of {}: seq={} duplicate={}",
        call.id(),
        again.seq,
        again.duplicate
    );
    Ok(())
}
