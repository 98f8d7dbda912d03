//! The anomalies module: its `[anomalies]` section, its routes and their handlers.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use chrono::TimeDelta;
use futures_util::future::BoxFuture;
use kairos_api::extract::{
    JsonBody, QueryParams, ReadAt, int_param, project_scope, text_param, time_param,
};
use kairos_api::{
    ApiError, AppState, Caller, Configured, ErrorBody, EventRule, Guard, Host, Module,
    ModuleConfig, ModuleError, Permission, Publish, Routes, Started,
};
use kairos_events::Emit;
use kairos_events::types::{ALERT_ACKNOWLEDGED, ALERT_RAISED, ALERT_RESOLVED, BREAKER_CHANGED};
use kairos_runtime::AnyProjection;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::migrate::Migrator;
use utoipa_axum::routes;

use crate::NAME;
use crate::alert::AlertConfig;
use crate::detector::DetectorConfig;
use crate::projection::{Anomalies, CostAction, Rules, SOURCE};
use crate::read::{self, Alert, AlertFilter, Breaker, Limit, Scored, Series};
use crate::series::Kind;
use crate::webhook::Webhook;

/// Why `as_of` is refused.
const NO_HISTORY: &str = "anomalies keep no point-in-time history; omit as_of (use from and to)";

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The anomalies module, registered by the binary.
pub struct AnomaliesModule;

/// The value the binary registers.
pub static MODULE: AnomaliesModule = AnomaliesModule;

/// The `[anomalies]` section of `kairos.toml`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AnomalySettings {
    /// The width of the buckets LLM calls are counted in for the derived series.
    pub bucket_seconds: u32,
    /// How long past a bucket's end calls for it are still counted.
    pub grace_seconds: u32,
    /// Fewest calls in a bucket for a model's error-rate and latency point.
    pub min_calls: u32,
    /// Most series watched. At the cap, a new series takes the place of the one idle longest,
    /// if that one has had no point for `evict_idle_hours` (series time) and no open alert;
    /// otherwise the new series is not watched.
    pub max_series: u32,
    pub evict_idle_hours: u32,
    /// Scored points kept per series (the newest).
    pub keep_points: u32,
    /// Resolved alerts are kept this long (series time: before the newest point folded).
    pub keep_alerts_days: u32,
    /// A series' detector state is saved every this many points.
    pub save_every: u32,
    /// A score at or above this, for `raise_points` points in a row, raises an alert.
    pub raise_above: f64,
    pub raise_points: u32,
    /// A score below this, with the value back in the expected range, for `resolve_points`
    /// points in a row, resolves it.
    pub resolve_below: f64,
    pub resolve_points: u32,
    /// No new alert on a series this long after one resolved.
    pub cooldown_minutes: u32,
    /// A silence longer than this resolves an open alert and restarts the counts.
    pub max_gap_minutes: u32,
    /// Low scores in a row after which an alert whose value stays off its old range resolves
    /// (the new level is accepted); `0`: never. Never for a breaker's series.
    pub new_normal_points: u32,
    /// Whether an alert on a model's error-rate or latency series opens its circuit breaker.
    pub breaker: bool,
    /// How long (series time) a breaker stays open before probe calls go through.
    pub probe_after_seconds: u32,
    /// Half-open: calls each API process lets through per bucket.
    pub probe_calls: u32,
    /// What an alert on a project's cost series does: `warn` or `lower_limit`.
    pub cost_action: CostAction,
    /// `lower_limit`: the factor the project's effective limit is multiplied by.
    pub limit_factor: f64,
    /// Where each alert event is POSTed (none: no webhook).
    pub webhook_url: Option<String>,
    /// The HMAC-SHA256 key of the webhook's signature (at least 16 characters); set it with
    /// `KAIROS_ANOMALIES_WEBHOOK_SECRET` rather than in the file.
    pub webhook_secret: Option<String>,
    /// Tries per event before it is given up.
    pub webhook_attempts: u32,
}

