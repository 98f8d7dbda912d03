//! The handlers: parse, call, answer.

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use kairos_events::{Event, EventError, ProjectId, parse_batch, parse_binary, parse_structured};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::auth::Guard::{AnyKey, Key, Public};
use crate::auth::{AuditNote, Caller};
use crate::extract::{QueryParams, body_bytes, limit_param, media_type, time_param};
use crate::module::Publish;
use crate::module::Routes;
use crate::openapi::ErrorBody;
use crate::roles::{Permission, Principal, Role};
use crate::{ApiError, AppState, ReplayRefused};
use utoipa_axum::routes;

/// The platform's routes: what every module shares.
pub fn platform_routes() -> Routes {
    use Permission::{PublishEvents, ReadAudit, ReadProjections, Replay};
    Routes::new()
        .route(routes!(live), Public, "health.live")
        .route(routes!(ready), Public, "health.ready")
        .route(routes!(metrics), Key(ReadProjections), "metrics.read")
        .route(routes!(me), AnyKey, "me.read")
        .route(routes!(ingest), Key(PublishEvents), "events.publish")
        // The raw stream holds every user action and identity change: audit material.
        .route(routes!(list_events), Key(ReadAudit), "events.read")
        .route(
            routes!(projections),
            Key(ReadProjections),
            "projection.list",
        )
        .route(routes!(replay), Key(Replay), "projection.replay")
}

pub(crate) async fn unknown_route(parts: axum::http::request::Parts) -> Response {
    if let Err(limited) = crate::limits::unrouted(&parts) {
        return limited.into_response();
    }
    ApiError::NotFound(format!("no route {}", parts.uri.path())).into_response()
}

pub(crate) async fn wrong_method(parts: axum::http::request::Parts) -> Response {
    if let Err(limited) = crate::limits::unrouted(&parts) {
        return limited.into_response();
    }
    ApiError::MethodNotAllowed(format!(
        "{} is not allowed on {}",
        parts.method,
        parts.uri.path()
    ))
    .into_response()
}

/// The process is alive.
#[utoipa::path(get, path = "/health/live", tag = "health",
    responses((status = 200, description = "Alive", body = String, content_type = "text/plain")))]
async fn live() -> &'static str {
    "ok"
}

/// NATS and PostgreSQL answer, and no projection of this process is more than
/// `http.ready_max_lag` events behind (the reason when not goes to the log, not the caller).
#[utoipa::path(get, path = "/health/ready", tag = "health",
    responses(
        (status = 200, description = "Ready", body = Ready),
        (status = 503, description = "NATS or PostgreSQL does not answer", body = ErrorBody),
    ))]
async fn ready(State(st): State<AppState>) -> Result<Json<Ready>, ApiError> {
    // Anyone may ask: the answer says ready or not, the reason goes to the log.
    if let Err(why) = within_check(sqlx::query("SELECT 1").execute(&st.pool), "PostgreSQL").await {
        tracing::warn!("not ready: {why}");
        return Err(ApiError::NotReady);
    }
    if !st.bus.is_connected() {
        tracing::warn!("not ready: disconnected from NATS");
        return Err(ApiError::NotReady);
    }
    let last = match within_check(st.bus.last_seq(), "JetStream").await {
        Ok(l) => l,
        Err(why) => {
            tracing::warn!("not ready: {why}");
            return Err(ApiError::NotReady);
        }
    };
    let local = st.local.names();
    if st.http.ready_max_lag > 0 && !local.is_empty() {
        let checkpoints = match kairos_runtime::checkpoints(&st.pool).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "not ready: PostgreSQL");
                return Err(ApiError::NotReady);
            }
        };
        for name in local {
            let applied = checkpoints
                .iter()
                .find(|c| c.projection == name)
                .map_or(0, |c| c.last_seq);
            let lag = last.0.saturating_sub(applied);
            if lag > st.http.ready_max_lag {
                tracing::warn!(
                    projection = name,
                    lag,
                    max = st.http.ready_max_lag,
                    "not ready: a projection of this process is behind"
                );
                return Err(ApiError::NotReady);
            }
        }
    }
    Ok(Json(Ready { status: "ready" }))
}

