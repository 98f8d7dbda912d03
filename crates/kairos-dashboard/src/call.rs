//! Calls to the API in-process, on behalf of a session or with a key being signed in with.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode, header};
use kairos_api::Delegated;
use serde_json::Value;
use tower::ServiceExt;

use crate::Dashboard;

/// An API answer that was not a success: its status and the API's message.
#[derive(Debug, Clone)]
pub struct Failure {
    pub status: StatusCode,
    pub message: String,
}

impl Failure {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

/// Whom a call is made for.
#[derive(Debug, Clone)]
pub enum As {
    /// A signed-in session: its key's id.
    Session(String),
    /// A key presented at sign-in.
    Key(String),
}

/// The API's largest answer the dashboard reads (an audit export is streamed, not read).
const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// Sends `method path` (with a JSON `body`) to the API as `who`, from the browser's address.
pub async fn api(
    d: &Dashboard,
    who: &As,
    peer: Option<SocketAddr>,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, Failure> {
    let response = raw(d, who, peer, method, path, body).await?;
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), MAX_ANSWER)
        .await
        .map_err(|e| Failure::new(StatusCode::BAD_GATEWAY, format!("reading the API: {e}")))?;
    let value: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    };
    if status.is_success() {
        Ok(value)
    } else {
        let message = value["error"]["message"]
            .as_str()
            .map_or_else(|| status.to_string(), str::to_owned);
        Err(Failure { status, message })
    }
}

/// As [`api`], the response as it is (for streaming an export through).
pub async fn raw(
    d: &Dashboard,
    who: &As,
    peer: Option<SocketAddr>,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Result<axum::response::Response, Failure> {
    let mut req = Request::builder().method(method).uri(path);
    if let As::Key(key) = who {
        req = req.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    let body = match body {
        Some(b) => {
            req = req.header(header::CONTENT_TYPE, "application/json");
            Body::from(serde_json::to_vec(b).unwrap_or_default())
        }
        None => Body::empty(),
    };
    let mut req = req
        .body(body)
        .map_err(|e| Failure::new(StatusCode::BAD_REQUEST, format!("bad request: {e}")))?;
    if let As::Session(key_id) = who {
        req.extensions_mut().insert(Delegated {
            key_id: key_id.clone(),
        });
    }
    if let Some(peer) = peer {
        req.extensions_mut().insert(ConnectInfo(peer));
    }
    // The router's service never fails (errors are answers).
    d.api
        .clone()
        .oneshot(req)
        .await
        .map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// `s` percent-encoded for a query value.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A query string of the pairs whose value is not empty (`?a=1&b=2`, or nothing).
pub fn query(pairs: &[(&str, &str)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", enc(v)))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}