impl Default for AnomalySettings {
    fn default() -> Self {
        let alert = AlertConfig::default();
        Self {
            bucket_seconds: 60,
            grace_seconds: 30,
            min_calls: 3,
            max_series: 10_000,
            evict_idle_hours: 24,
            keep_points: 10_000,
            keep_alerts_days: 90,
            save_every: 500,
            raise_above: alert.raise_above,
            raise_points: 1,
            resolve_below: alert.resolve_below,
            resolve_points: 12,
            cooldown_minutes: 60,
            max_gap_minutes: 360,
            new_normal_points: 240,
            breaker: true,
            probe_after_seconds: 300,
            probe_calls: 5,
            cost_action: CostAction::Warn,
            limit_factor: 0.5,
            webhook_url: None,
            webhook_secret: None,
            webhook_attempts: 6,
        }
    }
}

impl AnomalySettings {
    fn check(&self, config: &ModuleConfig) -> Result<(), ModuleError> {
        let within = |v: u32, lo: u32, hi: u32, key: &str| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(config.invalid(key, format!("must be {lo} to {hi}")))
            }
        };
        within(self.bucket_seconds, 1, 3600, "bucket_seconds")?;
        within(self.grace_seconds, 0, 3600, "grace_seconds")?;
        within(self.min_calls, 1, 100_000, "min_calls")?;
        within(self.max_series, 1, 1_000_000, "max_series")?;
        within(self.evict_idle_hours, 1, 87_600, "evict_idle_hours")?;
        within(self.keep_points, 100, 10_000_000, "keep_points")?;
        within(self.save_every, 1, self.keep_points / 2, "save_every")?;
        within(self.keep_alerts_days, 1, 36_500, "keep_alerts_days")?;
        within(self.raise_points, 1, 1000, "raise_points")?;
        within(self.resolve_points, 1, 10_000, "resolve_points")?;
        within(self.cooldown_minutes, 0, 10_080, "cooldown_minutes")?;
        within(self.max_gap_minutes, 1, 43_200, "max_gap_minutes")?;
        within(self.new_normal_points, 0, 1_000_000, "new_normal_points")?;
        within(self.probe_after_seconds, 1, 86_400, "probe_after_seconds")?;
        within(self.probe_calls, 1, 10_000, "probe_calls")?;
        if !(self.raise_above > 0.0 && self.raise_above <= 1.0) {
            return Err(config.invalid("raise_above", "must be above 0 and at most 1"));
        }
        if !(self.resolve_below >= 0.0 && self.resolve_below <= self.raise_above) {
            return Err(config.invalid("resolve_below", "must be 0 to raise_above"));
        }
        if !(self.limit_factor > 0.0 && self.limit_factor < 1.0) {
            return Err(config.invalid("limit_factor", "must be above 0 and below 1"));
        }
        within(self.webhook_attempts, 1, 20, "webhook_attempts")?;
        self.webhook(config)?;
        Ok(())
    }

    /// The webhook, if one is configured: an http(s) URL and a secret of 16 characters or more.
    pub fn webhook(&self, config: &ModuleConfig) -> Result<Option<Webhook>, ModuleError> {
        let Some(raw) = &self.webhook_url else {
            return Ok(None);
        };
        let url = reqwest::Url::parse(raw)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| config.invalid("webhook_url", "must be an http:// or https:// URL"))?;
        let secret = self
            .webhook_secret
            .clone()
            .filter(|s| s.chars().count() >= 16)
            .ok_or_else(|| {
                config.invalid(
                    "webhook_secret",
                    "must be set, 16 characters or more, with webhook_url (KAIROS_ANOMALIES_WEBHOOK_SECRET)",
                )
            })?;
        Ok(Some(Webhook {
            url,
            secret,
            attempts: self.webhook_attempts,
        }))
    }

    /// The fold's rules.
    pub fn rules(&self) -> Rules {
        Rules {
            width_ms: i64::from(self.bucket_seconds) * 1000,
            grace_ms: i64::from(self.grace_seconds) * 1000,
            min_calls: u64::from(self.min_calls),
            max_series: self.max_series as usize,
            evict_idle_ms: i64::from(self.evict_idle_hours) * 3_600_000,
            keep_points: i64::from(self.keep_points),
            keep_alerts_ms: i64::from(self.keep_alerts_days) * 86_400_000,
            save_every: i64::from(self.save_every),
            detector: DetectorConfig::default(),
            alert: AlertConfig {
                raise_above: self.raise_above,
                raise_points: self.raise_points as usize,
                resolve_below: self.resolve_below,
                resolve_points: self.resolve_points as usize,
                cooldown: TimeDelta::minutes(i64::from(self.cooldown_minutes)),
                max_gap: TimeDelta::minutes(i64::from(self.max_gap_minutes)),
                new_normal_points: self.new_normal_points as usize,
            },
            breaker: self.breaker,
            probe_after: TimeDelta::seconds(i64::from(self.probe_after_seconds)),
            probe_calls: self.probe_calls,
            cost_action: self.cost_action,
            limit_factor: self.limit_factor,
        }
    }
}