/// Ready for traffic.
#[derive(Serialize, utoipa::ToSchema)]
struct Ready {
    /// Always `ready` (not ready answers 503).
    status: &'static str,
}

enum Mode {
    Structured,
    Batch,
    Binary,
}

/// `POST /v1/events`: structured, batch or binary CloudEvents; `202` once JetStream has them.
#[utoipa::path(post, path = "/v1/events", tag = "events",
    request_body(description = "One CloudEvent (structured or binary mode) or a batch", content(
        (Object = "application/cloudevents+json"),
        (Vec<Object> = "application/cloudevents-batch+json"),
        (Object = "application/json"),
    )),
    responses(
        (status = 202, description = "Stored: per-event outcomes, in request order", body = Answer),
        (status = 400, description = "The request, or every event in it, was refused", body = ErrorBody),
        (status = 403, description = "Every event was refused for who sent it: a project the role does not reach, a source the key is not bound to, or a type the role may not publish (results says which)", body = ErrorBody),
        (status = 413, description = "The body is larger than http.body_limit_bytes", body = ErrorBody),
        (status = 409, description = "Every event reused the source and id of a stored event that says something else", body = ErrorBody),
        (status = 415, description = "Not a CloudEvents encoding", body = ErrorBody),
        (status = 503, description = "JetStream acknowledged none of them (stream_unavailable), or the events were stored but the request could not be audited (audit_unavailable: send it again)", body = ErrorBody),
    ))]
