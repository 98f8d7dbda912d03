//! The alert webhook: every `kairos.alert.raised.v1`, `kairos.alert.resolved.v1` and
//! `kairos.alert.breaker_changed.v1` POSTed to `[anomalies] webhook_url` as the CloudEvent it is
//! (`application/cloudevents+json`), signed with HMAC-SHA256.
//!
//! It follows the stream with a durable JetStream consumer of its own (`anomalies-webhook`,
//! filtered to the alert subjects, from the events stored after it was first created), never
//! the projection: a slow or failing receiver delays only the webhook. The serving processes
//! share the consumer, so each event is sent by one of them. A failed delivery (an error or an
//! answer other than 2xx) is retried after 1, 2, 4, … s, `webhook_attempts` times in all; then
//! it is given up, logged, and the next event is sent.
//!
//! **Signature.** `X-Kairos-Timestamp` is the sending time in Unix seconds and
//! `X-Kairos-Signature` is `sha256=` and the hex HMAC-SHA256, keyed by `webhook_secret`, of
//! `<timestamp>.<body>`. A receiver recomputes it, compares in constant time, and refuses a
//! timestamp too far from its own clock (a replayed request).

use std::time::Duration;

use async_nats::jetstream::consumer::pull::Config as PullConfig;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy};
use futures_util::StreamExt;
use hmac::{KeyInit, Mac};
use kairos_bus::Bus;
use kairos_events::types::{ALERT_RAISED, ALERT_RESOLVED, BREAKER_CHANGED};
use kairos_events::{Clock, Event};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The consumer's name.
pub const CONSUMER: &str = "anomalies-webhook";

/// Where and how alerts are sent.
#[derive(Debug, Clone)]
pub struct Webhook {
    pub url: reqwest::Url,
    pub secret: String,
    pub attempts: u32,
}

/// `sha256=<hex>` of `<timestamp>.<body>` under `secret`.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Sends alerts until the process ends (a broken connection is retried every second).
pub async fn run(bus: Bus, hook: Webhook, clock: Clock) {
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "anomalies webhook: no HTTP client; alerts are not sent");
            return;
        }
    };
    loop {
        if let Err(e) = follow(&bus, &hook, &http, &clock).await {
            tracing::warn!(error = %e, "anomalies webhook: following the stream failed; retrying");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn follow(
    bus: &Bus,
    hook: &Webhook,
    http: &reqwest::Client,
    clock: &Clock,
) -> Result<(), String> {
    let stream = bus
        .jetstream()
        .get_stream(bus.stream_name())
        .await
        .map_err(|e| e.to_string())?;
    let config = PullConfig {
        durable_name: Some(CONSUMER.to_owned()),
        description: Some("Kairos anomalies webhook".into()),
        deliver_policy: DeliverPolicy::New,
        ack_policy: AckPolicy::Explicit,
        // Longer than every retry of one event together.
        ack_wait: Duration::from_secs(600),
        max_deliver: -1,
        filter_subject: format!("{}.events.alert.>", bus.config().subject_prefix),
        max_ack_pending: 64,
        ..Default::default()
    };
    let consumer = stream
        .get_or_create_consumer(CONSUMER, config)
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| e.to_string())?;
        let sent = match Event::from_slice(&message.payload) {
            Ok(e)
                if matches!(
                    e.event_type().as_str(),
                    ALERT_RAISED | ALERT_RESOLVED | BREAKER_CHANGED
                ) =>
            {
                deliver(http, hook, clock, e.id(), &message.payload).await;
                true
            }
            _ => false,
        };
        tracing::debug!(sent, "anomalies webhook: event handled");
        message.ack().await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// POSTs one event, retrying with back-off; logs a delivery given up.
async fn deliver(http: &reqwest::Client, hook: &Webhook, clock: &Clock, id: &str, body: &[u8]) {
    let mut wait = Duration::from_secs(1);
    for attempt in 1..=hook.attempts.max(1) {
        let ts = clock.now().timestamp();
        let sent = http
            .post(hook.url.clone())
            .header("content-type", "application/cloudevents+json")
            .header("x-kairos-timestamp", ts.to_string())
            .header("x-kairos-signature", signature(&hook.secret, ts, body))
            .header("x-kairos-delivery", format!("{id}/{attempt}"))
            .body(body.to_vec())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => {
                tracing::warn!(event = id, attempt, status = %r.status(), "anomalies webhook refused")
            }
            Err(e) => {
                // Without the URL: for many receivers the URL is the secret.
                let e = e.without_url();
                tracing::warn!(event = id, attempt, error = %e, "anomalies webhook unreachable")
            }
        }
        if attempt < hook.attempts {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(60));
        }
    }
    tracing::error!(
        event = id,
        attempts = hook.attempts,
        "anomalies webhook: delivery given up"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_hmac_of_timestamp_dot_body() {
        // Against a value computed independently (Python's hmac module:
        // hmac.new(b"key", b"1700000000.{}", "sha256").hexdigest()).
        assert_eq!(
            signature("key", 1_700_000_000, b"{}"),
            "sha256=9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae"
        );
        assert_ne!(
            signature("key", 1_700_000_001, b"{}"),
            signature("key", 1_700_000_000, b"{}")
        );
    }
}
