//! Reading the access tables (never secrets, never hashes).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgExecutor, PgPool};

/// A member (or a removed one).
#[derive(Debug, Clone, Serialize, FromRow, utoipa::ToSchema)]
pub struct MemberView {
    pub member_id: String,
    pub email: String,
    pub name: Option<String>,
    /// `admin`, `developer` or `viewer`.
    pub role: String,
    /// The projects the role is narrowed to; `null`: every project.
    pub projects: Option<Vec<String>>,
    /// `active` or `removed`.
    pub status: String,
    pub joined_at: DateTime<Utc>,
    pub joined_by: String,
    pub removed_at: Option<DateTime<Utc>>,
}

/// An API key's record (never the key, never its hash).
#[derive(Debug, Clone, Serialize, FromRow, utoipa::ToSchema)]
pub struct KeyView {
    pub key_id: String,
    pub member_id: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// The CloudEvent source prefixes the key may publish under; `null`: any source.
    pub allowed_sources: Option<Vec<String>>,
}

/// An invitation (never its token).
#[derive(Debug, Clone, Serialize, FromRow, utoipa::ToSchema)]
pub struct InvitationView {
    pub invitation_id: String,
    pub email: String,
    pub role: String,
    pub projects: Option<Vec<String>>,
    pub expires_at: DateTime<Utc>,
    pub invited_by: String,
    pub invited_at: DateTime<Utc>,
    pub accepted_at: Option<DateTime<Utc>>,
    pub member_id: Option<String>,
    /// When it was revoked; a revoked invitation admits nobody.
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_by: Option<String>,
}

/// A page of a list: at most `limit` rows after the row with id `after` (the previous page's
/// last), in the list's order.
#[derive(Debug, Clone, Copy)]
pub struct Page<'a> {
    pub limit: i64,
    pub after: Option<&'a str>,
}

impl Page<'_> {
    /// Everything, for an operator's command line.
    pub const ALL: Page<'static> = Page {
        limit: i64::MAX,
        after: None,
    };
}

/// Members, active first, then by join time.
pub async fn members(
    pool: &PgPool,
    include_removed: bool,
    page: Page<'_>,
) -> Result<Vec<MemberView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT member_id, email, name, role, projects, status, joined_at, joined_by, removed_at
           FROM access.members WHERE ($1 OR status = 'active')
            AND ($2::text IS NULL OR (status, joined_at, member_id) >
                 (SELECT status, joined_at, member_id FROM access.members WHERE member_id = $2))
          ORDER BY status, joined_at, member_id LIMIT $3",
    )
    .bind(include_removed)
    .bind(page.after)
    .bind(page.limit)
    .fetch_all(pool)
    .await
}

/// One member, in whatever state.
pub async fn member(
    db: impl PgExecutor<'_>,
    member_id: &str,
) -> Result<Option<MemberView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT member_id, email, name, role, projects, status, joined_at, joined_by, removed_at
           FROM access.members WHERE member_id = $1",
    )
    .bind(member_id)
    .fetch_optional(db)
    .await
}

/// API keys (of one member, or all), newest first.
pub async fn keys(
    pool: &PgPool,
    member_id: Option<&str>,
    page: Page<'_>,
) -> Result<Vec<KeyView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT key_id, member_id, name, created_at, created_by, expires_at, revoked_at, allowed_sources
           FROM access.api_keys WHERE ($1::text IS NULL OR member_id = $1)
            AND ($2::text IS NULL OR (created_at, key_id) <
                 (SELECT created_at, key_id FROM access.api_keys WHERE key_id = $2))
          ORDER BY created_at DESC, key_id DESC LIMIT $3",
    )
    .bind(member_id)
    .bind(page.after)
    .bind(page.limit)
    .fetch_all(pool)
    .await
}

/// Invitations (all, or only the open ones: neither accepted nor revoked), newest first.
pub async fn invitations(
    pool: &PgPool,
    open_only: bool,
    page: Page<'_>,
) -> Result<Vec<InvitationView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT invitation_id, email, role, projects, expires_at, invited_by, invited_at, accepted_at, member_id,
                revoked_at, revoked_by
           FROM access.invitations
          WHERE (NOT $1 OR (accepted_at IS NULL AND revoked_at IS NULL))
            AND ($2::text IS NULL OR (invited_at, invitation_id) <
                 (SELECT invited_at, invitation_id FROM access.invitations WHERE invitation_id = $2))
          ORDER BY invited_at DESC, invitation_id DESC LIMIT $3",
    )
    .bind(open_only)
    .bind(page.after)
    .bind(page.limit)
    .fetch_all(pool)
    .await
}

/// How many active admins there are.
pub async fn active_admins(db: impl PgExecutor<'_>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM access.members WHERE status = 'active' AND role = 'admin'",
    )
    .fetch_one(db)
    .await
}