async fn ingest(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let parsed = parse_request(&st, &headers, body).inspect_err(|e| {
        // A request refused whole counts as one refused event.
        crate::observe::ingested("rejected", e.code(), 1);
    })?;
    let principal = caller.principal()?;
    let parsed = parsed
        .into_iter()
        .map(|r| r.and_then(|e| admit(&st, principal, e)));
    // Move the valid events out (no copies): `slots` keeps each one's place in the request.
    let mut valid = Vec::with_capacity(parsed.len());
    let slots: Vec<Result<usize, EventError>> = parsed
        .map(|r| {
            r.map(|event| {
                valid.push(event);
                valid.len() - 1
            })
        })
        .collect();
    let mut receipts = st.bus.publish_events(&valid).await;
    // JetStream answers a Nats-Msg-Id it has seen as a duplicate of the first: that is a retry
    // only if the content is the same. The same (source, id) saying something else would be
    // dropped as a retry and hide a fact (another project's call, say): it is a conflict.
    for (event, receipt) in valid.iter().zip(receipts.iter_mut()) {
        if let Ok(r) = receipt
            && r.duplicate
        {
            match st.bus.payload_at(r.seq).await {
                // Aged out of the stream: nothing left to compare with.
                Ok(None) => {}
                Ok(Some(first)) if kairos_events::same_content(&first, event.to_bytes()) => {}
                Ok(Some(_)) => {
                    *receipt = Err(kairos_bus::BusError::Conflict {
                        subject: event.nats_subject(&st.bus.config().subject_prefix),
                        expected: r.seq.0,
                    })
                }
                Err(e) => *receipt = Err(e),
            }
        }
    }
    let mut results = Vec::with_capacity(slots.len());
    let (mut accepted, mut rejected, mut unavailable, mut refused) = (0u64, 0u64, 0u64, 0u64);
    let mut duplicates = 0u64;
    for (index, slot) in slots.iter().enumerate() {
        match slot {
            Ok(i) => match &receipts[*i] {
                Ok(r) => {
                    accepted += 1;
                    if r.duplicate {
                        duplicates += 1;
                    }
                    results.push(Outcome {
                        index,
                        id: Some(valid[*i].id()),
                        status: "accepted",
                        seq: Some(r.seq.0),
                        duplicate: Some(r.duplicate),
                        error: None,
                    });
                }
                Err(kairos_bus::BusError::Conflict { expected, .. }) => {
                    rejected += 1;
                    crate::observe::ingested("rejected", "identity_conflict", 1);
                    results.push(Outcome {
                        index,
                        id: Some(valid[*i].id()),
                        status: "rejected",
                        seq: Some(*expected),
                        duplicate: None,
                        error: Some(OutcomeError {
                            code: "identity_conflict",
                            message: format!(
                                "source and id were used by the event at seq {expected}, which \
                                 says something else: give this event an id of its own"
                            ),
                            field: Some("id".into()),
                        }),
                    });
                }
                Err(e) => {
                    unavailable += 1;
                    tracing::error!(error = %e, "publish failed");
                    results.push(Outcome {
                        index,
                        id: Some(valid[*i].id()),
                        status: "failed",
                        seq: None,
                        duplicate: None,
                        error: Some(OutcomeError {
                            code: "stream_unavailable",
                            message: e.to_string(),
                            field: None,
                        }),
                    });
                }
            },
            Err(e) => {
                rejected += 1;
                crate::observe::ingested("rejected", e.code, 1);
                // Refused for who the caller is, not for what the event says.
                if matches!(e.code, "forbidden" | "reserved_type" | "reserved_source") {
                    refused += 1;
                }
                results.push(Outcome {
                    index,
                    id: None,
                    status: "rejected",
                    seq: None,
                    duplicate: None,
                    error: Some(OutcomeError {
                        code: e.code,
                        message: kairos_events::printable(&e.message, 500),
                        field: e.field.as_deref().map(|f| kairos_events::printable(f, 100)),
                    }),
                });
            }
        }
    }
    crate::observe::ingested("accepted", "", accepted - duplicates);
    crate::observe::ingested("duplicate", "", duplicates);
    crate::observe::ingested("failed", "stream_unavailable", unavailable);
    if accepted == 0 && unavailable > 0 {
        return Err(ApiError::StreamUnavailable(
            "no event was acknowledged".into(),
        ));
    }
    let conflicts: Vec<u64> = results
        .iter()
        .filter(|r| {
            r.error
                .as_ref()
                .is_some_and(|e| e.code == "identity_conflict")
        })
        .filter_map(|r| r.seq)
        .collect();
    let mut response = if accepted == 0 && !conflicts.is_empty() && conflicts.len() == results.len()
    {
        ApiError::Conflict(format!(
            "identity_conflict: source and id were used by the event at seq {} with other content",
            conflicts[0]
        ))
        .into_response()
    } else if accepted == 0 {
        let forbidden = results
            .iter()
            .all(|r| r.error.as_ref().is_some_and(|e| e.code == "forbidden"));
        ApiError::AllRejected {
            results: serde_json::to_value(&results).unwrap_or_default(),
            forbidden,
        }
        .into_response()
    } else {
        let body = Answer {
            accepted,
            rejected,
            failed: unavailable,
            results,
        };
        (StatusCode::ACCEPTED, Json(body)).into_response()
    };
    response.extensions_mut().insert(AuditNote {
        reason: format!("accepted {accepted}, rejected {rejected}, failed {unavailable}"),
        denied: refused > 0,
    });
    Ok(response)
}

