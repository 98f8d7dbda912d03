use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kairos_events::EventError;
use serde_json::{Value, json};

/// Every error the API answers, mapped to a status and `{"error": {"code", "message", "field"?}}`
/// in one place.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidEvent(EventError),
    #[error("{message}")]
    BadRequest {
        code: &'static str,
        message: String,
        field: Option<String>,
    },
    /// Every event of a batch was refused; `results` says why for each. `forbidden`: each for
    /// who sent it (a project or source the key does not reach), a 403.
    #[error("every event in the batch was rejected")]
    AllRejected { results: Value, forbidden: bool },
    /// No key, or one that is not valid. The message never repeats the key.
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("the request body is larger than the {limit} bytes this server accepts")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("the request headers are larger than the {limit} bytes this server accepts")]
    HeadersTooLarge { limit: usize },
    #[error("{0}")]
    NotYetApplied(String),
    #[error("the event stream is unavailable: {0}")]
    StreamUnavailable(String),
    /// A write was carried out but its audit entry could not be recorded: answered as failed,
    /// so that nothing is done unaudited without its caller knowing.
    #[error("{0}")]
    AuditUnavailable(String),
    #[error("too many requests from this client; retry in {0} s")]
    RateLimited(u64),
    #[error("the projection database is unavailable")]
    Database(#[from] sqlx::Error),
    /// What `/health/ready` answers anyone when NATS or PostgreSQL does not: no detail.
    #[error("not ready")]
    NotReady,
}

impl ApiError {
    pub fn bad(code: &'static str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
            field: Some(field.into()),
        }
    }
}

impl ApiError {
    /// The stable error code a client matches on (`invalid_body`, `not_found`, …).
    pub fn code(&self) -> &'static str {
        self.parts().1
    }

    fn parts(&self) -> (StatusCode, &'static str, Option<String>) {
        match self {
            Self::InvalidEvent(e) => (StatusCode::BAD_REQUEST, e.code, e.field.clone()),
            Self::BadRequest { code, field, .. } => (StatusCode::BAD_REQUEST, *code, field.clone()),
            Self::AllRejected {
                forbidden: true, ..
            } => (StatusCode::FORBIDDEN, "forbidden", None),
            Self::AllRejected { .. } => (StatusCode::BAD_REQUEST, "all_events_rejected", None),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized", None),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", None),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", None),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict", None),
            Self::Gone(_) => (StatusCode::GONE, "gone", None),
            Self::MethodNotAllowed(_) => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", None)
            }
            Self::PayloadTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", None)
            }
            Self::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                None,
            ),
            Self::HeadersTooLarge { .. } => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                None,
            ),
            Self::NotYetApplied(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_yet_applied", None),
            Self::StreamUnavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "stream_unavailable", None)
            }
            Self::AuditUnavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable", None)
            }
            Self::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited", None),
            Self::Database(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                None,
            ),
            Self::NotReady => (StatusCode::SERVICE_UNAVAILABLE, "not_ready", None),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, field) = self.parts();
        let message = match &self {
            Self::InvalidEvent(e) => e.message.clone(),
            other => other.to_string(),
        };
        // Messages and field names can quote what the caller sent (serde's "unknown field
        // `…`"): only escaped and cut short, never as raw bytes.
        let message = kairos_events::printable(&message, 500);
        let field = field.map(|f| kairos_events::printable(&f, 100));
        if let Self::Database(e) = &self {
            tracing::error!(error = %e, "database error");
        }
        let info = ErrorInfo {
            code,
            message: message.clone(),
        };
        let mut error = json!({"code": code, "message": message});
        if let Some(field) = field {
            error["field"] = Value::String(field);
        }
        let mut body = json!({ "error": error });
        if let Self::AllRejected { results, .. } = self {
            body["results"] = results;
        }
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        // For the audit entry of this request.
        response.extensions_mut().insert(info);
        response
    }
}

/// The code and message of an error answer, kept on the response for the audit middleware.
#[derive(Debug, Clone)]
pub(crate) struct ErrorInfo {
    pub code: &'static str,
    pub message: String,
}

/// A command's outcome as an answer: its own refusal as it is, a conflict past the retries as
/// `409`, the stream failing as `503`.
impl From<kairos_runtime::CommandError<ApiError>> for ApiError {
    fn from(e: kairos_runtime::CommandError<ApiError>) -> Self {
        match e {
            kairos_runtime::CommandError::Rejected(e) => e,
            e @ kairos_runtime::CommandError::Conflict { .. } => Self::Conflict(e.to_string()),
            kairos_runtime::CommandError::Bus(e) => Self::StreamUnavailable(e.to_string()),
        }
    }
}

impl From<EventError> for ApiError {
    fn from(e: EventError) -> Self {
        Self::InvalidEvent(e)
    }
}
