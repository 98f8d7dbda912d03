//! The router module: its `[router]` section, the reservation sweeper and its routes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, TimeDelta, Utc};
use futures_util::future::BoxFuture;
use kairos_analytics::Health;
use kairos_anomalies::read::Circuit;
use kairos_api::extract::{
    JsonBody, QueryParams, ReadAt, limit_param, project_param, seq_param, text_param, time_param,
    wait_for,
};
use kairos_api::{
    ApiError, AppState, Caller, Configured, ErrorBody, EventRule, Guard, Host, Module,
    ModuleConfig, ModuleError, Permission, Publish, Recorded, Routes, Started,
};
use kairos_budgets::{BudgetCommands, BudgetSetting, Spent};
use kairos_catalog::CatalogState;
use kairos_events::types::{
    BUDGET_RESERVATION_EXPIRED, BUDGET_RESERVED, ROUTER_DECISION, ReservationClosed, Reserved,
};
use kairos_events::{Emit, Event, Money, Period, ProjectId};
use kairos_runtime::{AggregateStore, AnyProjection, Decision};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use utoipa_axum::routes;

use crate::rules::{Alternative, BudgetState, Outcome, RouteRequest, decide};
use crate::{DecisionRecord, Decisions, NAME, SOURCE};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The router module, registered by the binary.
pub struct RouterModule;

/// The value the binary registers.
pub static MODULE: RouterModule = RouterModule;

/// The `[router]` section of `kairos.toml`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouterSettings {
    /// How long a reservation holds budget unless the call settles it.
    #[serde(default = "default_ttl")]
    pub reservation_ttl_secs: u64,
    /// How often expired reservations are looked for.
    #[serde(default = "default_sweep")]
    pub expiry_sweep_ms: u64,
    /// The window of the health figures that break ties.
    #[serde(default = "default_health_window")]
    pub health_window_minutes: u32,
    /// How old the health figures may be before a route reads them again.
    #[serde(default = "default_health_refresh")]
    pub health_refresh_ms: u64,
}

fn default_ttl() -> u64 {
    600
}
fn default_sweep() -> u64 {
    1000
}
fn default_health_window() -> u32 {
    60
}
fn default_health_refresh() -> u64 {
    1000
}

impl Module for RouterModule {
    fn name(&self) -> &'static str {
        NAME
    }

    fn migrations(&self) -> &'static Migrator {
        &MIGRATOR
    }

    fn config_section(&self) -> Option<&'static str> {
        Some("router")
    }

    fn events(&self) -> &'static [EventRule] {
        &[EventRule {
            ty: ROUTER_DECISION,
            publish: Publish::KairosOnly,
        }]
    }

    fn configure(&self, config: &ModuleConfig) -> Result<Box<dyn Configured>, ModuleError> {
        let settings: RouterSettings = config.get()?;
        if settings.reservation_ttl_secs == 0 || settings.reservation_ttl_secs > 86_400 * 31 {
            return Err(config.invalid("reservation_ttl_secs", "must be 1 s to 31 days"));
        }
        if settings.expiry_sweep_ms < 10 {
            return Err(config.invalid("expiry_sweep_ms", "must be at least 10"));
        }
        if !(1..=1440).contains(&settings.health_window_minutes) {
            return Err(config.invalid("health_window_minutes", "must be 1 to 1440"));
        }
        // Months are the budgets' months: their time zone is `[budgets] timezone` (UTC by
        // default), which the budgets module checks.
        let timezone = config
            .peer("budgets")
            .and_then(|b| serde_json::to_value(b).ok())
            .and_then(|b| b.get("timezone").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| "UTC".into());
        let tz: chrono_tz::Tz = timezone.parse().map_err(|_| {
            config.invalid("timezone", "([budgets] timezone) is not an IANA time zone")
        })?;
        Ok(Box::new(RouterConfigured { settings, tz }))
    }
}

struct RouterConfigured {
    settings: RouterSettings,
    tz: chrono_tz::Tz,
}

/// What the router's handlers share.
#[derive(Clone)]
pub struct Router {
    settings: Arc<RouterSettings>,
    tz: chrono_tz::Tz,
    catalog: Arc<AggregateStore<CatalogState>>,
    budgets: BudgetCommands,
    health: Arc<Mutex<Recent<HashMap<String, Health>>>>,
    circuit: Arc<Mutex<Recent<Circuit>>>,
    /// Half-open breakers: the probe calls this process let through, by model: (window
    /// start in ms of the clock, calls).
    probes: Arc<Mutex<HashMap<String, (i64, u32)>>>,
}

/// A projection's figures as last read, and when: read again once older than
/// `health_refresh_ms`, or when a caller needs a newer sequence than they were read at.
struct Recent<T> {
    read_at: Option<Instant>,
    /// The projection's announced checkpoint when read.
    seq: u64,
    value: Arc<T>,
}

impl<T: Default> Default for Recent<T> {
    fn default() -> Self {
        Self {
            read_at: None,
            seq: 0,
            value: Arc::default(),
        }
    }
}

