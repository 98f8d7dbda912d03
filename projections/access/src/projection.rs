//! The access projection: folds identity events into `members`, `invitations`, `api_keys`.

use chrono::{DateTime, Utc};
use kairos_events::Event;
use kairos_events::types::{
    API_KEY_ISSUED, API_KEY_REVOKED, INVITATION_REVOKED, MEMBER_INVITED, MEMBER_JOINED,
    MEMBER_REMOVED, ROLE_ASSIGNED,
};
use kairos_runtime::{ApplyError, Projection, Rejection, StoredEvent};
use serde::Deserialize;
use sqlx::PgConnection;

use crate::keys::unhex;

#[derive(Debug, Clone, Deserialize)]
pub struct NewKey {
    pub key_id: String,
    pub name: String,
    pub lookup: String,
    pub hash: String,
    pub expires_at: Option<DateTime<Utc>>,
    /// The source prefixes the key may publish under; `None`: any.
    #[serde(default)]
    pub allowed_sources: Option<Vec<String>>,
}

/// One identity change, as decoded from its event.
#[derive(Debug, Clone)]
pub enum Change {
    Invited {
        invitation_id: String,
        email: String,
        role: String,
        projects: Option<Vec<String>>,
        token_hash: Vec<u8>,
        expires_at: DateTime<Utc>,
    },
    Joined {
        member_id: String,
        email: String,
        name: Option<String>,
        role: String,
        projects: Option<Vec<String>>,
        invitation_id: Option<String>,
        key: NewKey,
        key_hash: Vec<u8>,
    },
    Removed {
        member_id: String,
    },
    InvitationRevoked {
        invitation_id: String,
    },
    RoleAssigned {
        member_id: String,
        role: String,
        projects: Option<Vec<String>>,
    },
    KeyIssued {
        member_id: String,
        key: NewKey,
        key_hash: Vec<u8>,
    },
    KeyRevoked {
        key_id: String,
    },
}

/// A change with where and when it happened and who made it.
#[derive(Debug, Clone)]
pub struct Item {
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub change: Change,
}

#[derive(Deserialize)]
struct Data {
    invitation_id: Option<String>,
    member_id: Option<String>,
    key_id: Option<String>,
    email: Option<String>,
    name: Option<String>,
    role: Option<String>,
    projects: Option<Vec<String>>,
    token_hash: Option<String>,
    expires_at: Option<DateTime<Utc>>,
    lookup: Option<String>,
    hash: Option<String>,
    key: Option<NewKey>,
    allowed_sources: Option<Vec<String>>,
}

fn missing(field: &str) -> Rejection {
    Rejection {
        code: "invalid_data",
        reason: format!("data.{field} is missing"),
    }
}

fn hash_bytes(hex: &str, field: &str) -> Result<Vec<u8>, Rejection> {
    unhex(hex).filter(|b| b.len() == 32).ok_or(Rejection {
        code: "invalid_data",
        reason: format!("data.{field} is not 32 bytes of hex"),
    })
}

