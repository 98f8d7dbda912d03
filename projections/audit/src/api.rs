//! The audit module: its routes (the log, its export) and their handlers.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use kairos_api::extract::{
    QueryParams, ReadAt, limit_param, seq_param, text_param, time_param, wait_for,
};
use kairos_api::{
    ApiError, AppState, Configured, ErrorBody, EventRule, Guard, Host, Module, ModuleConfig,
    ModuleError, Permission, Publish, Routes, Started,
};
use kairos_runtime::AnyProjection;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::migrate::Migrator;
use utoipa_axum::routes;

use crate::{Audit, Filter, NAME, TimeBasis};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The audit module, registered by the binary.
pub struct AuditModule;

/// The value the binary registers.
pub static MODULE: AuditModule = AuditModule;

/// `[audit]` in `kairos.toml`.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct AuditSettings {
    /// Entries between two signed checkpoints of the chain's head.
    checkpoint_every: u64,
    /// Seconds of stream time after which the next entry brings a checkpoint; a serving process
    /// also signs a chain whose head has not moved for this long.
    checkpoint_interval_secs: u64,
}

impl Default for AuditSettings {
    fn default() -> Self {
        let d = Audit::default();
        Self {
            checkpoint_every: d.checkpoint_every,
            checkpoint_interval_secs: u64::try_from(d.checkpoint_interval.num_seconds())
                .unwrap_or(60),
        }
    }
}

impl Module for AuditModule {
    fn name(&self) -> &'static str {
        NAME
    }

    fn migrations(&self) -> &'static Migrator {
        &MIGRATOR
    }

    fn config_section(&self) -> Option<&'static str> {
        Some("audit")
    }

    fn events(&self) -> &'static [EventRule] {
        &[EventRule {
            ty: kairos_events::types::AUDIT_CHECKPOINT,
            publish: Publish::KairosOnly,
        }]
    }

    fn configure(&self, config: &ModuleConfig) -> Result<Box<dyn Configured>, ModuleError> {
        let s: AuditSettings = config.get()?;
        if s.checkpoint_every == 0 {
            return Err(config.invalid("checkpoint_every", "must be at least 1"));
        }
        if !(1..=86_400).contains(&s.checkpoint_interval_secs) {
            return Err(config.invalid("checkpoint_interval_secs", "must be between 1 and 86400"));
        }
        Ok(Box::new(AuditConfigured(Audit {
            checkpoint_every: s.checkpoint_every,
            checkpoint_interval: chrono::Duration::seconds(
                i64::try_from(s.checkpoint_interval_secs).unwrap_or(60),
            ),
        })))
    }
}

struct AuditConfigured(Audit);

impl Configured for AuditConfigured {
    fn projection(&self) -> Arc<dyn AnyProjection> {
        Arc::new(self.0)
    }

    fn start<'a>(&'a self, host: &'a Host) -> BoxFuture<'a, Result<Started, ModuleError>> {
        let every = self.0.checkpoint_interval.to_std().unwrap_or_default();
        let (bus, pool) = (host.bus.clone(), host.pool.clone());
        Box::pin(async move {
            tokio::spawn(sign_quiet_tails(bus, pool, every));
            Ok(Started::default())
        })
    }

    fn routes(&self) -> Routes {
        use Guard::Key;
        use Permission::ReadAudit;
        Routes::new()
            .route(routes!(list_audit), Key(ReadAudit), "audit.read")
            .route(routes!(export_audit), Key(ReadAudit), "audit.export")
            .route(routes!(verify_audit), Key(ReadAudit), "audit.verify")
    }
}

