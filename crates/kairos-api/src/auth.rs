//! Authentication, authorisation and the audit of every write, in one middleware.
//!
//! Every route is declared with its [`Guard`] where it is added, through [`crate::Routes`]: the
//! platform's ([`crate::platform_routes`]) and each module's. The middleware looks each
//! request's route up in the table of both ([`Endpoints`]); [`permission_table`], made from the
//! same table, is what `kairos admin permissions` prints. A route missing from the table is
//! refused (fail closed).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use kairos_events::types::USER_ACTION;
use serde_json::json;

use crate::error::ErrorInfo;
use crate::limits::{Caller as Bucket, Limiter};
use crate::roles::{Denied, Origin, Permission, Principal, Role, allows};
use crate::{ApiError, AppState};

/// What a route requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// Open to anyone (health checks; accepting an invitation, whose token is the credential).
    Public,
    /// Any valid key.
    AnyKey,
    /// A key whose role has this permission.
    Key(Permission),
}

/// One route of the API.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    pub method: &'static str,
    pub path: &'static str,
    pub guard: Guard,
    /// The audit action of a write to it.
    pub action: &'static str,
}

use Guard::{AnyKey, Key, Public};

/// Every route the API serves: the platform's and the modules'.
#[derive(Debug, Clone)]
pub struct Endpoints(Vec<Endpoint>);

impl Endpoints {
    pub fn new(endpoints: Vec<Endpoint>) -> Self {
        Self(endpoints)
    }

    /// The endpoint serving `method` on the route `path` (a route template such as
    /// `/v1/members/{id}`).
    pub fn find(&self, method: &str, path: &str) -> Option<&Endpoint> {
        self.0.iter().find(|e| e.method == method && e.path == path)
    }

    /// Pairs declared twice (a defect: one would shadow the other's guard).
    pub fn duplicates(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, a) in self.0.iter().enumerate() {
            if self.0[i + 1..]
                .iter()
                .any(|b| a.method == b.method && a.path == b.path)
            {
                out.push(format!("{} {}", a.method, a.path));
            }
        }
        out
    }

    pub fn iter(&self) -> impl Iterator<Item = &Endpoint> {
        self.0.iter()
    }
}

/// Whether a caller of `role` passes `guard`.
pub fn admits(guard: Guard, role: Role) -> bool {
    match guard {
        Public | AnyKey => true,
        Key(p) => allows(role, p),
    }
}

/// The permission matrix as a Markdown table: one row per endpoint, one column per role.
pub fn permission_table(endpoints: &Endpoints) -> String {
    let mut out = String::from("| Endpoint | Requires |");
    for r in Role::ALL {
        out.push_str(&format!(" {r} |"));
    }
    out.push_str("\n|---|---|");
    for _ in Role::ALL {
        out.push_str(":-:|");
    }
    out.push('\n');
    for e in endpoints.iter() {
        let requires = match e.guard {
            Public => "no key".to_owned(),
            AnyKey => "any key".to_owned(),
            Key(p) => format!("`{p}`"),
        };
        out.push_str(&format!("| `{} {}` | {requires} |", e.method, e.path));
        for r in Role::ALL {
            out.push_str(if admits(e.guard, r) {
                " ✓ |"
            } else {
                " – |"
            });
        }
        out.push('\n');
    }
    out
}

/// Who is calling and from where; every guarded handler can extract it.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Option<Principal>,
    pub ip: Option<String>,
    pub request_id: Option<String>,
}

impl Caller {
    /// The principal (guarded routes always have one).
    pub fn principal(&self) -> Result<&Principal, ApiError> {
        self.principal
            .as_ref()
            .ok_or_else(|| ApiError::Unauthorized("this endpoint needs an API key".into()))
    }

    /// The origin recorded with a change this caller makes.
    pub fn origin(&self) -> Origin {
        Origin {
            actor: self
                .principal
                .as_ref()
                .map_or_else(|| "anonymous".to_owned(), |p| p.email.clone()),
            actor_role: self.principal.as_ref().map(|p| p.role),
            ip: self.ip.clone(),
            request_id: self.request_id.clone(),
            source: "kairos/api".into(),
        }
    }

    /// Refuses a project outside the caller's reach.
    pub fn reach(&self, project: &str) -> Result<(), ApiError> {
        let p = self.principal()?;
        if p.reaches(project) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "your role ({}) does not reach project {project}",
                p.role
            )))
        }
    }
}

/// A request made in-process on behalf of a signed-in dashboard session: it carries the id of
/// the session's key instead of an `Authorization` header. Only code in this process can attach
/// an extension, so no client can present one; the guard checks the key as it checks a bearer
/// key (revoked, expired, member removed), then the route's permission, and audits the same way.
#[derive(Debug, Clone)]
pub struct Delegated {
    pub key_id: String,
}

