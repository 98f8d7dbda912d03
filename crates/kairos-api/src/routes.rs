//! The handlers: parse, call, answer.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use chrono::Utc;
use kairos_access::Permission;
use kairos_budgets as budgets;
use kairos_events::types::{BUDGET_SET, IDENTITY, is_reserved};
use kairos_events::{
    Event, EventError, Period, ProjectId, parse_batch, parse_binary, parse_structured,
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{AuditNote, Caller, Recorded};
use crate::members;
use crate::{ApiError, AppState};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .route(
            "/v1/projects/{project}/budget",
            get(get_budget).put(put_budget),
        )
        .route("/v1/budgets", get(list_budgets))
        .route("/v1/projections", get(projections))
        .route("/v1/events", get(list_events).post(ingest))
        .route("/v1/audit", get(list_audit))
        .route("/v1/audit/export", get(export_audit))
        .route("/v1/me", get(members::me))
        .route("/v1/projections/{name}/replay", post(members::replay))
        .route("/v1/members", get(members::list_members))
        .route("/v1/members/{id}/role", put(members::set_role))
        .route("/v1/members/{id}", delete(members::remove_member))
        .route(
            "/v1/invitations",
            get(members::list_invitations).post(members::invite),
        )
        .route("/v1/invitations/{token}/accept", post(members::accept))
        .route(
            "/v1/api-keys",
            get(members::list_keys).post(members::issue_key),
        )
        .route("/v1/api-keys/{id}", delete(members::revoke_key))
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
}

async fn unknown_route(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route {}", uri.path()))
}

async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{method} is not allowed on {}", uri.path()))
}

async fn live() -> &'static str {
    "ok"
}

async fn ready(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    sqlx::query("SELECT 1").execute(&st.pool).await?;
    let seq = st
        .bus
        .last_seq()
        .await
        .map_err(|e| ApiError::StreamUnavailable(e.to_string()))?;
    Ok(Json(json!({"status": "ready", "stream_last_seq": seq.0})))
}