impl Change {
    /// The change an event makes, if it is an identity event.
    pub fn from_event(event: &Event) -> Result<Option<Change>, Rejection> {
        let ty = event.event_type().as_str();
        if !kairos_events::is_identity(ty) {
            return Ok(None);
        }
        let d: Data = event.data_as()?;
        let member = || d.member_id.clone().ok_or_else(|| missing("member_id"));
        let role = || d.role.clone().ok_or_else(|| missing("role"));
        let change = match ty {
            MEMBER_INVITED => Change::Invited {
                invitation_id: d
                    .invitation_id
                    .clone()
                    .ok_or_else(|| missing("invitation_id"))?,
                email: d.email.clone().ok_or_else(|| missing("email"))?,
                role: role()?,
                projects: d.projects.clone(),
                token_hash: hash_bytes(
                    d.token_hash
                        .as_deref()
                        .ok_or_else(|| missing("token_hash"))?,
                    "token_hash",
                )?,
                expires_at: d.expires_at.ok_or_else(|| missing("expires_at"))?,
            },
            MEMBER_JOINED => {
                let key = d.key.clone().ok_or_else(|| missing("key"))?;
                Change::Joined {
                    member_id: member()?,
                    email: d.email.clone().ok_or_else(|| missing("email"))?,
                    name: d.name.clone(),
                    role: role()?,
                    projects: d.projects.clone(),
                    invitation_id: d.invitation_id.clone(),
                    key_hash: hash_bytes(&key.hash, "key.hash")?,
                    key,
                }
            }
            MEMBER_REMOVED => Change::Removed {
                member_id: member()?,
            },
            ROLE_ASSIGNED => Change::RoleAssigned {
                member_id: member()?,
                role: role()?,
                projects: d.projects.clone(),
            },
            API_KEY_ISSUED => {
                let hash = d.hash.clone().ok_or_else(|| missing("hash"))?;
                Change::KeyIssued {
                    member_id: member()?,
                    key_hash: hash_bytes(&hash, "hash")?,
                    key: NewKey {
                        key_id: d.key_id.clone().ok_or_else(|| missing("key_id"))?,
                        name: d.name.clone().ok_or_else(|| missing("name"))?,
                        lookup: d.lookup.clone().ok_or_else(|| missing("lookup"))?,
                        hash,
                        expires_at: d.expires_at,
                        allowed_sources: d.allowed_sources.clone(),
                    },
                }
            }
            INVITATION_REVOKED => Change::InvitationRevoked {
                invitation_id: d
                    .invitation_id
                    .clone()
                    .ok_or_else(|| missing("invitation_id"))?,
            },
            API_KEY_REVOKED => Change::KeyRevoked {
                key_id: d.key_id.clone().ok_or_else(|| missing("key_id"))?,
            },
            other => {
                return Err(Rejection {
                    code: "unknown_type",
                    reason: format!("{other} is an identity type this version does not fold"),
                });
            }
        };
        Ok(Some(change))
    }
}

/// The projection.
#[derive(Debug, Clone, Copy, Default)]
pub struct Access;

async fn insert_key(
    tx: &mut PgConnection,
    item: &Item,
    member_id: &str,
    key: &NewKey,
    hash: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO api_keys (key_id, member_id, name, lookup, hash, created_at, created_by, expires_at,
                               seq, allowed_sources)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (key_id) DO NOTHING",
    )
    .bind(&key.key_id)
    .bind(member_id)
    .bind(&key.name)
    .bind(&key.lookup)
    .bind(hash)
    .bind(item.at)
    .bind(&item.actor)
    .bind(key.expires_at)
    .bind(item.seq)
    .bind(&key.allowed_sources)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

impl Projection for Access {
    type Item = Item;
    /// Nothing: access takes no snapshots, so a batch is one segment.
    type Carry = ();