/// The figures in `cache` if they are young enough and cover `min_seq`, else `read()`'s, which
/// then replace them. `projection` is the one they come from.
async fn recent<T, F>(
    cache: &Mutex<Recent<T>>,
    st: &AppState,
    projection: &str,
    refresh: Duration,
    min_seq: u64,
    read: F,
) -> Result<Arc<T>, ApiError>
where
    F: Future<Output = Result<T, ApiError>>,
{
    let announced = st.checkpoints.announced(projection).unwrap_or(0);
    {
        let c = cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let young = c.read_at.is_some_and(|t| t.elapsed() < refresh);
        if young && c.seq >= min_seq {
            return Ok(c.value.clone());
        }
    }
    let value = Arc::new(read.await?);
    *cache
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Recent {
        read_at: Some(Instant::now()),
        seq: announced.max(min_seq),
        value: value.clone(),
    };
    Ok(value)
}

impl Configured for RouterConfigured {
    fn projection(&self) -> Arc<dyn AnyProjection> {
        Arc::new(Decisions)
    }

    fn routes(&self) -> Routes {
        use Guard::Key;
        use Permission::{ManageCatalog, ReadProjections, Route};
        Routes::new()
            .route(routes!(post_route), Key(Route), "route.decide")
            .route(
                routes!(list_decisions),
                Key(ReadProjections),
                "route.decisions",
            )
            .route(
                routes!(get_decision),
                Key(ReadProjections),
                "route.decision",
            )
            .route(routes!(post_simulate), Key(ManageCatalog), "route.simulate")
    }

    fn start<'a>(&'a self, host: &'a Host) -> BoxFuture<'a, Result<Started, ModuleError>> {
        Box::pin(async move {
            let catalog = kairos_catalog::store(&host.commands);
            catalog
                .catch_up()
                .await
                .map_err(|e| ModuleError(format!("reading the model catalog: {e}")))?;
            tokio::spawn(catalog.clone().follow());
            let router = Router {
                settings: Arc::new(self.settings.clone()),
                tz: self.tz,
                catalog,
                budgets: BudgetCommands::new(host.commands.clone()),
                health: Arc::default(),
                circuit: Arc::default(),
                probes: Arc::default(),
            };
            tokio::spawn(sweep(router.clone(), host.pool.clone(), host.clock.clone()));
            Ok(Started::default()
                .with_extension(router)
                .with_banner(format!(
                    "router: reservations held {} s",
                    self.settings.reservation_ttl_secs
                )))
        })
    }
}

/// Expires the reservations past their time, every `expiry_sweep_ms`, each through the
/// budget's command path (one that was settled meanwhile is left alone).
async fn sweep(router: Router, pool: PgPool, clock: kairos_events::Clock) {
    let every = Duration::from_millis(router.settings.expiry_sweep_ms);
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = expire_due(&router.budgets, &pool, clock.now()).await {
            tracing::warn!(error = %e, "expiring reservations failed; retrying");
        }
    }
}

/// Releases the reservation `id` of `project` now, if it is still open (best effort: what
/// fails here the sweeper releases when it expires).
async fn release(budgets: &BudgetCommands, project: &ProjectId, id: &str, now: DateTime<Utc>) {
    let done = budgets
        .of(project)
        .execute(|b: &BudgetSetting| {
            let Some(r) = b.open.get(id) else {
                return Ok::<_, String>(Decision::nothing(()));
            };
            Ok(Decision::append(expiry_event(project, id, r, now)?, ()))
        })
        .await;
    if let Err(e) = done {
        tracing::warn!(%project, reservation = %id, error = %e, "releasing a reservation failed; it expires later");
    }
}

/// The `kairos.budget.reservation_expired.v1` releasing `r`.
fn expiry_event(
    project: &ProjectId,
    id: &str,
    r: &Reserved,
    now: DateTime<Utc>,
) -> Result<Event, String> {
    let closed = ReservationClosed {
        project: project.clone(),
        reservation_id: id.to_owned(),
        period: r.period.clone(),
        amount: r.amount,
        cost: None,
        call_seq: None,
    };
    let data = serde_json::to_value(&closed).map_err(|e| e.to_string())?;
    Emit::new(BUDGET_RESERVATION_EXPIRED, SOURCE, data)
        .id(format!("expired/{id}"))
        .subject(project.as_str())
        .time(now)
        .build()
        .map_err(|e| e.to_string())
}

/// Appends a `kairos.budget.reservation_expired.v1` for each open reservation due at `now`;
/// how many.
pub async fn expire_due(
    budgets: &BudgetCommands,
    pool: &PgPool,
    now: DateTime<Utc>,
) -> Result<usize, String> {
    let due = kairos_budgets::expired_reservations(pool, now, 1000)
        .await
        .map_err(|e| e.to_string())?;
    let mut expired = 0;
    for (project, id) in due {
        let done = budgets
            .of(&project)
            .execute(|b: &BudgetSetting| {
                let Some(r) = b.open.get(&id).filter(|r| r.expires_at <= now) else {
                    return Ok::<_, String>(Decision::nothing(()));
                };
                let event = expiry_event(&project, &id, r, now)?;
                Ok(Decision::append(event, ()))
            })
            .await;
        // One aggregate that keeps conflicting must not hold the others' expiries back.
        match done {
            Ok(done) => expired += usize::from(done.seq.is_some()),
            Err(e) => {
                tracing::warn!(%project, reservation = %id, error = %e, "expiring a reservation failed; next sweep")
            }
        }
    }
    Ok(expired)
}

