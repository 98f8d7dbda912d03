//! The budgets module: its configuration, its routes and their handlers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono_tz::Tz;
use futures_util::future::BoxFuture;
use kairos_api::extract::{
    JsonBody, QueryParams, ReadAt, if_match, limit_param, project_param, wait_for,
};
use kairos_api::{
    ApiError, AppState, Caller, Configured, ErrorBody, EventRule, Guard, Host, Module,
    ModuleConfig, ModuleError, Permission, Publish, Recorded, Routes, Started,
};
use kairos_events::types::{
    BUDGET_RESERVATION_EXPIRED, BUDGET_RESERVATION_SETTLED, BUDGET_RESERVED, BUDGET_RESERVED_BATCH,
    BUDGET_SET, BUDGET_THRESHOLD_CROSSED, BudgetSet, ReservationClosed, Reserved, ReservedBatch,
};
use kairos_events::{Emit, Event, Money, Period, ProjectId};
use kairos_runtime::{Aggregate, AggregateStore, AnyProjection, Decision, Grouped, StoredEvent};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::migrate::Migrator;
use utoipa_axum::routes;

use crate::{AsOfError, BudgetView, Budgets, Ledger, NAME};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The budgets module, registered by the binary.
pub struct BudgetsModule;

impl BudgetsModule {
    /// The `[budgets]` section of `config`, with defaults for what it leaves out.
    pub fn settings(config: &ModuleConfig) -> Result<BudgetSettings, ModuleError> {
        config.get()
    }
}

/// The value the binary registers.
pub static MODULE: BudgetsModule = BudgetsModule;

/// The `[budgets]` section of `kairos.toml`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BudgetSettings {
    /// IANA time zone of budget months.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// Budgets set from the configuration at start-up.
    #[serde(default)]
    pub preset: Vec<BudgetPreset>,
}

fn default_timezone() -> String {
    "UTC".into()
}

/// A budget set from the configuration at start-up.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BudgetPreset {
    pub project: String,
    pub monthly_limit: String,
    #[serde(default = "default_warn")]
    pub warn_at_percent: u8,
    #[serde(default = "default_policy")]
    pub on_exceeded: String,
    pub fallback_model: Option<String>,
}

fn default_warn() -> u8 {
    80
}

fn default_policy() -> String {
    "fallback_to_local".into()
}

impl Module for BudgetsModule {
    fn name(&self) -> &'static str {
        NAME
    }

    fn migrations(&self) -> &'static Migrator {
        &MIGRATOR
    }

    fn config_section(&self) -> Option<&'static str> {
        Some("budgets")
    }

    fn events(&self) -> &'static [EventRule] {
        &[
            EventRule {
                ty: BUDGET_SET,
                publish: Publish::With(Permission::ManageBudgets),
            },
            EventRule {
                ty: BUDGET_THRESHOLD_CROSSED,
                publish: Publish::KairosOnly,
            },
            EventRule {
                ty: BUDGET_RESERVED,
                publish: Publish::KairosOnly,
            },
            EventRule {
                ty: BUDGET_RESERVED_BATCH,
                publish: Publish::KairosOnly,
            },
            EventRule {
                ty: BUDGET_RESERVATION_SETTLED,
                publish: Publish::KairosOnly,
            },
            EventRule {
                ty: BUDGET_RESERVATION_EXPIRED,
                publish: Publish::KairosOnly,
            },
        ]
    }

    fn configure(&self, config: &ModuleConfig) -> Result<Box<dyn Configured>, ModuleError> {
        let settings: BudgetSettings = config.get()?;
        let tz: Tz = settings.timezone.parse().map_err(|_| {
            config.invalid(
                "timezone",
                format!(
                    "{:?} is not an IANA time zone such as UTC or Europe/Berlin",
                    settings.timezone
                ),
            )
        })?;
        let mut presets = Vec::with_capacity(settings.preset.len());
        for (i, p) in settings.preset.iter().enumerate() {
            let key = |k: &str| format!("preset[{i}].{k}");
            ProjectId::parse(&p.project).map_err(|e| {
                config.invalid(&key("project"), format!("is invalid: {}", e.message))
            })?;
            Money::parse(&p.monthly_limit)
                .map_err(|e| config.invalid(&key("monthly_limit"), format!("is invalid: {e}")))?;
            if !(1..=100).contains(&p.warn_at_percent) {
                return Err(config.invalid(&key("warn_at_percent"), "must be between 1 and 100"));
            }
            if kairos_events::types::OnExceeded::parse(&p.on_exceeded).is_none() {
                return Err(
                    config.invalid(&key("on_exceeded"), "must be fallback_to_local or block")
                );
            }
            presets.push(preset_event(p).map_err(|e| config.invalid(&key("fallback_model"), e))?);
        }
        Ok(Box::new(BudgetsConfigured {
            budgets: Budgets { tz },
            presets,
        }))
    }
}

