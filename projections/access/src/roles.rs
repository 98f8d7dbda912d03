//! Roles and the permission matrix: the one source the middleware enforces and the docs print.

use serde::{Deserialize, Serialize};

/// A member's role in the organisation (optionally narrowed to some projects).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
}

impl Permission {
    pub const ALL: [Permission; 7] = [
        Permission::PublishEvents,
        Permission::ReadProjections,
        Permission::ManageBudgets,
        Permission::ManageMembers,
        Permission::ManageOwnKeys,
        Permission::ReadAudit,
        Permission::Replay,
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
            PublishEvents | ReadProjections | ManageBudgets | ManageOwnKeys
        ),
        Role::Viewer => matches!(permission, ReadProjections | ManageOwnKeys),
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