impl Module for AnomaliesModule {
    fn name(&self) -> &'static str {
        NAME
    }

    fn migrations(&self) -> &'static Migrator {
        &MIGRATOR
    }

    fn config_section(&self) -> Option<&'static str> {
        Some("anomalies")
    }

    fn events(&self) -> &'static [EventRule] {
        const RULES: &[EventRule] = &[
            EventRule {
                ty: ALERT_RAISED,
                publish: Publish::KairosOnly,
            },
            EventRule {
                ty: ALERT_RESOLVED,
                publish: Publish::KairosOnly,
            },
            EventRule {
                ty: ALERT_ACKNOWLEDGED,
                publish: Publish::KairosOnly,
            },
            EventRule {
                ty: BREAKER_CHANGED,
                publish: Publish::KairosOnly,
            },
        ];
        RULES
    }

    fn configure(&self, config: &ModuleConfig) -> Result<Box<dyn Configured>, ModuleError> {
        let settings: AnomalySettings = config.get()?;
        settings.check(config)?;
        let webhook = settings.webhook(config)?;
        Ok(Box::new(AnomaliesConfigured { settings, webhook }))
    }
}

struct AnomaliesConfigured {
    settings: AnomalySettings,
    webhook: Option<Webhook>,
}

impl Configured for AnomaliesConfigured {
    fn projection(&self) -> Arc<dyn AnyProjection> {
        Arc::new(Anomalies::new(self.settings.rules()))
    }

    fn routes(&self) -> Routes {
        use Guard::Key;
        use Permission::{ManageAlerts, ReadProjections};
        Routes::new()
            .route(routes!(list_alerts), Key(ReadProjections), "anomalies.list")
            .route(
                routes!(acknowledge),
                Key(ManageAlerts),
                "anomalies.acknowledge",
            )
            .route(routes!(list_series), Key(ReadProjections), "series.list")
            .route(
                routes!(series_scores),
                Key(ReadProjections),
                "series.scores",
            )
            .route(
                routes!(list_breakers),
                Key(ReadProjections),
                "breakers.list",
            )
    }