/// Signs the head of a chain that stopped growing: every `every`, a head that has not moved since
/// the last look and that no checkpoint covers yet gets one (the projection signs a growing
/// chain itself). Its id names the head, so serving processes stating the same head publish one
/// event.
async fn sign_quiet_tails(bus: kairos_bus::Bus, pool: sqlx::PgPool, every: std::time::Duration) {
    type Head = (i64, i64, i64, Vec<u8>, chrono::DateTime<chrono::Utc>);
    let mut tick = tokio::time::interval(every.max(std::time::Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_seen = None;
    loop {
        tick.tick().await;
        let head: Result<Option<Head>, sqlx::Error> = sqlx::query_as(
            "SELECT c.entries, c.signed_entries, e.seq, e.hash, e.occurred_at
             FROM audit.chain c,
                  LATERAL (SELECT seq, hash, occurred_at FROM audit.entries ORDER BY seq DESC LIMIT 1) e",
        )
        .fetch_optional(&pool)
        .await;
        let Ok(Some((entries, signed, seq, hash, at))) = head else {
            continue;
        };
        let quiet = last_seen == Some(seq);
        last_seen = Some(seq);
        if !quiet || signed >= entries {
            continue;
        }
        let event = crate::checkpoint_event(
            u64::try_from(seq).unwrap_or(0),
            &hash,
            u64::try_from(entries).unwrap_or(0),
            at,
        );
        match event {
            Ok(e) => {
                if let Err(err) = bus.publish_event(&e).await {
                    tracing::warn!(error = %err, "publishing an audit checkpoint failed");
                }
            }
            Err(err) => tracing::warn!(error = %err, "building an audit checkpoint failed"),
        }
    }
}

/// The last stream sequence stored at or before `at`.
async fn seq_at_time(
    st: &AppState,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<kairos_events::StreamSeq, ApiError> {
    kairos_runtime::seq_at_time(&st.bus, &st.pool, at)
        .await
        .map_err(|e| match e {
            kairos_runtime::HistoryError::Database(e) => ApiError::Database(e),
            other => ApiError::StreamUnavailable(other.to_string()),
        })
}

#[derive(Debug, Deserialize)]
struct AuditQuery {
    actor: Option<String>,
    claimed_actor: Option<String>,
    action: Option<String>,
    resource: Option<String>,
    outcome: Option<String>,
    from: Option<String>,
    to: Option<String>,
    time: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
    format: Option<String>,
}

impl AuditQuery {
    async fn filter(&self, st: &AppState, read: &ReadAt) -> Result<Filter, ApiError> {
        for (field, value) in [
            ("actor", &self.actor),
            ("claimed_actor", &self.claimed_actor),
            ("action", &self.action),
            ("resource", &self.resource),
            ("outcome", &self.outcome),
        ] {
            if let Some(v) = value {
                text_param(v, field, 500)?;
            }
        }
        let upto_seq = match read.as_of {
            Some(at) => Some(seq_at_time(st, at).await?.0),
            None => None,
        };
        if let Some(seq) = upto_seq.or(read.min_seq) {
            wait_for(st, NAME, seq).await?;
        }
        let time = match self.time.as_deref() {
            None | Some("recorded") => TimeBasis::Recorded,
            Some("occurred") => TimeBasis::Occurred,
            Some(_) => {
                return Err(ApiError::bad(
                    "invalid_query",
                    "time",
                    "time must be recorded (when the stream stored the event) or occurred (the time the event states)",
                ));
            }
        };
        Ok(Filter {
            actor: self.actor.clone(),
            claimed_actor: self.claimed_actor.clone(),
            time,
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

/// `GET /v1/audit?actor=&claimed_actor=&action=&resource=&outcome=&from=&to=&time=&limit=&cursor=&as_of=`:
/// newest first; `cursor` is the previous page's `next_cursor`.
#[utoipa::path(get, path = "/v1/audit", tag = "audit",
    params(
        ("actor" = Option<String>, Query, description = "The actor Kairos authenticated: a member, or the producer's source"),
        ("claimed_actor" = Option<String>, Query, description = "The actor a producer's user action names"),
        ("action" = Option<String>, Query),
        ("resource" = Option<String>, Query), ("outcome" = Option<String>, Query),
        ("from" = Option<String>, Query, description = "RFC 3339"),
        ("to" = Option<String>, Query, description = "RFC 3339"),
        ("time" = Option<String>, Query, description = "What from and to bound: recorded (default), when the stream stored the event; or occurred, the time the event states"),
        ("limit" = Option<u32>, Query, description = "1 to 1000 (100)"),
        ("cursor" = Option<u64>, Query, description = "The previous page's next_cursor"),
        ("min_seq" = Option<u64>, Query), ("as_of" = Option<String>, Query, description = "RFC 3339"),
    ),
    responses(
        (status = 200, description = "Entries, newest first", body = AuditPage),
        (status = 400, description = "A parameter is malformed", body = ErrorBody),
        (status = 503, description = "Not applied within the wait, or a store is unavailable", body = ErrorBody),
    ))]
async fn list_audit(
    State(st): State<AppState>,
    read: ReadAt,
    QueryParams(q): QueryParams<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    let limit = limit_param(q.limit.as_deref())?;
    let filter = q.filter(&st, &read).await?;
    let entries = crate::query(&st.pool, &filter, limit as i64, false).await?;
    let next_cursor = (entries.len() == limit)
        .then(|| entries.last().map(|e| e.entry.seq))
        .flatten();
    let entries: Vec<Value> = entries.iter().map(crate::StoredEntry::to_json).collect();
    Ok(Json(AuditPage {
        entries,
        next_cursor,
    }))
}

/// A page of audit entries, newest first.
#[derive(Serialize, utoipa::ToSchema)]
struct AuditPage {
    /// Each entry with its chain hash (docs/audit-log.md lists the fields).
    #[schema(value_type = Vec<Object>)]
    entries: Vec<Value>,
    /// The next page's `cursor`; `null` on the last page.
    next_cursor: Option<u64>,
}

/// What the chain check found.
#[derive(Serialize, utoipa::ToSchema)]
struct ChainVerified {
    /// True when every entry chains to the one before it.
    ok: bool,
    /// Entries checked.
    entries: u64,
    /// The first entry that breaks the chain, if any.
    first_bad: Option<crate::Finding>,
    /// What was compared: `chain` (the table alone; `kairos audit verify` also compares the
    /// stream).
    checked: &'static str,
}

/// `GET /v1/audit/export?from=&to=&format=jsonl|csv` (and the list filters): every matching entry,
/// oldest first, streamed.
#[utoipa::path(get, path = "/v1/audit/export", tag = "audit",
    params(
        ("format" = Option<String>, Query, description = "jsonl (default) or csv"),
        ("actor" = Option<String>, Query, description = "The actor Kairos authenticated: a member, or the producer's source"),
        ("claimed_actor" = Option<String>, Query, description = "The actor a producer's user action names"),
        ("action" = Option<String>, Query),
        ("resource" = Option<String>, Query), ("outcome" = Option<String>, Query),
        ("from" = Option<String>, Query, description = "RFC 3339"),
        ("to" = Option<String>, Query, description = "RFC 3339"),
        ("time" = Option<String>, Query, description = "What from and to bound: recorded (default), when the stream stored the event; or occurred, the time the event states"),
        ("min_seq" = Option<u64>, Query), ("as_of" = Option<String>, Query, description = "RFC 3339"),
    ),
    responses(
        (status = 200, description = "Every matching entry, oldest first", content(
            (String = "application/x-ndjson"), (String = "text/csv"))),
        (status = 400, description = "A parameter is malformed", body = ErrorBody),
        (status = 503, description = "Not applied within the wait, or a store is unavailable", body = ErrorBody),
    ))]
async fn export_audit(
    State(st): State<AppState>,
    read: ReadAt,
    QueryParams(q): QueryParams<AuditQuery>,
) -> Result<Response, ApiError> {
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
    let filter = q.filter(&st, &read).await?;
    let pool = st.pool.clone();
    let first = if csv {
        Some(Bytes::from_static(crate::CSV_HEADER.as_bytes()))
    } else {
        None
    };
    // Pages of 1000 by sequence, so an export of years of history never sits in memory.
    let pages = futures_util::stream::unfold(Some(filter), move |state| {
        let pool = pool.clone();
        async move {
            let mut filter = state?;
            match crate::query(&pool, &filter, 1000, true).await {
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

/// `GET /v1/audit/verify`: walks the hash chain of every entry in order (streamed, in one
/// pass). It catches an entry changed, inserted or removed inside the table; `kairos audit
/// verify` also compares the table with the stream, which catches a tail cut off too.
#[utoipa::path(get, path = "/v1/audit/verify", tag = "audit",
    responses(
        (status = 200, description = "Whether the chain holds, how many entries it covers, and the first entry that breaks it", body = ChainVerified),
        (status = 503, description = "The audit store is unavailable", body = ErrorBody),
    ))]
async fn verify_audit(State(st): State<AppState>) -> Result<Json<ChainVerified>, ApiError> {
    let v = crate::verify_chain(&st.pool).await.map_err(|e| match e {
        crate::VerifyError::Database(e) => ApiError::Database(e),
        other => ApiError::StreamUnavailable(other.to_string()),
    })?;
    Ok(Json(ChainVerified {
        ok: v.first_bad.is_none(),
        entries: v.entries,
        first_bad: v.first_bad,
        checked: "chain",
    }))
}