/// The budgets module configured.
struct BudgetsConfigured {
    budgets: Budgets,
    presets: Vec<Event>,
}

impl Configured for BudgetsConfigured {
    fn projection(&self) -> Arc<dyn AnyProjection> {
        Arc::new(self.budgets.clone())
    }

    fn routes(&self) -> Routes {
        use Guard::Key;
        use Permission::{ManageBudgets, ReadProjections};
        Routes::new()
            .route(routes!(get_budget), Key(ReadProjections), "budget.read")
            .route(routes!(put_budget), Key(ManageBudgets), "budget.set")
            .route(routes!(list_budgets), Key(ReadProjections), "budget.list")
    }

    fn start<'a>(&'a self, host: &'a Host) -> BoxFuture<'a, Result<Started, ModuleError>> {
        Box::pin(async move {
            for r in host.bus.publish_events(&self.presets).await {
                r.map_err(|e| ModuleError(format!("publishing the budget presets: {e}")))?;
            }
            Ok(Started::default()
                .with_extension(self.budgets.clone())
                .with_extension(BudgetCommands::new(host.commands.clone()))
                .with_extension(ReadCache::default())
                .with_banner(format!("budget presets: {}", self.presets.len())))
        })
    }
}

/// Publishes a `kairos.budget.set.v1` for each `[[budgets.preset]]` of `settings` (see
/// [`preset_event`]); the number published.
pub async fn apply_presets(
    bus: &kairos_bus::Bus,
    settings: &BudgetSettings,
) -> Result<usize, ModuleError> {
    let events = settings
        .preset
        .iter()
        .map(|p| preset_event(p).map_err(ModuleError))
        .collect::<Result<Vec<_>, _>>()?;
    for r in bus.publish_events(&events).await {
        r.map_err(|e| ModuleError(format!("publishing the budget presets: {e}")))?;
    }
    Ok(events.len())
}

/// The `kairos.budget.set.v1` of a `[[budgets.preset]]`. Its id is derived from the preset's
/// values, so a preset takes effect once per distinct value, however often Kairos restarts,
/// and a budget changed through the API later is not reverted by a restart.
fn preset_event(p: &BudgetPreset) -> Result<Event, String> {
    let mut data = json!({
        "project": p.project, "monthly_limit": p.monthly_limit,
        "warn_at_percent": p.warn_at_percent, "on_exceeded": p.on_exceeded,
    });
    if let Some(m) = &p.fallback_model {
        data["fallback_model"] = json!(m);
    }
    let digest = Sha256::digest(data.to_string().as_bytes());
    let id: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    Emit::new(BUDGET_SET, "kairos/config", data)
        .id(format!("preset-{id}"))
        .subject(p.project.as_str())
        .build()
        .map_err(|e| e.to_string())
}

#[derive(Debug, Deserialize)]
struct BudgetQuery {
    period: Option<String>,
    limit: Option<String>,
    after: Option<String>,
}

impl BudgetQuery {
    /// The month asked for; by default the one containing `at` (now, or `as_of`).
    fn period(&self, at: chrono::DateTime<chrono::Utc>, tz: &Tz) -> Result<Period, ApiError> {
        match &self.period {
            Some(p) => Period::parse(p).map_err(|e| ApiError::bad(e.code, "period", e.message)),
            None => Ok(Period::containing(at, tz)),
        }
    }
}

/// Budget reads served again without a query while they are young and no newer checkpoint of
/// the budgets projection was announced: a thousand clients polling one budget cost one query
/// per [`READ_CACHE_TTL`], not one each. An answer is never older than that beyond what the
/// checkpoint announcements say, and says the sequence it reflects (`as_of_seq`).
#[derive(Clone, Default)]
pub struct ReadCache(Arc<Mutex<HashMap<(ProjectId, Period), Cached>>>);