impl Router {
    /// The last-hour health figures, read again when older than `health_refresh_ms` or when
    /// the caller needs the analytics of a newer sequence.
    async fn health(
        &self,
        st: &AppState,
        now: DateTime<Utc>,
        min_seq: u64,
    ) -> Result<Arc<HashMap<String, Health>>, ApiError> {
        let window = TimeDelta::minutes(i64::from(self.settings.health_window_minutes));
        recent(
            &self.health,
            st,
            kairos_analytics::NAME,
            Duration::from_millis(self.settings.health_refresh_ms),
            min_seq,
            async { Ok(kairos_analytics::health(&st.pool, now - window, now).await?) },
        )
        .await
    }
}

impl Router {
    /// The anomalies projection's breakers and lowered limits, read again when older than
    /// `health_refresh_ms` or when the caller needs a newer sequence (so a breaker opens for
    /// routing at most `health_refresh_ms` after the projection applied its alert).
    async fn circuit(&self, st: &AppState, min_seq: u64) -> Result<Arc<Circuit>, ApiError> {
        recent(
            &self.circuit,
            st,
            kairos_anomalies::NAME,
            Duration::from_millis(self.settings.health_refresh_ms),
            min_seq,
            async { Ok(kairos_anomalies::read::circuit(&st.pool).await?) },
        )
        .await
    }

    /// The models a breaker keeps out of this decision, with why; and the half-open ones this
    /// decision may probe, each holding one probe call of the current window (taken here,
    /// under the lock, so that concurrent routes cannot all probe; given back with
    /// [`Router::give_back`] by a decision that chose another model).
    fn tripped(
        &self,
        circuit: &Circuit,
        now: DateTime<Utc>,
    ) -> (HashMap<String, String>, Vec<String>) {
        let mut out = HashMap::new();
        let mut probing = Vec::new();
        let mut probes = self
            .probes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (model, b) in &circuit.breakers {
            if b.state != "half_open" {
                out.insert(model.clone(), format!("circuit open: {}", b.reason));
                continue;
            }
            let (start, window) = probe_window(b, now);
            let e = probes.entry(model.clone()).or_insert((start, 0));
            if e.0 != start {
                *e = (start, 0);
            }
            if e.1 >= b.probe_calls {
                out.insert(
                    model.clone(),
                    format!(
                        "circuit half-open: the {} probe calls of this {} s window are taken ({})",
                        b.probe_calls,
                        window / 1000,
                        b.reason
                    ),
                );
            } else {
                e.1 += 1;
                probing.push(model.clone());
            }
        }
        (out, probing)
    }

    /// Gives back the probe calls [`Router::tripped`] took for `models` (not chosen).
    fn give_back(&self, models: &[String], now: DateTime<Utc>, circuit: &Circuit) {
        let mut probes = self
            .probes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for model in models {
            let Some(b) = circuit.breakers.get(model) else {
                continue;
            };
            let (start, _) = probe_window(b, now);
            if let Some(e) = probes.get_mut(model)
                && e.0 == start
            {
                e.1 = e.1.saturating_sub(1);
            }
        }
    }
}

/// The start (ms) and width of the probe window of half-open `b` that `now` is in.
fn probe_window(b: &kairos_anomalies::read::Breaker, now: DateTime<Utc>) -> (i64, i64) {
    let window = b.probe_window_ms.max(1);
    (now.timestamp_millis().div_euclid(window) * window, window)
}

/// What `POST /v1/route` takes.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RouteBody {
    /// The project the call is billed to.
    project: String,
    /// Tokens of the prompt (0 to 10,000,000).
    input_tokens: u64,
    /// Output tokens the task is expected to need.
    expected_output_tokens: u64,
    /// The `max_tokens` the call will be sent with: the worst case a reservation holds (default:
    /// the model's maximum output).
    max_output_tokens: Option<u64>,
    /// What the call is for (recorded with the decision).
    task: Option<String>,
    /// The lowest quality tier acceptable, 1 to 5.
    min_tier: Option<u8>,
    /// Tags every candidate model must carry.
    #[serde(default)]
    tags: Vec<String>,
}

const MAX_TOKENS: u64 = kairos_events::types::MAX_CONTEXT_WINDOW;

