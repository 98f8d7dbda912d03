//! The access module: its routes (members, invitations, API keys) and their handlers. Each
//! change goes through [`crate::commands`], the same code `kairos admin` runs.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use kairos_api::extract::{JsonBody, QueryParams, ReadAt};
use kairos_api::{
    ApiError, AppState, Caller, Configured, ErrorBody, EventRule, Guard, Host, Module,
    ModuleConfig, ModuleError, Permission, Publish, Recorded, Routes, Started,
};
use kairos_events::types::{
    API_KEY_ISSUED, API_KEY_REVOKED, INVITATION_REVOKED, MEMBER_INVITED, MEMBER_JOINED,
    MEMBER_REMOVED, ROLE_ASSIGNED,
};
use kairos_runtime::{AggregateStore, AnyProjection};
use serde::{Deserialize, Serialize};
use sqlx::migrate::Migrator;
use utoipa_axum::routes;

use crate::commands::{self, CommandError, Ctx, Invitation};
use crate::directory::Directory;
use crate::views::{InvitationView, KeyView, MemberView};
use crate::{Access, KeySecret, NAME};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The access module, registered by the binary.
pub struct AccessModule;

/// The value the binary registers.
pub static MODULE: AccessModule = AccessModule;

/// Identity events are Kairos' alone: nobody grants themselves a role by publishing one.
static EVENTS: [EventRule; 7] = [
    kairos_only(MEMBER_INVITED),
    kairos_only(INVITATION_REVOKED),
    kairos_only(MEMBER_JOINED),
    kairos_only(MEMBER_REMOVED),
    kairos_only(ROLE_ASSIGNED),
    kairos_only(API_KEY_ISSUED),
    kairos_only(API_KEY_REVOKED),
];

const fn kairos_only(ty: &'static str) -> EventRule {
    EventRule {
        ty,
        publish: Publish::KairosOnly,
    }
}

impl Module for AccessModule {
    fn name(&self) -> &'static str {
        NAME
    }

    fn migrations(&self) -> &'static Migrator {
        &MIGRATOR
    }

    fn events(&self) -> &'static [EventRule] {
        &EVENTS
    }

    fn configure(&self, _config: &ModuleConfig) -> Result<Box<dyn Configured>, ModuleError> {
        Ok(Box::new(AccessConfigured))
    }
}

struct AccessConfigured;

impl Configured for AccessConfigured {
    fn projection(&self) -> Arc<dyn AnyProjection> {
        Arc::new(Access)
    }

    fn routes(&self) -> Routes {
        use Guard::{Key, Public};
        use Permission::{ManageMembers, ManageOwnKeys};
        Routes::new()
            .route(routes!(list_members), Key(ManageMembers), "member.list")
            .route(routes!(set_role), Key(ManageMembers), "member.set_role")
            .route(routes!(remove_member), Key(ManageMembers), "member.remove")
            .route(
                routes!(list_invitations),
                Key(ManageMembers),
                "member.list_invitations",
            )
            .route(routes!(invite), Key(ManageMembers), "member.invite")
            .route(
                routes!(revoke_invitation),
                Key(ManageMembers),
                "member.revoke_invitation",
            )
            .route(routes!(accept), Public, "member.join")
            .route(routes!(list_keys), Key(ManageOwnKeys), "api_key.list")
            .route(routes!(issue_key), Key(ManageOwnKeys), "api_key.issue")
            .route(routes!(revoke_key), Key(ManageOwnKeys), "api_key.revoke")
    }

    fn start<'a>(&'a self, host: &'a Host) -> BoxFuture<'a, Result<Started, ModuleError>> {
        Box::pin(async move {
            let secret = KeySecret::load(&host.pool, host.auth.key_secret.as_deref())
                .await
                .map_err(|e| ModuleError(format!("loading the key secret: {e}")))?;
            // Only the identity events are read: however long the rest of the stream, this
            // takes as long as the organisation's history of members and keys.
            let directory = directory_store(host.commands.clone());
            directory
                .catch_up()
                .await
                .map_err(|e| ModuleError(format!("reading the identity events: {e}")))?;
            tokio::spawn(directory.clone().follow());
            let authenticator = DirectoryAuthenticator {
                secret: secret.clone(),
                directory: directory.clone(),
            };
            let mut started = Started::default().with_extension(AccessApi { secret, directory });
            started.authenticator = Some(Arc::new(authenticator));
            Ok(started)
        })
    }
}

