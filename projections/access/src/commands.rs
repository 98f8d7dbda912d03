//! Changing who may do what: each command checks the current state, publishes its event, and
//! waits (bounded) until the access projection applied it, so the caller's next request sees it.
//!
//! Commands run one at a time across every Kairos instance (a PostgreSQL advisory lock held from
//! the check to the apply), so two admins cannot both remove "the other last admin", and an
//! invitation cannot be accepted twice.

use std::time::Duration;

use chrono::{DateTime, Utc};
use kairos_bus::Bus;
use kairos_events::types::{
    API_KEY_ISSUED, API_KEY_REVOKED, MEMBER_INVITED, MEMBER_JOINED, MEMBER_REMOVED, ROLE_ASSIGNED,
};
use kairos_events::{Clock, Event, ProjectId};
use kairos_runtime::{CheckpointWatch, WaitError};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgExecutor, PgPool, Postgres, Transaction};

use crate::keys::{KeySecret, generate_key, generate_token, hex};
use crate::views::{self, KeyView, MemberView};
use kairos_api::Role;

/// Serialises every access command across instances.
const LOCK: i64 = 0x6b61_6972_6f73_6163; // "kairosac"

pub use kairos_api::Origin;

/// What a command needs.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    pub bus: &'a Bus,
    pub pool: &'a PgPool,
    pub secret: &'a KeySecret,
    pub watch: &'a CheckpointWatch,
    /// How long to wait for the projection to apply a change.
    pub wait: Duration,
    /// "Now": event times and expiries.
    pub clock: &'a Clock,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{message}")]
    Invalid { field: String, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// An invitation that was used or expired.
    #[error("{0}")]
    Gone(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("event stream: {0}")]
    Stream(String),
    /// The access projection is behind the stream: checking now could miss a recent change.
    #[error("{0}")]
    Behind(String),
}

fn invalid(field: &str, message: impl Into<String>) -> CommandError {
    CommandError::Invalid {
        field: field.to_owned(),
        message: message.into(),
    }
}

/// Where a recorded change landed.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Recorded {
    pub seq: u64,
    /// Whether the access projection applied it within the wait (it will, once it runs).
    pub applied: bool,
}

/// A new invitation: `token` is shown once and never stored.
/// No `Debug`: it holds a secret.
#[derive(Clone, Serialize)]
pub struct Invitation {
    pub invitation_id: String,
    pub token: String,
    pub email: String,
    pub role: Role,
    pub projects: Option<Vec<String>>,
    pub expires_at: DateTime<Utc>,
    #[serde(flatten)]
    pub recorded: Recorded,
}

/// A new member with their first key (shown once).
/// No `Debug`: it holds a secret.
#[derive(Clone, Serialize)]
pub struct Joined {
    pub member_id: String,
    pub email: String,
    pub role: Role,
    pub projects: Option<Vec<String>>,
    pub key_id: String,
    pub api_key: String,
    #[serde(flatten)]
    pub recorded: Recorded,
}

/// A new API key (shown once).
/// No `Debug`: it holds a secret.
#[derive(Clone, Serialize)]
pub struct Issued {
    pub key_id: String,
    pub member_id: String,
    pub name: String,
    pub api_key: String,
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(flatten)]
    pub recorded: Recorded,
}

/// A role and the projects it is narrowed to, checked.
pub fn scope(
    role: &str,
    projects: Option<Vec<String>>,
) -> Result<(Role, Option<Vec<String>>), CommandError> {
    let role = Role::parse(role)
        .ok_or_else(|| invalid("role", "role must be admin, developer or viewer"))?;
    let Some(mut projects) = projects else {
        return Ok((role, None));
    };
    if role == Role::Admin {
        return Err(invalid(
            "projects",
            "an admin's role applies to every project; omit projects",
        ));
    }
    if projects.is_empty() || projects.len() > 100 {
        return Err(invalid(
            "projects",
            "projects must list 1 to 100 projects (omit it for every project)",
        ));
    }
    for p in &projects {
        ProjectId::parse(p).map_err(|e| invalid("projects", format!("{p:?}: {}", e.message)))?;
    }
    projects.sort();
    projects.dedup();
    Ok((role, Some(projects)))
}