/// A budget read and when it was read.
type Cached = (Instant, BudgetView);

/// How long a cached budget read is served at most.
const READ_CACHE_TTL: Duration = Duration::from_millis(250);
/// Entries kept at most; past that the cache starts afresh.
const READ_CACHE_ENTRIES: usize = 10_000;

impl ReadCache {
    fn get(
        &self,
        key: &(ProjectId, Period),
        announced: Option<u64>,
        min_seq: u64,
    ) -> Option<BudgetView> {
        let entries = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (at, view) = entries.get(key)?;
        let fresh = at.elapsed() < READ_CACHE_TTL
            && announced.is_none_or(|a| a <= view.as_of_seq)
            && view.as_of_seq >= min_seq;
        fresh.then(|| view.clone())
    }

    fn put(&self, key: (ProjectId, Period), view: BudgetView) {
        let mut entries = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if entries.len() >= READ_CACHE_ENTRIES {
            entries.clear();
        }
        entries.insert(key, (Instant::now(), view));
    }
}

/// `GET /v1/projects/{project}/budget?period=&min_seq=&as_of=`
#[utoipa::path(get, path = "/v1/projects/{project}/budget", tag = "budgets",
    params(
        ("project" = String, Path, description = "The project id"),
        ("period" = Option<String>, Query, description = "The month, as 2026-11 (default: the current one, or as_of's)"),
        ("min_seq" = Option<u64>, Query, description = "Wait until the budgets projection applied this stream sequence"),
        ("as_of" = Option<String>, Query, description = "RFC 3339: the budget as it stood then"),
    ),
    responses(
        (status = 200, description = "The budget and the spend of the month", body = BudgetView),
        (status = 400, description = "A parameter is malformed", body = ErrorBody),
        (status = 404, description = "No budget and no spend in that month", body = ErrorBody),
        (status = 503, description = "Not applied within the wait, or a store is unavailable", body = ErrorBody),
    ))]
async fn get_budget(
    State(st): State<AppState>,
    Extension(budgets): Extension<Budgets>,
    Extension(cache): Extension<ReadCache>,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
    read: ReadAt,
    QueryParams(q): QueryParams<BudgetQuery>,
) -> Result<Json<BudgetView>, ApiError> {
    let project = project_param(&project)?;
    caller.reach(project.as_str())?;
    if let Some(at) = read.as_of {
        let (ledger, seq) = ledger_as_of(&st, &budgets, at, Some(&project)).await?;
        let period = q.period(at, &budgets.tz)?;
        let raw = read.as_of_raw.unwrap_or_default();
        return ledger.view(&project, period, seq).map(Json).ok_or_else(|| {
            ApiError::NotFound(format!(
                "project {project} had no budget and no spend in {period} at {raw}"
            ))
        });
    }
    let period = q.period(st.clock.now(), &budgets.tz)?;
    read.wait(&st, NAME).await?;
    let key = (project.clone(), period);
    let announced = st.checkpoints.announced(NAME);
    if let Some(view) = cache.get(&key, announced, read.min_seq.unwrap_or(0)) {
        return Ok(Json(view));
    }
    let view = crate::read(&st.pool, &project, period)
        .await?
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "project {project} has no budget and no spend in {period}"
            ))
        })?;
    cache.put(key, view.clone());
    Ok(Json(view))
}

/// The budgets ledger as it stood at `at` (from the nearest snapshot plus the events after it;
/// with `project`, only that project's), and the sequence it reflects.
async fn ledger_as_of(
    st: &AppState,
    budgets: &Budgets,
    at: chrono::DateTime<chrono::Utc>,
    project: Option<&ProjectId>,
) -> Result<(Ledger, u64), ApiError> {
    let applied = |seq: kairos_events::StreamSeq| async move {
        match wait_for(st, NAME, seq.0).await {
            Ok(()) => Ok(()),
            Err(ApiError::Database(e)) => Err(AsOfError::Database(e)),
            Err(e) => Err(AsOfError::NotYetApplied(e.to_string())),
        }
    };
    let (ledger, seq) = budgets
        .ledger_at(&st.bus, &st.pool, at, project, applied)
        .await
        .map_err(|e| match e {
            AsOfError::Database(e)
            | AsOfError::History(kairos_runtime::HistoryError::Database(e)) => {
                ApiError::Database(e)
            }
            AsOfError::NotYetApplied(e) => ApiError::NotYetApplied(e),
            AsOfError::History(e @ kairos_runtime::HistoryError::Gone { .. }) => {
                ApiError::bad("history_gone", "as_of", e.to_string())
            }
            other => ApiError::StreamUnavailable(other.to_string()),
        })?;
    Ok((ledger, seq.0))
}

