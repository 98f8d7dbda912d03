//! The [`Directory`]: members, invitations and keys, folded in memory from the identity events
//! on the access subject. Access commands decide against it, and authentication reads it: a
//! request with a known key costs no database round trip, and a change this process made (a
//! revocation) holds from the moment its command answers. A serving process follows the subject
//! (`AggregateStore::follow`), so changes other processes make arrive within moments.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use kairos_api::{Denied, Principal, Role};
use kairos_runtime::{Aggregate, StoredEvent};

use crate::keys::KeySecret;
use crate::projection::{Change, NewKey};

/// A member as the directory knows them.
#[derive(Debug, Clone)]
pub struct Member {
    pub email: String,
    pub role: Role,
    pub projects: Option<Vec<String>>,
    pub active: bool,
}

/// An invitation, by the hash of its token.
#[derive(Debug, Clone)]
pub struct Invite {
    pub invitation_id: String,
    pub email: String,
    pub role: Role,
    pub projects: Option<Vec<String>>,
    pub expires_at: DateTime<Utc>,
    pub accepted: bool,
    pub revoked: bool,
}

/// An API key: its HMAC, never the key.
#[derive(Debug, Clone)]
pub struct Key {
    pub member_id: String,
    pub lookup: String,
    pub hash: Vec<u8>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked: bool,
    /// The source prefixes it may publish under; `None`: any.
    pub allowed_sources: Option<Vec<String>>,
}

/// Who may do what, as of the last identity event folded.
#[derive(Debug, Default)]
pub struct Directory {
    pub members: HashMap<String, Member>,
    pub invitations: HashMap<Vec<u8>, Invite>,
    pub keys: HashMap<String, Key>,
    by_lookup: HashMap<String, Vec<String>>,
    invitation_tokens: HashMap<String, Vec<u8>>,
}

impl Directory {
    /// The invitation with this id, if any.
    pub fn invitation(&self, invitation_id: &str) -> Option<&Invite> {
        self.invitation_tokens
            .get(invitation_id)
            .and_then(|t| self.invitations.get(t))
    }

    /// The active member with this e-mail (compared case-insensitively), if any.
    pub fn active_by_email(&self, email: &str) -> Option<(&String, &Member)> {
        self.members
            .iter()
            .find(|(_, m)| m.active && m.email.eq_ignore_ascii_case(email))
    }

    /// How many active admins there are.
    pub fn active_admins(&self) -> usize {
        self.members
            .values()
            .filter(|m| m.active && m.role == Role::Admin)
            .count()
    }

    /// Keys `member_id` holds that are not revoked.
    pub fn keys_held(&self, member_id: &str) -> usize {
        self.keys
            .values()
            .filter(|k| k.member_id == member_id && !k.revoked)
            .count()
    }

    /// The active member `member_id`.
    pub fn active_member(&self, member_id: &str) -> Option<&Member> {
        self.members.get(member_id).filter(|m| m.active)
    }

    /// The member behind `key` at `now`, if it is a valid key of an active member.
    pub fn authenticate(
        &self,
        secret: &KeySecret,
        key: &str,
        now: DateTime<Utc>,
    ) -> Result<Principal, Denied> {
        let lookup = secret.lookup(key);
        // A 64-bit prefix can collide; the HMAC decides, in constant time.
        let Some(key_id) = self
            .by_lookup
            .get(&lookup)
            .into_iter()
            .flatten()
            .find(|id| {
                self.keys
                    .get(*id)
                    .is_some_and(|k| secret.verify(key, &k.hash))
            })
        else {
            return Err(Denied::Unknown);
        };
        self.principal(key_id, now)
    }

    /// The member behind the key called `key_id` at `now`, if it is a valid key of an active
    /// member (a dashboard session names its key by id).
    pub fn principal(&self, key_id: &str, now: DateTime<Utc>) -> Result<Principal, Denied> {
        let Some(k) = self.keys.get(key_id) else {
            return Err(Denied::Unknown);
        };
        let key_id = key_id.to_owned();
        if k.revoked {
            return Err(Denied::Revoked { key_id });
        }
        if let Some(at) = k.expires_at
            && at <= now
        {
            return Err(Denied::Expired { key_id, at });
        }
        let Some(m) = self.active_member(&k.member_id) else {
            return Err(Denied::MemberRemoved { key_id });
        };
        Ok(Principal {
            member_id: k.member_id.clone(),
            email: m.email.clone(),
            role: m.role,
            projects: m.projects.clone(),
            key_id,
            allowed_sources: k.allowed_sources.clone(),
        })
    }

    /// A key issued to `member_id` (with a member's first key, or on its own).
    fn add_key(&mut self, member_id: String, key: NewKey, hash: Vec<u8>) {
        self.by_lookup
            .entry(key.lookup.clone())
            .or_default()
            .push(key.key_id.clone());
        self.keys.insert(
            key.key_id,
            Key {
                member_id,
                lookup: key.lookup,
                hash,
                expires_at: key.expires_at,
                revoked: false,
                allowed_sources: key.allowed_sources,
            },
        );
    }

