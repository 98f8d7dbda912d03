//! The thin Kairos HTTP API and the module registry it composes.
//!
//! Handlers parse, call and answer. Ingest validates with `kairos-events` and answers only after
//! JetStream acknowledged (invariant 3). Reads come from projection tables (invariant 6); writes
//! made here (a budget) are events too, and the answer carries the stream sequence, so a client
//! reads its own write with `?min_seq=`.
//!
//! This crate serves what every module shares (ingest, the stream, projection status, metrics,
//! health, who-am-I) and composes the routes projection modules declare ([`Module`]): each module
//! crate depends on this one, never the reverse. [`roles`] is the permission matrix one
//! middleware enforces for every route, and [`extract`] the extractors handlers share.
//!
//! Not here: projection logic, history computation, configuration loading.

mod auth;
mod error;
pub mod extract;
mod limits;
pub mod module;
mod observe;
mod openapi;
mod refusals;

pub use observe::handle as metrics_recorder;
pub mod roles;
mod routes;
mod serve;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::HeaderName;
use bytes::Bytes;
use kairos_bus::Bus;
use kairos_runtime::CheckpointWatch;
use serde::Deserialize;
use sqlx::PgPool;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use auth::{
    AuditNote, Caller, Delegated, Endpoint, Endpoints, Guard, Recorded, admits, permission_table,
    record_action,
};
pub use error::ApiError;
pub use limits::{TrustedProxies, client_address};
pub use module::{
    Configured, EventRule, Host, Module, ModuleConfig, ModuleError, Publish, Registry, Routes,
    Started,
};
pub use openapi::{ErrorBody, ErrorDetail};
pub use refusals::Refusals;
pub use roles::{Authenticator, Denied, Origin, Permission, Principal, Role, allows};
pub use routes::platform_routes;
pub use serve::{ServeLimits, serve};

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
    /// Requests per second each API key may make, and each client address without a valid key
    /// (token buckets); 0 turns limiting off.
    #[serde(default = "default_rate")]
    pub rate_limit_per_second: u32,
    /// Requests a client may make at once above its rate.
    #[serde(default = "default_burst")]
    pub rate_limit_burst: u32,
    /// Largest total size of a request's headers, in bytes; larger ones get `431`.
    #[serde(default = "default_header_limit")]
    pub max_header_bytes: usize,
    /// Once a request head's first byte arrived, how long the rest may take, in milliseconds;
    /// the connection is closed after it.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout_ms: u64,
    /// How long a connection may wait for its next complete request head after it opened or
    /// its previous response was sent, in milliseconds; an idle connection is closed after it.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_ms: u64,
    /// Connections open at once; further ones wait in the listener's backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// On shutdown, how long requests in flight may take before their connections are closed,
    /// in milliseconds.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace_ms: u64,
    /// `/health/ready` answers `503` while a projection running in this process is more than
    /// this many events behind the stream (0: lag is not checked).
    #[serde(default = "default_ready_max_lag")]
    pub ready_max_lag: u64,
    /// Reverse proxies in front of the API, as addresses or ranges (`10.0.0.0/8`). A request
    /// from one comes from the rightmost address of its `X-Forwarded-For` that is not one of
    /// them; any other request from its TCP peer. Rate limits and audit entries use that address.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

fn default_ready_max_lag() -> u64 {
    10_000
}

fn default_header_read_timeout() -> u64 {
    10_000
}
fn default_idle_timeout() -> u64 {
    60_000
}
fn default_max_connections() -> usize {
    10_000
}
fn default_shutdown_grace() -> u64 {
    10_000
}

fn default_header_limit() -> usize {
    16 * 1024
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
        if !(1024..=1024 * 1024).contains(&self.max_header_bytes) {
            return Err("http.max_header_bytes must be between 1024 and 1048576".into());
        }
        if !(100..=600_000).contains(&self.header_read_timeout_ms) {
            return Err("http.header_read_timeout_ms must be between 100 and 600000".into());
        }
        if !(100..=3_600_000).contains(&self.idle_timeout_ms) {
            return Err("http.idle_timeout_ms must be between 100 and 3600000".into());
        }
        // The idle timeout also bounds the head (it runs until the head is complete), so a
        // longer header timeout would never apply.
        if self.header_read_timeout_ms > self.idle_timeout_ms {
            return Err(
                "http.header_read_timeout_ms must not be above http.idle_timeout_ms".into(),
            );
        }
        if !(1..=1_000_000).contains(&self.max_connections) {
            return Err("http.max_connections must be between 1 and 1000000".into());
        }
        if self.shutdown_grace_ms > 600_000 {
            return Err("http.shutdown_grace_ms must be at most 600000".into());
        }
        if self.rate_limit_per_second > 0 && self.rate_limit_burst == 0 {
            return Err("http.rate_limit_burst must be at least 1 when rate limiting is on".into());
        }
        if self.trusted_proxies.len() > 1000 {
            return Err("http.trusted_proxies may name at most 1000 addresses or ranges".into());
        }
        TrustedProxies::parse(&self.trusted_proxies)?;
        Ok(())
    }
}