impl RouteBody {
    fn check(self) -> Result<RouteRequest, ApiError> {
        let project = project_param(&self.project).map_err(|_| {
            ApiError::bad("invalid_body", "project", "project must be a project id")
        })?;
        for (field, v) in [
            ("input_tokens", Some(self.input_tokens)),
            ("expected_output_tokens", Some(self.expected_output_tokens)),
            ("max_output_tokens", self.max_output_tokens),
        ] {
            if v.is_some_and(|v| v > MAX_TOKENS) {
                return Err(ApiError::bad(
                    "invalid_body",
                    field,
                    format!("{field} must be at most {MAX_TOKENS}"),
                ));
            }
        }
        if self
            .max_output_tokens
            .is_some_and(|m| m < self.expected_output_tokens)
        {
            return Err(ApiError::bad(
                "invalid_body",
                "max_output_tokens",
                "max_output_tokens must be at least expected_output_tokens",
            ));
        }
        if self.min_tier.is_some_and(|t| !(1..=5).contains(&t)) {
            return Err(ApiError::bad(
                "invalid_body",
                "min_tier",
                "min_tier must be 1 to 5",
            ));
        }
        if let Some(task) = &self.task {
            text_param(task, "task", 200)?;
        }
        if self.tags.len() > 20 {
            return Err(ApiError::bad("invalid_body", "tags", "at most 20 tags"));
        }
        for tag in &self.tags {
            text_param(tag, "tags", 64)?;
        }
        Ok(RouteRequest {
            project: project.to_string(),
            input_tokens: self.input_tokens,
            expected_output_tokens: self.expected_output_tokens,
            max_output_tokens: self.max_output_tokens,
            task: self.task,
            min_tier: self.min_tier,
            tags: self.tags,
        })
    }
}

/// The budget a decision sees: the setting and open reservations of the budget's own subject,
/// the spend the budgets projection applied, and the settlements it announced after that.
fn budget_state(b: &BudgetSetting, period: &str, spent: Spent) -> Option<BudgetState> {
    let set = b.budget.as_ref()?;
    let reserved = b
        .reserved_in(period)
        .checked_add(b.settled_after(period, spent.applied))
        .unwrap_or(Money::MAX);
    Some(BudgetState {
        period: period.to_owned(),
        limit: set.monthly_limit,
        spent: spent.spent,
        unpriced_calls: spent.unpriced_calls,
        reserved,
        warn_at_percent: set.warn_at_percent,
        on_exceeded: set.on_exceeded,
        fallback_model: set.fallback_model.clone(),
    })
}

/// `POST /v1/route?min_seq=`: which model the next call should use.
#[utoipa::path(post, path = "/v1/route", tag = "router",
    params(
        ("min_seq" = Option<u64>, Query, description = "Decide only once budgets and analytics applied this stream sequence"),
    ),
    request_body(content = RouteBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The model, the rule that decided, the alternatives and the decision's id and seq", body = RouteAnswer),
        (status = 400, description = "The body is malformed", body = ErrorBody),
        (status = 402, description = "The budget admits no call (exceeded under block, or nothing fits what is left): the decision, with its error", body = RouteAnswer),
        (status = 403, description = "The key's role does not reach the project", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 415, description = "Not application/json", body = ErrorBody),
        (status = 422, description = "No model fits the task (the largest window is named): the decision, with its error", body = RouteAnswer),
        (status = 503, description = "Not applied within the wait, or a store is unavailable", body = ErrorBody),
    ))]