    fn start<'a>(&'a self, host: &'a Host) -> BoxFuture<'a, Result<Started, ModuleError>> {
        if let Some(hook) = &self.webhook {
            tokio::spawn(crate::webhook::run(
                host.bus.clone(),
                hook.clone(),
                host.clock.clone(),
            ));
        }
        let banner = format!(
            "anomalies: {} s buckets, breaker {}, cost alerts {}, webhook {}",
            self.settings.bucket_seconds,
            if self.settings.breaker { "on" } else { "off" },
            match self.settings.cost_action {
                CostAction::Warn => "warn",
                CostAction::LowerLimit => "lower the limit",
            },
            self.webhook.as_ref().map_or("off".into(), |w| w
                .url
                .host_str()
                .unwrap_or("?")
                .to_owned()),
        );
        Box::pin(async move { Ok(Started::default().with_banner(banner)) })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertParams {
    status: Option<String>,
    series: Option<String>,
    project: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<String>,
    #[allow(dead_code)]
    min_seq: Option<String>,
    #[allow(dead_code)]
    as_of: Option<String>,
}

/// The alerts listed.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct AlertsAnswer {
    alerts: Vec<Alert>,
}

/// `GET /v1/anomalies?status=&series=&project=&from=&to=&limit=&min_seq=`
#[utoipa::path(get, path = "/v1/anomalies", tag = "anomalies",
    params(
        ("status" = Option<String>, Query, description = "`open` or `resolved`"),
        ("series" = Option<String>, Query, description = "Only this series' alerts"),
        ("project" = Option<String>, Query, description = "Only this project's alerts (and the models')"),
        ("from" = Option<String>, Query, description = "Raised at or after this RFC 3339 time"),
        ("to" = Option<String>, Query, description = "Raised before this RFC 3339 time"),
        ("limit" = Option<u32>, Query, description = "Most alerts, 1 to 1000 (default 100), newest first"),
        ("min_seq" = Option<u64>, Query, description = "Wait until the anomalies projection applied this stream sequence"),
    ),
    responses(
        (status = 200, description = "Alerts, newest raised first", body = AlertsAnswer),
        (status = 400, description = "A parameter is malformed", body = ErrorBody),
        (status = 403, description = "The role does not reach the project", body = ErrorBody),
        (status = 503, description = "Not applied within the wait, or a store is unavailable", body = ErrorBody),
    ))]
async fn list_alerts(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    read: ReadAt,
    QueryParams(q): QueryParams<AlertParams>,
) -> Result<Json<AlertsAnswer>, ApiError> {
    read.no_history(NO_HISTORY)?;
    let status = match q.status.as_deref() {
        None => None,
        Some(s @ ("open" | "resolved")) => Some(s.to_owned()),
        Some(_) => {
            return Err(ApiError::bad(
                "invalid_query",
                "status",
                "status must be open or resolved",
            ));
        }
    };
    if let Some(s) = &q.series {
        text_param(s, "series", crate::series::MAX_ID)?;
    }
    let filter = AlertFilter {
        status,
        series: q.series.clone(),
        from: time_param(q.from.as_deref(), "from")?,
        to: time_param(q.to.as_deref(), "to")?,
        projects: project_scope(&caller, q.project.as_deref())?,
        limit: i64::from(int_param(q.limit.as_deref(), "limit", 1, 1000, 100)?),
    };
    read.wait(&st, NAME).await?;
    let alerts = read::alerts(&st.pool, &filter).await?;
    Ok(Json(AlertsAnswer { alerts }))
}

/// What `POST /v1/anomalies/{id}/acknowledge` takes.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct AckBody {
    /// What you want to say about it (at most 1000 characters).
    note: Option<String>,
}

/// `POST /v1/anomalies/{id}/acknowledge`
#[utoipa::path(post, path = "/v1/anomalies/{id}/acknowledge", tag = "anomalies",
    params(("id" = String, Path, description = "The alert's id")),
    request_body(content = AckBody, content_type = "application/json"),
    responses(
        (status = 202, description = "The acknowledgement was appended: its seq, for min_seq", body = Acknowledged),
        (status = 400, description = "The body is malformed", body = ErrorBody),
        (status = 403, description = "Not an admin, or the role does not reach the alert's project", body = ErrorBody),
        (status = 404, description = "No such alert", body = ErrorBody),
        (status = 409, description = "Already acknowledged", body = ErrorBody),
        (status = 503, description = "A store is unavailable", body = ErrorBody),
    ))]