/// The events of an ingest request, each parsed or refused; an error refuses the whole request.
fn parse_request(
    st: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Vec<Result<Event, EventError>>, ApiError> {
    let body = body_bytes(st, body)?;
    let media = media_type(headers);
    let mode = match media.as_deref() {
        Some("application/cloudevents-batch+json") => Mode::Batch,
        Some("application/cloudevents+json") => Mode::Structured,
        _ if headers.contains_key("ce-specversion") => Mode::Binary,
        None | Some("application/json") => match body.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'[') => Mode::Batch,
            _ => Mode::Structured,
        },
        Some(other) => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "{other} is not a CloudEvents encoding: send application/cloudevents+json, \
                 application/cloudevents-batch+json, or binary mode with ce-* headers"
            )));
        }
    };
    Ok(match mode {
        Mode::Structured => vec![Ok(parse_structured(&body)?)],
        Mode::Binary => {
            let ce = headers
                .iter()
                .filter(|(name, _)| name.as_str().starts_with("ce-"))
                .map(|(name, value)| (name.as_str(), value.as_bytes()));
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            vec![Ok(parse_binary(ce, ct, &body)?)]
        }
        Mode::Batch => {
            let items = parse_batch(&body)?;
            if items.is_empty() {
                return Err(ApiError::bad("invalid_batch", "body", "the batch is empty"));
            }
            if items.len() > st.http.max_batch_events {
                return Err(ApiError::bad(
                    "batch_too_large",
                    "body",
                    format!(
                        "the batch has {} events; at most {} are accepted per request",
                        items.len(),
                        st.http.max_batch_events
                    ),
                ));
            }
            items
        }
    })
}

/// The answer to an ingest call: counts, and one outcome per event, in request order.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(as = IngestAnswer)]
struct Answer<'a> {
    /// Events stored now or before (duplicates included).
    accepted: u64,
    /// Events refused, each with its error: send them again fixed.
    rejected: u64,
    /// Events not stored because the stream did not answer: send them again as they are.
    failed: u64,
    results: Vec<Outcome<'a>>,
}

/// What became of one event of an ingest call (a struct, not a JSON map per event: a batch
/// of 1,000 answers 1,000 of them).
#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(as = IngestOutcome)]
struct Outcome<'a> {
    /// The event's place in the request, from 0.
    index: usize,
    /// Its `id`, when it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    /// `accepted`, `rejected` or `failed`.
    status: &'static str,
    /// Where it is stored (accepted events).
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    /// True when it had been stored before: the same source, id and content.
    #[serde(skip_serializing_if = "Option::is_none")]
    duplicate: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<OutcomeError>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(as = IngestError)]
struct OutcomeError {
    code: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
}

/// Whether `principal` may publish `event`: never a type only Kairos publishes (identity changes
/// go through their endpoints), a type a module guards only with the permission it names, and
/// only to projects its role reaches.
fn admit(st: &AppState, principal: &Principal, event: Event) -> Result<Event, EventError> {
    let ty = event.event_type().as_str();
    let rule = st.registry.publish_rule(ty);
    if rule == Publish::KairosOnly {
        return Err(EventError::field(
            "reserved_type",
            "type",
            format!("{ty} is published by Kairos itself; use its endpoint instead"),
        ));
    }
    // Audit entries whose source is Kairos's own (`kairos/api`, …) are what Kairos recorded;
    // nobody reports events in its name.
    if event.source().starts_with(kairos_events::KAIROS_SOURCE) {
        return Err(EventError::field(
            "reserved_source",
            "source",
            "sources starting with kairos/ are Kairos's own; name your producer",
        ));
    }
    if !principal.may_publish_as(event.source()) {
        return Err(EventError::field(
            "forbidden",
            "source",
            format!(
                "this API key may publish only under the sources {}",
                principal
                    .allowed_sources
                    .as_deref()
                    .unwrap_or_default()
                    .join(", ")
            ),
        ));
    }
    if let Publish::With(needed) = rule
        && !principal.can(needed)
    {
        return Err(EventError::field(
            "forbidden",
            "type",
            format!(
                "role {} may not publish {ty}: it needs {needed}",
                principal.role
            ),
        ));
    }
    if principal.projects.is_some() {
        match event.project() {
            Some(p) if principal.reaches(p.as_str()) => {}
            Some(p) => {
                return Err(EventError::field(
                    "forbidden",
                    "subject",
                    format!("your role does not reach project {p}"),
                ));
            }
            None => {
                return Err(EventError::field(
                    "forbidden",
                    "subject",
                    "your role is narrowed to projects; events must name one",
                ));
            }
        }
    }
    Ok(event)
}

