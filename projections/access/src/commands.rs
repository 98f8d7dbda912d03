//! Changing who may do what. Each command is decided against the [`Directory`] — the fold of
//! every identity event, as of the last one on the access subject — and its event appended with
//! that subject's expected last sequence (`kairos_runtime::AggregateStore`): two admins cannot
//! both remove "the other last admin", an invitation cannot be accepted twice, and a command
//! waits neither for the access projection nor for the rest of the stream. The answer carries
//! the event's stream sequence; `?min_seq=` reads the projection's tables once they have it.

use chrono::{DateTime, Utc};
use kairos_api::Role;
use kairos_events::types::{
    API_KEY_ISSUED, API_KEY_REVOKED, INVITATION_REVOKED, MEMBER_INVITED, MEMBER_JOINED,
    MEMBER_REMOVED, ROLE_ASSIGNED,
};
use kairos_events::{Clock, Emit, Event, ProjectId};
use kairos_runtime::{AggregateStore, Decision};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::directory::{Directory, Member};
use crate::keys::{KeySecret, generate_key, generate_token, hex};

pub use kairos_api::Origin;

/// What a command needs.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    pub directory: &'a AggregateStore<Directory>,
    pub secret: &'a KeySecret,
    /// "Now": event times and expiries.
    pub clock: &'a Clock,
    /// Keys a member may hold at once (`auth.max_keys_per_member`).
    pub max_keys: usize,
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
    #[error("event stream: {0}")]
    Stream(String),
}

impl From<kairos_runtime::CommandError<CommandError>> for CommandError {
    fn from(e: kairos_runtime::CommandError<CommandError>) -> Self {
        match e {
            kairos_runtime::CommandError::Rejected(e) => e,
            e @ kairos_runtime::CommandError::Conflict { .. } => Self::Conflict(e.to_string()),
            kairos_runtime::CommandError::Bus(e) => Self::Stream(e.to_string()),
        }
    }
}

fn invalid(field: &str, message: impl Into<String>) -> CommandError {
    CommandError::Invalid {
        field: field.to_owned(),
        message: message.into(),
    }
}

/// Where a recorded change landed: read the access projection's tables with `?min_seq=` to
/// see it there.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct Recorded {
    /// The event's stream sequence: `?min_seq=` reads wait until it is applied.
    pub seq: u64,
}

/// A new invitation: `token` is shown once and never stored.
/// No `Debug`: it holds a secret.
#[derive(Clone, Serialize, utoipa::ToSchema)]
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
#[derive(Clone, Serialize, utoipa::ToSchema)]
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
#[derive(Clone, Serialize, utoipa::ToSchema)]
pub struct Issued {
    pub key_id: String,
    pub member_id: String,
    pub name: String,
    pub api_key: String,
    pub expires_at: Option<DateTime<Utc>>,
    /// The CloudEvent source prefixes the key may publish under; absent: any source.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_sources: Option<Vec<String>>,
    #[serde(flatten)]
    pub recorded: Recorded,
}

/// Most source prefixes one key may be bound to.
pub const MAX_ALLOWED_SOURCES: usize = 20;