/// The access lock, held from a command's checks until its change is applied; the projection
/// has caught up with the stream when it is taken, so the checks see every earlier change.
struct Locked(Transaction<'static, Postgres>);

impl Locked {
    /// The locked connection: checks read through it, so a command holds one connection.
    fn db(&mut self) -> &mut PgConnection {
        &mut self.0
    }

    /// Releases the lock. The change is on the stream by now: a failure here loses nothing.
    async fn done(self) {
        if let Err(e) = self.0.commit().await {
            tracing::warn!(error = %e, "releasing the access lock failed; PostgreSQL releases it with the connection");
        }
    }
}

async fn lock(ctx: Ctx<'_>) -> Result<Locked, CommandError> {
    let mut tx = ctx.pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(LOCK)
        .execute(&mut *tx)
        .await?;
    let last = ctx
        .bus
        .last_seq()
        .await
        .map_err(|e| CommandError::Stream(e.to_string()))?;
    match ctx.watch.wait_for(crate::NAME, last.0, ctx.wait).await {
        Ok(_) => Ok(Locked(tx)),
        Err(WaitError::Database(e)) => Err(e.into()),
        Err(e) => Err(CommandError::Behind(format!(
            "the access projection is behind the stream ({e}); try again shortly"
        ))),
    }
}

/// Publishes one identity event (origin fields added to `data`) and waits for its apply.
async fn record(
    ctx: Ctx<'_>,
    origin: &Origin,
    id: String,
    ty: &str,
    mut data: Value,
) -> Result<Recorded, CommandError> {
    origin.stamp(&mut data);
    let event = Event::from_value(json!({
        "specversion": "1.0", "id": id, "source": origin.source, "type": ty,
        "time": ctx.clock.now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "datacontenttype": "application/json", "data": data,
    }))
    .map_err(|e| CommandError::Invalid {
        field: e
            .field
            .as_deref()
            .map_or("body".into(), |f| f.trim_start_matches("data.").to_owned()),
        message: e.message,
    })?;
    let receipt = ctx
        .bus
        .publish_event(&event)
        .await
        .map_err(|e| CommandError::Stream(e.to_string()))?;
    let applied = match ctx
        .watch
        .wait_for(crate::NAME, receipt.seq.0, ctx.wait)
        .await
    {
        Ok(_) => true,
        // Published: the change happened, whatever fails now (and the caller must still get the
        // key or token it created).
        Err(e) => {
            tracing::warn!(seq = receipt.seq.0, error = %e, "access change recorded but not yet applied");
            false
        }
    };
    Ok(Recorded {
        seq: receipt.seq.0,
        applied,
    })
}

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

async fn email_taken(db: impl PgExecutor<'_>, email: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM access.members WHERE status = 'active' AND lower(email) = lower($1))")
        .bind(email)
        .fetch_one(db)
        .await
}

fn check_email(email: &str) -> Result<(), CommandError> {
    let ok = (3..=200).contains(&email.len())
        && email
            .split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty())
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "email",
            "email must be an address like dev@example.com (at most 200 characters)",
        ))
    }
}

/// Invites `email` as `role` (narrowed to `projects`); the token expires after `ttl`.
pub async fn invite(
    ctx: Ctx<'_>,
    origin: &Origin,
    email: &str,
    role: &str,
    projects: Option<Vec<String>>,
    ttl: chrono::Duration,
) -> Result<Invitation, CommandError> {
    check_email(email)?;
    let (role, projects) = scope(role, projects)?;
    let mut tx = lock(ctx).await?;
    if email_taken(tx.db(), email).await? {
        return Err(CommandError::Conflict(format!(
            "{email} is already a member"
        )));
    }
    let token = generate_token();
    let invitation_id = uuid::Uuid::new_v4().to_string();
    let expires_at = ctx.clock.now() + ttl;
    let mut data = json!({
        "invitation_id": invitation_id, "email": email, "role": role.as_str(),
        "token_hash": hex(&ctx.secret.hash(&token)),
        "expires_at": expires_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    });
    if let Some(p) = &projects {
        data["projects"] = json!(p);
    }
    let recorded = record(ctx, origin, new_id(), MEMBER_INVITED, data).await?;
    tx.done().await;
    Ok(Invitation {
        invitation_id,
        token,
        email: email.to_owned(),
        role,
        projects,
        expires_at,
        recorded,
    })
}

#[derive(sqlx::FromRow)]
struct Pending {
    invitation_id: String,
    email: String,
    role: String,
    projects: Option<Vec<String>>,
    expires_at: DateTime<Utc>,
    accepted_at: Option<DateTime<Utc>>,
}

async fn pending(db: impl PgExecutor<'_>, hash: &[u8]) -> Result<Option<Pending>, sqlx::Error> {
    sqlx::query_as(
        "SELECT invitation_id, email, role, projects, expires_at, accepted_at
           FROM access.invitations WHERE token_hash = $1",
    )
    .bind(hash)
    .fetch_optional(db)
    .await
}