/// The directory of the identity events on `bus`: appended to on the access subject, folded
/// from it and from the subjects an earlier layout kept them on.
pub fn directory_store(bus: kairos_bus::Bus) -> Arc<AggregateStore<Directory>> {
    let prefix = bus.config().subject_prefix.clone();
    let subject = |category: &str| format!("{prefix}.events.{category}._global");
    AggregateStore::with_legacy(
        bus,
        subject("access"),
        ["member", "role", "api_key"].map(subject).to_vec(),
    )
}

/// The [`kairos_api::Authenticator`] the API asks: keys checked against the directory, in
/// memory.
struct DirectoryAuthenticator {
    secret: KeySecret,
    directory: Arc<AggregateStore<Directory>>,
}

impl kairos_api::Authenticator for DirectoryAuthenticator {
    fn authenticate<'a>(
        &'a self,
        key: &'a str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> BoxFuture<'a, Result<kairos_api::Principal, kairos_api::Denied>> {
        Box::pin(async move {
            match self
                .directory
                .read(|d| d.authenticate(&self.secret, key, now))
            {
                // A key this process has not seen may have been issued a moment ago by another
                // (or by `kairos admin`): read what the access subject has beyond the directory,
                // then look again. Failed keys spend the caller's rate-limit bucket, so this
                // costs at most one direct get per refused guess.
                Err(kairos_api::Denied::Unknown) => match self.directory.catch_up().await {
                    Ok(_) => self
                        .directory
                        .read(|d| d.authenticate(&self.secret, key, now)),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not read the access subject");
                        Err(kairos_api::Denied::Unknown)
                    }
                },
                known => known,
            }
        })
    }

    fn authenticate_key_id<'a>(
        &'a self,
        key_id: &'a str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> BoxFuture<'a, Result<kairos_api::Principal, kairos_api::Denied>> {
        // A session's key was valid when it signed in, so this directory has seen it; a
        // revocation made by another process reaches it through the catch-up of the next
        // unknown key, as for keys presented directly.
        Box::pin(async move { self.directory.read(|d| d.principal(key_id, now)) })
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        use CommandError as C;
        match e {
            C::Invalid { field, message } => Self::BadRequest {
                code: "invalid_body",
                message,
                field: Some(field),
            },
            C::NotFound(m) => Self::NotFound(m),
            C::Conflict(m) => Self::Conflict(m),
            C::Gone(m) => Self::Gone(m),
            C::Stream(m) => Self::StreamUnavailable(m),
        }
    }
}

/// What the access handlers share: the key secret and the directory commands decide against.
#[derive(Clone)]
pub struct AccessApi {
    pub secret: KeySecret,
    pub directory: Arc<AggregateStore<Directory>>,
}

fn ctx<'a>(st: &'a AppState, api: &'a AccessApi) -> Ctx<'a> {
    Ctx {
        directory: &api.directory,
        secret: &api.secret,
        clock: &st.clock,
        max_keys: st.auth.max_keys_per_member as usize,
    }
}

/// A change, decided and stored, marked as recorded so the audit middleware does not add a
/// second entry (its event carries the actor).
fn answer(status: StatusCode, body: impl Serialize) -> Response {
    let mut r = (status, Json(body)).into_response();
    r.extensions_mut().insert(Recorded);
    r
}