async fn acknowledge(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<AckBody>,
) -> Result<(StatusCode, Json<Acknowledged>), ApiError> {
    text_param(&id, "id", 700)?;
    if let Some(note) = &body.note
        && note.chars().count() > 1000
    {
        return Err(ApiError::bad(
            "invalid_body",
            "note",
            "note must be at most 1000 characters",
        ));
    }
    let principal = caller.principal()?;
    let Some(alert) = read::alert_by_id(&st.pool, &id).await? else {
        return Err(ApiError::NotFound(format!("no alert {id:?}")));
    };
    if let Some(p) = &alert.project {
        caller.reach(p)?;
    }
    if let Some(by) = &alert.acknowledged_by {
        return Err(ApiError::Conflict(format!(
            "alert {id} was acknowledged by {by}"
        )));
    }
    let mut data = json!({"alert_id": id, "by": principal.email});
    if let Some(note) = body.note {
        data["note"] = json!(note);
    }
    let mut emit = Emit::new(ALERT_ACKNOWLEDGED, SOURCE, data)
        .id(format!("ack/{id}"))
        .time(st.clock.now());
    if let Some(p) = &alert.project {
        emit = emit.subject(p.as_str());
    }
    let event = emit.build().map_err(ApiError::InvalidEvent)?;
    let receipt = st
        .bus
        .publish_event(&event)
        .await
        .map_err(|e| ApiError::StreamUnavailable(e.to_string()))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Acknowledged {
            alert_id: id,
            seq: receipt.seq.0,
            duplicate: receipt.duplicate,
        }),
    ))
}

/// An acknowledgement, appended.
#[derive(Serialize, utoipa::ToSchema)]
struct Acknowledged {
    alert_id: String,
    /// The event's stream sequence, for `?min_seq=`.
    seq: u64,
    /// True when this acknowledgement was stored before (the same one sent again).
    duplicate: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeriesParams {
    project: Option<String>,
    kind: Option<String>,
    limit: Option<String>,
    #[allow(dead_code)]
    min_seq: Option<String>,
    #[allow(dead_code)]
    as_of: Option<String>,
}

/// The series listed.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct SeriesAnswer {
    series: Vec<Series>,
}

/// `GET /v1/series?project=&kind=&limit=&min_seq=`
#[utoipa::path(get, path = "/v1/series", tag = "anomalies",
    params(
        ("project" = Option<String>, Query, description = "Only this project's series (and the models')"),
        ("kind" = Option<String>, Query, description = "llm.error_rate, llm.latency_p95_ms, llm.cost_usd_per_minute, llm.tokens_per_minute or metric"),
        ("limit" = Option<u32>, Query, description = "Most series, 1 to 10000 (default 1000)"),
        ("min_seq" = Option<u64>, Query, description = "Wait until the anomalies projection applied this stream sequence"),
    ),
    responses(
        (status = 200, description = "The series watched, those with an open alert first", body = SeriesAnswer),
        (status = 400, description = "A parameter is malformed", body = ErrorBody),
        (status = 403, description = "The role does not reach the project", body = ErrorBody),
        (status = 503, description = "Not applied within the wait, or a store is unavailable", body = ErrorBody),
    ))]
async fn list_series(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    read: ReadAt,
    QueryParams(q): QueryParams<SeriesParams>,
) -> Result<Json<SeriesAnswer>, ApiError> {
    read.no_history(NO_HISTORY)?;
    if let Some(k) = &q.kind
        && Kind::parse(k).is_none()
    {
        let kinds: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
        return Err(ApiError::bad(
            "invalid_query",
            "kind",
            format!("kind must be one of {}", kinds.join(", ")),
        ));
    }
    let projects = project_scope(&caller, q.project.as_deref())?;
    let limit = i64::from(int_param(q.limit.as_deref(), "limit", 1, 10_000, 1000)?);
    read.wait(&st, NAME).await?;
    let series = read::series(&st.pool, projects.as_deref(), q.kind.as_deref(), limit).await?;
    Ok(Json(SeriesAnswer { series }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScoresParams {
    from: Option<String>,
    to: Option<String>,
    limit: Option<String>,
    #[allow(dead_code)]
    min_seq: Option<String>,
    #[allow(dead_code)]
    as_of: Option<String>,
}

/// A series' scored points.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct ScoresAnswer {
    series: String,
    points: Vec<Scored>,
}

/// `GET /v1/series/{series}/scores?from=&to=&limit=&min_seq=`
#[utoipa::path(get, path = "/v1/series/{series}/scores", tag = "anomalies",
    params(
        ("series" = String, Path, description = "The series id, percent-encoded"),
        ("from" = Option<String>, Query, description = "Points at or after this RFC 3339 time"),
        ("to" = Option<String>, Query, description = "Points before this RFC 3339 time"),
        ("limit" = Option<u32>, Query, description = "Most points (the newest), 1 to 10000 (default 1000)"),
        ("min_seq" = Option<u64>, Query, description = "Wait until the anomalies projection applied this stream sequence"),
    ),
    responses(
        (status = 200, description = "The points, oldest first, each with its value and anomaly score", body = ScoresAnswer),
        (status = 400, description = "A parameter is malformed", body = ErrorBody),
        (status = 403, description = "The role does not reach the series' project", body = ErrorBody),
        (status = 404, description = "No such series", body = ErrorBody),
        (status = 503, description = "Not applied within the wait, or a store is unavailable", body = ErrorBody),
    ))]
