//! Prometheus metrics: the process' one recorder (the `metrics` facade and its Prometheus
//! exporter), the families the API records, and the `/metrics` page.
//!
//! Counters and histograms are recorded where things happen (requests here, batches and
//! commands in the runtime, reconnects in the bus). What is true across processes — each
//! projection's checkpoint, lag and totals, the stream's last sequence — is read when the page
//! is scraped, from the checkpoints table and the stream, so any API process shows the same.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Seconds: from a millisecond to a minute.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Events in a batch: up to `projections.batch_size`'s largest value.
const BATCH_BUCKETS: &[f64] = &[
    1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 50000.0,
];

/// The process' Prometheus recorder, installed on first use. If another recorder was installed
/// first (an embedding program's), Kairos renders an empty page rather than fight it.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new();
        let builder = builder
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), DURATION_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("kairos_projection_batch_size".into()),
                    BATCH_BUCKETS,
                )
            })
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was installed before Kairos': /metrics stays empty");
        }
        describe();
        kairos_runtime::metrics::describe();
        kairos_bus::describe_metrics();
        handle
    })
}

fn describe() {
    describe_histogram!(
        "kairos_http_request_duration_seconds",
        Unit::Seconds,
        "Time to answer an HTTP request, by method, route template and status."
    );
    describe_counter!(
        "kairos_ingest_events_total",
        Unit::Count,
        "Events offered to POST /v1/events, by outcome (accepted, duplicate, rejected, failed) and, \
         for refusals, the error code."
    );
    describe_gauge!(
        "kairos_stream_last_seq",
        "The last sequence stored on the events stream."
    );
    describe_gauge!(
        "kairos_projection_checkpoint",
        "The last stream sequence each projection applied."
    );
    describe_gauge!(
        "kairos_projection_lag_events",
        "Events stored on the stream that each projection has not applied yet."
    );
    describe_counter!(
        "kairos_projection_events_applied_total",
        Unit::Count,
        "Events each projection folded, across every process that ran it."
    );
    describe_counter!(
        "kairos_projection_duplicates_total",
        Unit::Count,
        "Producer retries each projection recognised and skipped."
    );
    describe_counter!(
        "kairos_projection_dead_lettered_total",
        Unit::Count,
        "Events each projection sent to its dead-letter subject."
    );
    describe_gauge!(
        "kairos_db_pool_connections",
        "PostgreSQL connections of this process' pool, in use or idle."
    );
}

/// Records each request's duration by method, route template (never the raw path, which can
/// carry ids and tokens) and status.
pub(crate) async fn record_requests(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(req).await;
    metrics::histogram!(
        "kairos_http_request_duration_seconds",
        "method" => method,
        "route" => route,
        "status" => response.status().as_u16().to_string(),
    )
    .record(started.elapsed().as_secs_f64());
    response
}

/// One event offered to ingest ended with `outcome` (and, for a refusal, `reason`).
pub(crate) fn ingested(outcome: &'static str, reason: &'static str, n: u64) {
    if n > 0 {
        metrics::counter!("kairos_ingest_events_total", "outcome" => outcome, "reason" => reason)
            .increment(n);
    }
}