/// Marks a response whose write recorded its own auditable event (a budget or identity change),
/// so the middleware does not record a second entry.
#[derive(Debug, Clone, Copy)]
pub struct Recorded;

/// A summary for the audit entry of a write (e.g. how many events a batch accepted), and
/// whether part of it was refused for want of permission (then the outcome is `denied`).
#[derive(Debug, Clone)]
pub struct AuditNote {
    pub reason: String,
    pub denied: bool,
}

/// The state of the middleware.
#[derive(Clone)]
pub(crate) struct Gate {
    pub st: AppState,
    pub limiter: Limiter,
    pub endpoints: std::sync::Arc<Endpoints>,
}

/// The bearer token, if the header is well formed.
fn bearer(req: &Request) -> Result<Option<&str>, ApiError> {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let malformed = || {
        ApiError::Unauthorized(
            "malformed Authorization header: send `Authorization: Bearer <key>`".into(),
        )
    };
    let text = value.to_str().map_err(|_| malformed())?;
    let (scheme, token) = text.trim().split_once(' ').ok_or_else(malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer")
        || token.is_empty()
        || token.len() > 512
        || !token.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(malformed());
    }
    Ok(Some(token))
}

/// What the audit entry names as the resource: the path, with anything in it that looks like a
/// key or an invitation token redacted.
fn resource(path: &str) -> String {
    redact_path(path).chars().take(500).collect()
}