#[derive(Serialize, utoipa::ToSchema)]
struct MembersAnswer {
    /// Active members first, then by join time.
    members: Vec<MemberView>,
    /// The next page's `cursor`; `null` on the last page.
    next_cursor: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct InvitationsAnswer {
    /// Newest first.
    invitations: Vec<InvitationView>,
    /// The next page's `cursor`; `null` on the last page.
    next_cursor: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct KeysAnswer {
    /// Newest first.
    api_keys: Vec<KeyView>,
    /// The next page's `cursor`; `null` on the last page.
    next_cursor: Option<String>,
}

/// `limit` (1 to 1000, 100 by default) and `cursor` (the previous page's `next_cursor`: the id
/// of its last row), as the page to read.
fn page_params<'a>(
    limit: Option<&str>,
    cursor: Option<&'a str>,
) -> Result<(usize, crate::Page<'a>), ApiError> {
    let limit = kairos_api::extract::limit_param(limit)?;
    if let Some(c) = cursor
        && uuid::Uuid::parse_str(c).is_err()
    {
        return Err(ApiError::bad(
            "invalid_query",
            "cursor",
            "cursor must be the previous page's next_cursor",
        ));
    }
    let page = crate::Page {
        limit: i64::try_from(limit).unwrap_or(i64::MAX),
        after: cursor,
    };
    Ok((limit, page))
}

/// The `next_cursor` of a page of `limit` asked for: the last row's id when the page is full.
fn next_cursor<T>(rows: &[T], limit: usize, id: impl Fn(&T) -> &str) -> Option<String> {
    (rows.len() == limit)
        .then(|| rows.last().map(|r| id(r).to_owned()))
        .flatten()
}

/// A role change, stored.
#[derive(Serialize, utoipa::ToSchema)]
struct RoleSet {
    member_id: String,
    role: String,
    /// The event's stream sequence, for `?min_seq=`.
    seq: u64,
}

/// A member removed.
#[derive(Serialize, utoipa::ToSchema)]
struct MemberRemoved {
    member_id: String,
    removed: bool,
    /// The event's stream sequence, for `?min_seq=`.
    seq: u64,
}

/// A key revoked: refused from the next request on.
#[derive(Serialize, utoipa::ToSchema)]
struct KeyRevoked {
    key_id: String,
    revoked: bool,
    /// The event's stream sequence, for `?min_seq=`.
    seq: u64,
}

/// A new invitation and where to accept it: the token is in this answer only.
#[derive(Serialize, utoipa::ToSchema)]
struct Invited {
    #[serde(flatten)]
    invitation: Invitation,
    /// The path that accepts it: `POST` with `{"token", "name"?}` (the token travels in the
    /// body, never in a URL that proxies log).
    accept: String,
}

#[derive(Debug, Deserialize)]
struct MembersQuery {
    include_removed: Option<bool>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// `GET /v1/members?include_removed=true&limit=&cursor=`
#[utoipa::path(get, path = "/v1/members", tag = "access",
    params(("include_removed" = Option<bool>, Query),
        ("limit" = Option<u32>, Query, description = "1 to 1000 (100)"),
        ("cursor" = Option<String>, Query, description = "The previous page's next_cursor"),
        ("min_seq" = Option<u64>, Query, description = "Wait until the access projection applied this stream sequence")),
    responses((status = 200, description = "Members", body = MembersAnswer), (status = 400, description = "The body or a parameter is malformed", body = ErrorBody), (status = 503, description = "Not applied within the wait, or a store is unavailable", body = ErrorBody)))]
async fn list_members(
    State(st): State<AppState>,
    QueryParams(q): QueryParams<MembersQuery>,
    read: ReadAt,
) -> Result<Json<MembersAnswer>, ApiError> {
    let (limit, page) = page_params(q.limit.as_deref(), q.cursor.as_deref())?;
    read.wait(&st, NAME).await?;
    let members = crate::members(&st.pool, q.include_removed.unwrap_or(false), page).await?;
    let next_cursor = next_cursor(&members, limit, |m| &m.member_id);
    Ok(Json(MembersAnswer {
        members,
        next_cursor,
    }))
}

/// An id from the path; what is not one is not echoed (it may be a key pasted by mistake).
fn id_param(raw: &str, what: &str) -> Result<String, ApiError> {
    uuid::Uuid::parse_str(raw)
        .map(|u| u.to_string())
        .map_err(|_| ApiError::NotFound(format!("no {what} with that id (ids are UUIDs)")))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RoleBody {
    role: String,
    projects: Option<Vec<String>>,
}

/// `PUT /v1/members/{id}/role` with `{"role", "projects"?}`
#[utoipa::path(put, path = "/v1/members/{id}/role", tag = "access",
    params(("id" = String, Path, description = "The member id")),
    request_body(content = RoleBody, content_type = "application/json"),
    responses((status = 200, description = "Stored", body = RoleSet), (status = 400, description = "The body or a parameter is malformed", body = ErrorBody),
        (status = 404, description = "No active member with that id", body = ErrorBody),
        (status = 409, description = "It would leave no admin, or other writers kept changing access", body = ErrorBody),
        (status = 415, description = "Not application/json", body = ErrorBody), (status = 503, description = "The stream is unavailable", body = ErrorBody)))]