async fn post_route(
    State(st): State<AppState>,
    Extension(router): Extension<Router>,
    Extension(caller): Extension<Caller>,
    read: ReadAt,
    JsonBody(body): JsonBody<RouteBody>,
) -> Result<Response, ApiError> {
    let req = body.check()?;
    caller.reach(&req.project)?;
    let project = project_param(&req.project)?;
    if let Some(seq) = read.min_seq {
        wait_for(&st, kairos_budgets::NAME, seq).await?;
        wait_for(&st, kairos_analytics::NAME, seq).await?;
        wait_for(&st, kairos_anomalies::NAME, seq).await?;
        // The catalog is followed; a caller naming a sequence (say, a catalog change's) gets
        // the catalog as of at least it.
        router
            .catalog
            .catch_up()
            .await
            .map_err(|e| ApiError::StreamUnavailable(e.to_string()))?;
    }
    let now = st.clock.now();
    let month = Period::containing(now, &router.tz);
    let period = month.to_string();
    let health = router.health(&st, now, read.min_seq.unwrap_or(0)).await?;
    let circuit = router.circuit(&st, read.min_seq.unwrap_or(0)).await?;
    let (catalog_version, models) = router.catalog.read(|c| (c.version, c.models.clone()));
    // Models a circuit breaker keeps out are not considered; the decision says why.
    let (tripped, probing) = router.tripped(&circuit, now);
    let skipped: Vec<_> = models
        .iter()
        .filter_map(|m| {
            tripped.get(&m.name).map(|why| crate::rules::Alternative {
                model: m.name.clone(),
                provider: m.provider.clone(),
                rank: None,
                estimated_cost: None,
                reason: why.clone(),
            })
        })
        .collect();
    let models = crate::rules::without_tripped(&models, |m| tripped.contains_key(m));
    let lowered = circuit.limits.get(project.as_str()).cloned();
    let decision_id = uuid::Uuid::now_v7().to_string();
    let store = router.budgets.of(&project);
    store
        .catch_up()
        .await
        .map_err(|e| ApiError::StreamUnavailable(e.to_string()))?;
    let has_budget = store.read(|b| b.budget.is_some());
    // The spend is read only for a budget, and before the decision: settlements announced
    // after it are counted from the aggregate (see `budget_state`).
    let spent = match has_budget {
        true => Some(kairos_budgets::spent(&st.pool, &project, month).await?),
        false => None,
    };
    let ttl =
        TimeDelta::seconds(i64::try_from(router.settings.reservation_ttl_secs).unwrap_or(600));
    let expires_at = now + ttl;
    // Routes of one project that arrive together are decided in turn and their reservations
    // appended as one event (a group commit on the budget's subject).
    let done = store
        .execute_grouped({
            let (req, period, project, decision_id) = (
                req.clone(),
                period.clone(),
                project.clone(),
                decision_id.clone(),
            );
            let (health, lowered, skipped) = (health.clone(), lowered.clone(), skipped.clone());
            let models = models.clone().into_owned();
            move |b: &BudgetSetting| {
                let mut budget = spent.and_then(|s| budget_state(b, &period, s));
                // An open cost alert lowered the limit this decision sees.
                if let (Some(b), Some(l)) = (budget.as_mut(), &lowered) {
                    b.lower_limit(l.factor);
                }
                let mut plan = decide(&req, &models, now, budget.as_ref(), &health);
                plan.alternatives.extend(skipped.iter().cloned());
                let reservation = match (&plan.outcome, &plan.chosen) {
                    (Outcome::Reserved, Some(c)) => {
                        let data = serde_json::to_value(Reserved {
                            project: project.clone(),
                            reservation_id: decision_id.clone(),
                            period: period.clone(),
                            model: c.model.clone(),
                            amount: c.worst_case_cost,
                            expires_at,
                        })
                        .map_err(|e| ApiError::StreamUnavailable(e.to_string()))?;
                        Some(
                            Emit::new(BUDGET_RESERVED, SOURCE, data)
                                .id(format!("reserved/{decision_id}"))
                                .subject(project.as_str())
                                .time(now)
                                .build()
                                .map_err(ApiError::InvalidEvent)?,
                        )
                    }
                    _ => None,
                };
                Ok::<_, ApiError>(match reservation {
                    Some(e) => Decision::append(e, (plan, budget)),
                    None => Decision::nothing((plan, budget)),
                })
            }
        })
        .await?;
    let (mut plan, budget) = done.value;
    let reserved = done.seq.map(|s| s.0);
    let probe = plan
        .chosen
        .as_ref()
        .map(|c| c.model.clone())
        .filter(|m| probing.contains(m));
    let unused: Vec<String> = probing
        .iter()
        .filter(|m| probe.as_ref() != Some(*m))
        .cloned()
        .collect();
    router.give_back(&unused, now, &circuit);
    if let Some(m) = &probe {
        plan.reason = format!("{} (a half-open circuit's probe call of {m})", plan.reason);
    }
    let circuit_note = (!tripped.is_empty() || probe.is_some() || lowered.is_some()).then(|| {
        json!({
            "skipped": tripped,
            "probe": probe,
            "lowered_limit": lowered.as_ref().map(|l| json!({
                "alert_id": l.alert_id, "factor": l.factor, "since": l.since,
            })),
        })
    });
    let qualified: serde_json::Map<String, Value> = plan
        .chosen
        .iter()
        .map(|c| c.model.as_str())
        .chain(
            plan.alternatives
                .iter()
                .filter(|a| a.rank.is_some())
                .map(|a| a.model.as_str()),
        )
        .filter_map(|m| Some((m.to_owned(), serde_json::to_value(health.get(m)?).ok()?)))
        .collect();
    let record = DecisionRecord {
        project: req.project.clone(),
        request: req.clone(),
        outcome: plan.outcome,
        rule: plan.rule.clone(),
        model: plan.chosen.as_ref().map(|c| c.model.clone()),
        provider: plan.chosen.as_ref().map(|c| c.provider.clone()),
        estimated_cost: plan.chosen.as_ref().map(|c| c.estimated_cost),
        reserved: reserved
            .and(plan.chosen.as_ref())
            .map(|c| c.worst_case_cost),
        reservation_expires_at: reserved.map(|_| expires_at),
        catalog_version,
        budget: budget.clone(),
        health: Value::Object(qualified),
        alternatives: plan.alternatives.clone(),
        reason: plan.reason.clone(),
        actor: caller.principal.as_ref().map(|p| p.email.clone()),
        circuit: circuit_note.clone(),
    };
    let event = decision_event(&decision_id, &record, now)?;
    // On a task of its own, so that a client hanging up cannot cut it short between the
    // reservation and its decision: a reservation whose decision could not be stored is
    // released at once rather than held until it expires.
    let (bus, budgets) = (st.bus.clone(), router.budgets.clone());
    let (id, holder) = (decision_id.clone(), project.clone());
    let stored = tokio::spawn(async move {
        let published = bus.publish_event(&event).await;
        if published.is_err() && reserved.is_some() {
            release(&budgets, &holder, &id, now).await;
        }
        published
    })
    .await
    .map_err(|e| ApiError::StreamUnavailable(e.to_string()))?;
    let receipt = stored.map_err(|e| {
        ApiError::StreamUnavailable(format!(
            "decision {decision_id} could not be stored ({e}); its reservation, if any, was released"
        ))
    })?;
    let seq = receipt.seq.0;
    let status = match plan.outcome {
        Outcome::Routed | Outcome::Reserved => StatusCode::OK,
        Outcome::NoModelFits => StatusCode::UNPROCESSABLE_ENTITY,
        Outcome::BudgetBlocked => StatusCode::PAYMENT_REQUIRED,
    };
    let error = (status != StatusCode::OK).then(|| RouteError {
        code: match plan.outcome {
            Outcome::NoModelFits => "no_model_fits",
            _ => "budget_exceeded",
        },
        message: record.reason.clone(),
    });
    let answer = RouteAnswer {
        explain: format!("/v1/route/decisions/{decision_id}?min_seq={seq}"),
        decision_id,
        seq,
        outcome: record.outcome,
        rule: record.rule,
        model: record.model,
        provider: record.provider,
        estimated_cost: record.estimated_cost,
        reserved: record.reserved,
        reservation_seq: reserved,
        reservation_expires_at: record.reservation_expires_at,
        catalog_version,
        budget: budget.as_ref().map(BudgetSeen::of),
        alternatives: record.alternatives,
        reason: record.reason,
        circuit: circuit_note,
        error,
    };
    let mut response = (status, Json(answer)).into_response();
    // The decision (with its actor) is this request's record.
    response.extensions_mut().insert(Recorded);
    Ok(response)
}