pub(crate) fn body_bytes(
    st: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, ApiError> {
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

pub(crate) fn media_type(headers: &HeaderMap) -> Option<String> {
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

enum Mode {
    Structured,
    Batch,
    Binary,
}

/// `POST /v1/events`: structured, batch or binary CloudEvents; `202` once JetStream has them.
async fn ingest(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(&st, body)?;
    let media = media_type(&headers);
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
    let parsed: Vec<Result<Event, EventError>> = match mode {
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
    };
    let principal = caller.principal()?;
    let parsed = parsed
        .into_iter()
        .map(|r| r.and_then(|e| admit(principal, e)));
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
    let receipts = st.bus.publish_events(&valid).await;
    let mut results = Vec::with_capacity(slots.len());
    let (mut accepted, mut rejected, mut unavailable, mut refused) = (0u64, 0u64, 0u64, 0u64);
    for (index, slot) in slots.iter().enumerate() {
        match slot {
            Ok(i) => match &receipts[*i] {
                Ok(r) => {
                    accepted += 1;
                    if r.duplicate {
                        st.counters.events_duplicate.fetch_add(1, Ordering::Relaxed);
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
                        message: e.message.clone(),
                        field: e.field.as_deref(),
                    }),
                });
            }
        }
    }
    st.counters
        .events_accepted
        .fetch_add(accepted, Ordering::Relaxed);
    st.counters
        .events_rejected
        .fetch_add(rejected, Ordering::Relaxed);
    if accepted == 0 && unavailable > 0 {
        return Err(ApiError::StreamUnavailable(
            "no event was acknowledged".into(),
        ));
    }
    let mut response = if accepted == 0 {
        ApiError::AllRejected {
            results: serde_json::to_value(&results).unwrap_or_default(),
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

/// The answer to an ingest call: counts, and one outcome per event, in request order.
#[derive(serde::Serialize)]
struct Answer<'a> {
    accepted: u64,
    rejected: u64,
    failed: u64,
    results: Vec<Outcome<'a>>,
}

/// What became of one event of an ingest call (a struct, not a JSON map per event: a batch
/// of 1,000 answers 1,000 of them).
#[derive(serde::Serialize)]
struct Outcome<'a> {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duplicate: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<OutcomeError<'a>>,
}

#[derive(serde::Serialize)]
struct OutcomeError<'a> {
    code: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

/// Whether `principal` may publish `event`: never a reserved type (identity changes go through
/// their endpoints), budgets only with `manage_budgets`, and only to projects its role reaches.
fn admit(principal: &kairos_access::Principal, event: Event) -> Result<Event, EventError> {
    let ty = event.event_type().as_str();
    if is_reserved(ty) {
        return Err(EventError::field(
            "reserved_type",
            "type",
            format!("{ty} is published by Kairos itself; use its endpoint instead"),
        ));
    }
    // Audit entries whose source is Kairos's own (`kairos/api`, …) are what Kairos recorded;
    // nobody reports events in its name.
    if event.source().starts_with("kairos/") {
        return Err(EventError::field(
            "reserved_source",
            "source",
            "sources starting with kairos/ are Kairos's own; name your producer",
        ));
    }
    if ty == BUDGET_SET && !principal.can(Permission::ManageBudgets) {
        return Err(EventError::field(
            "forbidden",
            "type",
            format!("role {} may not set budgets", principal.role),
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

fn project_param(raw: &str) -> Result<ProjectId, ApiError> {
    ProjectId::parse(raw).map_err(|e| ApiError::bad(e.code, "project", e.message))
}

#[derive(Debug, Deserialize)]
struct ReadQuery {
    period: Option<String>,
    as_of: Option<String>,
    min_seq: Option<String>,
    limit: Option<String>,
    after: Option<String>,
}

fn query(q: Result<Query<ReadQuery>, QueryRejection>) -> Result<ReadQuery, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::bad("invalid_query", "query", e.body_text()))
}

impl ReadQuery {
    fn period(&self, st: &AppState) -> Result<Period, ApiError> {
        match &self.period {
            Some(p) => Period::parse(p).map_err(|e| ApiError::bad(e.code, "period", e.message)),
            None => Ok(Period::containing(st.clock.now(), &st.tz)),
        }
    }

    /// Waits until the budgets projection applied `min_seq`, if given.
    async fn wait(&self, st: &AppState) -> Result<(), ApiError> {
        let Some(raw) = &self.min_seq else {
            return Ok(());
        };
        let seq: u64 = raw.parse().map_err(|_| {
            ApiError::bad(
                "invalid_query",
                "min_seq",
                "min_seq must be a non-negative integer",
            )
        })?;
        let wait = Duration::from_millis(st.http.read_wait_ms);
        match st.checkpoints.wait_for(budgets::NAME, seq, wait).await {
            Ok(_) => Ok(()),
            Err(kairos_runtime::WaitError::Database(e)) => Err(ApiError::Database(e)),
            Err(e) => Err(ApiError::NotYetApplied(e.to_string())),
        }
    }
}

/// `GET /v1/projects/{project}/budget?period=&min_seq=&as_of=`
async fn get_budget(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
    q: Result<Query<ReadQuery>, QueryRejection>,
) -> Result<Json<budgets::BudgetView>, ApiError> {
    let project = project_param(&project)?;
    caller.reach(project.as_str())?;
    let q = query(q)?;
    if let Some(raw) = &q.as_of {
        return budget_as_of(&st, &project, &q, raw).await.map(Json);
    }
    let period = q.period(&st)?;
    q.wait(&st).await?;
    budgets::read(&st.pool, &project, period)
        .await?
        .map(Json)
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "project {project} has no budget and no spend in {period}"
            ))
        })
}

/// The last stream sequence stored at or before `at`.
async fn seq_at_time(
    st: &AppState,
    at: chrono::DateTime<Utc>,
) -> Result<kairos_events::StreamSeq, ApiError> {
    kairos_runtime::seq_at_time(&st.bus, &st.pool, at)
        .await
        .map_err(|e| match e {
            kairos_runtime::HistoryError::Database(e) => ApiError::Database(e),
            other => ApiError::StreamUnavailable(other.to_string()),
        })
}

