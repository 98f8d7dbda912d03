//! Extractors and parameter parsers every module's handlers share, each with its error mapping
//! in one place: JSON bodies, the read-consistency parameters (`min_seq`, `as_of`), paging and
//! the common query values.

use std::time::Duration;

use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use kairos_events::ProjectId;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::{ApiError, AppState};

/// The request body as bytes, a too-large body answered with `413`.
pub fn body_bytes(st: &AppState, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge {
                limit: st.http.body_limit_bytes,
            }
        } else {
            ApiError::bad("invalid_body", "body", rejection.body_text())
        }
    })
}

/// The media type of the request's `content-type`, lower-cased, without parameters.
pub fn media_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|ct| {
            ct.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
}

/// A JSON body of type `T` (`application/json`, or no content type); an empty body reads as
/// `{}`. A body that does not fit `T` gets a `400` naming the field.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, st: &AppState) -> Result<Self, ApiError> {
        if let Some(m) = media_type(req.headers())
            && m != "application/json"
        {
            return Err(ApiError::UnsupportedMediaType(format!(
                "{m}: send application/json"
            )));
        }
        let body = body_bytes(st, Bytes::from_request(req, st).await)?;
        let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &body
        };
        let mut de = serde_json::Deserializer::from_slice(body);
        let parsed = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let msg = e.inner().to_string();
            // serde names an unknown or missing field in its message ("unknown field `x`"); a
            // value of the wrong type is named by where it is (`allowed_sources[0]`).
            let named = ["unknown field `", "missing field `"]
                .iter()
                .find_map(|p| msg.strip_prefix(p))
                .and_then(|rest| rest.split('`').next())
                .filter(|f| !f.contains(' '));
            let path = e.path().to_string();
            let field = match named {
                Some(f) => f.to_owned(),
                None if path != "." && !path.is_empty() => path,
                None => "body".to_owned(),
            };
            ApiError::bad("invalid_body", field, msg)
        })?;
        de.end()
            .map_err(|e| ApiError::bad("invalid_body", "body", e.to_string()))?;
        Ok(JsonBody(parsed))
    }
}

/// The query string as `T`, a mismatch answered with `400`.
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, st)
            .await
            .map(|q| QueryParams(q.0))
            .map_err(|e| ApiError::bad("invalid_query", "query", e.body_text()))
    }
}

/// How fresh a read must be: `min_seq` (wait until the projection applied this stream sequence)
/// or `as_of` (the state at a past instant). Read from the query string beside the handler's
/// own parameters.
#[derive(Debug, Clone, Default)]
pub struct ReadAt {
    pub min_seq: Option<u64>,
    pub as_of: Option<DateTime<Utc>>,
    /// `as_of` as the caller wrote it, for messages.
    pub as_of_raw: Option<String>,
}

#[derive(Deserialize)]
struct RawReadAt {
    min_seq: Option<String>,
    as_of: Option<String>,
}

impl FromRequestParts<AppState> for ReadAt {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, ApiError> {
        let QueryParams(raw) = QueryParams::<RawReadAt>::from_request_parts(parts, st).await?;
        let min_seq = seq_param(raw.min_seq.as_deref(), "min_seq")?;
        let as_of = match raw.as_of.as_deref() {
            Some("") => return Err(ApiError::bad("invalid_query", "as_of", "as_of is empty")),
            other => time_param(other, "as_of")?,
        };
        if as_of.is_some_and(|at| at > st.clock.now()) {
            return Err(ApiError::bad(
                "invalid_query",
                "as_of",
                "as_of is in the future; omit it for the current state",
            ));
        }
        Ok(Self {
            min_seq,
            as_of,
            as_of_raw: raw.as_of,
        })
    }
}

impl ReadAt {
    /// Refuses `as_of` for a projection that keeps no point-in-time history; `why` is the
    /// message (say, "workflows keep no point-in-time history; omit as_of").
    pub fn no_history(&self, why: &'static str) -> Result<(), ApiError> {
        match self.as_of {
            Some(_) => Err(ApiError::bad("invalid_query", "as_of", why)),
            None => Ok(()),
        }
    }

    /// Waits until `projection` applied `min_seq`, if given.
    pub async fn wait(&self, st: &AppState, projection: &str) -> Result<(), ApiError> {
        match self.min_seq {
            Some(seq) => wait_for(st, projection, seq).await,
            None => Ok(()),
        }
    }
}

