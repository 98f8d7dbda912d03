//! Roles, the permission matrix and who is calling: the one source the middleware enforces and
//! the docs print. Which members hold which roles is the access module's business; it plugs in
//! as the [`Authenticator`].

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// A member's role in the organisation (optionally narrowed to some projects).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Developer,
    Viewer,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Admin, Role::Developer, Role::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Developer => "developer",
            Self::Viewer => "viewer",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an endpoint needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// Append CloudEvents to the stream.
    PublishEvents,
    /// Read projections (budgets, projection status, metrics) and the stream.
    ReadProjections,
    /// Set budgets.
    ManageBudgets,
    /// Invite, remove and re-role members; issue and revoke anyone's keys.
    ManageMembers,
    /// Issue, list and revoke one's own API keys.
    ManageOwnKeys,
    /// Read and export the audit log.
    ReadAudit,
    /// Rebuild a projection from the stream.
    Replay,
    /// Ask the router for a model (`POST /v1/route`), which may reserve budget.
    Route,
    /// Change the model catalog at run time.
    ManageCatalog,
    /// Acknowledge anomaly alerts (which lifts a cost alert's lowered limit).
    ManageAlerts,
}

impl Permission {
    pub const ALL: [Permission; 10] = [
        Permission::PublishEvents,
        Permission::ReadProjections,
        Permission::ManageBudgets,
        Permission::ManageMembers,
        Permission::ManageOwnKeys,
        Permission::ReadAudit,
        Permission::Replay,
        Permission::Route,
        Permission::ManageCatalog,
        Permission::ManageAlerts,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PublishEvents => "publish_events",
            Self::ReadProjections => "read_projections",
            Self::ManageBudgets => "manage_budgets",
            Self::ManageMembers => "manage_members",
            Self::ManageOwnKeys => "manage_own_keys",
            Self::ReadAudit => "read_audit",
            Self::Replay => "replay",
            Self::Route => "route",
            Self::ManageCatalog => "manage_catalog",
            Self::ManageAlerts => "manage_alerts",
        }
    }
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The permission matrix.
pub fn allows(role: Role, permission: Permission) -> bool {
    use Permission::*;
    match role {
        Role::Admin => true,
        Role::Developer => matches!(
            permission,
            PublishEvents | ReadProjections | ManageBudgets | ManageOwnKeys | Route
        ),
        Role::Viewer => matches!(permission, ReadProjections | ManageOwnKeys),
    }
}

/// Who is calling: the member behind a valid key.
#[derive(Debug, Clone, Serialize)]
pub struct Principal {
    pub member_id: String,
    pub email: String,
    pub role: Role,
    /// `None`: every project.
    pub projects: Option<Vec<String>>,
    pub key_id: String,
    /// The CloudEvent source prefixes the key may publish under; `None`: any.
    pub allowed_sources: Option<Vec<String>>,
}

impl Principal {
    pub fn can(&self, permission: Permission) -> bool {
        allows(self.role, permission)
    }

    /// Whether the key may publish under `source`.
    pub fn may_publish_as(&self, source: &str) -> bool {
        self.allowed_sources
            .as_ref()
            .is_none_or(|prefixes| prefixes.iter().any(|p| source.starts_with(p.as_str())))
    }

    /// Whether the member's role reaches `project`.
    pub fn reaches(&self, project: &str) -> bool {
        self.projects
            .as_ref()
            .is_none_or(|ps| ps.iter().any(|p| p == project))
    }
}

/// Why a key was refused. The reasons go to the audit log; callers only learn "invalid key".
#[derive(Debug, thiserror::Error)]
pub enum Denied {
    #[error("unknown API key")]
    Unknown,
    #[error("API key {key_id} was revoked")]
    Revoked { key_id: String },
    #[error("API key {key_id} expired at {at}")]
    Expired { key_id: String, at: DateTime<Utc> },
    #[error("the member of API key {key_id} was removed")]
    MemberRemoved { key_id: String },
    #[error("key store: {0}")]
    Database(#[from] sqlx::Error),
}

/// Turns a bearer key into the member behind it. The access module provides the one Kairos
/// runs; the API only asks it.
pub trait Authenticator: Send + Sync + 'static {
    /// The member behind `key` at `now`, if it is a valid key of an active member.
    fn authenticate<'a>(
        &'a self,
        key: &'a str,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Principal, Denied>>;

    /// The member behind the key called `key_id` at `now`, if it is still a valid key of an
    /// active member: how a dashboard session, which keeps the key's id and never the key,
    /// is checked on every request.
    fn authenticate_key_id<'a>(
        &'a self,
        key_id: &'a str,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Principal, Denied>>;
}

/// Who asks for a change, and from where: recorded in the event, hence in the audit log.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// The acting member's e-mail, `cli:<user>`, or `bootstrap`.
    pub actor: String,
    pub actor_role: Option<Role>,
    pub ip: Option<String>,
    pub request_id: Option<String>,
    /// CloudEvent `source`: `kairos/api`, `kairos/cli`, …
    pub source: String,
}

impl Origin {
    /// Records who acted, in what role and from where in an event's `data` (`actor`,
    /// `actor_role`, `ip`, `request_id`), the fields the audit projection reads.
    pub fn stamp(&self, data: &mut Value) {
        data["actor"] = json!(self.actor);
        if let Some(r) = self.actor_role {
            data["actor_role"] = json!(r.as_str());
        }
        if let Some(ip) = &self.ip {
            data["ip"] = json!(ip);
        }
        if let Some(r) = &self.request_id {
            data["request_id"] = json!(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_by_what_they_may_do() {
        for p in Permission::ALL {
            assert!(allows(Role::Admin, p));
            // Whatever a viewer may do, a developer may do.
            if allows(Role::Viewer, p) {
                assert!(allows(Role::Developer, p), "{p}");
            }
        }
        assert!(!allows(Role::Developer, Permission::ManageMembers));
        assert!(!allows(Role::Viewer, Permission::PublishEvents));
        assert_eq!(Role::parse("viewer"), Some(Role::Viewer));
        assert_eq!(Role::parse("Viewer"), None);
    }
}