/// `GET /v1/budgets?period=&min_seq=&as_of=&limit=&after=`
#[utoipa::path(get, path = "/v1/budgets", tag = "budgets",
    params(
        ("period" = Option<String>, Query, description = "The month, as 2026-11"),
        ("min_seq" = Option<u64>, Query, description = "Wait until the budgets projection applied this stream sequence"),
        ("as_of" = Option<String>, Query, description = "RFC 3339: the budgets as they stood then"),
        ("limit" = Option<u32>, Query, description = "1 to 1000 (100)"),
        ("after" = Option<String>, Query, description = "The previous page's next_after"),
    ),
    responses(
        (status = 200, description = "A page of budgets, by project id", body = BudgetsPage),
        (status = 400, description = "A parameter is malformed", body = ErrorBody),
        (status = 503, description = "Not applied within the wait, or a store is unavailable", body = ErrorBody),
    ))]
async fn list_budgets(
    State(st): State<AppState>,
    Extension(budgets): Extension<Budgets>,
    Extension(caller): Extension<Caller>,
    read: ReadAt,
    QueryParams(q): QueryParams<BudgetQuery>,
) -> Result<Json<BudgetsPage>, ApiError> {
    let principal = caller.principal()?;
    let limit = limit_param(q.limit.as_deref())?;
    if let Some(after) = &q.after {
        project_param(after)
            .map_err(|_| ApiError::bad("invalid_query", "after", "after must be a project id"))?;
    }
    let next_after = |items: &[BudgetView]| {
        (items.len() == limit)
            .then(|| items.last().map(|b| b.project.clone()))
            .flatten()
    };
    if let Some(at) = read.as_of {
        let period = q.period(at, &budgets.tz)?;
        let (ledger, seq) = ledger_as_of(&st, &budgets, at, None).await?;
        let items: Vec<_> = ledger
            .views(period, seq)
            .into_iter()
            .filter(|b| q.after.as_deref().is_none_or(|a| b.project.as_str() > a))
            .filter(|b| principal.reaches(b.project.as_str()))
            .take(limit)
            .collect();
        let next_after = next_after(&items);
        return Ok(Json(BudgetsPage {
            period,
            as_of: read.as_of_raw,
            as_of_seq: Some(seq),
            budgets: items,
            next_after,
        }));
    }
    let period = q.period(st.clock.now(), &budgets.tz)?;
    read.wait(&st, NAME).await?;
    // A role narrowed to projects sees only those.
    let only = principal.projects.as_deref();
    let items = crate::list(&st.pool, period, q.after.as_deref(), limit as i64, only).await?;
    let next_after = next_after(&items);
    Ok(Json(BudgetsPage {
        period,
        as_of: None,
        as_of_seq: None,
        budgets: items,
        next_after,
    }))
}

/// A page of budgets of one month.
#[derive(Serialize, utoipa::ToSchema)]
struct BudgetsPage {
    /// The month, `YYYY-MM`, in the budgets' time zone.
    #[schema(value_type = String, example = "2026-11")]
    period: Period,
    /// The instant asked for with `?as_of=` (only then).
    #[serde(skip_serializing_if = "Option::is_none")]
    as_of: Option<String>,
    /// The last stream sequence stored at that instant (only with `?as_of=`).
    #[serde(skip_serializing_if = "Option::is_none")]
    as_of_seq: Option<u64>,
    budgets: Vec<BudgetView>,
    /// The next page's `after`; `null` on the last page.
    next_after: Option<String>,
}

/// A budget change, stored.
#[derive(Serialize, utoipa::ToSchema)]
struct BudgetStored {
    project: String,
    event_id: String,
    /// The event's stream sequence, for `?min_seq=`.
    seq: u64,
    /// The budget's new version, for `If-Match`.
    version: u64,
    /// Where to read it back once applied.
    budget: String,
}

