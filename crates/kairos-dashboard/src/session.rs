//! Server-side sessions: the browser holds a random token in an HttpOnly, SameSite=Strict
//! cookie; the database holds the token's SHA-256, the id of the API key the session signed in
//! with (never the key), its CSRF token and its expiry. Every request checks the key again
//! (through the API's guard), so a revoked key or a removed member ends the session.

use axum::http::{HeaderMap, HeaderValue, header};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

/// The session cookie's name.
pub const COOKIE: &str = "kairos_session";
/// The sign-in form's CSRF cookie (before there is a session).
pub const SIGN_IN_COOKIE: &str = "kairos_sign_in";

/// A signed-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    pub key_id: String,
    /// Sent back with every form; a form without it is refused.
    pub csrf: String,
    pub expires_at: DateTime<Utc>,
    digest: Vec<u8>,
}

/// 32 random bytes as 64 hex digits.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    // The OS random source failing is not something a caller can handle.
    getrandom::fill(&mut bytes).unwrap_or_else(|e| panic!("no OS randomness: {e}"));
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn digest(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Whether two tokens are equal, in time that does not depend on where they differ.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The value of cookie `name` in the request, if it is there once and looks like a token.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut found = None;
    for value in headers.get_all(header::COOKIE) {
        let Ok(text) = value.to_str() else { continue };
        for pair in text.split(';') {
            if let Some((k, v)) = pair.trim().split_once('=')
                && k == name
            {
                if found.is_some() {
                    // Two cookies of one name: someone planted one; trust neither.
                    return None;
                }
                found = Some(v);
            }
        }
    }
    found.filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, for `path`, living `max_age` seconds
/// (0 deletes it); `Secure` when the dashboard is served over TLS.
pub fn set_cookie(name: &str, value: &str, path: &str, max_age: i64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Starts a session for `key_id` until `expires_at`; returns the cookie's token.
pub async fn create(
    pool: &PgPool,
    key_id: &str,
    now: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> Result<String, sqlx::Error> {
    let token = random_token();
    // Expired sessions go when a new one starts, so the table stays the size of the live ones.
    sqlx::query("DELETE FROM dashboard.sessions WHERE expires_at <= $1")
        .bind(now)
        .execute(pool)
        .await?;
    sqlx::query(
        "INSERT INTO dashboard.sessions (token_sha256, key_id, csrf, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(digest(&token))
    .bind(key_id)
    .bind(random_token())
    .bind(now)
    .bind(expires_at)
    .execute(pool)
    .await?;
    Ok(token)
}

/// The live session the request's cookie names, if any.
pub async fn find(
    pool: &PgPool,
    headers: &HeaderMap,
    now: DateTime<Utc>,
) -> Result<Option<Session>, sqlx::Error> {
    let Some(token) = cookie(headers, COOKIE) else {
        return Ok(None);
    };
    let d = digest(token);
    let row: Option<(String, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT key_id, csrf, expires_at FROM dashboard.sessions \
         WHERE token_sha256 = $1 AND expires_at > $2",
    )
    .bind(&d)
    .bind(now)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(key_id, csrf, expires_at)| Session {
        key_id,
        csrf,
        expires_at,
        digest: d,
    }))
}

/// Whether `session` is still in the table and unexpired at `now` (a database error counts as
/// no: the stream that asks ends, and the browser opens it again).
pub async fn live(pool: &PgPool, session: &Session, now: DateTime<Utc>) -> bool {
    sqlx::query_scalar::<_, i32>(
        "SELECT 1 FROM dashboard.sessions WHERE token_sha256 = $1 AND expires_at > $2",
    )
    .bind(&session.digest)
    .bind(now)
    .fetch_optional(pool)
    .await
    .is_ok_and(|r| r.is_some())
}

/// Ends the session whose cookie holds `token`.
pub async fn discard(pool: &PgPool, token: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM dashboard.sessions WHERE token_sha256 = $1")
        .bind(digest(token))
        .execute(pool)
        .await?;
    Ok(())
}

/// Ends `session`.
pub async fn end(pool: &PgPool, session: &Session) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM dashboard.sessions WHERE token_sha256 = $1")
        .bind(&session.digest)
        .execute(pool)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(cookies: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for c in cookies {
            h.append(header::COOKIE, HeaderValue::from_str(c).expect("ascii"));
        }
        h
    }

    #[test]
    fn a_cookie_is_read_only_when_it_is_there_once_and_looks_like_a_token() {
        let t = "a".repeat(64);
        let one = format!("x=1; {COOKIE}={t}");
        assert_eq!(cookie(&headers(&[&one]), COOKIE), Some(t.as_str()));
        let twice = format!("{COOKIE}={t}; {COOKIE}={t}");
        assert_eq!(cookie(&headers(&[&twice]), COOKIE), None);
        let split = format!("{COOKIE}={t}");
        assert_eq!(cookie(&headers(&[&split, &split]), COOKIE), None);
        assert_eq!(
            cookie(&headers(&[&format!("{COOKIE}=short")]), COOKIE),
            None
        );
        let bad = format!("{COOKIE}={}", "z".repeat(64));
        assert_eq!(cookie(&headers(&[&bad]), COOKIE), None);
        assert_eq!(cookie(&headers(&[]), COOKIE), None);
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abc", "abd"));
        assert!(!same_token("abc", "abcd"));
        assert_eq!(random_token().len(), 64);
        assert_ne!(random_token(), random_token());
    }

    #[test]
    fn the_cookie_is_http_only_and_strict() {
        let c = set_cookie(COOKIE, "v", "/", 60, true);
        let c = c.to_str().expect("ascii");
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Secure"));
        let c = set_cookie(COOKIE, "", "/", 0, false);
        assert!(!c.to_str().expect("ascii").contains("Secure"));
    }
}
