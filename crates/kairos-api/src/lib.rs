//! The thin Kairos HTTP API: ingest CloudEvents, read projections.
//!
//! Handlers parse, call and answer. Ingest validates with `kairos-events` and answers only after
//! JetStream acknowledged (invariant 3). Reads come from projection tables (invariant 6); writes
//! made here (a budget) are events too, and the answer carries the stream sequence, so a client
//! reads its own write with `?min_seq=`.
//!
//! Not here: projection logic, history computation, configuration loading.

mod error;
mod limits;
mod routes;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::HeaderName;
use chrono_tz::Tz;
use kairos_bus::Bus;
use kairos_runtime::CheckpointWatch;
use serde::Deserialize;
use sqlx::PgPool;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use error::ApiError;

/// The `[http]` section of `kairos.toml`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Address the API listens on, e.g. `127.0.0.1:8080`.
    pub addr: String,
    /// Largest request body, in bytes; larger ones get `413`.
    #[serde(default = "default_body_limit")]
    pub body_limit_bytes: usize,
    /// Most events in one batch request.
    #[serde(default = "default_max_batch")]
    pub max_batch_events: usize,
    /// How long `?min_seq=` waits for a projection, in milliseconds.
    #[serde(default = "default_read_wait")]
    pub read_wait_ms: u64,
    /// Whole-request timeout, in milliseconds.
    #[serde(default = "default_timeout")]
    pub request_timeout_ms: u64,
    /// Requests per second each client address may make (token bucket); 0 turns limiting off.
    #[serde(default = "default_rate")]
    pub rate_limit_per_second: u32,
    /// Requests a client may make at once above its rate.
    #[serde(default = "default_burst")]
    pub rate_limit_burst: u32,
}

fn default_rate() -> u32 {
    100
}
fn default_burst() -> u32 {
    200
}

fn default_body_limit() -> usize {
    4 * 1024 * 1024
}
fn default_max_batch() -> usize {
    5_000
}
fn default_read_wait() -> u64 {
    5_000
}
fn default_timeout() -> u64 {
    30_000
}

impl HttpSettings {
    pub fn validate(&self) -> Result<(), String> {
        if self.addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(format!(
                "http.addr {:?} is not an address like 127.0.0.1:8080",
                self.addr
            ));
        }
        if !(1024..=256 * 1024 * 1024).contains(&self.body_limit_bytes) {
            return Err("http.body_limit_bytes must be between 1024 and 268435456".into());
        }
        if !(1..=100_000).contains(&self.max_batch_events) {
            return Err("http.max_batch_events must be between 1 and 100000".into());
        }
        if !(1..=60_000).contains(&self.read_wait_ms) {
            return Err("http.read_wait_ms must be between 1 and 60000".into());
        }
        if self.request_timeout_ms < 100 {
            return Err("http.request_timeout_ms must be at least 100".into());
        }
        if self.rate_limit_per_second > 0 && self.rate_limit_burst == 0 {
            return Err("http.rate_limit_burst must be at least 1 when rate limiting is on".into());
        }
        Ok(())
    }
}

/// Counters the API itself keeps, exposed on `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    pub events_accepted: AtomicU64,
    pub events_duplicate: AtomicU64,
    pub events_rejected: AtomicU64,
}

/// Everything a handler needs.
#[derive(Clone)]
pub struct AppState {
    pub bus: Bus,
    pub pool: PgPool,
    pub checkpoints: CheckpointWatch,
    pub http: Arc<HttpSettings>,
    /// Time zone of budget months.
    pub tz: Tz,
    pub counters: Arc<Counters>,
}

/// The whole API as a router, with its middleware. Serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()` so rate limits apply per client address.
pub fn router(state: AppState) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    let timeout = Duration::from_millis(state.http.request_timeout_ms);
    let body_limit = state.http.body_limit_bytes;
    let limiter = limits::Limiter::new(
        state.http.rate_limit_per_second,
        state.http.rate_limit_burst,
    );
    let router = routes::routes()
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(
            limiter,
            limits::rate_limit,
        ))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(TraceLayer::new_for_http())
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid));
    limits::SECURITY_HEADERS
        .into_iter()
        .fold(router, |r, (name, value)| {
            r.layer(limits::header_layer(name, value))
        })
}