/// A budget: what `PUT /v1/projects/{project}/budget` takes.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct BudgetBody {
    /// USD per calendar month, a decimal string ("10.00"; at most 9 decimals).
    #[schema(value_type = String, example = "10.00")]
    monthly_limit: Value,
    /// Percent of the limit that announces a warning (1-100; 80).
    #[schema(value_type = Option<u8>, minimum = 1, maximum = 100)]
    warn_at_percent: Option<Value>,
    /// What happens once it is spent: `fallback_to_local` (the default) or `block`.
    #[schema(value_type = Option<String>)]
    on_exceeded: Option<Value>,
    /// The local model calls fall back to.
    #[schema(value_type = Option<String>)]
    fallback_model: Option<Value>,
}

/// A project's budget as the events on its own subject (`<prefix>.events.budget.<project>`)
/// leave it: the setting in force and the reservations still open. What a budget set and a
/// route's reservation decide against; the spend comes from the LLM calls, elsewhere. The
/// subject also carries the project's threshold events, which change nothing here.
#[derive(Debug, Default, Clone)]
pub struct BudgetSetting {
    /// The stream sequence of the set in force (0: none yet).
    pub version: u64,
    pub budget: Option<BudgetSet>,
    /// Open reservations by id.
    pub open: HashMap<String, Reserved>,
    /// The latest settlements (call sequence, cost, month), at most [`SETTLED_KEPT`]: a
    /// settlement is announced once the call's spend is committed, so one whose call is past
    /// the spend a route read is counted from here instead, never from neither.
    pub settled: std::collections::VecDeque<(u64, Money, String)>,
}

/// Settlements a budget aggregate remembers.
pub const SETTLED_KEPT: usize = 10_000;

impl BudgetSetting {
    /// The cost of the settled calls of `period` after stream sequence `applied`: spend the
    /// budgets projection had not applied when it was read at `applied`.
    pub fn settled_after(&self, period: &str, applied: u64) -> Money {
        self.settled
            .iter()
            .filter(|(seq, _, p)| *seq > applied && p == period)
            .fold(Money::ZERO, |sum, (_, c, _)| {
                sum.checked_add(*c).unwrap_or(Money::MAX)
            })
    }

    /// What open reservations hold against the month `period` (as 2026-11): every open one,
    /// also one made in the month before whose call may yet land in this one (conservative:
    /// an open reservation holds for at most `router.reservation_ttl_secs`).
    pub fn reserved_in(&self, period: &str) -> Money {
        let _ = period;
        self.open.values().fold(Money::ZERO, |sum, r| {
            sum.checked_add(r.amount).unwrap_or(Money::MAX)
        })
    }
}

impl Aggregate for BudgetSetting {
    fn fold(&mut self, event: &StoredEvent) {
        match event.event.event_type().as_str() {
            BUDGET_SET => {
                if let Ok(set) = event.event.data_as::<BudgetSet>() {
                    self.version = event.seq.0;
                    self.budget = Some(set);
                }
            }
            BUDGET_RESERVED => {
                if let Ok(r) = event.event.data_as::<Reserved>() {
                    self.open.insert(r.reservation_id.clone(), r);
                }
            }
            BUDGET_RESERVED_BATCH => {
                if let Ok(b) = event.event.data_as::<ReservedBatch>()
                    && b.check().is_ok()
                {
                    for r in b.reservations {
                        self.open.insert(r.reservation_id.clone(), r);
                    }
                }
            }
            BUDGET_RESERVATION_SETTLED | BUDGET_RESERVATION_EXPIRED => {
                if let Ok(c) = event.event.data_as::<ReservationClosed>() {
                    self.open.remove(&c.reservation_id);
                    if let (Some(seq), Some(cost)) = (c.call_seq, c.cost) {
                        if self.settled.len() >= SETTLED_KEPT {
                            self.settled.pop_front();
                        }
                        self.settled.push_back((seq, cost, c.period));
                    }
                }
            }
            _ => {}
        }
    }
}