/// `path` with every segment that looks like a key or an invitation token (someone pasted one
/// where an id belongs) replaced by `{redacted}`.
pub(crate) fn redact_path(path: &str) -> String {
    path.split('/')
        .map(|seg| {
            if seg.starts_with("kairos_") || seg.starts_with("kinv_") {
                "{redacted}"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The middleware: finds the route's guard, authenticates, authorises, runs the handler, and
/// records writes (allowed or denied) and every refusal to a caller with a key.
pub(crate) async fn guard(State(gate): State<Gate>, mut req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let template = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_default();
    let Some(endpoint) = gate.endpoints.find(method.as_str(), &template).copied() else {
        return ApiError::MethodNotAllowed(format!("{method} is not allowed on {path}"))
            .into_response();
    };
    let endpoint = &endpoint;
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let mut caller = Caller {
        principal: None,
        ip: ip.map(|i| i.to_string()),
        request_id: req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(200).collect()),
    };
    let write = !matches!(method, Method::GET | Method::HEAD);
    // The outer limiter leaves requests with a key to this one; a public route has no key to
    // limit by, so such a request spends its address's bucket.
    if endpoint.guard == Public
        && req.headers().contains_key(header::AUTHORIZATION)
        && let Err(limited) = gate.limiter.check(&Bucket::Ip(ip))
    {
        return limited.into_response();
    }
    let delegated = req.extensions().get::<Delegated>().cloned();
    if let Some(d) = delegated.filter(|_| endpoint.guard != Public) {
        match gate
            .st
            .authenticator
            .authenticate_key_id(&d.key_id, gate.st.clock.now())
            .await
        {
            Ok(p) => caller.principal = Some(p),
            Err(Denied::Database(e)) => return ApiError::Database(e).into_response(),
            Err(denied) => {
                let e = ApiError::Unauthorized(
                    "the session's API key is no longer valid: sign in again".into(),
                );
                return refuse(&gate, &caller, endpoint, &path, e, &denied.to_string()).await;
            }
        }
    } else if endpoint.guard != Public {
        let token = match bearer(&req) {
            Ok(Some(t)) => t.to_owned(),
            Ok(None) => {
                let e = ApiError::Unauthorized(
                    "this endpoint needs an API key: send `Authorization: Bearer <key>`".into(),
                );
                return refuse(&gate, &caller, endpoint, &path, e, "no API key").await;
            }
            Err(e) => {
                if let Err(limited) = gate.limiter.failed(ip) {
                    return limited.into_response();
                }
                return refuse(
                    &gate,
                    &caller,
                    endpoint,
                    &path,
                    e,
                    "malformed Authorization header",
                )
                .await;
            }
        };
        if let Err(limited) = gate.limiter.guessing(ip) {
            return limited.into_response();
        }
        match gate
            .st
            .authenticator
            .authenticate(&token, gate.st.clock.now())
            .await
        {
            Ok(p) => caller.principal = Some(p),
            Err(Denied::Database(e)) => return ApiError::Database(e).into_response(),
            Err(denied) => {
                // Failed keys also spend the address's bucket, so guessing is slow.
                if let Err(limited) = gate.limiter.failed(ip) {
                    return limited.into_response();
                }
                let e = ApiError::Unauthorized(
                    "the API key is not valid (unknown, revoked, expired, or its member was removed)"
                        .into(),
                );
                return refuse(&gate, &caller, endpoint, &path, e, &denied.to_string()).await;
            }
        }
    }
    // One bucket per member, however many keys it holds.
    if let Some(p) = &caller.principal
        && let Err(limited) = gate.limiter.check(&Bucket::Member(p.member_id.clone()))
    {
        return limited.into_response();
    }
    if endpoint.guard != Public {
        let p = caller
            .principal
            .as_ref()
            .map(|p| p.role)
            .unwrap_or(Role::Viewer);
        if !admits(endpoint.guard, p) {
            let need = match endpoint.guard {
                Key(perm) => perm.as_str(),
                _ => "a key",
            };
            let e = ApiError::Forbidden(format!(
                "role {p} lacks permission {need} for {} {}",
                endpoint.method, endpoint.path
            ));
            let reason = format!("role {p} lacks {need}");
            return refuse(&gate, &caller, endpoint, &path, e, &reason).await;
        }
    }
    req.extensions_mut().insert(caller.clone());
    let response = next.run(req).await;
    let status = response.status();
    let recorded = response.extensions().get::<Recorded>().is_some();
    if (write || status == StatusCode::FORBIDDEN) && !recorded {
        let note = response.extensions().get::<AuditNote>();
        let outcome = if note.is_some_and(|n| n.denied)
            || matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
        {
            "denied"
        } else if status.is_success() {
            "success"
        } else {
            "failure"
        };
        let reason = match (note, response.extensions().get::<ErrorInfo>()) {
            (Some(n), _) => n.reason.clone(),
            (None, Some(e)) => format!("{} {}: {}", status.as_u16(), e.code, e.message),
            (None, None) => status.to_string(),
        };
        // A public route refusing a caller without a key (an invitation token that is not
        // valid) is counted like any refusal without a key.
        if caller.principal.is_none() && outcome != "success" {
            count_refusal(&gate, &caller, endpoint, &reason);
            return response;
        }
        let logged = audit(&gate.st, &caller, endpoint, &path, outcome, &reason).await;
        // A write done but not recorded is answered as failed, not as done: its caller retries
        // (an event batch is deduplicated by source and id), and the retry is recorded.
        if logged.is_err() && write && status.is_success() {
            return ApiError::AuditUnavailable(format!(
                "{} {} was carried out, but its audit entry could not be recorded, so it is \
                 answered as failed: retry it once the event stream takes writes again",
                endpoint.method, endpoint.path
            ))
            .into_response();
        }
    }
    response
}

/// Answers `e` and records the refusal: one entry for a caller with a key, a count per address
/// and minute for one without.
async fn refuse(
    gate: &Gate,
    caller: &Caller,
    endpoint: &Endpoint,
    path: &str,
    e: ApiError,
    reason: &str,
) -> Response {
    // A refusal stands whether or not its entry could be recorded (the failure is logged).
    if caller.principal.is_none() {
        count_refusal(gate, caller, endpoint, reason);
    } else {
        let _ = audit(&gate.st, caller, endpoint, path, "denied", reason).await;
    }
    e.into_response()
}

/// Counts a refusal of a caller without a valid key for its address's minute. Anyone can send
/// these, so they are counted, not recorded one by one.
fn count_refusal(gate: &Gate, caller: &Caller, endpoint: &Endpoint, reason: &str) {
    gate.st.refusals.add(
        caller.ip.as_deref(),
        &format!("{} {}", endpoint.method, endpoint.path),
        reason,
    );
}

/// Publishes a `kairos.user.action.v1` for this request; the audit projection makes it an entry.
async fn audit(
    st: &AppState,
    caller: &Caller,
    e: &Endpoint,
    path: &str,
    outcome: &str,
    reason: &str,
) -> Result<(), String> {
    record_action(
        st,
        &caller.origin(),
        e.action,
        &resource(path),
        outcome,
        reason,
    )
    .await
}

/// Publishes a `kairos.user.action.v1` (`outcome`: `success`, `failure` or `denied`); the audit
/// projection makes it an entry. A publish that fails is logged and returned: a caller whose
/// action is done answers it as failed rather than let it go unaudited.
pub async fn record_action(
    st: &AppState,
    origin: &Origin,
    action: &str,
    resource: &str,
    outcome: &str,
    reason: &str,
) -> Result<(), String> {
    let mut data = json!({
        "actor": origin.actor, "action": action, "resource": resource,
        "outcome": outcome, "reason": reason.chars().take(1000).collect::<String>(),
    });
    if let Some(r) = origin.actor_role {
        data["role"] = json!(r.as_str());
    }
    if let Some(ip) = &origin.ip {
        data["ip"] = json!(ip);
    }
    if let Some(id) = &origin.request_id {
        data["request_id"] = json!(id);
    }
    let event = kairos_events::Emit::new(USER_ACTION, "kairos/api", data)
        .time(st.clock.now())
        .build();
    let result = match event {
        Ok(event) => st
            .bus
            .publish_event(&event)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(error) = &result {
        tracing::error!(%error, action, outcome, "could not record the audit event");
    }
    result
}
