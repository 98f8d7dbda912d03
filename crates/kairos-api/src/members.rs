//! Members, invitations, API keys and replay: the handlers of the identity endpoints. Each
//! change goes through `kairos_access::commands` (the same code `kairos admin` runs).

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use kairos_access::Permission;
use kairos_access::commands::{self, Ctx};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::auth::{Caller, Recorded};
use crate::{ApiError, AppState, ReplayRefused};

fn ctx(st: &AppState) -> Ctx<'_> {
    Ctx {
        bus: &st.bus,
        pool: &st.pool,
        secret: &st.secret,
        watch: &st.checkpoints,
        wait: Duration::from_millis(st.http.read_wait_ms),
        clock: &st.clock,
    }
}

/// A JSON body of type `T`; an empty body reads as `{}`. Errors name the field.
pub(crate) fn json_body<T: DeserializeOwned>(
    st: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = crate::routes::body_bytes(st, body)?;
    if let Some(m) = crate::routes::media_type(headers)
        && m != "application/json"
    {
        return Err(ApiError::UnsupportedMediaType(format!(
            "{m}: send application/json"
        )));
    }
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &body
    };
    serde_json::from_slice(body).map_err(|e| {
        // serde names the offending field as "unknown field `x`" / "missing field `x`".
        let msg = e.to_string();
        let field = ["unknown field `", "missing field `", "invalid type: "]
            .iter()
            .find_map(|p| msg.strip_prefix(p))
            .and_then(|rest| rest.split('`').next())
            .filter(|f| !f.contains(' '))
            .unwrap_or("body")
            .to_owned();
        ApiError::bad("invalid_body", field, msg)
    })
}

/// A created (or, if the projection has not applied it yet, accepted) change, marked as
/// recorded so the audit middleware does not add a second entry.
fn answer(status: StatusCode, applied: bool, body: Value) -> Response {
    let status = if applied {
        status
    } else {
        StatusCode::ACCEPTED
    };
    let mut r = (status, Json(body)).into_response();
    r.extensions_mut().insert(Recorded);
    r
}

/// `GET /v1/me`: who the key belongs to.
pub(crate) async fn me(Extension(caller): Extension<Caller>) -> Result<Json<Value>, ApiError> {
    let p = caller.principal()?;
    let permissions: Vec<&str> = Permission::ALL
        .into_iter()
        .filter(|perm| p.can(*perm))
        .map(Permission::as_str)
        .collect();
    Ok(Json(json!({
        "member_id": p.member_id, "email": p.email, "role": p.role, "projects": p.projects,
        "key_id": p.key_id, "permissions": permissions,
    })))
}

#[derive(Debug, Deserialize)]
pub(crate) struct MembersQuery {
    include_removed: Option<bool>,
}

/// `GET /v1/members?include_removed=true`
pub(crate) async fn list_members(
    State(st): State<AppState>,
    q: Result<Query<MembersQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = q
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad("invalid_query", "include_removed", e.body_text()))?;
    let members = kairos_access::members(&st.pool, q.include_removed.unwrap_or(false)).await?;
    Ok(Json(json!({ "members": members })))
}