/// The budgets ledger as it stood at `as_of` (from the nearest snapshot plus the events after
/// it; with `project`, only that project's), with the period asked for (default: the month
/// containing `as_of`).
async fn ledger_as_of(
    st: &AppState,
    q: &ReadQuery,
    raw: &str,
    project: Option<&ProjectId>,
) -> Result<(budgets::Ledger, Period, u64), ApiError> {
    let Some(at) = time_param(Some(raw), "as_of")? else {
        return Err(ApiError::bad("invalid_query", "as_of", "as_of is empty"));
    };
    if at > st.clock.now() {
        return Err(ApiError::bad(
            "invalid_query",
            "as_of",
            "as_of is in the future; omit it for the current state",
        ));
    }
    let period = match &q.period {
        Some(_) => q.period(st)?,
        None => Period::containing(at, &st.tz),
    };
    let wait = Duration::from_millis(st.http.read_wait_ms);
    let applied = |seq: kairos_events::StreamSeq| async move {
        match st.checkpoints.wait_for(budgets::NAME, seq.0, wait).await {
            Ok(_) => Ok(()),
            Err(kairos_runtime::WaitError::Database(e)) => Err(budgets::AsOfError::Database(e)),
            Err(e) => Err(budgets::AsOfError::NotYetApplied(e.to_string())),
        }
    };
    let (ledger, seq) = budgets::Budgets { tz: st.tz }
        .ledger_at(&st.bus, &st.pool, at, project, applied)
        .await
        .map_err(|e| match e {
            budgets::AsOfError::Database(e)
            | budgets::AsOfError::History(kairos_runtime::HistoryError::Database(e)) => {
                ApiError::Database(e)
            }
            budgets::AsOfError::NotYetApplied(e) => ApiError::NotYetApplied(e),
            budgets::AsOfError::History(e @ kairos_runtime::HistoryError::Gone { .. }) => {
                ApiError::bad("history_gone", "as_of", e.to_string())
            }
            other => ApiError::StreamUnavailable(other.to_string()),
        })?;
    Ok((ledger, period, seq.0))
}

async fn budget_as_of(
    st: &AppState,
    project: &ProjectId,
    q: &ReadQuery,
    raw: &str,
) -> Result<budgets::BudgetView, ApiError> {
    let (ledger, period, seq) = ledger_as_of(st, q, raw, Some(project)).await?;
    ledger.view(project, period, seq).ok_or_else(|| {
        ApiError::NotFound(format!(
            "project {project} had no budget and no spend in {period} at {raw}"
        ))
    })
}

/// `limit=`: 1 to 1000, 100 by default.
fn limit_param(raw: &Option<String>) -> Result<usize, ApiError> {
    match raw {
        None => Ok(100),
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=1000).contains(l))
            .ok_or_else(|| {
                ApiError::bad(
                    "invalid_query",
                    "limit",
                    "limit must be an integer from 1 to 1000",
                )
            }),
    }
}