    /// Applies one change, as the access projection does to its tables.
    pub fn apply(&mut self, change: Change) {
        let role = |r: &str| Role::parse(r).unwrap_or(Role::Viewer);
        match change {
            Change::Invited {
                invitation_id,
                email,
                role: r,
                projects,
                token_hash,
                expires_at,
            } => {
                self.invitation_tokens
                    .insert(invitation_id.clone(), token_hash.clone());
                self.invitations.insert(
                    token_hash,
                    Invite {
                        invitation_id,
                        email,
                        role: role(&r),
                        projects,
                        expires_at,
                        accepted: false,
                        revoked: false,
                    },
                );
            }
            Change::Joined {
                member_id,
                email,
                role: r,
                projects,
                invitation_id,
                key,
                key_hash,
                ..
            } => {
                if let Some(inv) = invitation_id
                    .and_then(|i| self.invitation_tokens.get(&i))
                    .and_then(|t| self.invitations.get_mut(t))
                {
                    // As the projection: a revoked invitation admits nobody.
                    if inv.revoked {
                        return;
                    }
                    inv.accepted = true;
                }
                self.members.insert(
                    member_id.clone(),
                    Member {
                        email,
                        role: role(&r),
                        projects,
                        active: true,
                    },
                );
                self.add_key(member_id, key, key_hash);
            }
            Change::InvitationRevoked { invitation_id } => {
                if let Some(inv) = self
                    .invitation_tokens
                    .get(&invitation_id)
                    .and_then(|t| self.invitations.get_mut(t))
                    .filter(|inv| !inv.accepted)
                {
                    inv.revoked = true;
                }
            }
            Change::Removed { member_id } => {
                if let Some(m) = self.members.get_mut(&member_id) {
                    m.active = false;
                }
            }
            Change::RoleAssigned {
                member_id,
                role: r,
                projects,
            } => {
                if let Some(m) = self.members.get_mut(&member_id) {
                    m.role = role(&r);
                    m.projects = projects;
                }
            }
            Change::KeyIssued {
                member_id,
                key,
                key_hash,
            } => self.add_key(member_id, key, key_hash),
            Change::KeyRevoked { key_id } => {
                if let Some(k) = self.keys.get_mut(&key_id) {
                    k.revoked = true;
                }
            }
        }
    }
}

impl Aggregate for Directory {
    fn fold(&mut self, event: &StoredEvent) {
        // An identity event the projection would dead-letter changes nothing here either.
        if let Ok(Some(change)) = Change::from_event(&event.event) {
            self.apply(change);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{generate_key, hex};

    fn joined(
        d: &mut Directory,
        secret: &KeySecret,
        member: &str,
        email: &str,
        role: &str,
    ) -> String {
        let key = generate_key();
        d.apply(Change::Joined {
            member_id: member.into(),
            email: email.into(),
            name: None,
            role: role.into(),
            projects: None,
            invitation_id: None,
            key: NewKey {
                key_id: format!("{member}-key"),
                name: "first key".into(),
                lookup: secret.lookup(&key),
                hash: hex(&secret.hash(&key)),
                expires_at: None,
                allowed_sources: None,
            },
            key_hash: secret.hash(&key).to_vec(),
        });
        key
    }

    #[test]
    fn the_hmac_not_the_lookup_prefix_decides_whose_key_it_is() {
        let secret = KeySecret::new(b"a secret of the test".to_vec());
        let now: DateTime<Utc> = "2026-11-20T12:00:00Z".parse().unwrap();
        let mut d = Directory::default();
        let sam = joined(&mut d, &secret, "m-sam", "sam@example.com", "developer");
        joined(&mut d, &secret, "m-admin", "admin@example.com", "admin");
        // A key of the admin's that shares sam's lookup prefix, with another hash.
        d.add_key(
            "m-admin".into(),
            NewKey {
                key_id: "collision".into(),
                name: "collision".into(),
                lookup: secret.lookup(&sam),
                hash: String::new(),
                expires_at: None,
                allowed_sources: None,
            },
            vec![7; 32],
        );
        let p = d.authenticate(&secret, &sam, now).unwrap();
        assert_eq!(
            (p.email.as_str(), p.role),
            ("sam@example.com", Role::Developer)
        );
        assert!(matches!(
            d.authenticate(&secret, "kairos_not-a-key", now),
            Err(Denied::Unknown)
        ));
    }

    #[test]
    fn revoked_expired_and_removed_are_refused_each_with_its_reason() {
        let secret = KeySecret::new(b"a secret of the test".to_vec());
        let now: DateTime<Utc> = "2026-11-20T12:00:00Z".parse().unwrap();
        let mut d = Directory::default();
        let a = joined(&mut d, &secret, "m-a", "a@example.com", "viewer");
        let b = joined(&mut d, &secret, "m-b", "b@example.com", "viewer");
        let c = joined(&mut d, &secret, "m-c", "c@example.com", "viewer");
        assert!(d.authenticate(&secret, &a, now).is_ok());
        d.apply(Change::KeyRevoked {
            key_id: "m-a-key".into(),
        });
        assert!(matches!(
            d.authenticate(&secret, &a, now),
            Err(Denied::Revoked { .. })
        ));
        d.keys.get_mut("m-b-key").unwrap().expires_at = Some(now);
        assert!(matches!(
            d.authenticate(&secret, &b, now),
            Err(Denied::Expired { .. })
        ));
        d.apply(Change::Removed {
            member_id: "m-c".into(),
        });
        assert!(matches!(
            d.authenticate(&secret, &c, now),
            Err(Denied::MemberRemoved { .. })
        ));
        assert_eq!(d.active_admins(), 0);
        assert!(
            d.active_by_email("C@EXAMPLE.COM").is_none(),
            "removed members are not active"
        );
        assert!(
            d.active_by_email("A@example.com").is_some(),
            "e-mails compare without case"
        );
    }
}