/// The `[auth]` section of `kairos.toml`.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// On first start, when no admin exists, this key becomes the first admin's key. Also read
    /// from `KAIROS_BOOTSTRAP_ADMIN_KEY`.
    #[serde(default)]
    pub bootstrap_admin_key: Option<String>,
    /// The e-mail the bootstrap admin is recorded under.
    #[serde(default = "default_admin_email")]
    pub bootstrap_admin_email: String,
    /// HMAC key for API keys and invitation tokens; when unset, one is generated on first start
    /// and kept in the database.
    #[serde(default)]
    pub key_secret: Option<String>,
    /// How long an invitation token stays valid unless the request says otherwise.
    #[serde(default = "default_invitation_hours")]
    pub invitation_ttl_hours: u32,
    /// Keys a member may hold at once (not revoked); a member at the cap revokes one first.
    #[serde(default = "default_max_keys")]
    pub max_keys_per_member: u32,
}

fn default_max_keys() -> u32 {
    20
}

fn default_admin_email() -> String {
    "admin@kairos.local".into()
}
fn default_invitation_hours() -> u32 {
    72
}

impl std::fmt::Debug for AuthSettings {
    /// Shows whether the secrets are set, never what they are.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |s: &Option<String>| s.as_ref().map(|_| "***");
        f.debug_struct("AuthSettings")
            .field("bootstrap_admin_key", &set(&self.bootstrap_admin_key))
            .field("bootstrap_admin_email", &self.bootstrap_admin_email)
            .field("key_secret", &set(&self.key_secret))
            .field("invitation_ttl_hours", &self.invitation_ttl_hours)
            .field("max_keys_per_member", &self.max_keys_per_member)
            .finish()
    }
}

impl AuthSettings {
    pub fn validate(&self) -> Result<(), String> {
        if let Some(k) = &self.bootstrap_admin_key {
            if !(32..=512).contains(&k.len()) {
                return Err(
                    "auth.bootstrap_admin_key (KAIROS_BOOTSTRAP_ADMIN_KEY) must be 32 to 512 characters"
                        .into(),
                );
            }
            if !k.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(
                    "auth.bootstrap_admin_key must be printable ASCII without spaces".into(),
                );
            }
            let bits = estimated_entropy_bits(k);
            if bits < 128.0 {
                return Err(format!(
                    "auth.bootstrap_admin_key looks guessable (about {bits:.0} bits; at least 128 \
                     needed): use a random one, as `kairos_` and 64 hex digits"
                ));
            }
        }
        if self.key_secret.as_ref().is_some_and(|s| s.len() < 32) {
            return Err("auth.key_secret must be at least 32 characters".into());
        }
        if !(1..=720).contains(&self.invitation_ttl_hours) {
            return Err("auth.invitation_ttl_hours must be between 1 and 720".into());
        }
        if !(1..=10_000).contains(&self.max_keys_per_member) {
            return Err("auth.max_keys_per_member must be between 1 and 10000".into());
        }
        let e = &self.bootstrap_admin_email;
        if e.len() > 200 || !e.contains('@') || e.chars().any(char::is_whitespace) {
            return Err("auth.bootstrap_admin_email must be an e-mail address".into());
        }
        Ok(())
    }
}

/// An estimate of how much guessing `key` would take: its length times the Shannon entropy of its
/// characters' frequencies. Random hex of 32 digits is about 128 bits; a word repeated is far
/// less, whatever its length.
fn estimated_entropy_bits(key: &str) -> f64 {
    let mut counts = std::collections::HashMap::new();
    for c in key.chars() {
        *counts.entry(c).or_insert(0usize) += 1;
    }
    let n = key.chars().count() as f64;
    let per_char: f64 = counts
        .values()
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum();
    per_char * n
}

/// Why `POST /v1/projections/{name}/replay` did not start a rebuild.
#[derive(Debug, thiserror::Error)]
pub enum ReplayRefused {
    #[error("{0}")]
    Unknown(String),
    #[error("{0}")]
    Running(String),
}

/// Starts rebuilding the named projection in the background; the API does not know the
/// projections, the binary that wires them does.
pub type Replayer = Arc<dyn Fn(&str) -> Result<(), ReplayRefused> + Send + Sync>;