/// `GET /v1/projections`: each projection's checkpoint and lag behind the stream.
#[utoipa::path(get, path = "/v1/projections", tag = "projections",
    responses(
        (status = 200, description = "Each projection's checkpoint and lag", body = ProjectionsAnswer),
        (status = 503, description = "The stream or the database does not answer", body = ErrorBody),
    ))]
async fn projections(State(st): State<AppState>) -> Result<Json<ProjectionsAnswer>, ApiError> {
    let last = st
        .bus
        .last_seq()
        .await
        .map_err(|e| ApiError::StreamUnavailable(e.to_string()))?;
    let (generations, live): (Vec<_>, Vec<_>) = kairos_runtime::checkpoints(&st.pool)
        .await?
        .into_iter()
        .partition(|c| c.projection.contains('@'));
    Ok(Json(ProjectionsAnswer {
        stream_last_seq: last.0,
        projections: live
            .into_iter()
            .map(|c| ProjectionState {
                lag: last.0.saturating_sub(c.last_seq),
                projection: c.projection,
                last_seq: c.last_seq,
                events_applied: c.events_applied,
                duplicates: c.duplicates,
                dead_lettered: c.dead_lettered,
                updated_at: c.updated_at,
            })
            .collect(),
        generations_being_rebuilt: generations
            .into_iter()
            .map(|c| GenerationState {
                key: c.projection,
                last_seq: c.last_seq,
                updated_at: c.updated_at,
            })
            .collect(),
    }))
}

#[derive(Serialize, utoipa::ToSchema)]
struct ProjectionsAnswer {
    /// The events stream's last sequence, read now.
    stream_last_seq: u64,
    projections: Vec<ProjectionState>,
    /// Generations a replay is building (`name@next`), switched in when they catch up.
    generations_being_rebuilt: Vec<GenerationState>,
}

/// A projection's checkpoint (a partitioned one's base: its lowest partition's).
#[derive(Serialize, utoipa::ToSchema)]
struct ProjectionState {
    projection: String,
    /// The last stream sequence applied.
    last_seq: u64,
    /// Events stored after `last_seq`.
    lag: u64,
    events_applied: u64,
    /// Events recognised as already applied (the same identity again).
    duplicates: u64,
    dead_lettered: u64,
    updated_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct GenerationState {
    key: String,
    last_seq: u64,
    updated_at: chrono::DateTime<chrono::Utc>,
}

/// One readiness check, bounded: a server that does not answer within 2 s is not ready (a
/// probe must not hang for the pool's or the request's timeout). The reason, for the log.
async fn within_check<T, E: std::fmt::Display>(
    check: impl std::future::Future<Output = Result<T, E>>,
    what: &str,
) -> Result<T, String> {
    const CHECK: std::time::Duration = std::time::Duration::from_secs(2);
    match tokio::time::timeout(CHECK, check).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what} did not answer within 2 s")),
    }
}

/// `GET /metrics`: Prometheus text format. What is true across processes (checkpoints, lag,
/// the stream's last sequence) is read now; the rest was recorded as it happened.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses(
        (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
        (status = 503, description = "The database does not answer", body = ErrorBody),
    ))]