/// `GET /v1/budgets?period=&min_seq=&limit=&after=`
async fn list_budgets(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    q: Result<Query<ReadQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let principal = caller.principal()?;
    let q = query(q)?;
    let period = q.period(&st)?;
    let limit = limit_param(&q.limit)? as i64;
    if let Some(after) = &q.after {
        project_param(after)
            .map_err(|_| ApiError::bad("invalid_query", "after", "after must be a project id"))?;
    }
    if let Some(raw) = &q.as_of {
        let (ledger, period, seq) = ledger_as_of(&st, &q, raw, None).await?;
        let items: Vec<_> = ledger
            .views(period, seq)
            .into_iter()
            .filter(|b| q.after.as_deref().is_none_or(|a| b.project.as_str() > a))
            .filter(|b| principal.reaches(b.project.as_str()))
            .take(usize::try_from(limit).unwrap_or(100))
            .collect();
        let next = (items.len() as i64 == limit)
            .then(|| items.last().map(|b| b.project.clone()))
            .flatten();
        return Ok(Json(
            json!({"period": period, "as_of": raw, "as_of_seq": seq,
                               "budgets": items, "next_after": next}),
        ));
    }
    q.wait(&st).await?;
    // A role narrowed to projects sees only those.
    let only = principal.projects.as_deref();
    let items = budgets::list(&st.pool, period, q.after.as_deref(), limit, only).await?;
    let next = (items.len() as i64 == limit)
        .then(|| items.last().map(|b| b.project.clone()))
        .flatten();
    Ok(Json(
        json!({"period": period, "budgets": items, "next_after": next}),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetBody {
    monthly_limit: Value,
    warn_at_percent: Option<Value>,
    on_exceeded: Option<Value>,
    fallback_model: Option<Value>,
}

/// `PUT /v1/projects/{project}/budget`: records a `kairos.budget.set.v1` event.
async fn put_budget(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let project = project_param(&project)?;
    caller.reach(project.as_str())?;
    let body = body_bytes(&st, body)?;
    if let Some(m) = media_type(&headers)
        && m != "application/json"
    {
        return Err(ApiError::UnsupportedMediaType(format!(
            "{m}: send application/json"
        )));
    }
    let b: BudgetBody = serde_json::from_slice(&body).map_err(|e| {
        // serde names the offending field as "unknown field `x`" / "missing field `x`".
        let msg = e.to_string();
        let field = ["unknown field `", "missing field `"]
            .iter()
            .find_map(|p| msg.strip_prefix(p))
            .and_then(|rest| rest.split('`').next())
            .unwrap_or("body")
            .to_owned();
        ApiError::bad("invalid_body", field, msg)
    })?;
    // A limit is a decimal string ("10.00"); a JSON number is read from its text as well.
    let limit = kairos_events::Money::from_json(&b.monthly_limit)
        .map_err(|e| ApiError::bad("invalid_body", "monthly_limit", e.to_string()))?;
    let mut data = json!({
        "project": project.as_str(),
        "monthly_limit": limit.to_string(),
        "warn_at_percent": b.warn_at_percent.unwrap_or(json!(80)),
        "on_exceeded": b.on_exceeded.unwrap_or(json!("fallback_to_local")),
    });
    if let Some(m) = b.fallback_model {
        data["fallback_model"] = m;
    }
    caller.origin().stamp(&mut data);
    let event = Event::from_value(json!({
        "specversion": "1.0",
        "id": uuid::Uuid::now_v7().to_string(),
        "source": "kairos/api",
        "type": BUDGET_SET,
        "subject": project.as_str(),
        "time": st.clock.now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "datacontenttype": "application/json",
        "data": data,
    }))
    .map_err(|e| {
        let field = e
            .field
            .as_deref()
            .map(|f| f.trim_start_matches("data.").to_owned());
        ApiError::BadRequest {
            code: e.code,
            message: e.message,
            field,
        }
    })?;
    let receipt = st
        .bus
        .publish_event(&event)
        .await
        .map_err(|e| ApiError::StreamUnavailable(e.to_string()))?;
    let body = json!({
        "project": project.as_str(),
        "event_id": event.id(),
        "seq": receipt.seq.0,
        "budget": format!("/v1/projects/{project}/budget?min_seq={}", receipt.seq.0),
    });
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    // The budget.set event carries the actor: it is this write's audit entry.
    response.extensions_mut().insert(Recorded);
    Ok(response)
}

/// `GET /v1/projections`: each projection's checkpoint and lag behind the stream.
async fn projections(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    let last = st
        .bus
        .last_seq()
        .await
        .map_err(|e| ApiError::StreamUnavailable(e.to_string()))?;
    let (generations, live): (Vec<_>, Vec<_>) = kairos_runtime::checkpoints(&st.pool)
        .await?
        .into_iter()
        .partition(|c| c.projection.contains('@'));
    let generations: Vec<Value> = generations
        .into_iter()
        .map(|c| json!({"key": c.projection, "last_seq": c.last_seq, "updated_at": c.updated_at}))
        .collect();
    let items: Vec<Value> = live
        .into_iter()
        .map(|c| {
            json!({
                "projection": c.projection, "last_seq": c.last_seq,
                "lag": last.0.saturating_sub(c.last_seq), "events_applied": c.events_applied,
                "duplicates": c.duplicates, "dead_lettered": c.dead_lettered, "updated_at": c.updated_at,
            })
        })
        .collect();
    Ok(Json(
        json!({"stream_last_seq": last.0, "projections": items, "generations_being_rebuilt": generations}),
    ))
}

/// `GET /metrics`: Prometheus text format.
async fn metrics(State(st): State<AppState>) -> Result<Response, ApiError> {
    use std::fmt::Write;
    let last = st.bus.last_seq().await.map(|s| s.0).unwrap_or(0);
    let mut out = String::new();
    let c = &st.counters;
    let _ = writeln!(
        out,
        "# TYPE kairos_stream_last_seq gauge\nkairos_stream_last_seq {last}"
    );
    let _ = writeln!(out, "# TYPE kairos_ingest_events_total counter");
    for (outcome, n) in [
        ("accepted", &c.events_accepted),
        ("duplicate", &c.events_duplicate),
        ("rejected", &c.events_rejected),
    ] {
        let _ = writeln!(
            out,
            "kairos_ingest_events_total{{outcome=\"{outcome}\"}} {}",
            n.load(Ordering::Relaxed)
        );
    }
    // Generations being rebuilt (`name@next`) are not projections readers depend on: no lag.
    let checkpoints: Vec<_> = kairos_runtime::checkpoints(&st.pool)
        .await?
        .into_iter()
        .filter(|c| !c.projection.contains('@'))
        .collect();
    for (metric, kind) in [
        ("kairos_projection_checkpoint", "gauge"),
        ("kairos_projection_lag_events", "gauge"),
        ("kairos_projection_events_applied_total", "counter"),
        ("kairos_projection_duplicates_total", "counter"),
        ("kairos_projection_dead_lettered_total", "counter"),
    ] {
        let _ = writeln!(out, "# TYPE {metric} {kind}");
        for cp in &checkpoints {
            let v = match metric {
                "kairos_projection_checkpoint" => cp.last_seq,
                "kairos_projection_lag_events" => last.saturating_sub(cp.last_seq),
                "kairos_projection_events_applied_total" => cp.events_applied,
                "kairos_projection_duplicates_total" => cp.duplicates,
                _ => cp.dead_lettered,
            };
            let _ = writeln!(out, "{metric}{{projection=\"{}\"}} {v}", cp.projection);
        }
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
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

fn time_param(raw: Option<&str>, field: &str) -> Result<Option<chrono::DateTime<Utc>>, ApiError> {
    raw.map(|t| {
        chrono::DateTime::parse_from_rfc3339(t)
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

/// `GET /v1/events?from=&to=&type=&project=&after=&limit=`: the stream itself, oldest first,
/// paged by sequence (`after` = the previous page's `next_after`).
/// Needs `read_audit` (admins, never narrowed to projects): the stream holds every user action
/// and identity change.
async fn list_events(
    State(st): State<AppState>,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = q
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad("invalid_query", "query", e.body_text()))?;
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
    let limit = limit_param(&q.limit)?;
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
    let mut events = Vec::new();
    let mut next_after = None;
    if after.is_none_or(|a| a < last) {
        let mut reader = st.bus.read(start, filter).await.map_err(unavailable)?;
        let mut scanned = 0;
        // Nothing matching (pending 0 at the start, or after a message) ends the page at once;
        // the wait only covers a slow server.
        let mut more = reader.pending_at_start() > 0;
        while more
            && let Some(m) = reader
                .next(Duration::from_secs(5))
                .await
                .map_err(unavailable)?
        {
            more = m.pending > 0;
            if to.is_some_and(|to| m.stored_at > to) {
                break;
            }
            scanned += 1;
            let mut event: Option<Value> = serde_json::from_slice(&m.payload).ok();
            let ty = event
                .as_ref()
                .and_then(|e| e["type"].as_str())
                .unwrap_or_default()
                .to_owned();
            let matches = q.ty.as_deref().is_none_or(|t| ty == t);
            if let Some(e) = event.as_mut().filter(|_| IDENTITY.contains(&ty.as_str())) {
                redact_identity(e);
            }
            if matches {
                let mut item = json!({"seq": m.seq.0, "stored_at": m.stored_at, "subject": m.subject, "event": event});
                if item["event"].is_null() {
                    item["raw"] = json!(String::from_utf8_lossy(
                        &m.payload[..m.payload.len().min(4096)]
                    ));
                }
                events.push(item);
            }
            if m.seq.0 >= last {
                break;
            }
            if events.len() >= limit || scanned >= MAX_SCAN {
                next_after = Some(m.seq.0);
                break;
            }
        }
    }
    Ok(Json(
        json!({"events": events, "next_after": next_after, "stream_last_seq": last}),
    ))
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

#[derive(Debug, Deserialize)]
struct AuditQuery {
    actor: Option<String>,
    action: Option<String>,
    resource: Option<String>,
    outcome: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
    as_of: Option<String>,
    min_seq: Option<String>,
    format: Option<String>,
}

fn seq_param(raw: Option<&str>, field: &str) -> Result<Option<u64>, ApiError> {
    raw.map(|s| {
        s.parse::<u64>().map_err(|_| {
            ApiError::bad(
                "invalid_query",
                field,
                format!("{field} must be a stream sequence"),
            )
        })
    })
    .transpose()
}

impl AuditQuery {
    async fn filter(&self, st: &AppState) -> Result<kairos_audit::Filter, ApiError> {
        for (field, value) in [
            ("actor", &self.actor),
            ("action", &self.action),
            ("resource", &self.resource),
            ("outcome", &self.outcome),
        ] {
            if value
                .as_ref()
                .is_some_and(|v| v.is_empty() || v.len() > 500)
            {
                return Err(ApiError::bad(
                    "invalid_query",
                    field,
                    format!("{field} must be 1-500 characters"),
                ));
            }
        }
        let upto_seq = match time_param(self.as_of.as_deref(), "as_of")? {
            Some(at) => Some(seq_at_time(st, at).await?.0),
            None => None,
        };
        let wait_seq = upto_seq.or(seq_param(self.min_seq.as_deref(), "min_seq")?);
        if let Some(seq) = wait_seq {
            let wait = Duration::from_millis(st.http.read_wait_ms);
            match st.checkpoints.wait_for(kairos_audit::NAME, seq, wait).await {
                Ok(_) => {}
                Err(kairos_runtime::WaitError::Database(e)) => return Err(ApiError::Database(e)),
                Err(e) => return Err(ApiError::NotYetApplied(e.to_string())),
            }
        }
        Ok(kairos_audit::Filter {
            actor: self.actor.clone(),
            action: self.action.clone(),
            resource: self.resource.clone(),
            outcome: self.outcome.clone(),
            from: time_param(self.from.as_deref(), "from")?,
            to: time_param(self.to.as_deref(), "to")?,
            before_seq: seq_param(self.cursor.as_deref(), "cursor")?,
            upto_seq,
            after_seq: None,
        })
    }
}

/// `GET /v1/audit?actor=&action=&resource=&outcome=&from=&to=&limit=&cursor=&as_of=`: newest
/// first; `cursor` is the previous page's `next_cursor`.
async fn list_audit(
    State(st): State<AppState>,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = q
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad("invalid_query", "query", e.body_text()))?;
    let limit = limit_param(&q.limit)?;
    let filter = q.filter(&st).await?;
    let entries = kairos_audit::query(&st.pool, &filter, limit as i64, false).await?;
    let next = (entries.len() == limit)
        .then(|| entries.last().map(|e| e.entry.seq))
        .flatten();
    let entries: Vec<Value> = entries
        .iter()
        .map(kairos_audit::StoredEntry::to_json)
        .collect();
    Ok(Json(json!({"entries": entries, "next_cursor": next})))
}

/// `GET /v1/audit/export?from=&to=&format=jsonl|csv` (and the list filters): every matching entry,
/// oldest first, streamed.
async fn export_audit(
    State(st): State<AppState>,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = q
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad("invalid_query", "query", e.body_text()))?;
    let csv = match q.format.as_deref() {
        None | Some("jsonl") => false,
        Some("csv") => true,
        Some(_) => {
            return Err(ApiError::bad(
                "invalid_query",
                "format",
                "format must be jsonl or csv",
            ));
        }
    };
    let filter = q.filter(&st).await?;
    let pool = st.pool.clone();
    let first = if csv {
        Some(Bytes::from_static(kairos_audit::CSV_HEADER.as_bytes()))
    } else {
        None
    };
    // Pages of 1000 by sequence, so an export of years of history never sits in memory.
    let pages = futures_util::stream::unfold(Some(filter), move |state| {
        let pool = pool.clone();
        async move {
            let mut filter = state?;
            match kairos_audit::query(&pool, &filter, 1000, true).await {
                Ok(rows) if rows.is_empty() => None,
                Ok(rows) => {
                    let mut chunk = String::new();
                    for r in &rows {
                        if csv {
                            chunk.push_str(&r.to_csv());
                        } else {
                            chunk.push_str(&r.to_json().to_string());
                            chunk.push('\n');
                        }
                    }
                    filter.after_seq = rows.last().map(|r| r.entry.seq);
                    let next = (rows.len() == 1000).then_some(filter);
                    Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), next))
                }
                Err(e) => Some((Err(std::io::Error::other(e)), None)),
            }
        }
    });
    let body = futures_util::StreamExt::chain(
        futures_util::stream::iter(first.map(Ok::<_, std::io::Error>)),
        pages,
    );
    let ct = if csv {
        "text/csv; charset=utf-8"
    } else {
        "application/x-ndjson"
    };
    Ok((
        [(header::CONTENT_TYPE, ct)],
        axum::body::Body::from_stream(body),
    )
        .into_response())
}