async fn set_role(
    State(st): State<AppState>,
    Extension(access): Extension<AccessApi>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<RoleBody>,
) -> Result<Response, ApiError> {
    let id = id_param(&id, "member")?;
    let r = commands::set_role(
        ctx(&st, &access),
        &caller.origin(),
        &id,
        &b.role,
        b.projects,
    )
    .await?;
    Ok(answer(
        StatusCode::OK,
        RoleSet {
            member_id: id,
            role: b.role,
            seq: r.seq,
        },
    ))
}

#[derive(Debug, Deserialize)]
struct RemoveQuery {
    reason: Option<String>,
}

/// `DELETE /v1/members/{id}?reason=`
#[utoipa::path(delete, path = "/v1/members/{id}", tag = "access",
    params(("id" = String, Path, description = "The member id"), ("reason" = Option<String>, Query)),
    responses((status = 200, description = "Removed", body = MemberRemoved), (status = 400, description = "The body or a parameter is malformed", body = ErrorBody),
        (status = 404, description = "No active member with that id", body = ErrorBody),
        (status = 409, description = "It would leave no admin, or other writers kept changing access", body = ErrorBody), (status = 503, description = "The stream is unavailable", body = ErrorBody)))]
async fn remove_member(
    State(st): State<AppState>,
    Extension(access): Extension<AccessApi>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<RemoveQuery>,
) -> Result<Response, ApiError> {
    if q.reason.as_ref().is_some_and(|r| r.len() > 1000) {
        return Err(ApiError::bad(
            "invalid_query",
            "reason",
            "reason must be at most 1000 characters",
        ));
    }
    let id = id_param(&id, "member")?;
    let r = commands::remove(
        ctx(&st, &access),
        &caller.origin(),
        &id,
        q.reason.as_deref(),
    )
    .await?;
    Ok(answer(
        StatusCode::OK,
        MemberRemoved {
            member_id: id,
            removed: true,
            seq: r.seq,
        },
    ))
}

#[derive(Debug, Deserialize)]
struct InvitationsQuery {
    status: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// `GET /v1/invitations?status=open|all&limit=&cursor=` (never the tokens)
#[utoipa::path(get, path = "/v1/invitations", tag = "access",
    params(("status" = Option<String>, Query, description = "all (default), or open: neither accepted nor revoked"),
        ("limit" = Option<u32>, Query, description = "1 to 1000 (100)"),
        ("cursor" = Option<String>, Query, description = "The previous page's next_cursor"),
        ("min_seq" = Option<u64>, Query, description = "Wait until the access projection applied this stream sequence")),
    responses((status = 200, description = "Invitations, never their tokens", body = InvitationsAnswer), (status = 400, description = "The body or a parameter is malformed", body = ErrorBody), (status = 503, description = "Not applied within the wait, or a store is unavailable", body = ErrorBody)))]
async fn list_invitations(
    State(st): State<AppState>,
    QueryParams(q): QueryParams<InvitationsQuery>,
    read: ReadAt,
) -> Result<Json<InvitationsAnswer>, ApiError> {
    let open_only = match q.status.as_deref() {
        None | Some("all") => false,
        Some("open") => true,
        Some(_) => {
            return Err(ApiError::bad(
                "invalid_query",
                "status",
                "status must be all or open",
            ));
        }
    };
    let (limit, page) = page_params(q.limit.as_deref(), q.cursor.as_deref())?;
    read.wait(&st, NAME).await?;
    let invitations = crate::invitations(&st.pool, open_only, page).await?;
    let next_cursor = next_cursor(&invitations, limit, |i| &i.invitation_id);
    Ok(Json(InvitationsAnswer {
        invitations,
        next_cursor,
    }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct InviteBody {
    email: String,
    role: String,
    projects: Option<Vec<String>>,
    expires_in_seconds: Option<u32>,
}

/// `POST /v1/invitations` with `{"email", "role", "projects"?, "expires_in_seconds"?}`: the
/// token is in this answer only.
#[utoipa::path(post, path = "/v1/invitations", tag = "access",
    request_body(content = InviteBody, content_type = "application/json"),
    responses((status = 201, description = "The invitation; its token is in this answer only", body = Invited), (status = 400, description = "The body or a parameter is malformed", body = ErrorBody),
        (status = 409, description = "Already a member, or other writers kept changing access", body = ErrorBody),
        (status = 415, description = "Not application/json", body = ErrorBody), (status = 503, description = "The stream is unavailable", body = ErrorBody)))]
async fn invite(
    State(st): State<AppState>,
    Extension(access): Extension<AccessApi>,
    Extension(caller): Extension<Caller>,
    JsonBody(b): JsonBody<InviteBody>,
) -> Result<Response, ApiError> {
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
        ctx(&st, &access),
        &caller.origin(),
        &b.email,
        &b.role,
        b.projects,
        ttl,
    )
    .await?;
    let accept = "/v1/invitations/accept".to_owned();
    Ok(answer(
        StatusCode::CREATED,
        Invited {
            invitation: inv,
            accept,
        },
    ))
}