    fn name(&self) -> &'static str {
        crate::NAME
    }

    fn schema(&self) -> &'static str {
        "access"
    }

    fn categories(&self) -> Option<&'static [&'static str]> {
        // `member`, `role` and `api_key` hold identity events stored by an earlier layout.
        Some(&["access", "member", "role", "api_key"])
    }

    fn decode(&self, stored: &StoredEvent) -> Result<Option<Item>, Rejection> {
        let Some(change) = Change::from_event(&stored.event)? else {
            return Ok(None);
        };
        let actor = stored.event.json()["data"]["actor"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        Ok(Some(Item {
            seq: i64::try_from(stored.seq.0).unwrap_or(i64::MAX),
            at: stored.occurred_at(),
            actor,
            change,
        }))
    }

    async fn apply(
        &self,
        tx: &mut PgConnection,
        items: Vec<Item>,
        _carry: &mut (),
    ) -> Result<Vec<Event>, ApplyError> {
        for item in &items {
            match &item.change {
                Change::Invited {
                    invitation_id,
                    email,
                    role,
                    projects,
                    token_hash,
                    expires_at,
                } => {
                    sqlx::query(
                        "INSERT INTO invitations (invitation_id, email, role, projects, token_hash, expires_at,
                                                  invited_by, invited_at, seq)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (invitation_id) DO NOTHING",
                    )
                    .bind(invitation_id)
                    .bind(email)
                    .bind(role)
                    .bind(projects)
                    .bind(token_hash)
                    .bind(expires_at)
                    .bind(&item.actor)
                    .bind(item.at)
                    .bind(item.seq)
                    .execute(&mut *tx)
                    .await?;
                }
                Change::Joined {
                    member_id,
                    email,
                    name,
                    role,
                    projects,
                    invitation_id,
                    key,
                    key_hash,
                } => {
                    // An invitation admits one member: a second acceptance (a lost race) changes nothing.
                    if let Some(inv) = invitation_id {
                        let claimed = sqlx::query(
                            "UPDATE invitations SET accepted_at = $2, member_id = $3
                              WHERE invitation_id = $1 AND accepted_at IS NULL AND revoked_at IS NULL",
                        )
                        .bind(inv)
                        .bind(item.at)
                        .bind(member_id)
                        .execute(&mut *tx)
                        .await?;
                        if claimed.rows_affected() == 0 {
                            tracing::warn!(seq = item.seq, invitation = %inv, "invitation already used, revoked or unknown; join ignored");
                            continue;
                        }
                    }
                    let inserted = sqlx::query(
                        "INSERT INTO members (member_id, email, name, role, projects, status, invitation_id,
                                              joined_at, joined_by, updated_seq)
                         VALUES ($1, $2, $3, $4, $5, 'active', $6, $7, $8, $9) ON CONFLICT (member_id) DO NOTHING",
                    )
                    .bind(member_id)
                    .bind(email)
                    .bind(name)
                    .bind(role)
                    .bind(projects)
                    .bind(invitation_id)
                    .bind(item.at)
                    .bind(&item.actor)
                    .bind(item.seq)
                    .execute(&mut *tx)
                    .await?;
                    if inserted.rows_affected() == 1 {
                        insert_key(tx, item, member_id, key, key_hash).await?;
                    }
                }
                Change::InvitationRevoked { invitation_id } => {
                    sqlx::query(
                        "UPDATE invitations SET revoked_at = $2, revoked_by = $3
                          WHERE invitation_id = $1 AND accepted_at IS NULL AND revoked_at IS NULL",
                    )
                    .bind(invitation_id)
                    .bind(item.at)
                    .bind(&item.actor)
                    .execute(&mut *tx)
                    .await?;
                }
                Change::Removed { member_id } => {
                    sqlx::query(
                        "UPDATE members SET status = 'removed', removed_at = $2, updated_seq = $3
                          WHERE member_id = $1 AND status = 'active'",
                    )
                    .bind(member_id)
                    .bind(item.at)
                    .bind(item.seq)
                    .execute(&mut *tx)
                    .await?;
                }
                Change::RoleAssigned {
                    member_id,
                    role,
                    projects,
                } => {
                    sqlx::query(
                        "UPDATE members SET role = $2, projects = $3, updated_seq = $4
                          WHERE member_id = $1 AND status = 'active'",
                    )
                    .bind(member_id)
                    .bind(role)
                    .bind(projects)
                    .bind(item.seq)
                    .execute(&mut *tx)
                    .await?;
                }
                Change::KeyIssued {
                    member_id,
                    key,
                    key_hash,
                } => {
                    insert_key(tx, item, member_id, key, key_hash).await?;
                }
                Change::KeyRevoked { key_id } => {
                    sqlx::query(
                        "UPDATE api_keys SET revoked_at = $2, revoked_by = $3
                          WHERE key_id = $1 AND revoked_at IS NULL",
                    )
                    .bind(key_id)
                    .bind(item.at)
                    .bind(&item.actor)
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        Ok(Vec::new())
    }
}
