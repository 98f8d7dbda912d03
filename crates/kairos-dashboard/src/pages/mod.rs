//! The pages, one module each, and what every handler shares: the signed-in member, the
//! browser's address, and the checks every form passes (session, CSRF token, same origin).
//!
//! A check that fails answers with the page to send instead, so `Result<_, Response>` is the
//! handlers' shape here.
#![allow(clippy::result_large_err)]

pub mod analytics;
pub mod anomalies;
pub mod audit;
pub mod budgets;
pub mod overview;
pub mod routing;
pub mod sign_in;
pub mod team;
pub mod workflows;

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::Markup;
use serde_json::Value;

use crate::Dashboard;
use crate::call::{self, As, Failure};
use crate::session::{self, Session};
use crate::view::{self, Notice};

/// The browser's address (the API's audit entries and rate limits use it).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
        ))
    }
}

/// A signed-in member, as the API's `GET /v1/me` says it is now.
#[derive(Debug, Clone)]
pub struct Signed {
    pub session: Session,
    pub email: String,
    pub role: String,
    pub permissions: Vec<String>,
    /// `None`: every project.
    pub projects: Option<Vec<String>>,
    pub csrf: String,
    pub peer: Option<SocketAddr>,
}

impl Signed {
    /// The member behind the request's session, or the answer to send instead: to sign-in
    /// when there is no live session, or its key is no longer valid.
    pub async fn load(d: &Dashboard, headers: &HeaderMap, peer: Peer) -> Result<Self, Response> {
        let found = session::find(&d.state.pool, headers, d.state.clock.now())
            .await
            .map_err(|e| {
                failure(&Failure::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    e.to_string(),
                ))
            })?;
        let Some(session) = found else {
            return Err(Redirect::to("/sign-in").into_response());
        };
        let who = As::Session(session.key_id.clone());
        match call::api(d, &who, peer.0, Method::GET, "/v1/me", None).await {
            Ok(me) => Ok(Self {
                email: view::text(&me["email"]),
                role: view::text(&me["role"]),
                permissions: me["permissions"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|p| p.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default(),
                projects: me["projects"].as_array().map(|a| {
                    a.iter()
                        .filter_map(|p| p.as_str().map(str::to_owned))
                        .collect()
                }),
                csrf: session.csrf.clone(),
                session,
                peer: peer.0,
            }),
            Err(f) if f.status == StatusCode::UNAUTHORIZED => {
                // The key was revoked or expired, or its member removed: the session ends.
                let _ = session::end(&d.state.pool, &session).await;
                Err(Redirect::to("/sign-in?ended=1").into_response())
            }
            Err(f) => Err(failure(&f)),
        }
    }

    fn who(&self) -> As {
        As::Session(self.session.key_id.clone())
    }

    /// `GET path` from the API as this member.
    pub async fn get(&self, d: &Dashboard, path: impl Into<String>) -> Result<Value, Failure> {
        let path = path.into();
        call::api(d, &self.who(), self.peer, Method::GET, &path, None).await
    }

    /// A write to the API as this member.
    pub async fn send(
        &self,
        d: &Dashboard,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, Failure> {
        call::api(d, &self.who(), self.peer, method, path, body).await
    }

    /// Whether this member's role has `permission`.
    pub fn can(&self, permission: &str) -> bool {
        view::allowed(self, permission)
    }
}

/// A form's checks before it acts: a live session, its CSRF token, and (when the browser says
/// where the form came from) this origin. The refusal is `403` with the reason.
pub async fn form_session(
    d: &Dashboard,
    headers: &HeaderMap,
    peer: Peer,
    csrf: &str,
) -> Result<Signed, Response> {
    same_origin(headers)?;
    let s = Signed::load(d, headers, peer).await?;
    if !session::same_token(csrf, &s.csrf) {
        return Err(refused(
            "the form's CSRF token is missing or stale: reload the page",
        ));
    }
    Ok(s)
}

/// Refuses a request whose `Origin` names another site (SameSite cookies already keep other
/// sites' forms out; this is the second lock).
pub fn same_origin(headers: &HeaderMap) -> Result<(), Response> {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or("");
    if !host.is_empty() && origin_host == host {
        Ok(())
    } else {
        Err(refused("the form came from another origin"))
    }
}

fn refused(why: &str) -> Response {
    view::answer(
        StatusCode::FORBIDDEN,
        view::bare(
            "Refused",
            maud::html! { h1 { "Refused" } p.notice.error role="alert" { (why) } p { a href="/" { "Back to the dashboard" } } },
        ),
    )
}

/// A page for an API failure the page could not work around (the API's status kept).
pub fn failure(f: &Failure) -> Response {
    view::answer(
        f.status,
        view::bare(
            "Error",
            maud::html! {
                h1 { "Something went wrong" }
                p.notice.error role="alert" { (f.status.as_u16()) ": " (f.message) }
                p { a href="/" { "Back to the dashboard" } }
            },
        ),
    )
}

/// An action's failure as the notice above the page shown again.
pub fn notice_of(f: &Failure) -> Notice {
    Notice::Error(format!("{}: {}", f.status.as_u16(), f.message))
}

/// A section's data, or the API's reason it is not available (a page shows what it can).
pub fn or_reason(r: &Result<Value, Failure>) -> Result<&Value, Markup> {
    r.as_ref().map_err(|f| {
        maud::html! { p.notice.error role="alert" { "Not available: " (f.status.as_u16()) " " (f.message) } }
    })
}

/// The query parameters a page passes on, as read (absent ones empty).
pub fn param<'a>(q: &'a std::collections::HashMap<String, String>, k: &str) -> &'a str {
    q.get(k).map_or("", String::as_str)
}