async fn metrics(State(st): State<AppState>) -> Result<Response, ApiError> {
    let last = st.bus.last_seq().await.map(|s| s.0).unwrap_or(0);
    metrics::gauge!("kairos_stream_last_seq").set(last as f64);
    // Generations being rebuilt (`name@next`) are not projections readers depend on: no lag.
    for cp in kairos_runtime::checkpoints(&st.pool)
        .await?
        .into_iter()
        .filter(|c| !c.projection.contains('@'))
    {
        let p = cp.projection;
        metrics::gauge!("kairos_projection_checkpoint", "projection" => p.clone())
            .set(cp.last_seq as f64);
        metrics::gauge!("kairos_projection_lag_events", "projection" => p.clone())
            .set(last.saturating_sub(cp.last_seq) as f64);
        metrics::counter!("kairos_projection_events_applied_total", "projection" => p.clone())
            .absolute(cp.events_applied);
        metrics::counter!("kairos_projection_duplicates_total", "projection" => p.clone())
            .absolute(cp.duplicates);
        metrics::counter!("kairos_projection_dead_lettered_total", "projection" => p)
            .absolute(cp.dead_lettered);
    }
    let idle = st.pool.num_idle() as f64;
    let size = f64::from(st.pool.size());
    metrics::gauge!("kairos_db_pool_connections", "state" => "idle").set(idle);
    metrics::gauge!("kairos_db_pool_connections", "state" => "in_use").set(size - idle);
    let handle = crate::observe::handle();
    handle.run_upkeep();
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    from: Option<String>,
    to: Option<String>,
    #[serde(rename = "type")]
    ty: Option<String>,
    project: Option<String>,
    after: Option<String>,
    limit: Option<String>,
}

/// Most stream messages one `GET /v1/events` request scans for matches.
const MAX_SCAN: usize = 20_000;

/// `GET /v1/events?from=&to=&type=&project=&after=&limit=`: the stream itself, oldest first,
/// paged by sequence (`after` = the previous page's `next_after`).
/// Needs `read_audit` (admins, never narrowed to projects): the stream holds every user action
/// and identity change.
#[utoipa::path(get, path = "/v1/events", tag = "events",
    params(
        ("from" = Option<String>, Query, description = "RFC 3339: events stored at or after"),
        ("to" = Option<String>, Query, description = "RFC 3339: events stored at or before"),
        ("type" = Option<String>, Query, description = "Only this event type"),
        ("project" = Option<String>, Query, description = "Only this project's events"),
        ("after" = Option<u64>, Query, description = "The previous page's next_after"),
        ("limit" = Option<u32>, Query, description = "1 to 1000 (100)"),
    ),
    responses(
        (status = 200, description = "A page of the stream, oldest first", body = EventsPage),
        (status = 400, description = "A parameter is malformed", body = ErrorBody),
        (status = 503, description = "The stream does not answer", body = ErrorBody),
    ))]
async fn list_events(
    State(st): State<AppState>,
    QueryParams(q): QueryParams<EventsQuery>,
) -> Result<Response, ApiError> {
    let from = time_param(q.from.as_deref(), "from")?;
    let to = time_param(q.to.as_deref(), "to")?;
    let after = q
        .after
        .as_deref()
        .map(|a| {
            a.parse::<u64>().map_err(|_| {
                ApiError::bad("invalid_query", "after", "after must be a stream sequence")
            })
        })
        .transpose()?;
    let limit = limit_param(q.limit.as_deref())?;
    let filter = match &q.project {
        Some(p) => {
            let p = ProjectId::parse(p).map_err(|e| ApiError::bad(e.code, "project", e.message))?;
            Some(format!("{}.events.*.{p}", st.bus.config().subject_prefix))
        }
        None => None,
    };
    let unavailable = |e: kairos_bus::BusError| ApiError::StreamUnavailable(e.to_string());
    let last = st.bus.last_seq().await.map_err(unavailable)?.0;
    let start = match (after, from) {
        (Some(a), _) => kairos_bus::ReadFrom::Seq(kairos_events::StreamSeq(a + 1)),
        (None, Some(t)) => kairos_bus::ReadFrom::Time(t),
        (None, None) => kairos_bus::ReadFrom::Seq(kairos_events::StreamSeq(1)),
    };
    let reader = match after.is_none_or(|a| a < last) {
        true => Some(st.bus.read(start, filter).await.map_err(unavailable)?),
        false => None,
    };
    // The page is written as it is read: a few events in flight, however large the page
    // (1,000 events of up to 256 KiB each held at once would be a quarter of a gigabyte).
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let page = Page {
        ty: q.ty,
        to,
        limit,
        last,
    };
    tokio::spawn(page.write(reader, tx));
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        axum::body::Body::from_stream(body),
    )
        .into_response())
}