/// An id from the path; what is not one is not echoed (it may be a key pasted by mistake).
fn id_param(raw: &str, what: &str) -> Result<String, ApiError> {
    uuid::Uuid::parse_str(raw)
        .map(|u| u.to_string())
        .map_err(|_| ApiError::NotFound(format!("no {what} with that id (ids are UUIDs)")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RoleBody {
    role: String,
    projects: Option<Vec<String>>,
}

/// `PUT /v1/members/{id}/role` with `{"role", "projects"?}`
pub(crate) async fn set_role(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let b: RoleBody = json_body(&st, &headers, body)?;
    let id = id_param(&id, "member")?;
    let r = commands::set_role(ctx(&st), &caller.origin(), &id, &b.role, b.projects).await?;
    Ok(answer(
        StatusCode::OK,
        r.applied,
        json!({"member_id": id, "role": b.role, "seq": r.seq, "applied": r.applied}),
    ))
}

#[derive(Debug, Deserialize)]
pub(crate) struct RemoveQuery {
    reason: Option<String>,
}

/// `DELETE /v1/members/{id}?reason=`
pub(crate) async fn remove_member(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    q: Result<Query<RemoveQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = q
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad("invalid_query", "reason", e.body_text()))?;
    if q.reason.as_ref().is_some_and(|r| r.len() > 1000) {
        return Err(ApiError::bad(
            "invalid_query",
            "reason",
            "reason must be at most 1000 characters",
        ));
    }
    let id = id_param(&id, "member")?;
    let r = commands::remove(ctx(&st), &caller.origin(), &id, q.reason.as_deref()).await?;
    Ok(answer(
        StatusCode::OK,
        r.applied,
        json!({"member_id": id, "removed": true, "seq": r.seq, "applied": r.applied}),
    ))
}

/// `GET /v1/invitations` (never the tokens)
pub(crate) async fn list_invitations(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    let invitations = kairos_access::invitations(&st.pool).await?;
    Ok(Json(json!({ "invitations": invitations })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InviteBody {
    email: String,
    role: String,
    projects: Option<Vec<String>>,
    expires_in_seconds: Option<u32>,
}

/// `POST /v1/invitations` with `{"email", "role", "projects"?, "expires_in_seconds"?}`: the
/// token is in this answer only.
pub(crate) async fn invite(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let b: InviteBody = json_body(&st, &headers, body)?;
    let ttl = match b.expires_in_seconds {
        None => chrono::Duration::hours(i64::from(st.auth.invitation_ttl_hours)),
        Some(s @ 1..=2_592_000) => chrono::Duration::seconds(i64::from(s)),
        Some(_) => {
            return Err(ApiError::bad(
                "invalid_body",
                "expires_in_seconds",
                "expires_in_seconds must be between 1 and 2592000 (30 days)",
            ));
        }
    };
    let inv = commands::invite(
        ctx(&st),
        &caller.origin(),
        &b.email,
        &b.role,
        b.projects,
        ttl,
    )
    .await?;
    let accept = format!("/v1/invitations/{}/accept", inv.token);
    let mut body = serde_json::to_value(&inv).unwrap_or_default();
    body["accept"] = json!(accept);
    Ok(answer(StatusCode::CREATED, inv.recorded.applied, body))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AcceptBody {
    name: Option<String>,
}

/// `POST /v1/invitations/{token}/accept` with `{"name"?}`: the new member's first key, shown once.
pub(crate) async fn accept(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let b: AcceptBody = json_body(&st, &headers, body)?;
    if b.name
        .as_ref()
        .is_some_and(|n| n.is_empty() || n.chars().count() > 200)
    {
        return Err(ApiError::bad(
            "invalid_body",
            "name",
            "name must be 1 to 200 characters",
        ));
    }
    let joined = commands::accept(ctx(&st), &caller.origin(), &token, b.name).await?;
    let body = serde_json::to_value(&joined).unwrap_or_default();
    Ok(answer(StatusCode::CREATED, joined.recorded.applied, body))
}

#[derive(Debug, Deserialize)]
pub(crate) struct KeysQuery {
    member_id: Option<String>,
}

/// `GET /v1/api-keys?member_id=`: one's own keys; an admin may name another member, or ask for
/// `member_id=all`.
pub(crate) async fn list_keys(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    q: Result<Query<KeysQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = q
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad("invalid_query", "member_id", e.body_text()))?;
    let p = caller.principal()?;
    let member = q.member_id.as_deref().unwrap_or(&p.member_id);
    if member != p.member_id && !p.can(Permission::ManageMembers) {
        return Err(ApiError::Forbidden(format!(
            "role {} may list only its own keys",
            p.role
        )));
    }
    let member = (member != "all").then_some(member);
    let keys = kairos_access::keys(&st.pool, member).await?;
    Ok(Json(json!({ "api_keys": keys })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IssueBody {
    name: String,
    member_id: Option<String>,
    expires_in_days: Option<u32>,
}

/// `POST /v1/api-keys` with `{"name", "member_id"?, "expires_in_days"?}`: the key, shown once.
pub(crate) async fn issue_key(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let b: IssueBody = json_body(&st, &headers, body)?;
    let p = caller.principal()?;
    let member = match &b.member_id {
        Some(m) => id_param(m, "member")?,
        None => p.member_id.clone(),
    };
    if member != p.member_id && !p.can(Permission::ManageMembers) {
        return Err(ApiError::Forbidden(format!(
            "role {} may issue keys only for itself",
            p.role
        )));
    }
    let expires = match b.expires_in_days {
        None => None,
        Some(d @ 1..=3650) => Some(chrono::Duration::days(i64::from(d))),
        Some(_) => {
            return Err(ApiError::bad(
                "invalid_body",
                "expires_in_days",
                "expires_in_days must be between 1 and 3650",
            ));
        }
    };
    let issued = commands::issue_key(ctx(&st), &caller.origin(), &member, &b.name, expires).await?;
    let body = serde_json::to_value(&issued).unwrap_or_default();
    Ok(answer(StatusCode::CREATED, issued.recorded.applied, body))
}

/// `DELETE /v1/api-keys/{id}`: one's own key, or (admin) anyone's. Refused from the next request.
pub(crate) async fn revoke_key(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = id_param(&id, "API key")?;
    let p = caller.principal()?;
    let key = commands::key(&st.pool, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no API key {id}")))?;
    if key.member_id != p.member_id && !p.can(Permission::ManageMembers) {
        // Someone else's key is as good as unknown to a non-admin.
        return Err(ApiError::NotFound(format!("no API key {id}")));
    }
    let r = commands::revoke_key(ctx(&st), &caller.origin(), &id).await?;
    Ok(answer(
        StatusCode::OK,
        r.applied,
        json!({"key_id": id, "revoked": true, "seq": r.seq, "applied": r.applied}),
    ))
}

/// `POST /v1/projections/{name}/replay`: starts a rebuild in the background; follow it on
/// `GET /v1/projections` (`generations_being_rebuilt`).
pub(crate) async fn replay(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let Some(replayer) = &st.replayer else {
        return Err(ApiError::StreamUnavailable(
            "this process cannot rebuild projections; run `kairos replay`".into(),
        ));
    };
    match replayer(&name) {
        Ok(()) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({"projection": name, "generation": format!("{name}@next"), "progress": "/v1/projections"})),
        )
            .into_response()),
        Err(ReplayRefused::Unknown(m)) => Err(ApiError::NotFound(m)),
        Err(ReplayRefused::Running(m)) => Err(ApiError::Conflict(m)),
    }
}