async fn series_scores(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(series): Path<String>,
    read: ReadAt,
    QueryParams(q): QueryParams<ScoresParams>,
) -> Result<Json<ScoresAnswer>, ApiError> {
    read.no_history(NO_HISTORY)?;
    text_param(&series, "series", crate::series::MAX_ID)?;
    let from = time_param(q.from.as_deref(), "from")?;
    let to = time_param(q.to.as_deref(), "to")?;
    let limit = i64::from(int_param(q.limit.as_deref(), "limit", 1, 10_000, 1000)?);
    read.wait(&st, NAME).await?;
    match read::series_project(&st.pool, &series).await? {
        None => return Err(ApiError::NotFound(format!("no series {series:?}"))),
        Some(Some(p)) => caller.reach(&p)?,
        Some(None) => {}
    }
    let points = read::scores(&st.pool, &series, from, to, limit).await?;
    Ok(Json(ScoresAnswer { series, points }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BreakersParams {
    project: Option<String>,
    #[allow(dead_code)]
    min_seq: Option<String>,
    #[allow(dead_code)]
    as_of: Option<String>,
}

/// The models the circuit breaker has taken out, and the limits cost alerts lowered.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct BreakersAnswer {
    /// Breakers open or half-open (a closed one is not listed), by model.
    breakers: std::collections::BTreeMap<String, Breaker>,
    /// Projects the key reaches whose effective limit is lowered until an acknowledgement.
    lowered_limits: std::collections::BTreeMap<String, Limit>,
}

/// `GET /v1/breakers?project=&min_seq=`
#[utoipa::path(get, path = "/v1/breakers", tag = "anomalies",
    params(
        ("project" = Option<String>, Query, description = "Only this project's lowered limit (breakers are per model, always all)"),
        ("min_seq" = Option<u64>, Query, description = "Wait until the anomalies projection applied this stream sequence"),
    ),
    responses(
        (status = 200, description = "The breakers not closed, and the lowered limits", body = BreakersAnswer),
        (status = 400, description = "A parameter is malformed", body = ErrorBody),
        (status = 403, description = "The role does not reach the project", body = ErrorBody),
        (status = 503, description = "Not applied within the wait, or a store is unavailable", body = ErrorBody),
    ))]
async fn list_breakers(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    read: ReadAt,
    QueryParams(q): QueryParams<BreakersParams>,
) -> Result<Json<BreakersAnswer>, ApiError> {
    read.no_history(NO_HISTORY)?;
    let projects = project_scope(&caller, q.project.as_deref())?;
    read.wait(&st, NAME).await?;
    let c = read::circuit(&st.pool).await?;
    let reached = |p: &String| projects.as_ref().is_none_or(|ps| ps.contains(p));
    Ok(Json(BreakersAnswer {
        breakers: c.breakers.into_iter().collect(),
        lowered_limits: c.limits.into_iter().filter(|(p, _)| reached(p)).collect(),
    }))
}