/// What one `GET /v1/events` page holds: its filters past the start, and the stream's end when
/// the request came.
struct Page {
    ty: Option<String>,
    to: Option<chrono::DateTime<chrono::Utc>>,
    limit: usize,
    last: u64,
}

type Chunk = Result<Bytes, std::io::Error>;

impl Page {
    /// Writes the page ([`EventsPage`] as JSON) to `tx` item by item. A stream that fails
    /// halfway cuts the body short, so the client sees a broken answer, never a short page
    /// passed off as whole; a client that went away stops the read.
    async fn write(
        self,
        reader: Option<kairos_bus::EventReader>,
        tx: tokio::sync::mpsc::Sender<Chunk>,
    ) {
        if tx
            .send(Ok(Bytes::from_static(b"{\"events\":[")))
            .await
            .is_err()
        {
            return;
        }
        let next_after = match reader {
            None => None,
            Some(reader) => match self.items(reader, &tx).await {
                Ok(Sent::Page { next_after }) => next_after,
                Ok(Sent::ClientGone) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "GET /v1/events: the stream failed mid-page");
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    return;
                }
            },
        };
        let tail = serde_json::json!({"next_after": next_after, "stream_last_seq": self.last});
        // `],` and then `{"next_after":…,"stream_last_seq":…}` without its opening brace.
        let end = format!("],{}", &tail.to_string()[1..]);
        let _ = tx.send(Ok(end.into())).await;
    }

    /// Sends the matching items, each after the comma that parts it from the one before.
    async fn items(
        &self,
        mut reader: kairos_bus::EventReader,
        tx: &tokio::sync::mpsc::Sender<Chunk>,
    ) -> Result<Sent, kairos_bus::BusError> {
        let mut scanned = 0;
        let mut sent = 0;
        // Nothing matching (pending 0 at the start, or after a message) ends the page at once;
        // the wait only covers a slow server.
        let mut more = reader.pending_at_start() > 0;
        while more && let Some(m) = reader.next(Duration::from_secs(5)).await? {
            more = m.pending > 0;
            if self.to.is_some_and(|to| m.stored_at > to) {
                break;
            }
            scanned += 1;
            let mut event: Option<Value> = serde_json::from_slice(&m.payload).ok();
            let ty = event
                .as_ref()
                .and_then(|e| e["type"].as_str())
                .unwrap_or_default()
                .to_owned();
            if let Some(e) = event.as_mut().filter(|_| kairos_events::is_identity(&ty)) {
                redact_identity(e);
            }
            if self.ty.as_deref().is_none_or(|t| ty == t) {
                let raw = event.is_none().then(|| {
                    String::from_utf8_lossy(&m.payload[..m.payload.len().min(4096)]).into_owned()
                });
                let item = StoredItem {
                    seq: m.seq.0,
                    stored_at: m.stored_at,
                    subject: m.subject,
                    event,
                    raw,
                };
                let mut chunk = if sent > 0 { vec![b','] } else { Vec::new() };
                serde_json::to_writer(&mut chunk, &item).expect("an item serialises");
                if tx.send(Ok(chunk.into())).await.is_err() {
                    return Ok(Sent::ClientGone);
                }
                sent += 1;
            }
            if m.seq.0 >= self.last {
                break;
            }
            if sent >= self.limit || scanned >= MAX_SCAN {
                return Ok(Sent::Page {
                    next_after: Some(m.seq.0),
                });
            }
        }
        Ok(Sent::Page { next_after: None })
    }
}

/// How sending a page's items ended.
enum Sent {
    /// Every item is sent; the next page starts after `next_after` (`None`: at the stream's end).
    Page { next_after: Option<u64> },
    /// The client hung up.
    ClientGone,
}