/// Accepts the invitation whose token is `token`: a new member with the invited role and a
/// first key. `origin.actor` is filled in with the invited address.
pub async fn accept(
    ctx: Ctx<'_>,
    origin: &Origin,
    token: &str,
    name: Option<String>,
) -> Result<Joined, CommandError> {
    if token.len() > 200 {
        return Err(CommandError::NotFound("unknown invitation token".into()));
    }
    let hash = ctx.secret.hash(token);
    // Unknown tokens are refused before the lock: nobody without a token queues on it.
    if pending(ctx.pool, &hash).await?.is_none() {
        return Err(CommandError::NotFound("unknown invitation token".into()));
    }
    let mut tx = lock(ctx).await?;
    let Some(inv) = pending(tx.db(), &hash).await? else {
        return Err(CommandError::NotFound("unknown invitation token".into()));
    };
    if inv.accepted_at.is_some() {
        return Err(CommandError::Gone(
            "this invitation was already accepted".into(),
        ));
    }
    if inv.expires_at <= ctx.clock.now() {
        return Err(CommandError::Gone(format!(
            "this invitation expired at {}",
            inv.expires_at
        )));
    }
    let (invitation_id, email, role, projects) =
        (inv.invitation_id, inv.email, inv.role, inv.projects);
    if email_taken(tx.db(), &email).await? {
        return Err(CommandError::Conflict(format!(
            "{email} is already a member"
        )));
    }
    let (role, projects) = scope(&role, projects)?;
    let origin = Origin {
        actor: email.clone(),
        actor_role: Some(role),
        ..origin.clone()
    };
    let joined = join(
        ctx,
        &origin,
        &email,
        role,
        projects,
        name,
        Some(invitation_id),
        None,
    )
    .await?;
    tx.done().await;
    Ok(joined)
}

/// Publishes a `member.joined` with a first key (`key`, or a new one).
#[allow(clippy::too_many_arguments)]
async fn join(
    ctx: Ctx<'_>,
    origin: &Origin,
    email: &str,
    role: Role,
    projects: Option<Vec<String>>,
    name: Option<String>,
    invitation_id: Option<String>,
    fixed: Option<(&str, String, String, String)>,
) -> Result<Joined, CommandError> {
    let (api_key, member_id, key_id, event_id) = match fixed {
        Some((key, member, key_id, event)) => (key.to_owned(), member, key_id, event),
        None => (
            generate_key(),
            uuid::Uuid::new_v4().to_string(),
            uuid::Uuid::new_v4().to_string(),
            new_id(),
        ),
    };
    let mut data = json!({
        "member_id": member_id, "email": email, "role": role.as_str(),
        "key": {"key_id": key_id, "name": "first key", "lookup": ctx.secret.lookup(&api_key), "hash": hex(&ctx.secret.hash(&api_key))},
    });
    if let Some(p) = &projects {
        data["projects"] = json!(p);
    }
    if let Some(n) = &name {
        data["name"] = json!(n);
    }
    if let Some(i) = &invitation_id {
        data["invitation_id"] = json!(i);
    }
    let recorded = record(ctx, origin, event_id, MEMBER_JOINED, data).await?;
    Ok(Joined {
        member_id,
        email: email.to_owned(),
        role,
        projects,
        key_id,
        api_key,
        recorded,
    })
}

/// Adds a member directly, without an invitation (operators, through `kairos admin`).
pub async fn add_member(
    ctx: Ctx<'_>,
    origin: &Origin,
    email: &str,
    role: &str,
    projects: Option<Vec<String>>,
    name: Option<String>,
) -> Result<Joined, CommandError> {
    check_email(email)?;
    let (role, projects) = scope(role, projects)?;
    let mut tx = lock(ctx).await?;
    if email_taken(tx.db(), email).await? {
        return Err(CommandError::Conflict(format!(
            "{email} is already a member"
        )));
    }
    let joined = join(ctx, origin, email, role, projects, name, None, None).await?;
    tx.done().await;
    Ok(joined)
}

/// First start: when no admin exists, `key` becomes the key of a first admin (`email`). Ids are
/// derived from the key, so instances starting together record it once. `None` if an admin exists.
pub async fn bootstrap(
    ctx: Ctx<'_>,
    key: &str,
    email: &str,
) -> Result<Option<Joined>, CommandError> {
    let mut tx = lock(ctx).await?;
    if views::active_admins(tx.db()).await? > 0 {
        return Ok(None);
    }
    let derive = |domain: &str| {
        let d = Sha256::digest([domain.as_bytes(), &ctx.secret.hash(key)].concat());
        let mut b = [0u8; 16];
        b.copy_from_slice(&d[..16]);
        uuid::Builder::from_random_bytes(b).into_uuid().to_string()
    };
    let member_id = derive("member");
    let key_id = derive("key");
    let event_id = format!("bootstrap-{}", derive("event"));
    let origin = Origin {
        actor: "bootstrap".into(),
        source: "kairos/bootstrap".into(),
        ..Origin::default()
    };
    let joined = join(
        ctx,
        &origin,
        email,
        Role::Admin,
        None,
        Some("bootstrap admin".into()),
        None,
        Some((key, member_id, key_id, event_id)),
    )
    .await?;
    tx.done().await;
    Ok(Some(joined))
}