/// Checks the source prefixes a key is to be bound to: 1 to 20 distinct prefixes of 1 to 200
/// characters without control characters, none of them Kairos' own `kairos/`.
pub fn allowed_sources(prefixes: Option<Vec<String>>) -> Result<Option<Vec<String>>, CommandError> {
    let Some(prefixes) = prefixes else {
        return Ok(None);
    };
    let field = "allowed_sources";
    if prefixes.is_empty() || prefixes.len() > MAX_ALLOWED_SOURCES {
        return Err(invalid(
            field,
            format!("allowed_sources must hold 1 to {MAX_ALLOWED_SOURCES} source prefixes"),
        ));
    }
    for (i, p) in prefixes.iter().enumerate() {
        let chars = p.chars().count();
        if chars == 0 || chars > 200 || p.chars().any(char::is_control) {
            return Err(invalid(
                field,
                format!(
                    "allowed_sources[{i}] must be 1 to 200 characters without control characters"
                ),
            ));
        }
        if p.starts_with(kairos_events::KAIROS_SOURCE) {
            return Err(invalid(
                field,
                format!("allowed_sources[{i}]: sources starting with kairos/ are Kairos's own"),
            ));
        }
        if prefixes[..i].contains(p) {
            return Err(invalid(
                field,
                format!("allowed_sources[{i}] is named twice"),
            ));
        }
    }
    Ok(Some(prefixes))
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

/// An identity event from `origin` (its fields added to `data`), timed by the clock.
/// An identity event from `origin` (its fields added to `data`), timed by the clock; its id is
/// derived from its content unless `id` names the fact (see `kairos_events::Emit`).
fn event(
    ctx: Ctx<'_>,
    origin: &Origin,
    id: Option<String>,
    ty: &'static str,
    mut data: Value,
) -> Result<Event, CommandError> {
    origin.stamp(&mut data);
    let emit = Emit::new(ty, origin.source.clone(), data).time(ctx.clock.now());
    match id {
        Some(id) => emit.id(id),
        None => emit,
    }
    .build()
    .map_err(|e| CommandError::Invalid {
        field: e
            .field
            .as_deref()
            .map_or("body".into(), |f| f.trim_start_matches("data.").to_owned()),
        message: e.message,
    })
}

/// The event in `slot`, built by `build` the first time: a decision run again after a conflict
/// appends the same event (the same id, so a retried append is a duplicate), not a new one.
fn once(
    slot: &mut Option<Event>,
    build: impl FnOnce() -> Result<Event, CommandError>,
) -> Result<Event, CommandError> {
    if let Some(e) = slot {
        return Ok(e.clone());
    }
    let e = build()?;
    *slot = Some(e.clone());
    Ok(e)
}

/// Runs `decide` against the directory and appends what it decides.
async fn execute<T>(
    ctx: Ctx<'_>,
    decide: impl FnMut(&Directory) -> Result<Decision<T>, CommandError>,
) -> Result<(T, Recorded), CommandError> {
    let done = ctx.directory.execute(decide).await?;
    let seq = done.seq.map_or(0, |s| s.0);
    Ok((done.value, Recorded { seq }))
}

fn already_member(email: &str) -> CommandError {
    CommandError::Conflict(format!("{email} is already a member"))
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
    let event = event(ctx, origin, None, MEMBER_INVITED, data)?;
    let ((), recorded) = execute(ctx, |d| {
        if d.active_by_email(email).is_some() {
            return Err(already_member(email));
        }
        Ok(Decision::append(event.clone(), ()))
    })
    .await?;
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

/// Accepts the invitation whose token is `token`: a new member with the invited role and a
/// first key. `origin.actor` is filled in with the invited address.
pub async fn accept(
    ctx: Ctx<'_>,
    origin: &Origin,
    token: &str,
    name: Option<String>,
) -> Result<Joined, CommandError> {
    let unknown = || CommandError::NotFound("unknown invitation token".into());
    if token.len() > 200 {
        return Err(unknown());
    }
    let hash = ctx.secret.hash(token);
    let api_key = generate_key();
    let (member_id, key_id) = (
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
    );
    let now = ctx.clock.now();
    let (joined, recorded) = execute(ctx, |d| {
        let Some(inv) = d.invitations.get(hash.as_slice()) else {
            return Err(unknown());
        };
        if inv.accepted {
            return Err(CommandError::Gone(
                "this invitation was already accepted".into(),
            ));
        }
        if inv.revoked {
            return Err(CommandError::Gone("this invitation was revoked".into()));
        }
        if inv.expires_at <= now {
            return Err(CommandError::Gone(format!(
                "this invitation expired at {}",
                inv.expires_at
            )));
        }
        if d.active_by_email(&inv.email).is_some() {
            return Err(already_member(&inv.email));
        }
        let (role, projects) = scope(inv.role.as_str(), inv.projects.clone())?;
        let origin = Origin {
            actor: inv.email.clone(),
            actor_role: Some(role),
            ..origin.clone()
        };
        let new = NewMember {
            email: &inv.email,
            role,
            projects,
            name: name.clone(),
            invitation_id: Some(inv.invitation_id.clone()),
            api_key: &api_key,
            member_id: &member_id,
            key_id: &key_id,
        };
        let (event, joined) = join_event(ctx, &origin, &new, None)?;
        Ok(Decision::append(event, joined))
    })
    .await?;
    Ok(Joined { recorded, ..joined })
}

/// A member about to join.
struct NewMember<'a> {
    email: &'a str,
    role: Role,
    projects: Option<Vec<String>>,
    name: Option<String>,
    invitation_id: Option<String>,
    api_key: &'a str,
    member_id: &'a str,
    key_id: &'a str,
}

/// The `member.joined` of `new`, with their first key.
fn join_event(
    ctx: Ctx<'_>,
    origin: &Origin,
    new: &NewMember<'_>,
    event_id: Option<String>,
) -> Result<(Event, Joined), CommandError> {
    let mut data = json!({
        "member_id": new.member_id, "email": new.email, "role": new.role.as_str(),
        "key": {"key_id": new.key_id, "name": "first key", "lookup": ctx.secret.lookup(new.api_key), "hash": hex(&ctx.secret.hash(new.api_key))},
    });
    if let Some(p) = &new.projects {
        data["projects"] = json!(p);
    }
    if let Some(n) = &new.name {
        data["name"] = json!(n);
    }
    if let Some(i) = &new.invitation_id {
        data["invitation_id"] = json!(i);
    }
    let event = event(ctx, origin, event_id, MEMBER_JOINED, data)?;
    let joined = Joined {
        member_id: new.member_id.to_owned(),
        email: new.email.to_owned(),
        role: new.role,
        projects: new.projects.clone(),
        key_id: new.key_id.to_owned(),
        api_key: new.api_key.to_owned(),
        recorded: Recorded { seq: 0 },
    };
    Ok((event, joined))
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
    let api_key = generate_key();
    let (member_id, key_id) = (
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
    );
    let new = NewMember {
        email,
        role,
        projects,
        name,
        invitation_id: None,
        api_key: &api_key,
        member_id: &member_id,
        key_id: &key_id,
    };
    let (event, joined) = join_event(ctx, origin, &new, None)?;
    let (joined, recorded) = execute(ctx, |d| {
        if d.active_by_email(email).is_some() {
            return Err(already_member(email));
        }
        Ok(Decision::append(event.clone(), joined.clone()))
    })
    .await?;
    Ok(Joined { recorded, ..joined })
}

/// First start: when no admin exists, `key` becomes the key of a first admin (`email`). Ids are
/// derived from the key, so instances starting together record it once. `None` if an admin exists.
pub async fn bootstrap(
    ctx: Ctx<'_>,
    key: &str,
    email: &str,
) -> Result<Option<Joined>, CommandError> {
    let derive = |domain: &str| bootstrap_id(ctx, key, domain);
    let member_id = derive("member");
    let key_id = derive("key");
    let event_id = format!("bootstrap-{}", derive("event"));
    let origin = Origin {
        actor: "bootstrap".into(),
        source: "kairos/bootstrap".into(),
        ..Origin::default()
    };
    let new = NewMember {
        email,
        role: Role::Admin,
        projects: None,
        name: Some("bootstrap admin".into()),
        invitation_id: None,
        api_key: key,
        member_id: &member_id,
        key_id: &key_id,
    };
    let (event, joined) = join_event(ctx, &origin, &new, Some(event_id))?;
    let (joined, recorded) = execute(ctx, |d| {
        Ok(if d.active_admins() > 0 {
            Decision::nothing(None)
        } else {
            Decision::append(event.clone(), Some(joined.clone()))
        })
    })
    .await?;
    Ok(joined.map(|j| Joined { recorded, ..j }))
}

/// An id derived from the bootstrap key (`domain`: `member`, `key`, `event`).
fn bootstrap_id(ctx: Ctx<'_>, key: &str, domain: &str) -> String {
    let d = Sha256::digest([domain.as_bytes(), &ctx.secret.hash(key)].concat());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    uuid::Builder::from_random_bytes(b).into_uuid().to_string()
}

/// Whether the bootstrap key `key` is the key of a bootstrap admin recorded earlier (false when
/// an admin exists that it did not make: the key is then ignored, and refused).
pub fn bootstrap_key_known(ctx: Ctx<'_>, key: &str) -> bool {
    key_holder(ctx, &bootstrap_id(ctx, key, "key")).is_some()
}

fn active<'d>(d: &'d Directory, member_id: &str) -> Result<&'d Member, CommandError> {
    d.active_member(member_id)
        .ok_or_else(|| CommandError::NotFound(format!("no active member {member_id}")))
}