/// Routes admitted together: their `kairos.budget.reserved.v1`s as one
/// `kairos.budget.reserved_batch.v1`, stated by the same source at the first one's time, with
/// the first one's id and the count (`reserved/<decision id>+<n>`).
impl Grouped for BudgetSetting {
    fn combine(events: Vec<Event>) -> Result<Event, String> {
        let first = events.first().ok_or("no reservation to combine")?;
        let (source, time) = (first.source().to_owned(), first.time());
        let id = format!("{}+{}", first.id(), events.len());
        let reservations = events
            .iter()
            .map(|e| match e.event_type().as_str() {
                BUDGET_RESERVED => e.data_as::<Reserved>().map_err(|e| e.to_string()),
                other => Err(format!("{other} cannot be combined with reservations")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let project = reservations[0].project.clone();
        let batch = ReservedBatch {
            project: project.clone(),
            reservations,
        };
        batch.check()?;
        let data = serde_json::to_value(&batch).map_err(|e| e.to_string())?;
        let mut emit = Emit::new(BUDGET_RESERVED_BATCH, source, data)
            .id(id)
            .subject(project.as_str());
        if let Some(t) = time {
            emit = emit.time(t);
        }
        emit.build().map_err(|e| e.to_string())
    }
}

/// The budget settings of the projects this process has set budgets for, each an aggregate on
/// its project's subject.
#[derive(Clone)]
pub struct BudgetCommands {
    bus: kairos_bus::Bus,
    stores: Arc<Mutex<HashMap<ProjectId, Arc<AggregateStore<BudgetSetting>>>>>,
}

impl BudgetCommands {
    /// No aggregate is read until a command on it.
    pub fn new(bus: kairos_bus::Bus) -> Self {
        Self {
            bus,
            stores: Arc::default(),
        }
    }

    /// The aggregate of `project`'s budget setting.
    pub fn of(&self, project: &ProjectId) -> Arc<AggregateStore<BudgetSetting>> {
        let mut stores = self
            .stores
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        stores
            .entry(project.clone())
            .or_insert_with(|| {
                let prefix = &self.bus.config().subject_prefix;
                AggregateStore::new(
                    self.bus.clone(),
                    format!("{prefix}.events.budget.{project}"),
                )
            })
            .clone()
    }
}

/// `PUT /v1/projects/{project}/budget`: decides a `kairos.budget.set.v1` against the project's
/// budget setting and appends it with the subject's expected last sequence.
#[utoipa::path(put, path = "/v1/projects/{project}/budget", tag = "budgets",
    params(
        ("project" = String, Path, description = "The project id"),
        ("If-Match" = Option<String>, Header, description = "Change it only if its version is still this one: \"123\""),
    ),
    request_body(content = BudgetBody, content_type = "application/json"),
    responses(
        (status = 202, description = "Stored: read it back with ?min_seq=seq", body = BudgetStored),
        (status = 400, description = "The body or a header is malformed", body = ErrorBody),
        (status = 409, description = "If-Match names another version, or other writers kept changing it", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 415, description = "Not application/json", body = ErrorBody),
        (status = 503, description = "The stream is unavailable", body = ErrorBody),
    ))]
async fn put_budget(
    State(st): State<AppState>,
    Extension(settings): Extension<BudgetCommands>,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
    headers: HeaderMap,
    JsonBody(b): JsonBody<BudgetBody>,
) -> Result<Response, ApiError> {
    let project = project_param(&project)?;
    caller.reach(project.as_str())?;
    let expected = if_match(&headers, "the budget's")?;
    // A limit is a decimal string ("10.00"); a JSON number is read from its text as well.
    let limit = Money::from_json(&b.monthly_limit)
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
    let event = Emit::new(BUDGET_SET, "kairos/api", data)
        .subject(project.as_str())
        .time(st.clock.now())
        .build()
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
    let done = settings
        .of(&project)
        .execute(|current| match expected {
            Some(v) if v != current.version => Err(ApiError::Conflict(format!(
                "the budget of {project} is at version {}, not {v}: read it again",
                current.version
            ))),
            _ => Ok(Decision::append(event.clone(), ())),
        })
        .await?;
    let seq = done.seq.map_or(0, |s| s.0);
    let body = BudgetStored {
        project: project.as_str().to_owned(),
        event_id: event.id().to_owned(),
        seq,
        version: seq,
        budget: format!("/v1/projects/{project}/budget?min_seq={seq}"),
    };
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    // The budget.set event carries the actor: it is this write's audit entry.
    response.extensions_mut().insert(Recorded);
    Ok(response)
}