#[derive(Serialize, utoipa::ToSchema)]
struct InvitationRevoked {
    invitation_id: String,
    revoked: bool,
    /// The event's stream sequence, for `?min_seq=`.
    seq: u64,
}

/// `DELETE /v1/invitations/{id}`: revokes an open invitation; its token admits nobody from the
/// moment this answers.
#[utoipa::path(delete, path = "/v1/invitations/{id}", tag = "access",
    params(("id" = String, Path, description = "The invitation id")),
    responses((status = 200, description = "Revoked", body = InvitationRevoked), (status = 400, description = "The body or a parameter is malformed", body = ErrorBody),
        (status = 404, description = "No such invitation", body = ErrorBody),
        (status = 409, description = "Accepted or revoked already", body = ErrorBody), (status = 503, description = "The stream is unavailable", body = ErrorBody)))]
async fn revoke_invitation(
    State(st): State<AppState>,
    Extension(access): Extension<AccessApi>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = id_param(&id, "invitation")?;
    let r = commands::revoke_invitation(ctx(&st, &access), &caller.origin(), &id).await?;
    Ok(answer(
        StatusCode::OK,
        InvitationRevoked {
            invitation_id: id,
            revoked: true,
            seq: r.seq,
        },
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct AcceptBody {
    /// The invitation's token, from the invitation's answer.
    token: String,
    name: Option<String>,
}

/// `POST /v1/invitations/accept` with `{"token", "name"?}`: the new member's first key, shown
/// once. The token is in the body, so it stays out of the URLs proxies and servers log.
#[utoipa::path(post, path = "/v1/invitations/accept", tag = "access",
    request_body(content = AcceptBody, content_type = "application/json"),
    responses((status = 201, description = "The new member and their first key, shown once", body = commands::Joined), (status = 400, description = "The body or a parameter is malformed", body = ErrorBody),
        (status = 404, description = "Unknown token", body = ErrorBody),
        (status = 409, description = "Already a member", body = ErrorBody),
        (status = 410, description = "Accepted already, or expired", body = ErrorBody),
        (status = 415, description = "Not application/json", body = ErrorBody), (status = 503, description = "The stream is unavailable", body = ErrorBody)))]
async fn accept(
    State(st): State<AppState>,
    Extension(access): Extension<AccessApi>,
    Extension(caller): Extension<Caller>,
    JsonBody(b): JsonBody<AcceptBody>,
) -> Result<Response, ApiError> {
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
    let joined = commands::accept(ctx(&st, &access), &caller.origin(), &b.token, b.name).await?;
    Ok(answer(StatusCode::CREATED, joined))
}

#[derive(Debug, Deserialize)]
struct KeysQuery {
    member_id: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// `GET /v1/api-keys?member_id=&limit=&cursor=`: one's own keys; an admin may name another member, or ask for
/// `member_id=all`.
#[utoipa::path(get, path = "/v1/api-keys", tag = "access",
    params(("member_id" = Option<String>, Query, description = "Another member's (admins), or all"),
        ("limit" = Option<u32>, Query, description = "1 to 1000 (100)"),
        ("cursor" = Option<String>, Query, description = "The previous page's next_cursor"),
        ("min_seq" = Option<u64>, Query)),
    responses((status = 200, description = "Keys, never the keys themselves", body = KeysAnswer),
        (status = 404, description = "member_id is no member id", body = ErrorBody), (status = 400, description = "The body or a parameter is malformed", body = ErrorBody), (status = 503, description = "Not applied within the wait, or a store is unavailable", body = ErrorBody)))]