/// Refuses a change that would leave no active admin.
fn keep_an_admin(d: &Directory, member: &Member) -> Result<(), CommandError> {
    if member.role == Role::Admin && d.active_admins() <= 1 {
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
    let mut data = json!({"member_id": member_id, "role": role.as_str()});
    if let Some(p) = &projects {
        data["projects"] = json!(p);
    }
    let event = event(ctx, origin, None, ROLE_ASSIGNED, data)?;
    let ((), recorded) = execute(ctx, |d| {
        let member = active(d, member_id)?;
        if role != Role::Admin {
            keep_an_admin(d, member)?;
        }
        Ok(Decision::append(event.clone(), ()))
    })
    .await?;
    Ok(recorded)
}

/// Removes `member_id`; their keys stop working.
pub async fn remove(
    ctx: Ctx<'_>,
    origin: &Origin,
    member_id: &str,
    reason: Option<&str>,
) -> Result<Recorded, CommandError> {
    let mut data = json!({"member_id": member_id});
    if let Some(r) = reason {
        data["reason"] = json!(r);
    }
    let event = event(ctx, origin, None, MEMBER_REMOVED, data)?;
    let ((), recorded) = execute(ctx, |d| {
        keep_an_admin(d, active(d, member_id)?)?;
        Ok(Decision::append(event.clone(), ()))
    })
    .await?;
    Ok(recorded)
}

/// Issues a new key for `member_id`.
pub async fn issue_key(
    ctx: Ctx<'_>,
    origin: &Origin,
    member_id: &str,
    name: &str,
    expires_in: Option<chrono::Duration>,
    allowed: Option<Vec<String>>,
) -> Result<Issued, CommandError> {
    if name.is_empty() || name.chars().count() > 100 {
        return Err(invalid("name", "name must be 1 to 100 characters"));
    }
    let allowed = allowed_sources(allowed)?;
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
    if let Some(prefixes) = &allowed {
        data["allowed_sources"] = json!(prefixes);
    }
    let event = event(ctx, origin, None, API_KEY_ISSUED, data)?;
    let ((), recorded) = execute(ctx, |d| {
        active(d, member_id)?;
        let held = d.keys_held(member_id);
        if held >= ctx.max_keys {
            return Err(CommandError::Conflict(format!(
                "member {member_id} holds {held} keys, the most allowed \
                 (auth.max_keys_per_member): revoke one first"
            )));
        }
        Ok(Decision::append(event.clone(), ()))
    })
    .await?;
    Ok(Issued {
        key_id,
        member_id: member_id.to_owned(),
        name: name.to_owned(),
        api_key,
        expires_at,
        allowed_sources: allowed,
        recorded,
    })
}

/// The member holding key `key_id`, if the key exists.
pub fn key_holder(ctx: Ctx<'_>, key_id: &str) -> Option<String> {
    ctx.directory
        .read(|d| d.keys.get(key_id).map(|k| k.member_id.clone()))
}

/// Revokes `key_id`: refused from the moment this answers, in this process (its directory
/// folds the revocation before the command returns).
pub async fn revoke_key(
    ctx: Ctx<'_>,
    origin: &Origin,
    key_id: &str,
) -> Result<Recorded, CommandError> {
    let mut event_for = None;
    let ((), recorded) = execute(ctx, |d| {
        let Some(key) = d.keys.get(key_id) else {
            return Err(CommandError::NotFound(format!("no API key {key_id}")));
        };
        if key.revoked {
            return Err(CommandError::Conflict(format!(
                "API key {key_id} is already revoked"
            )));
        }
        let e = once(&mut event_for, || {
            let data = json!({"key_id": key_id, "member_id": key.member_id});
            event(ctx, origin, None, API_KEY_REVOKED, data)
        })?;
        Ok(Decision::append(e, ()))
    })
    .await?;
    Ok(recorded)
}

/// Revokes the open invitation `invitation_id`: its token admits nobody from the moment this
/// answers, in this process (its directory folds the revocation before the command returns).
/// One already accepted (remove the member instead) or already revoked is refused.
pub async fn revoke_invitation(
    ctx: Ctx<'_>,
    origin: &Origin,
    invitation_id: &str,
) -> Result<Recorded, CommandError> {
    let mut event_for = None;
    let ((), recorded) = execute(ctx, |d| {
        let Some(inv) = d.invitation(invitation_id) else {
            return Err(CommandError::NotFound(format!(
                "no invitation {invitation_id}"
            )));
        };
        if inv.accepted {
            return Err(CommandError::Conflict(format!(
                "invitation {invitation_id} was accepted already: remove the member instead"
            )));
        }
        if inv.revoked {
            return Err(CommandError::Conflict(format!(
                "invitation {invitation_id} is already revoked"
            )));
        }
        let e = once(&mut event_for, || {
            let data = json!({"invitation_id": invitation_id});
            event(ctx, origin, None, INVITATION_REVOKED, data)
        })?;
        Ok(Decision::append(e, ()))
    })
    .await?;
    Ok(recorded)
}