// The schema of what `Page::write` writes piece by piece.
/// A page of the stream.
#[derive(Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
struct EventsPage {
    events: Vec<StoredItem>,
    /// The next page's `after`; `null` when the page reached the stream's end.
    next_after: Option<u64>,
    stream_last_seq: u64,
}

/// One stored message.
#[derive(Serialize, utoipa::ToSchema)]
struct StoredItem {
    seq: u64,
    /// When JetStream stored it.
    stored_at: chrono::DateTime<chrono::Utc>,
    subject: String,
    /// The CloudEvent (identity events without their hashes); `null` when the message is no
    /// JSON.
    #[schema(value_type = Option<Object>)]
    event: Option<Value>,
    /// The message's first 4,096 bytes, when it is no JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    raw: Option<String>,
}

/// Takes the key and token hashes (and lookups) out of an identity event: listing the stream
/// shows who holds keys, never material to test guesses against.
fn redact_identity(event: &mut Value) {
    let data = &mut event["data"];
    for field in ["hash", "lookup", "token_hash"] {
        if let Some(d) = data.as_object_mut() {
            d.remove(field);
        }
    }
    if let Some(k) = data["key"].as_object_mut() {
        k.remove("hash");
        k.remove("lookup");
    }
}

/// `GET /v1/me`: who the key belongs to.
#[utoipa::path(get, path = "/v1/me", tag = "access",
    responses((status = 200, description = "The key's member, role and permissions", body = Me)))]
async fn me(Extension(caller): Extension<Caller>) -> Result<Json<Me>, ApiError> {
    let p = caller.principal()?;
    let permissions: Vec<&str> = Permission::ALL
        .into_iter()
        .filter(|perm| p.can(*perm))
        .map(Permission::as_str)
        .collect();
    Ok(Json(Me {
        member_id: p.member_id.clone(),
        email: p.email.clone(),
        role: p.role,
        projects: p.projects.clone(),
        key_id: p.key_id.clone(),
        permissions,
    }))
}

/// Who a key belongs to, and what it may do.
#[derive(Serialize, utoipa::ToSchema)]
struct Me {
    member_id: String,
    email: String,
    role: Role,
    /// The projects the role is narrowed to; `null`: every project.
    projects: Option<Vec<String>>,
    key_id: String,
    /// Every permission the role grants.
    permissions: Vec<&'static str>,
}

/// A rebuild started.
#[derive(Serialize, utoipa::ToSchema)]
struct ReplayStarted {
    projection: String,
    /// The generation being built, as `GET /v1/projections` lists it.
    generation: String,
    /// Where to follow it.
    progress: &'static str,
}

/// `POST /v1/projections/{name}/replay`: starts a rebuild in the background; follow it on
/// `GET /v1/projections` (`generations_being_rebuilt`).
#[utoipa::path(post, path = "/v1/projections/{name}/replay", tag = "projections",
    params(("name" = String, Path, description = "The projection")),
    responses(
        (status = 202, description = "Rebuilding in the background", body = ReplayStarted),
        (status = 404, description = "No such projection", body = ErrorBody),
        (status = 409, description = "It is being rebuilt already", body = ErrorBody),
        (status = 503, description = "This process cannot rebuild projections", body = ErrorBody),
    ))]
async fn replay(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let Some(replayer) = &st.replayer else {
        return Err(ApiError::StreamUnavailable(
            "this process cannot rebuild projections; run `kairos replay`".into(),
        ));
    };
    match replayer(&name) {
        Ok(()) => Ok((
            StatusCode::ACCEPTED,
            Json(ReplayStarted {
                generation: format!("{name}@next"),
                projection: name,
                progress: "/v1/projections",
            }),
        )
            .into_response()),
        Err(ReplayRefused::Unknown(m)) => Err(ApiError::NotFound(m)),
        Err(ReplayRefused::Running(m)) => Err(ApiError::Conflict(m)),
    }
}