async fn list_keys(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    QueryParams(q): QueryParams<KeysQuery>,
    read: ReadAt,
) -> Result<Json<KeysAnswer>, ApiError> {
    read.wait(&st, NAME).await?;
    let p = caller.principal()?;
    let member = q.member_id.as_deref().unwrap_or(&p.member_id);
    if member != p.member_id && !p.can(Permission::ManageMembers) {
        return Err(ApiError::Forbidden(format!(
            "role {} may list only its own keys",
            p.role
        )));
    }
    let member = match member {
        "all" => None,
        m => Some(id_param(m, "member")?),
    };
    let (limit, page) = page_params(q.limit.as_deref(), q.cursor.as_deref())?;
    let keys = crate::keys(&st.pool, member.as_deref(), page).await?;
    let next_cursor = next_cursor(&keys, limit, |k| &k.key_id);
    Ok(Json(KeysAnswer {
        api_keys: keys,
        next_cursor,
    }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct IssueBody {
    name: String,
    member_id: Option<String>,
    expires_in_days: Option<u32>,
    /// The CloudEvent source prefixes the key may publish under (1 to 20); absent: any source.
    allowed_sources: Option<Vec<String>>,
}

/// `POST /v1/api-keys` with `{"name", "member_id"?, "expires_in_days"?, "allowed_sources"?}`:
/// the key, shown once.
#[utoipa::path(post, path = "/v1/api-keys", tag = "access",
    request_body(content = IssueBody, content_type = "application/json"),
    responses((status = 201, description = "The key, shown once", body = commands::Issued), (status = 400, description = "The body or a parameter is malformed", body = ErrorBody),
        (status = 404, description = "No active member with that id", body = ErrorBody),
        (status = 409, description = "Other writers kept changing access", body = ErrorBody),
        (status = 415, description = "Not application/json", body = ErrorBody), (status = 503, description = "The stream is unavailable", body = ErrorBody)))]
async fn issue_key(
    State(st): State<AppState>,
    Extension(access): Extension<AccessApi>,
    Extension(caller): Extension<Caller>,
    JsonBody(b): JsonBody<IssueBody>,
) -> Result<Response, ApiError> {
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
    let issued = commands::issue_key(
        ctx(&st, &access),
        &caller.origin(),
        &member,
        &b.name,
        expires,
        b.allowed_sources,
    )
    .await?;
    Ok(answer(StatusCode::CREATED, issued))
}

/// `DELETE /v1/api-keys/{id}`: one's own key, or (admin) anyone's. Refused from the next request.
#[utoipa::path(delete, path = "/v1/api-keys/{id}", tag = "access",
    params(("id" = String, Path, description = "The key id")),
    responses((status = 200, description = "Revoked", body = KeyRevoked), (status = 400, description = "The body or a parameter is malformed", body = ErrorBody),
        (status = 404, description = "No such key (or another member's, for a non-admin)", body = ErrorBody),
        (status = 409, description = "Revoked already", body = ErrorBody), (status = 503, description = "The stream is unavailable", body = ErrorBody)))]
async fn revoke_key(
    State(st): State<AppState>,
    Extension(access): Extension<AccessApi>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = id_param(&id, "API key")?;
    let p = caller.principal()?;
    let holder = commands::key_holder(ctx(&st, &access), &id)
        .ok_or_else(|| ApiError::NotFound(format!("no API key {id}")))?;
    if holder != p.member_id && !p.can(Permission::ManageMembers) {
        // Someone else's key is as good as unknown to a non-admin.
        return Err(ApiError::NotFound(format!("no API key {id}")));
    }
    let r = commands::revoke_key(ctx(&st, &access), &caller.origin(), &id).await?;
    Ok(answer(
        StatusCode::OK,
        KeyRevoked {
            key_id: id,
            revoked: true,
            seq: r.seq,
        },
    ))
}