/// Everything a handler needs.
#[derive(Clone)]
pub struct AppState {
    pub bus: Bus,
    pub pool: PgPool,
    pub checkpoints: CheckpointWatch,
    pub http: Arc<HttpSettings>,
    pub auth: Arc<AuthSettings>,
    /// Who a key belongs to (provided by the access module).
    pub authenticator: Arc<dyn Authenticator>,
    /// The modules being served: who may publish which event type, which projections exist.
    pub registry: Registry,
    /// "Now": default budget months, event times, key expiry.
    pub clock: kairos_events::Clock,
    /// Starts a projection rebuild; `None` where this process cannot (the endpoint answers 503).
    pub replayer: Option<Replayer>,
    /// The projections running in this process, for `/health/ready`'s lag check.
    pub local: LocalProjections,
    /// Requests refused for want of a valid key, counted per address and minute for the log.
    pub refusals: Refusals,
}

/// The names of the projections whose runners are alive in this process.
#[derive(Clone, Default, Debug)]
pub struct LocalProjections(Arc<std::sync::Mutex<std::collections::BTreeMap<&'static str, usize>>>);

impl LocalProjections {
    /// Counts `name` as running until the guard is dropped (with the runner's task).
    pub fn running(&self, name: &'static str) -> LocalGuard {
        *self.lock().entry(name).or_default() += 1;
        LocalGuard {
            set: self.clone(),
            name,
        }
    }

    /// The names running now.
    pub fn names(&self) -> Vec<&'static str> {
        self.lock().keys().copied().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<&'static str, usize>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Keeps a projection counted as running in [`LocalProjections`] while it lives.
pub struct LocalGuard {
    set: LocalProjections,
    name: &'static str,
}

impl Drop for LocalGuard {
    fn drop(&mut self) {
        let mut map = self.set.lock();
        if let Some(n) = map.get_mut(self.name) {
            *n -= 1;
            if *n == 0 {
                map.remove(self.name);
            }
        }
    }
}

/// `GET /openapi.json`: the document of every other route, public like the health checks.
pub const OPENAPI_ENDPOINT: Endpoint = Endpoint {
    method: "GET",
    path: "/openapi.json",
    guard: Guard::Public,
    action: "openapi.read",
};

/// The whole API as a router, with its middleware: the platform's routes and `modules`' (each
/// module's routes with what its [`Configured::start`] gave them). Serve it with [`serve`],
/// which gives handlers the client address that rate limits are kept per.
pub fn router(state: AppState, modules: Vec<(Routes, Started)>) -> Router {
    // The recorder is installed before the first request records anything.
    observe::handle();
    let request_id = HeaderName::from_static("x-request-id");
    let timeout = Duration::from_millis(state.http.request_timeout_ms);
    let body_limit = state.http.body_limit_bytes;
    let limiter = limits::Limiter::new(
        state.http.rate_limit_per_second,
        state.http.rate_limit_burst,
    );
    let mut endpoints = Vec::new();
    let mut router = Router::new();
    let mut paths = utoipa::openapi::path::Paths::new();
    let mut schemas = Vec::new();
    let platform = (routes::platform_routes(), Started::default());
    for (routes, started) in std::iter::once(platform).chain(modules) {
        endpoints.extend_from_slice(routes.endpoints());
        let (part, part_paths, part_schemas) = routes.into_parts(started);
        router = router.merge(part);
        for (path, item) in part_paths.paths {
            match paths.paths.get_mut(&path) {
                Some(existing) => existing.merge_operations(item),
                None => {
                    paths.paths.insert(path, item);
                }
            }
        }
        schemas.extend(part_schemas);
    }
    // The document describes every route but itself; it is public, like the health checks.
    let document =
        Bytes::from(serde_json::to_vec(&openapi::document(paths, schemas)).unwrap_or_default());
    router = router.route(
        "/openapi.json",
        axum::routing::get(move || {
            let document = document.clone();
            async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    document,
                )
            }
        }),
    );
    endpoints.push(OPENAPI_ENDPOINT);
    let gate = auth::Gate {
        st: state.clone(),
        limiter: limiter.clone(),
        endpoints: Arc::new(Endpoints::new(endpoints)),
    };
    let header_limit = state.http.max_header_bytes;
    let router = router
        .fallback(routes::unknown_route)
        .method_not_allowed_fallback(routes::wrong_method)
        .route_layer(axum::middleware::from_fn_with_state(gate, auth::guard))
        .layer(axum::middleware::from_fn(observe::record_requests))
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(
            limiter,
            limits::rate_limit,
        ))
        .layer(axum::middleware::from_fn(move |req, next| {
            limits::header_limit(header_limit, req, next)
        }))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(TraceLayer::new_for_http().make_span_with(span))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid));
    limits::SECURITY_HEADERS
        .into_iter()
        .fold(router, |r, (name, value)| {
            r.layer(limits::header_layer(name, value))
        })
}

/// The request's span: method, path (an invitation token in it redacted) and request id. Never
/// headers, so keys stay out of logs.
fn span(req: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let path = auth::redact_path(req.uri().path());
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::info_span!("request", method = %req.method(), path = %path, request_id = id)
}