async fn active_member(db: &mut PgConnection, member_id: &str) -> Result<MemberView, CommandError> {
    match views::member(db, member_id).await? {
        Some(m) if m.status == "active" => Ok(m),
        _ => Err(CommandError::NotFound(format!(
            "no active member {member_id}"
        ))),
    }
}

/// Refuses a change that would leave no active admin.
async fn keep_an_admin(db: &mut PgConnection, member: &MemberView) -> Result<(), CommandError> {
    if member.role == "admin" && views::active_admins(db).await? <= 1 {
        return Err(CommandError::Conflict(format!(
            "{} is the last admin; make someone else admin first",
            member.email
        )));
    }
    Ok(())
}

/// Gives `member_id` the role `role` (narrowed to `projects`).
pub async fn set_role(
    ctx: Ctx<'_>,
    origin: &Origin,
    member_id: &str,
    role: &str,
    projects: Option<Vec<String>>,
) -> Result<Recorded, CommandError> {
    let (role, projects) = scope(role, projects)?;
    let mut tx = lock(ctx).await?;
    let member = active_member(tx.db(), member_id).await?;
    if role != Role::Admin {
        keep_an_admin(tx.db(), &member).await?;
    }
    let mut data = json!({"member_id": member_id, "role": role.as_str()});
    if let Some(p) = &projects {
        data["projects"] = json!(p);
    }
    let recorded = record(ctx, origin, new_id(), ROLE_ASSIGNED, data).await?;
    tx.done().await;
    Ok(recorded)
}

/// Removes `member_id`; their keys stop working.
pub async fn remove(
    ctx: Ctx<'_>,
    origin: &Origin,
    member_id: &str,
    reason: Option<&str>,
) -> Result<Recorded, CommandError> {
    let mut tx = lock(ctx).await?;
    let member = active_member(tx.db(), member_id).await?;
    keep_an_admin(tx.db(), &member).await?;
    let mut data = json!({"member_id": member_id});
    if let Some(r) = reason {
        data["reason"] = json!(r);
    }
    let recorded = record(ctx, origin, new_id(), MEMBER_REMOVED, data).await?;
    tx.done().await;
    Ok(recorded)
}

/// Issues a new key for `member_id`.
pub async fn issue_key(
    ctx: Ctx<'_>,
    origin: &Origin,
    member_id: &str,
    name: &str,
    expires_in: Option<chrono::Duration>,
) -> Result<Issued, CommandError> {
    if name.is_empty() || name.chars().count() > 100 {
        return Err(invalid("name", "name must be 1 to 100 characters"));
    }
    let mut tx = lock(ctx).await?;
    active_member(tx.db(), member_id).await?;
    let api_key = generate_key();
    let key_id = uuid::Uuid::new_v4().to_string();
    let expires_at = expires_in.map(|d| ctx.clock.now() + d);
    let mut data = json!({
        "key_id": key_id, "member_id": member_id, "name": name,
        "lookup": ctx.secret.lookup(&api_key), "hash": hex(&ctx.secret.hash(&api_key)),
    });
    if let Some(at) = expires_at {
        data["expires_at"] = json!(at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
    }
    let recorded = record(ctx, origin, new_id(), API_KEY_ISSUED, data).await?;
    tx.done().await;
    Ok(Issued {
        key_id,
        member_id: member_id.to_owned(),
        name: name.to_owned(),
        api_key,
        expires_at,
        recorded,
    })
}

/// The key `key_id`, if it exists.
pub async fn key(pool: &PgPool, key_id: &str) -> Result<Option<KeyView>, CommandError> {
    Ok(views::key(pool, key_id).await?)
}

/// Revokes `key_id`: refused from the next request on.
pub async fn revoke_key(
    ctx: Ctx<'_>,
    origin: &Origin,
    key_id: &str,
) -> Result<Recorded, CommandError> {
    let mut tx = lock(ctx).await?;
    let Some(key) = views::key(tx.db(), key_id).await? else {
        return Err(CommandError::NotFound(format!("no API key {key_id}")));
    };
    if key.revoked_at.is_some() {
        return Err(CommandError::Conflict(format!(
            "API key {key_id} is already revoked"
        )));
    }
    let data = json!({"key_id": key_id, "member_id": key.member_id});
    let recorded = record(ctx, origin, new_id(), API_KEY_REVOKED, data).await?;
    tx.done().await;
    Ok(recorded)
}