/// What `POST /v1/route` answers: the decision, and how to read it back explained.
#[derive(Serialize, utoipa::ToSchema)]
struct RouteAnswer {
    decision_id: String,
    /// The decision event's stream sequence.
    seq: u64,
    outcome: Outcome,
    /// The rule that decided (`context_window`, `budget_exceeded_fallback`, `cheapest`,
    /// `best_quality`, …).
    rule: String,
    /// The model chosen; `null` when none was (402, 422).
    model: Option<String>,
    provider: Option<String>,
    /// USD, a decimal string: input plus expected output at the model's price.
    #[schema(value_type = Option<String>)]
    estimated_cost: Option<Money>,
    /// USD held against the budget until the call settles (outcome `reserved`).
    #[schema(value_type = Option<String>)]
    reserved: Option<Money>,
    /// The reservation event's stream sequence.
    reservation_seq: Option<u64>,
    reservation_expires_at: Option<DateTime<Utc>>,
    /// The catalog version (its change's stream sequence) decided against.
    catalog_version: u64,
    /// The budget as the decision saw it; `null`: the project has none.
    budget: Option<BudgetSeen>,
    /// Every model not chosen, ranked or ruled out, with why.
    alternatives: Vec<Alternative>,
    reason: String,
    /// The decision explained, once the router projection applied it.
    explain: String,
    /// What circuit breakers and lowered limits did (absent: nothing).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    circuit: Option<Value>,
    /// With 402 and 422: the error, beside the decision.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<RouteError>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct RouteError {
    /// `no_model_fits` or `budget_exceeded`.
    code: &'static str,
    message: String,
}

/// A project's budget as a decision saw it (USD amounts as decimal strings).
#[derive(Serialize, utoipa::ToSchema)]
struct BudgetSeen {
    period: String,
    /// The limit, lowered when an open cost alert lowers it.
    #[schema(value_type = String)]
    limit: Money,
    #[schema(value_type = String)]
    spent: Money,
    #[schema(value_type = String)]
    reserved: Money,
    unpriced_calls: i64,
    /// What new reservations may still take.
    #[schema(value_type = String)]
    available: Money,
    /// `ok`, `warning` or `exceeded`, on what is spent and reserved.
    status: &'static str,
    /// `fallback_to_local` or `block`.
    #[schema(value_type = String)]
    on_exceeded: kairos_events::types::OnExceeded,
    warn_at_percent: u8,
    fallback_model: Option<String>,
}

impl BudgetSeen {
    fn of(b: &BudgetState) -> Self {
        Self {
            period: b.period.clone(),
            limit: b.limit,
            spent: b.spent,
            reserved: b.reserved,
            unpriced_calls: b.unpriced_calls,
            available: b.available(),
            status: b.status(),
            on_exceeded: b.on_exceeded,
            warn_at_percent: b.warn_at_percent,
            fallback_model: b.fallback_model.clone(),
        }
    }
}

/// The decision event: its id is the decision's.
fn decision_event(id: &str, record: &DecisionRecord, at: DateTime<Utc>) -> Result<Event, ApiError> {
    let data =
        serde_json::to_value(record).map_err(|e| ApiError::StreamUnavailable(e.to_string()))?;
    Emit::new(ROUTER_DECISION, SOURCE, data)
        .id(id)
        .subject(record.project.as_str())
        .time(at)
        .build()
        .map_err(ApiError::InvalidEvent)
}

#[derive(Debug, Deserialize)]
struct DecisionQuery {
    project: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<String>,
    after: Option<String>,
}