/// Waits (at most `http.read_wait_ms`) until `projection` applied stream sequence `seq`. A
/// sequence past the stream's last one names no write that happened: refused at once with `400`
/// rather than waited for.
pub async fn wait_for(st: &AppState, projection: &str, seq: u64) -> Result<(), ApiError> {
    let already = st
        .checkpoints
        .wait_for(projection, seq, Duration::ZERO)
        .await;
    match already {
        Ok(_) => return Ok(()),
        Err(kairos_runtime::WaitError::Database(e)) => return Err(ApiError::Database(e)),
        Err(_) => {}
    }
    let last = st
        .bus
        .last_seq()
        .await
        .map_err(|e| ApiError::StreamUnavailable(e.to_string()))?;
    if seq > last.0 {
        return Err(ApiError::bad(
            "invalid_query",
            "min_seq",
            format!(
                "min_seq {seq} is past the stream's last sequence ({}): use the seq a write answered",
                last.0
            ),
        ));
    }
    let wait = Duration::from_millis(st.http.read_wait_ms);
    match st.checkpoints.wait_for(projection, seq, wait).await {
        Ok(_) => Ok(()),
        Err(kairos_runtime::WaitError::Database(e)) => Err(ApiError::Database(e)),
        Err(e) => Err(ApiError::NotYetApplied(e.to_string())),
    }
}

/// A project id from the path or the query.
pub fn project_param(raw: &str) -> Result<ProjectId, ApiError> {
    ProjectId::parse(raw).map_err(|e| ApiError::bad(e.code, "project", e.message))
}

/// A project id from the query: at most 200 characters without control characters (named as
/// such), then a project id.
pub fn project_query(raw: &str) -> Result<ProjectId, ApiError> {
    text_param(raw, "project", 200)?;
    project_param(raw)
}

/// The projects a read covers: `project=` if given (checked, and within the caller's reach),
/// else every project the caller reaches (`None`: all of them).
pub fn project_scope(
    caller: &crate::Caller,
    project: Option<&str>,
) -> Result<Option<Vec<String>>, ApiError> {
    match project {
        Some(raw) => {
            let p = project_query(raw)?;
            caller.reach(p.as_str())?;
            Ok(Some(vec![p.as_str().to_owned()]))
        }
        None => Ok(caller.principal()?.projects.clone()),
    }
}

/// `limit=`: 1 to 1000, 100 by default.
pub fn limit_param(raw: Option<&str>) -> Result<usize, ApiError> {
    int_param(raw, "limit", 1, 1000, 100).map(|l| l as usize)
}

/// An integer query parameter `field` from `lo` to `hi`, `default` when absent.
pub fn int_param(
    raw: Option<&str>,
    field: &str,
    lo: u32,
    hi: u32,
    default: u32,
) -> Result<u32, ApiError> {
    match raw {
        None => Ok(default),
        Some(raw) => raw
            .parse::<u32>()
            .ok()
            .filter(|v| (lo..=hi).contains(v))
            .ok_or_else(|| {
                ApiError::bad(
                    "invalid_query",
                    field,
                    format!("{field} must be an integer from {lo} to {hi}"),
                )
            }),
    }
}

/// An RFC 3339 time parameter.
pub fn time_param(raw: Option<&str>, field: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
    raw.map(|t| {
        DateTime::parse_from_rfc3339(t)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| {
                ApiError::bad(
                    "invalid_query",
                    field,
                    format!("{field} must be an RFC 3339 time: {e}"),
                )
            })
    })
    .transpose()
}

/// A stream sequence parameter.
pub fn seq_param(raw: Option<&str>, field: &str) -> Result<Option<u64>, ApiError> {
    raw.map(|s| {
        s.parse::<u64>().map_err(|_| {
            ApiError::bad(
                "invalid_query",
                field,
                format!("{field} must be a stream sequence (a non-negative integer)"),
            )
        })
    })
    .transpose()
}

/// A free-text query parameter: 1 to `max` characters, no control characters (PostgreSQL's
/// `text` cannot hold U+0000, and the others have no business in a filter).
pub fn text_param(raw: &str, field: &str, max: usize) -> Result<(), ApiError> {
    if raw.is_empty() || raw.chars().count() > max {
        return Err(ApiError::bad(
            "invalid_query",
            field,
            format!("{field} must be 1-{max} characters"),
        ));
    }
    if raw.chars().any(|c| c.is_control()) {
        return Err(ApiError::bad(
            "control_character",
            field,
            format!("{field} contains a control character"),
        ));
    }
    Ok(())
}

/// The version a write is conditional on: `If-Match: "<version>"` (the `version` a read
/// answered); `None` without the header. `what` names the thing versioned in the error
/// ("the budget's").
pub fn if_match(headers: &axum::http::HeaderMap, what: &str) -> Result<Option<u64>, ApiError> {
    let Some(raw) = headers.get(axum::http::header::IF_MATCH) else {
        return Ok(None);
    };
    raw.to_str()
        .ok()
        .map(|v| v.trim().trim_matches('"'))
        .and_then(|v| v.parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad(
                "invalid_header",
                "If-Match",
                format!("If-Match must be {what} version, as \"123\""),
            )
        })
}
