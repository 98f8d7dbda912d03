//! The Kairos dashboard: server-rendered pages (maud) with SVG charts drawn on the server
//! (plotters), live through the browser's own `EventSource`, served by the `kairos` binary
//! beside the API. No JavaScript build step; the one script and style sheet are this crate's
//! own, embedded.
//!
//! Every page reads through the API itself: a request made in-process to the composed API
//! router on behalf of the session ([`kairos_api::Delegated`]), so the API's guard applies the
//! same permissions, project reach, rate limits and audit to the dashboard as to a client with
//! the key. Sign-in turns an API key into a server-side session ([`session`]); the browser only
//! ever holds a random session token.
//!
//! Not here: any data of its own beyond sessions, any permission logic.

mod call;
mod chart;
mod live;
mod pages;
pub mod session;
mod view;

use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, header};
use axum::routing::{get, post};
use kairos_api::AppState;
use serde::Deserialize;
use sqlx::migrate::Migrator;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;

/// The dashboard's migrations (its sessions table).
pub static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// The `[dashboard]` section of `kairos.toml`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DashboardSettings {
    /// Serve the dashboard at `/` beside the API.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// How long a session lasts from sign-in, in hours.
    #[serde(default = "default_session_hours")]
    pub session_hours: u32,
    /// Mark the session cookie `Secure` (serve the dashboard over TLS, e.g. behind a proxy).
    #[serde(default)]
    pub secure_cookie: bool,
    /// At most how often a live page is told to refresh, in milliseconds.
    #[serde(default = "default_live_interval")]
    pub live_interval_ms: u64,
}

fn yes() -> bool {
    true
}
fn default_session_hours() -> u32 {
    8
}
fn default_live_interval() -> u64 {
    1_000
}

impl Default for DashboardSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            session_hours: default_session_hours(),
            secure_cookie: false,
            live_interval_ms: default_live_interval(),
        }
    }
}

impl DashboardSettings {
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=720).contains(&self.session_hours) {
            return Err("dashboard.session_hours must be between 1 and 720".into());
        }
        if !(100..=60_000).contains(&self.live_interval_ms) {
            return Err("dashboard.live_interval_ms must be between 100 and 60000".into());
        }
        Ok(())
    }
}

/// What the dashboard's handlers share.
#[derive(Clone)]
pub struct Dashboard {
    /// The composed API (its routes and middleware), called in-process.
    pub api: Router,
    /// The API's state: its database, clock and checkpoints, and the audit log's door.
    pub state: AppState,
    pub settings: DashboardSettings,
}

/// The dashboard's own policy: scripts, styles and connections from itself only, no inline
/// script or style, no frames, forms posting back to itself.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
    connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The dashboard's routes, to merge beside the API's (`dashboard::router(d).merge(api)`):
/// `/`, the pages, sign-in and out, `/live` and `/assets/*`. The API keeps its own headers.
pub fn router(d: Dashboard) -> Router {
    let headers = [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::CACHE_CONTROL, "no-store"),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
    ];
    let router = Router::new()
        .route("/", get(pages::overview::page))
        .route(
            "/sign-in",
            get(pages::sign_in::form).post(pages::sign_in::submit),
        )
        .route("/sign-out", post(pages::sign_in::sign_out))
        .route(
            "/budgets",
            get(pages::budgets::page).post(pages::budgets::set),
        )
        .route("/analytics", get(pages::analytics::page))
        .route("/routing", get(pages::routing::page))
        .route("/routing/simulate", post(pages::routing::simulate))
        .route("/workflows", get(pages::workflows::page))
        .route("/anomalies", get(pages::anomalies::page))
        .route(
            "/anomalies/{id}/acknowledge",
            post(pages::anomalies::acknowledge),
        )
        .route("/audit", get(pages::audit::page))
        .route("/audit/export", get(pages::audit::export))
        .route("/team", get(pages::team::page))
        .route("/team/role", post(pages::team::set_role))
        .route("/team/invite", post(pages::team::invite))
        .route("/team/keys", post(pages::team::new_key))
        .route("/team/keys/revoke", post(pages::team::revoke_key))
        .route("/assets/app.css", get(view::css))
        .route("/assets/app.js", get(view::js))
        .layer(DefaultBodyLimit::max(64 * 1024))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(30),
        ))
        // The live stream stays open as long as the page does: added after the timeout.
        .route("/live", get(live::events))
        .with_state(d);
    headers.into_iter().fold(router, |r, (name, value)| {
        r.layer(SetResponseHeaderLayer::if_not_present(
            name,
            HeaderValue::from_static(value),
        ))
    })
}