/// `GET /v1/route/decisions?project=&from=&to=&limit=&after=&min_seq=`
#[utoipa::path(get, path = "/v1/route/decisions", tag = "router",
    params(
        ("project" = Option<String>, Query, description = "Only this project's decisions"),
        ("from" = Option<String>, Query, description = "RFC 3339: decided at or after"),
        ("to" = Option<String>, Query, description = "RFC 3339: decided before"),
        ("limit" = Option<u32>, Query, description = "1 to 1000 (100)"),
        ("after" = Option<u64>, Query, description = "The previous page's next_after (a decision's seq)"),
        ("min_seq" = Option<u64>, Query, description = "Wait until the router projection applied this stream sequence"),
    ),
    responses(
        (status = 200, description = "A page of decisions, in stream order", body = DecisionsPage),
        (status = 400, description = "A parameter is malformed", body = ErrorBody),
        (status = 503, description = "Not applied within the wait, or a store is unavailable", body = ErrorBody),
    ))]
async fn list_decisions(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    read: ReadAt,
    QueryParams(q): QueryParams<DecisionQuery>,
) -> Result<Json<DecisionsPage>, ApiError> {
    let principal = caller.principal()?;
    let project = q.project.as_deref().map(project_param).transpose()?;
    if let Some(p) = &project {
        caller.reach(p.as_str())?;
    }
    let from = time_param(q.from.as_deref(), "from")?;
    let to = time_param(q.to.as_deref(), "to")?;
    if let (Some(f), Some(t)) = (from, to)
        && f >= t
    {
        return Err(ApiError::bad(
            "invalid_query",
            "from",
            "from must be before to",
        ));
    }
    let limit = limit_param(q.limit.as_deref())?;
    let after = seq_param(q.after.as_deref(), "after")?;
    read.wait(&st, NAME).await?;
    let only = principal.projects.as_deref();
    let rows: Vec<(String, i64, DateTime<Utc>, Value)> = sqlx::query_as(
        "SELECT id, seq, decided_at, record FROM router.decisions
         WHERE ($1::text IS NULL OR project = $1)
           AND ($2::timestamptz IS NULL OR decided_at >= $2)
           AND ($3::timestamptz IS NULL OR decided_at < $3)
           AND ($4::int8 IS NULL OR seq > $4)
           AND ($5::text[] IS NULL OR project = ANY($5))
         ORDER BY seq LIMIT $6",
    )
    .bind(project.as_ref().map(ProjectId::as_str))
    .bind(from)
    .bind(to)
    .bind(after.map(|a| i64::try_from(a).unwrap_or(i64::MAX)))
    .bind(only)
    .bind(limit as i64)
    .fetch_all(&st.pool)
    .await?;
    let next_after = (rows.len() == limit)
        .then(|| rows.last().map(|r| r.1))
        .flatten();
    let decisions = rows
        .into_iter()
        .map(|(decision_id, seq, decided_at, r)| {
            let s = |k: &str| r[k].as_str().map(str::to_owned);
            DecisionSummary {
                decision_id,
                seq,
                decided_at,
                project: s("project"),
                outcome: s("outcome"),
                rule: s("rule"),
                model: s("model"),
                estimated_cost: s("estimated_cost"),
                reserved: s("reserved"),
            }
        })
        .collect();
    Ok(Json(DecisionsPage {
        decisions,
        next_after,
    }))
}

#[derive(Serialize, utoipa::ToSchema)]
struct DecisionsPage {
    decisions: Vec<DecisionSummary>,
    /// The next page's `after`; `null` on the last page.
    next_after: Option<i64>,
}

/// A decision in a list: what was chosen, by which rule (the whole of it:
/// `GET /v1/route/decisions/{id}`).
#[derive(Serialize, utoipa::ToSchema)]
struct DecisionSummary {
    decision_id: String,
    seq: i64,
    decided_at: DateTime<Utc>,
    project: Option<String>,
    /// `routed`, `reserved`, `no_model_fits` or `budget_blocked`.
    outcome: Option<String>,
    rule: Option<String>,
    model: Option<String>,
    /// USD, a decimal string.
    estimated_cost: Option<String>,
    /// USD held by its reservation, a decimal string.
    reserved: Option<String>,
}

/// `GET /v1/route/decisions/{id}?min_seq=`: one decision, explained.
#[utoipa::path(get, path = "/v1/route/decisions/{id}", tag = "router",
    params(
        ("id" = String, Path, description = "The decision id"),
        ("min_seq" = Option<u64>, Query, description = "Wait until the router projection applied this stream sequence"),
    ),
    responses(
        (status = 200, description = "The decision with everything it was decided on", body = DecisionView),
        (status = 400, description = "A parameter is malformed", body = ErrorBody),
        (status = 404, description = "No such decision (or not in the caller's projects)", body = ErrorBody),
        (status = 503, description = "Not applied within the wait, or a store is unavailable", body = ErrorBody),
    ))]
async fn get_decision(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    read: ReadAt,
) -> Result<Json<DecisionView>, ApiError> {
    text_param(&id, "id", 200)?;
    read.wait(&st, NAME).await?;
    let row: Option<(i64, DateTime<Utc>, String, Value)> = sqlx::query_as(
        "SELECT seq, decided_at, project, record FROM router.decisions WHERE id = $1",
    )
    .bind(&id)
    .fetch_optional(&st.pool)
    .await?;
    let not_found = || ApiError::NotFound(format!("no decision {id:?}"));
    let (seq, at, project, record) = row.ok_or_else(not_found)?;
    if caller.reach(&project).is_err() {
        return Err(not_found());
    }
    let record: DecisionRecord = serde_json::from_value(record).map_err(|e| {
        ApiError::StreamUnavailable(format!(
            "decision {id:?} is stored in a form this version cannot read: {e}"
        ))
    })?;
    Ok(Json(DecisionView {
        decision_id: id,
        seq,
        decided_at: at,
        record,
    }))
}

/// A decision with everything it was decided on.
#[derive(Serialize, utoipa::ToSchema)]
struct DecisionView {
    decision_id: String,
    seq: i64,
    decided_at: DateTime<Utc>,
    #[serde(flatten)]
    record: DecisionRecord,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_state_counts_settlements_the_spend_has_not_applied() {
        let mut b = BudgetSetting::default();
        let spent = |s: &str, applied| Spent {
            spent: Money::parse(s).unwrap(),
            unpriced_calls: 0,
            applied,
        };
        assert_eq!(budget_state(&b, "2026-11", spent("0", 0)), None);
        b.budget = Some(kairos_events::types::BudgetSet {
            project: ProjectId::parse("p").unwrap(),
            monthly_limit: Money::parse("1").unwrap(),
            warn_at_percent: 80,
            on_exceeded: kairos_events::types::OnExceeded::Block,
            fallback_model: None,
            actor: None,
        });
        b.settled
            .push_back((10, Money::parse("0.2").unwrap(), "2026-11".into()));
        b.settled
            .push_back((20, Money::parse("0.3").unwrap(), "2026-11".into()));
        b.settled
            .push_back((21, Money::parse("0.4").unwrap(), "2026-10".into()));
        let s = budget_state(&b, "2026-11", spent("0.2", 15)).unwrap();
        // The settlement at 10 is in the spend read at 15; the one at 20 is not yet.
        assert_eq!(s.reserved, Money::parse("0.3").unwrap());
        assert_eq!(s.available(), Money::parse("0.5").unwrap());
    }
}

/// What `POST /v1/route/simulate` takes.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SimulateBody {
    /// The other catalog: models as `GET /v1/catalog` lists them.
    #[schema(value_type = Vec<Object>)]
    models: Value,
    /// RFC 3339: the range's start.
    from: String,
    /// RFC 3339: its end (at most 31 days after `from`).
    to: String,
    /// Only this project.
    project: Option<String>,
}

/// The longest range one simulation over HTTP replays (the CLI has no bound).
const MAX_SIMULATED_DAYS: i64 = 31;

/// `POST /v1/route/simulate`: the recorded decisions and calls of a range under another
/// catalog (see `kairos route simulate`).
#[utoipa::path(post, path = "/v1/route/simulate", tag = "router",
    request_body(content = SimulateBody, content_type = "application/json"),
    responses(
        (status = 200, description = "One report per project", body = SimulationAnswer),
        (status = 400, description = "The body is malformed, the catalog invalid (the field is named), or the range longer than 31 days", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 415, description = "Not application/json", body = ErrorBody),
        (status = 503, description = "A store is unavailable", body = ErrorBody),
    ))]
async fn post_simulate(
    State(st): State<AppState>,
    Extension(router): Extension<Router>,
    JsonBody(b): JsonBody<SimulateBody>,
) -> Result<Json<SimulationAnswer>, ApiError> {
    let change = kairos_catalog::catalog_from_body(b.models)?;
    let from = time_param(Some(&b.from), "from")?.unwrap_or_default();
    let to = time_param(Some(&b.to), "to")?.unwrap_or_default();
    if from >= to {
        return Err(ApiError::bad(
            "invalid_body",
            "from",
            "from must be before to",
        ));
    }
    if to - from > TimeDelta::days(MAX_SIMULATED_DAYS) {
        return Err(ApiError::bad(
            "invalid_body",
            "to",
            format!(
                "a simulation over HTTP covers at most {MAX_SIMULATED_DAYS} days; use kairos route simulate for more"
            ),
        ));
    }
    let project = b.project.as_deref().map(project_param).transpose()?;
    let events = crate::simulate::load_history(&st.bus, &st.pool, &router.tz, from, to)
        .await
        .map_err(ApiError::StreamUnavailable)?;
    let reports = crate::simulate::simulate(
        &events,
        &change.models,
        &router.tz,
        from,
        to,
        project.as_ref(),
    );
    Ok(Json(SimulationAnswer {
        from,
        to,
        projects: reports,
    }))
}

/// What the range would have been under the other catalog, project by project.
#[derive(Serialize, utoipa::ToSchema)]
struct SimulationAnswer {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    projects: Vec<crate::simulate::ProjectReport>,
}
