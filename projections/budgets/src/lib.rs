//! The budgets projection: what each project spent per calendar month, against its limit.
//!
//! Folds `kairos.llm.call.completed.v1` (spend) and `kairos.budget.set.v1` (limits). When spend
//! reaches `warn_at_percent` of the limit, and when it reaches the limit, it emits one
//! `kairos.budget.threshold_crossed.v1` per project, month and threshold — recorded in
//! `budgets.crossings` in the same transaction, so redelivery and replay never emit it twice.
//! Money is exact ([`Money`], nano-dollars); the month is taken in the configured time zone from
//! the event's `time` (or, without one, when the stream stored it).
//!
//! The logic is the pure [`Ledger::fold`]; [`Budgets`] loads the rows a batch touches, folds, and
//! writes them back. [`read`] and [`list`] are the queries the API serves.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use kairos_events::types::{
    BUDGET_RESERVATION_EXPIRED, BUDGET_RESERVATION_SETTLED, BUDGET_RESERVED, BUDGET_RESERVED_BATCH,
    BUDGET_SET, BUDGET_THRESHOLD_CROSSED, BudgetSet, CallStatus, LLM_CALL_COMPLETED,
    LlmCallCompleted, ModelSpec, OnExceeded, ReservationClosed, Reserved, ReservedBatch, Threshold,
    ThresholdCrossed,
};
use kairos_events::{Emit, Event, Money, Period, ProjectId};
use kairos_runtime::{ApplyError, Projection, Rejection, StoredEvent};
use serde::Serialize;
use sqlx::{PgConnection, PgPool, Row};

/// The name of the projection: consumer, checkpoint and dead-letter subject.
pub const NAME: &str = "budgets";
/// The CloudEvent `source` of the events this projection emits.
pub const SOURCE: &str = "kairos/budgets";

/// One event the budgets fold cares about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Call {
        seq: u64,
        at: DateTime<Utc>,
        period: Period,
        call: LlmCallCompleted,
    },
    Set {
        seq: u64,
        at: DateTime<Utc>,
        period: Period,
        set: BudgetSet,
    },
    /// Routes held worst-case costs, each against its month (one route's reservation, or a
    /// group's, appended together).
    Reserved {
        seq: u64,
        reserved: Vec<(Period, Reserved)>,
    },
    /// A reservation was settled or expired (folding it again changes nothing).
    Closed {
        period: Period,
        closed: ReservationClosed,
    },
    /// The model catalog changed: calls without a cost are priced by it from now on, and the
    /// ones already priced are priced again where a model's prices changed.
    Catalog {
        seq: u64,
        at: DateTime<Utc>,
        models: Vec<ModelSpec>,
    },
}

impl Item {
    /// The (project, month) whose rows this item changes; none for a catalog change (it may
    /// change any: see [`Budgets`]' loading).
    fn key(&self) -> Option<(ProjectId, Period)> {
        let (project, period) = match self {
            Item::Call { call, period, .. } => (&call.project, period),
            Item::Set { set, period, .. } => (&set.project, period),
            Item::Reserved { reserved, .. } => {
                let (period, r) = reserved.first()?;
                (&r.project, period)
            }
            Item::Closed { closed, period } => (&closed.project, period),
            Item::Catalog { .. } => return None,
        };
        Some((project.clone(), *period))
    }

    /// The priced-usage row a call without a cost adds to.
    fn usage(&self) -> Option<UsageKey> {
        match self {
            Item::Call {
                call, at, period, ..
            } if call.cost.is_none() => Some(UsageKey {
                project: call.project.clone(),
                period: *period,
                model: call.model.clone(),
                day: at.date_naive(),
            }),
            _ => None,
        }
    }

    /// The reservations this item opens, settles or closes.
    fn reservations(&self) -> Vec<(ProjectId, String)> {
        match self {
            Item::Call { call, .. } => call
                .decision_id
                .iter()
                .map(|d| (call.project.clone(), d.clone()))
                .collect(),
            Item::Reserved { reserved, .. } => reserved
                .iter()
                .map(|(_, r)| (r.project.clone(), r.reservation_id.clone()))
                .collect(),
            Item::Closed { closed: c, .. } => {
                vec![(c.project.clone(), c.reservation_id.clone())]
            }
            Item::Set { .. } | Item::Catalog { .. } => Vec::new(),
        }
    }
}

/// The calls Kairos priced of one project, month, model and UTC day.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UsageKey {
    pub project: ProjectId,
    pub period: Period,
    pub model: String,
    pub day: NaiveDate,
}

/// Their tokens, and what they cost at the prices in force that day (`None`: unpriced).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub calls: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost: Option<Money>,
}

/// What `model` of `models` costs for `input` and `output` tokens on `day`; `None` if the
/// model is unknown or has no price then.
pub fn price_of(
    models: &[ModelSpec],
    model: &str,
    day: NaiveDate,
    input: i64,
    output: i64,
) -> Option<Money> {
    let at = day.and_hms_opt(0, 0, 0)?.and_utc();
    let tokens = |t: i64| u64::try_from(t).ok();
    models
        .iter()
        .find(|m| m.name == model)?
        .cost_at(at, tokens(input)?, tokens(output)?)
}

/// The models whose prices differ between two catalogs (by name: added, removed or changed).
pub fn repriced(before: &[ModelSpec], after: &[ModelSpec]) -> HashSet<String> {
    let pricing = |m: &ModelSpec| (m.local, m.prices.clone());
    let find = |c: &[ModelSpec], n: &str| c.iter().find(|m| m.name == n).map(pricing);
    before
        .iter()
        .chain(after)
        .map(|m| m.name.as_str())
        .filter(|n| find(before, n) != find(after, n))
        .map(str::to_owned)
        .collect()
}

/// An open reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub period: Period,
    pub model: String,
    pub amount: Money,
    pub expires_at: DateTime<Utc>,
    pub seq: u64,
}

/// A project's budget as last set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    pub monthly_limit: Money,
    pub warn_at_percent: u8,
    pub on_exceeded: OnExceeded,
    pub fallback_model: Option<String>,
    pub set_by: Option<String>,
    pub set_seq: u64,
    pub set_at: DateTime<Utc>,
}

/// Spend of one project in one month.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Spend {
    pub spent: Money,
    pub calls: i64,
    pub failed_calls: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub last_seq: u64,
    /// Calls without a cost whose model had no price at their time: never counted as free,
    /// they keep the budget from admitting paid routes (see the router) until a price comes.
    pub unpriced_calls: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Warning,
    Exceeded,
}

/// The status of `spent` against a limit: exceeded from the limit on (nothing remains), warning
/// from `warn_at_percent` of it.
pub fn status(limit: Money, warn_at_percent: u8, spent: Money) -> Status {
    if spent >= limit {
        Status::Exceeded
    } else if i128::from(spent.nanos()) * 100
        >= i128::from(limit.nanos()) * i128::from(warn_at_percent)
    {
        Status::Warning
    } else {
        Status::Ok
    }
}

/// A threshold a project reached in a month, caused by the event at `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crossing {
    pub project: ProjectId,
    pub period: Period,
    pub threshold: Threshold,
    pub limit: Limit,
    pub spent: Money,
    pub seq: u64,
    pub at: DateTime<Utc>,
}

impl Crossing {
    /// The event announcing it. Its id is the crossing itself, so re-emitting it is a duplicate.
    pub fn to_event(&self) -> Result<Event, kairos_events::EventError> {
        let data = ThresholdCrossed {
            project: self.project.clone(),
            period: self.period.to_string(),
            threshold: self.threshold,
            limit: self.limit.monthly_limit,
            spent: self.spent,
            warn_at_percent: self.limit.warn_at_percent,
            on_exceeded: self.limit.on_exceeded,
            stream_seq: self.seq,
        };
        let data = serde_json::to_value(data)
            .map_err(|e| kairos_events::EventError::new("invalid_data", e.to_string()))?;
        Emit::new(BUDGET_THRESHOLD_CROSSED, SOURCE, data)
            .id(format!(
                "{}/{}/{}",
                self.project,
                self.period,
                self.threshold.as_str()
            ))
            .subject(self.project.as_str())
            .time(self.at)
            .build()
    }
}

/// The rows one batch touches, folded in memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    pub limits: HashMap<ProjectId, Limit>,
    pub spend: HashMap<(ProjectId, Period), Spend>,
    pub crossed: HashSet<(ProjectId, Period, Threshold)>,
    /// Open reservations, by project and reservation id.
    pub reservations: HashMap<(ProjectId, String), Reservation>,
    /// Reservations the calls folded so far settled, to announce once the batch commits.
    pub settled: Vec<ReservationClosed>,
    /// The catalog in force, and the sequence of its change (0: none yet).
    pub catalog: Arc<Vec<ModelSpec>>,
    pub catalog_seq: u64,
    /// Priced usage, for the rows loaded.
    pub usage: HashMap<UsageKey, Usage>,
}

impl Ledger {
    /// Folds one item, returning the thresholds it made the project cross.
    pub fn fold(&mut self, item: &Item) -> Result<Vec<Crossing>, String> {
        let (seq, at) = match item {
            Item::Call {
                seq,
                at,
                call,
                period,
            } => {
                // Without a cost, the catalog in force prices it; with no price, it is
                // unpriced (counted, never free) until a price covers its day.
                let cost = match call.cost {
                    Some(c) => Some(c),
                    None => {
                        let day = at.date_naive();
                        let priced = price_of(
                            &self.catalog,
                            &call.model,
                            day,
                            i64::try_from(call.input_tokens).unwrap_or(i64::MAX),
                            i64::try_from(call.output_tokens).unwrap_or(i64::MAX),
                        );
                        let u = self
                            .usage
                            .entry(UsageKey {
                                project: call.project.clone(),
                                period: *period,
                                model: call.model.clone(),
                                day,
                            })
                            .or_default();
                        u.calls += 1;
                        u.input_tokens = u
                            .input_tokens
                            .saturating_add(i64::try_from(call.input_tokens).unwrap_or(i64::MAX));
                        u.output_tokens = u
                            .output_tokens
                            .saturating_add(i64::try_from(call.output_tokens).unwrap_or(i64::MAX));
                        u.cost = price_of(
                            &self.catalog,
                            &call.model,
                            day,
                            u.input_tokens,
                            u.output_tokens,
                        );
                        priced
                    }
                };
                let s = self
                    .spend
                    .entry((call.project.clone(), *period))
                    .or_default();
                if cost.is_none() {
                    s.unpriced_calls += 1;
                }
                let cost = cost.unwrap_or(Money::ZERO);
                s.spent = s.spent.checked_add(cost).ok_or_else(|| {
                    format!(
                        "spend of {} in {period} overflows 9.2 billion USD",
                        call.project
                    )
                })?;
                s.calls += 1;
                if call.status == CallStatus::Error {
                    s.failed_calls += 1;
                }
                s.input_tokens = s
                    .input_tokens
                    .saturating_add(i64::try_from(call.input_tokens).unwrap_or(i64::MAX));
                s.output_tokens = s
                    .output_tokens
                    .saturating_add(i64::try_from(call.output_tokens).unwrap_or(i64::MAX));
                s.last_seq = *seq;
                if let Some(id) = &call.decision_id
                    && let Some(r) = self
                        .reservations
                        .remove(&(call.project.clone(), id.clone()))
                {
                    self.settled.push(ReservationClosed {
                        project: call.project.clone(),
                        reservation_id: id.clone(),
                        // The month the call's cost counts in (a reservation made just before
                        // midnight on the last day is settled in the next month).
                        period: period.to_string(),
                        amount: r.amount,
                        cost: Some(cost),
                        call_seq: Some(*seq),
                    });
                }
                (*seq, *at)
            }
            Item::Reserved { seq, reserved } => {
                for (period, r) in reserved {
                    self.reservations.insert(
                        (r.project.clone(), r.reservation_id.clone()),
                        Reservation {
                            period: *period,
                            model: r.model.clone(),
                            amount: r.amount,
                            expires_at: r.expires_at,
                            seq: *seq,
                        },
                    );
                }
                return Ok(Vec::new());
            }
            Item::Closed { closed: c, .. } => {
                self.reservations
                    .remove(&(c.project.clone(), c.reservation_id.clone()));
                return Ok(Vec::new());
            }
            Item::Catalog { seq, at, models } => return self.reprice(*seq, *at, models),
            Item::Set { seq, at, set, .. } => {
                let limit = Limit {
                    monthly_limit: set.monthly_limit,
                    warn_at_percent: set.warn_at_percent,
                    on_exceeded: set.on_exceeded,
                    fallback_model: set.fallback_model.clone(),
                    set_by: set.actor.clone(),
                    set_seq: *seq,
                    set_at: *at,
                };
                self.limits.insert(set.project.clone(), limit);
                (*seq, *at)
            }
        };
        let Some((project, period)) = item.key() else {
            return Ok(Vec::new());
        };
        Ok(self.crossings(&project, period, seq, at))
    }

    /// Adopts the catalog `models` (its change at `seq`), pricing again the usage of every
    /// model whose prices changed (which [`Budgets`] loaded first), and the spend with it.
    fn reprice(
        &mut self,
        seq: u64,
        at: DateTime<Utc>,
        models: &[ModelSpec],
    ) -> Result<Vec<Crossing>, String> {
        let changed = repriced(&self.catalog, models);
        self.catalog = Arc::new(models.to_vec());
        self.catalog_seq = seq;
        let mut touched = HashSet::new();
        for (k, u) in self
            .usage
            .iter_mut()
            .filter(|(k, _)| changed.contains(&k.model))
        {
            let now = price_of(models, &k.model, k.day, u.input_tokens, u.output_tokens);
            if now == u.cost {
                continue;
            }
            let s = self.spend.entry((k.project.clone(), k.period)).or_default();
            let spent = i128::from(s.spent.nanos()) - i128::from(u.cost.map_or(0, Money::nanos))
                + i128::from(now.map_or(0, Money::nanos));
            // The same bound as folding a call: what an i64 of nano-dollars holds.
            s.spent = i64::try_from(spent)
                .ok()
                .filter(|n| *n >= 0)
                .map(Money::from_nanos)
                .ok_or_else(|| {
                    format!(
                        "re-priced spend of {} in {} is out of range",
                        k.project, k.period
                    )
                })?;
            s.unpriced_calls += match (u.cost, now) {
                (None, Some(_)) => -u.calls,
                (Some(_), None) => u.calls,
                _ => 0,
            };
            u.cost = now;
            touched.insert((k.project.clone(), k.period));
        }
        let mut touched: Vec<_> = touched.into_iter().collect();
        touched.sort();
        Ok(touched
            .into_iter()
            .flat_map(|(p, period)| self.crossings(&p, period, seq, at))
            .collect())
    }

    /// The thresholds `project` reached in `period` and had not crossed yet, caused at `seq`.
    fn crossings(
        &mut self,
        project: &ProjectId,
        period: Period,
        seq: u64,
        at: DateTime<Utc>,
    ) -> Vec<Crossing> {
        let Some(limit) = self.limits.get(project) else {
            return Vec::new();
        };
        let spent = self
            .spend
            .get(&(project.clone(), period))
            .map_or(Money::ZERO, |s| s.spent);
        let reached: &[Threshold] = match status(limit.monthly_limit, limit.warn_at_percent, spent)
        {
            Status::Ok => &[],
            Status::Warning => &[Threshold::Warning],
            Status::Exceeded => &[Threshold::Warning, Threshold::Exceeded],
        };
        let mut crossings = Vec::new();
        for &threshold in reached {
            if self.crossed.insert((project.clone(), period, threshold)) {
                crossings.push(Crossing {
                    project: project.clone(),
                    period,
                    threshold,
                    limit: limit.clone(),
                    spent,
                    seq,
                    at,
                });
            }
        }
        crossings
    }
}

/// The projection, taking months in time zone `tz`.
#[derive(Debug, Clone)]
pub struct Budgets {
    pub tz: Tz,
}

/// What the segments of one batch share (see [`Projection::Carry`]): the ledger of every
/// (project, month) loaded so far, as the tables hold it once the last segment was written
/// back, so each is loaded once per batch instead of once per segment.
#[derive(Debug, Default)]
pub struct Loaded {
    ledger: Ledger,
    keys: HashSet<(ProjectId, Period)>,
    reservation_ids: HashSet<(ProjectId, String)>,
    catalog_loaded: bool,
    usage_keys: HashSet<UsageKey>,
    /// Models all of whose usage is loaded.
    usage_models: HashSet<String>,
}

impl Projection for Budgets {
    type Item = Item;
    type Carry = Loaded;

    fn name(&self) -> &'static str {
        NAME
    }

    fn schema(&self) -> &'static str {
        "budgets"
    }

    fn categories(&self) -> Option<&'static [&'static str]> {
        Some(&["llm", "budget", "catalog"])
    }

    fn decode(&self, stored: &StoredEvent) -> Result<Option<Item>, Rejection> {
        let at = stored.occurred_at();
        let period = Period::containing(at, &self.tz);
        let seq = stored.seq.0;
        match stored.event.event_type().as_str() {
            LLM_CALL_COMPLETED => Ok(Some(Item::Call {
                seq,
                at,
                period,
                call: stored.event.data_as()?,
            })),
            BUDGET_SET => {
                let mut set: kairos_events::types::BudgetSet = stored.event.data_as()?;
                // Who set it is what Kairos authenticated (its `PUT` records the member); a
                // setting a producer published with `manage_budgets` names the producer, not
                // whoever its `data.actor` claims.
                let e = &stored.event;
                if !e.source().starts_with(kairos_events::KAIROS_SOURCE) {
                    set.actor = Some(e.source().to_owned());
                }
                Ok(Some(Item::Set {
                    seq,
                    at,
                    period,
                    set,
                }))
            }
            kairos_events::types::CATALOG_CHANGED => Ok(kairos_catalog::decode_change(stored)?
                .map(|c| Item::Catalog {
                    seq,
                    at,
                    models: c.models,
                })),
            BUDGET_RESERVED => {
                let reserved: Reserved = stored.event.data_as()?;
                Ok(Some(Item::Reserved {
                    seq,
                    reserved: vec![(month_of(&reserved.period)?, reserved)],
                }))
            }
            BUDGET_RESERVED_BATCH => {
                let batch: ReservedBatch = stored.event.data_as()?;
                batch.check().map_err(|reason| Rejection {
                    code: "invalid_data",
                    reason,
                })?;
                let reserved = batch
                    .reservations
                    .into_iter()
                    .map(|r| Ok((month_of(&r.period)?, r)))
                    .collect::<Result<_, Rejection>>()?;
                Ok(Some(Item::Reserved { seq, reserved }))
            }
            BUDGET_RESERVATION_SETTLED | BUDGET_RESERVATION_EXPIRED => {
                let closed: ReservationClosed = stored.event.data_as()?;
                Ok(Some(Item::Closed {
                    period: month_of(&closed.period)?,
                    closed,
                }))
            }
            _ => Ok(None),
        }
    }

    /// A project's limit, spend, crossings, reservations and priced usage come from its own
    /// events and the catalog's; the catalog is kept per partition, and a price change re-prices
    /// the partition's own usage only.
    fn partitionable(&self) -> bool {
        true
    }

    fn snapshot_query(&self) -> Option<&'static str> {
        Some(
            "SELECT json_build_object(
                 'limits', (SELECT coalesce(json_agg(l), '[]') FROM limits l),
                 'spend', (SELECT coalesce(json_agg(s), '[]') FROM spend s),
                 'crossings', (SELECT coalesce(json_agg(json_build_object(
                      'project', c.project, 'period', c.period, 'threshold', c.threshold)), '[]')
                  FROM crossings c),
                 'reservations', (SELECT coalesce(json_agg(r), '[]') FROM reservations r),
                 'priced', (SELECT coalesce(json_agg(u), '[]') FROM priced u),
                 'catalog', (SELECT row_to_json(c) FROM catalog c WHERE c.part = ''))",
        )
    }

    async fn apply(
        &self,
        tx: &mut PgConnection,
        items: Vec<Item>,
        loaded: &mut Loaded,
    ) -> Result<Vec<Event>, ApplyError> {
        if !loaded.catalog_loaded {
            load_catalog(tx, &mut loaded.ledger).await?;
            loaded.catalog_loaded = true;
        }
        // A catalog change re-prices the usage of every model whose prices it changes: all
        // of it is loaded, with the months it counts in.
        let mut prev = loaded.ledger.catalog.clone();
        let mut models = HashSet::new();
        for item in &items {
            if let Item::Catalog { models: next, .. } = item {
                models.extend(repriced(&prev, next));
                prev = Arc::new(next.clone());
            }
        }
        models.retain(|m| !loaded.usage_models.contains(m));
        let mut months = HashSet::new();
        if !models.is_empty() {
            let models: Vec<String> = models.into_iter().collect();
            months = load_usage(tx, None, Some(&models), &mut loaded.ledger).await?;
            loaded.usage_models.extend(models);
        }
        let usage: Vec<UsageKey> = items
            .iter()
            .filter_map(Item::usage)
            .filter(|k| !loaded.usage_keys.contains(k) && !loaded.usage_models.contains(&k.model))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if !usage.is_empty() {
            load_usage(tx, Some(&usage), None, &mut loaded.ledger).await?;
            loaded.usage_keys.extend(usage);
        }
        let missing: HashSet<(ProjectId, Period)> = items
            .iter()
            .filter_map(Item::key)
            .chain(months)
            .filter(|k| !loaded.keys.contains(k))
            .collect();
        if !missing.is_empty() {
            load(tx, &missing, &mut loaded.ledger).await?;
            loaded.keys.extend(missing);
        }
        let ids: HashSet<(ProjectId, String)> = items
            .iter()
            .flat_map(Item::reservations)
            .filter(|k| !loaded.reservation_ids.contains(k))
            .collect();
        if !ids.is_empty() {
            load_reservations(tx, &ids, &mut loaded.ledger).await?;
            loaded.reservation_ids.extend(ids);
        }
        let ledger = &mut loaded.ledger;
        let before = ledger.clone();
        let mut crossings = Vec::new();
        for item in &items {
            crossings.extend(ledger.fold(item).map_err(ApplyError::Data)?);
        }
        save(tx, &before, ledger, &crossings).await?;
        save_reservations(tx, &before, ledger).await?;
        save_usage(tx, &before, ledger).await?;
        let mut events = crossings
            .iter()
            .map(|c| c.to_event().map_err(|e| ApplyError::Data(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        for closed in ledger.settled.drain(..) {
            events.push(settled_event(&closed).map_err(|e| ApplyError::Data(e.to_string()))?);
        }
        Ok(events)
    }
}

/// The budget month an event names.
fn month_of(period: &str) -> Result<Period, Rejection> {
    Period::parse(period).map_err(Rejection::from)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn money(nanos: i64) -> Money {
    Money::from_nanos(nanos)
}

/// Loads the limits, spend and crossings of the (project, month) `keys` into `ledger`, in one
/// statement: one row per (project, month), its project's limit repeated.
async fn load(
    tx: &mut PgConnection,
    keys: &HashSet<(ProjectId, Period)>,
    ledger: &mut Ledger,
) -> Result<(), sqlx::Error> {
    let (kp, kper): (Vec<String>, Vec<String>) = keys
        .iter()
        .map(|(p, per)| (p.to_string(), per.to_string()))
        .unzip();
    let rows = sqlx::query(
        "SELECT k.project, k.period,
                l.monthly_limit_nanos, l.warn_at_percent, l.on_exceeded, l.fallback_model,
                l.set_by, l.set_seq, l.set_at,
                s.spent_nanos, s.calls, s.failed_calls, s.input_tokens, s.output_tokens,
                s.last_seq, s.unpriced_calls,
                ARRAY(SELECT c.threshold FROM crossings c
                      WHERE c.project = k.project AND c.period = k.period) AS crossed
         FROM unnest($1::text[], $2::text[]) AS k(project, period)
         LEFT JOIN limits l ON l.project = k.project
         LEFT JOIN spend s ON s.project = k.project AND s.period = k.period",
    )
    .bind(&kp)
    .bind(&kper)
    .fetch_all(&mut *tx)
    .await?;
    for r in rows {
        let project = parse_project(r.try_get("project")?)?;
        let period = parse_period(r.try_get("period")?)?;
        if let Some(limit) = r.try_get::<Option<i64>, _>("monthly_limit_nanos")? {
            let on_exceeded: String = r.try_get("on_exceeded")?;
            ledger.limits.insert(
                project.clone(),
                Limit {
                    monthly_limit: money(limit),
                    warn_at_percent: u8::try_from(r.try_get::<i16, _>("warn_at_percent")?)
                        .unwrap_or(100),
                    on_exceeded: OnExceeded::parse(&on_exceeded).unwrap_or(OnExceeded::Block),
                    fallback_model: r.try_get("fallback_model")?,
                    set_by: r.try_get("set_by")?,
                    set_seq: u64::try_from(r.try_get::<i64, _>("set_seq")?).unwrap_or(0),
                    set_at: r.try_get("set_at")?,
                },
            );
        }
        if let Some(spent) = r.try_get::<Option<i64>, _>("spent_nanos")? {
            ledger.spend.insert(
                (project.clone(), period),
                Spend {
                    spent: money(spent),
                    calls: r.try_get("calls")?,
                    failed_calls: r.try_get("failed_calls")?,
                    input_tokens: r.try_get("input_tokens")?,
                    output_tokens: r.try_get("output_tokens")?,
                    last_seq: u64::try_from(r.try_get::<i64, _>("last_seq")?).unwrap_or(0),
                    unpriced_calls: r.try_get("unpriced_calls")?,
                },
            );
        }
        for threshold in r.try_get::<Vec<String>, _>("crossed")? {
            let threshold = match threshold.as_str() {
                "warning" => Threshold::Warning,
                _ => Threshold::Exceeded,
            };
            ledger.crossed.insert((project.clone(), period, threshold));
        }
    }
    Ok(())
}

/// The `kairos.budget.reservation_settled.v1` announcing `closed`: its id is the reservation's,
/// so announcing it again (redelivery, replay) is a duplicate.
pub fn settled_event(closed: &ReservationClosed) -> Result<Event, kairos_events::EventError> {
    let data = serde_json::to_value(closed)
        .map_err(|e| kairos_events::EventError::new("invalid_data", e.to_string()))?;
    Emit::new(BUDGET_RESERVATION_SETTLED, SOURCE, data)
        .id(format!("settled/{}", closed.reservation_id))
        .subject(closed.project.as_str())
        .build()
}

/// Loads the catalog budgets priced by, as last folded: by this partition when it runs
/// partitioned, else (a partition that has folded no catalog change yet starts where the
/// unpartitioned runner or the replay left it) the unpartitioned row.
async fn load_catalog(tx: &mut PgConnection, ledger: &mut Ledger) -> Result<(), sqlx::Error> {
    let row: Option<(i64, serde_json::Value)> = sqlx::query_as(
        "SELECT seq, models FROM catalog WHERE part IN (kairos.partition(), '')
         ORDER BY part DESC LIMIT 1",
    )
    .fetch_optional(&mut *tx)
    .await?;
    if let Some((seq, models)) = row {
        ledger.catalog =
            Arc::new(serde_json::from_value(models).map_err(|e| sqlx::Error::Decode(Box::new(e)))?);
        ledger.catalog_seq = u64::try_from(seq).unwrap_or(0);
    }
    Ok(())
}

/// Loads priced usage: the rows `keys` name, or every row of `models`; the (project, month)
/// keys of the rows loaded.
async fn load_usage(
    tx: &mut PgConnection,
    keys: Option<&[UsageKey]>,
    models: Option<&[String]>,
    ledger: &mut Ledger,
) -> Result<HashSet<(ProjectId, Period)>, sqlx::Error> {
    let keys = keys.unwrap_or(&[]);
    let rows = sqlx::query(
        "SELECT u.project, u.period, u.model, u.day, u.calls, u.input_tokens, u.output_tokens,
                u.cost_nanos
         FROM priced u
         WHERE (u.model = ANY($5::text[]) AND kairos.in_partition(u.project))
            OR (u.project, u.period, u.model, u.day) IN
               (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::date[]))",
    )
    .bind(column(keys, |k| k.project.to_string()))
    .bind(column(keys, |k| k.period.to_string()))
    .bind(column(keys, |k| k.model.clone()))
    .bind(column(keys, |k| k.day))
    .bind(models.unwrap_or(&[]))
    .fetch_all(&mut *tx)
    .await?;
    let mut months = HashSet::new();
    for r in rows {
        let key = UsageKey {
            project: parse_project(r.try_get("project")?)?,
            period: parse_period(r.try_get("period")?)?,
            model: r.try_get("model")?,
            day: r.try_get("day")?,
        };
        months.insert((key.project.clone(), key.period));
        ledger.usage.insert(
            key,
            Usage {
                calls: r.try_get("calls")?,
                input_tokens: r.try_get("input_tokens")?,
                output_tokens: r.try_get("output_tokens")?,
                cost: r.try_get::<Option<i64>, _>("cost_nanos")?.map(money),
            },
        );
    }
    Ok(months)
}

/// Writes back the priced usage that changed, and the catalog if it changed.
async fn save_usage(
    tx: &mut PgConnection,
    before: &Ledger,
    after: &Ledger,
) -> Result<(), sqlx::Error> {
    if after.catalog_seq != before.catalog_seq {
        let models =
            serde_json::to_value(&*after.catalog).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        sqlx::query(
            "INSERT INTO catalog (part, seq, models) VALUES (kairos.partition(), $1, $2)
             ON CONFLICT (part) DO UPDATE SET seq = EXCLUDED.seq, models = EXCLUDED.models",
        )
        .bind(to_i64(after.catalog_seq))
        .bind(models)
        .execute(&mut *tx)
        .await?;
    }
    let rows: Vec<(&UsageKey, &Usage)> = after
        .usage
        .iter()
        .filter(|(k, u)| before.usage.get(*k) != Some(*u))
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO priced (project, period, model, day, calls, input_tokens, output_tokens,
                             cost_nanos)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::date[], $5::int8[],
                              $6::int8[], $7::int8[], $8::int8[])
         ON CONFLICT (project, period, model, day) DO UPDATE SET
           calls = EXCLUDED.calls, input_tokens = EXCLUDED.input_tokens,
           output_tokens = EXCLUDED.output_tokens, cost_nanos = EXCLUDED.cost_nanos",
    )
    .bind(column(&rows, |(k, _)| k.project.to_string()))
    .bind(column(&rows, |(k, _)| k.period.to_string()))
    .bind(column(&rows, |(k, _)| k.model.clone()))
    .bind(column(&rows, |(k, _)| k.day))
    .bind(column(&rows, |(_, u)| u.calls))
    .bind(column(&rows, |(_, u)| u.input_tokens))
    .bind(column(&rows, |(_, u)| u.output_tokens))
    .bind(column(&rows, |(_, u)| u.cost.map(Money::nanos)))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Loads the open reservations among `ids` into `ledger`.
async fn load_reservations(
    tx: &mut PgConnection,
    ids: &HashSet<(ProjectId, String)>,
    ledger: &mut Ledger,
) -> Result<(), sqlx::Error> {
    let (kp, kid): (Vec<String>, Vec<String>) = ids
        .iter()
        .map(|(p, id)| (p.to_string(), id.clone()))
        .unzip();
    let rows = sqlx::query(
        "SELECT r.project, r.reservation_id, r.period, r.model, r.amount_nanos, r.expires_at, r.seq
         FROM unnest($1::text[], $2::text[]) AS k(project, id)
         JOIN reservations r ON r.project = k.project AND r.reservation_id = k.id",
    )
    .bind(&kp)
    .bind(&kid)
    .fetch_all(&mut *tx)
    .await?;
    for r in rows {
        ledger.reservations.insert(
            (
                parse_project(r.try_get("project")?)?,
                r.try_get("reservation_id")?,
            ),
            Reservation {
                period: parse_period(r.try_get("period")?)?,
                model: r.try_get("model")?,
                amount: money(r.try_get("amount_nanos")?),
                expires_at: r.try_get("expires_at")?,
                seq: u64::try_from(r.try_get::<i64, _>("seq")?).unwrap_or(0),
            },
        );
    }
    Ok(())
}

/// Writes the reservations opened in this batch and deletes the ones closed.
async fn save_reservations(
    tx: &mut PgConnection,
    before: &Ledger,
    after: &Ledger,
) -> Result<(), sqlx::Error> {
    let opened: Vec<(&(ProjectId, String), &Reservation)> = after
        .reservations
        .iter()
        .filter(|(k, r)| before.reservations.get(*k) != Some(*r))
        .collect();
    let closed: Vec<&(ProjectId, String)> = before
        .reservations
        .keys()
        .filter(|k| !after.reservations.contains_key(*k))
        .collect();
    if opened.is_empty() && closed.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "WITH d AS (
           DELETE FROM reservations r USING unnest($8::text[], $9::text[]) AS k(project, id)
           WHERE r.project = k.project AND r.reservation_id = k.id
         )
         INSERT INTO reservations (project, reservation_id, period, model, amount_nanos,
                                   expires_at, seq)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[],
                              $6::timestamptz[], $7::int8[])
         ON CONFLICT (project, reservation_id) DO NOTHING",
    )
    .bind(column(&opened, |((p, _), _)| p.to_string()))
    .bind(column(&opened, |((_, id), _)| id.clone()))
    .bind(column(&opened, |(_, r)| r.period.to_string()))
    .bind(column(&opened, |(_, r)| r.model.clone()))
    .bind(column(&opened, |(_, r)| r.amount.nanos()))
    .bind(column(&opened, |(_, r)| r.expires_at))
    .bind(column(&opened, |(_, r)| to_i64(r.seq)))
    .bind(column(&closed, |(p, _)| p.to_string()))
    .bind(column(&closed, |(_, id)| id.clone()))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// One column of `rows`, for binding as an array to `unnest`.
fn column<R, T>(rows: &[R], value: impl Fn(&R) -> T) -> Vec<T> {
    rows.iter().map(value).collect()
}

fn parse_project(s: String) -> Result<ProjectId, sqlx::Error> {
    ProjectId::parse(&s).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

fn parse_period(s: String) -> Result<Period, sqlx::Error> {
    Period::parse(&s).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

/// Writes back what changed, in one statement whatever the batch size (three inserts in
/// data-modifying `WITH` clauses: each round trip costs more than the statement here).
async fn save(
    tx: &mut PgConnection,
    before: &Ledger,
    after: &Ledger,
    crossings: &[Crossing],
) -> Result<(), sqlx::Error> {
    let limits: Vec<(&ProjectId, &Limit)> = after
        .limits
        .iter()
        .filter(|(p, l)| before.limits.get(*p) != Some(*l))
        .collect();
    let spend: Vec<(&(ProjectId, Period), &Spend)> = after
        .spend
        .iter()
        .filter(|(k, s)| before.spend.get(*k) != Some(*s))
        .collect();
    if limits.is_empty() && spend.is_empty() && crossings.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "WITH l AS (
           INSERT INTO limits (project, monthly_limit_nanos, warn_at_percent, on_exceeded,
                               fallback_model, set_by, set_seq, set_at)
           SELECT * FROM unnest($1::text[], $2::int8[], $3::int2[], $4::text[], $5::text[],
                                $6::text[], $7::int8[], $8::timestamptz[])
           ON CONFLICT (project) DO UPDATE SET
             monthly_limit_nanos = EXCLUDED.monthly_limit_nanos,
             warn_at_percent = EXCLUDED.warn_at_percent, on_exceeded = EXCLUDED.on_exceeded,
             fallback_model = EXCLUDED.fallback_model, set_by = EXCLUDED.set_by,
             set_seq = EXCLUDED.set_seq, set_at = EXCLUDED.set_at
         ), s AS (
           INSERT INTO spend (project, period, spent_nanos, calls, failed_calls, input_tokens,
                              output_tokens, last_seq, unpriced_calls)
           SELECT * FROM unnest($9::text[], $10::text[], $11::int8[], $12::int8[], $13::int8[],
                                $14::int8[], $15::int8[], $16::int8[], $24::int8[])
           ON CONFLICT (project, period) DO UPDATE SET
             spent_nanos = EXCLUDED.spent_nanos, calls = EXCLUDED.calls,
             failed_calls = EXCLUDED.failed_calls, input_tokens = EXCLUDED.input_tokens,
             output_tokens = EXCLUDED.output_tokens, last_seq = EXCLUDED.last_seq,
             unpriced_calls = EXCLUDED.unpriced_calls
         )
         INSERT INTO crossings (project, period, threshold, limit_nanos, spent_nanos, seq,
                                crossed_at)
         SELECT * FROM unnest($17::text[], $18::text[], $19::text[], $20::int8[], $21::int8[],
                              $22::int8[], $23::timestamptz[])",
    )
    .bind(column(&limits, |(p, _)| p.to_string()))
    .bind(column(&limits, |(_, l)| l.monthly_limit.nanos()))
    .bind(column(&limits, |(_, l)| i16::from(l.warn_at_percent)))
    .bind(column(&limits, |(_, l)| l.on_exceeded.as_str()))
    .bind(column(&limits, |(_, l)| l.fallback_model.clone()))
    .bind(column(&limits, |(_, l)| l.set_by.clone()))
    .bind(column(&limits, |(_, l)| to_i64(l.set_seq)))
    .bind(column(&limits, |(_, l)| l.set_at))
    .bind(column(&spend, |((p, _), _)| p.to_string()))
    .bind(column(&spend, |((_, per), _)| per.to_string()))
    .bind(column(&spend, |(_, s)| s.spent.nanos()))
    .bind(column(&spend, |(_, s)| s.calls))
    .bind(column(&spend, |(_, s)| s.failed_calls))
    .bind(column(&spend, |(_, s)| s.input_tokens))
    .bind(column(&spend, |(_, s)| s.output_tokens))
    .bind(column(&spend, |(_, s)| to_i64(s.last_seq)))
    .bind(column(crossings, |c| c.project.to_string()))
    .bind(column(crossings, |c| c.period.to_string()))
    .bind(column(crossings, |c| c.threshold.as_str()))
    .bind(column(crossings, |c| c.limit.monthly_limit.nanos()))
    .bind(column(crossings, |c| c.spent.nanos()))
    .bind(column(crossings, |c| to_i64(c.seq)))
    .bind(column(crossings, |c| c.at))
    .bind(column(&spend, |(_, s)| s.unpriced_calls))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// A project's budget for one month, as the API answers it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct BudgetView {
    pub project: String,
    /// The month, as 2026-11.
    pub period: String,
    /// USD, a decimal string.
    #[schema(value_type = Option<String>)]
    pub limit: Option<Money>,
    #[schema(value_type = String)]
    pub spent: Money,
    #[schema(value_type = Option<String>)]
    pub remaining: Option<Money>,
    /// Held by open route reservations (worst-case costs of admitted calls not yet settled).
    #[schema(value_type = String)]
    pub reserved: Money,
    /// What new reservations may still take: the limit less what is spent and reserved.
    #[schema(value_type = Option<String>)]
    pub available: Option<Money>,
    /// `ok` when no limit is set.
    pub status: Status,
    pub warn_at_percent: Option<u8>,
    /// `fallback_to_local` or `block`.
    #[schema(value_type = Option<String>)]
    pub on_exceeded: Option<OnExceeded>,
    pub fallback_model: Option<String>,
    /// The stream sequence of the `kairos.budget.set.v1` in force: send it as `If-Match` to
    /// change the budget only if nobody changed it since.
    pub version: Option<u64>,
    pub calls: i64,
    pub failed_calls: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// Calls without a cost whose model had no price at their time: counted, never free; the
    /// router admits no paid call for the month while there are any.
    pub unpriced_calls: i64,
    /// The budgets projection had applied the stream up to this sequence when this was read.
    pub as_of_seq: u64,
}

const VIEW_SQL: &str = "
    WITH p AS (
        SELECT project FROM budgets.limits
        UNION SELECT project FROM budgets.spend WHERE period = $2
        UNION SELECT project FROM budgets.reservations WHERE period = $2
    )
    SELECT p.project, l.monthly_limit_nanos, l.warn_at_percent, l.on_exceeded, l.fallback_model, l.set_seq,
           coalesce(s.spent_nanos, 0) AS spent_nanos, coalesce(s.calls, 0) AS calls,
           coalesce(s.failed_calls, 0) AS failed_calls, coalesce(s.input_tokens, 0) AS input_tokens,
           coalesce(s.output_tokens, 0) AS output_tokens,
           coalesce(s.unpriced_calls, 0) AS unpriced_calls,
           coalesce((SELECT sum(r.amount_nanos) FROM budgets.reservations r
                     WHERE r.project = p.project AND r.period = $2), 0)::int8 AS reserved_nanos,
           coalesce((SELECT last_seq FROM kairos.checkpoints WHERE projection = 'budgets'), 0) AS as_of_seq
    FROM p
    LEFT JOIN budgets.limits l ON l.project = p.project
    LEFT JOIN budgets.spend s ON s.project = p.project AND s.period = $2
    WHERE ($1::text IS NULL OR p.project = $1) AND ($4::text IS NULL OR p.project > $4)
      AND ($5::text[] IS NULL OR p.project = ANY($5))
    ORDER BY p.project
    LIMIT $3";

impl BudgetView {
    fn assemble(
        project: String,
        period: Period,
        limit: Option<&Limit>,
        spend: &Spend,
        reserved: Money,
        as_of_seq: u64,
    ) -> Self {
        let spent = spend.spent;
        let amount = limit.map(|l| l.monthly_limit);
        let available = amount.map(|l| {
            l.checked_sub(spent)
                .and_then(|r| r.checked_sub(reserved))
                .unwrap_or(Money::ZERO)
        });
        BudgetView {
            project,
            period: period.to_string(),
            limit: amount,
            spent,
            remaining: amount.and_then(|l| l.checked_sub(spent)),
            reserved,
            available,
            status: limit.map_or(Status::Ok, |l| {
                status(l.monthly_limit, l.warn_at_percent, spent)
            }),
            warn_at_percent: limit.map(|l| l.warn_at_percent),
            on_exceeded: limit.map(|l| l.on_exceeded),
            fallback_model: limit.and_then(|l| l.fallback_model.clone()),
            version: limit.map(|l| l.set_seq),
            calls: spend.calls,
            failed_calls: spend.failed_calls,
            input_tokens: spend.input_tokens,
            output_tokens: spend.output_tokens,
            unpriced_calls: spend.unpriced_calls,
            as_of_seq,
        }
    }
}

fn view(r: &sqlx::postgres::PgRow, period: Period) -> Result<BudgetView, sqlx::Error> {
    let limit_nanos: Option<i64> = r.try_get("monthly_limit_nanos")?;
    let warn: Option<i16> = r.try_get("warn_at_percent")?;
    let on_exceeded: Option<String> = r.try_get("on_exceeded")?;
    let limit = match (limit_nanos, warn) {
        (Some(nanos), Some(warn)) => Some(Limit {
            monthly_limit: money(nanos),
            warn_at_percent: u8::try_from(warn).unwrap_or(100),
            on_exceeded: on_exceeded
                .as_deref()
                .and_then(OnExceeded::parse)
                .unwrap_or(OnExceeded::Block),
            fallback_model: r.try_get("fallback_model")?,
            set_by: None,
            set_seq: r
                .try_get::<Option<i64>, _>("set_seq")?
                .and_then(|s| u64::try_from(s).ok())
                .unwrap_or(0),
            set_at: DateTime::<Utc>::UNIX_EPOCH,
        }),
        _ => None,
    };
    let spend = Spend {
        spent: money(r.try_get("spent_nanos")?),
        calls: r.try_get("calls")?,
        failed_calls: r.try_get("failed_calls")?,
        input_tokens: r.try_get("input_tokens")?,
        output_tokens: r.try_get("output_tokens")?,
        last_seq: 0,
        unpriced_calls: r.try_get("unpriced_calls")?,
    };
    let as_of_seq = u64::try_from(r.try_get::<i64, _>("as_of_seq")?).unwrap_or(0);
    Ok(BudgetView::assemble(
        r.try_get("project")?,
        period,
        limit.as_ref(),
        &spend,
        money(r.try_get("reserved_nanos")?),
        as_of_seq,
    ))
}

/// One project's budget in `period`; `None` if it has neither a limit nor spend then.
pub async fn read(
    pool: &PgPool,
    project: &ProjectId,
    period: Period,
) -> Result<Option<BudgetView>, sqlx::Error> {
    sqlx::query(VIEW_SQL)
        .bind(Some(project.as_str()))
        .bind(period.to_string())
        .bind(1i64)
        .bind(None::<&str>)
        .bind(None::<Vec<String>>)
        .fetch_optional(pool)
        .await?
        .map(|r| view(&r, period))
        .transpose()
}

/// Every project with a limit, or with spend in `period`, by project id, after `after`.
pub async fn list(
    pool: &PgPool,
    period: Period,
    after: Option<&str>,
    limit: i64,
    only: Option<&[String]>,
) -> Result<Vec<BudgetView>, sqlx::Error> {
    sqlx::query(VIEW_SQL)
        .bind(None::<&str>)
        .bind(period.to_string())
        .bind(limit)
        .bind(after)
        .bind(only)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| view(r, period))
        .collect()
}

/// What a project spent in a month, as a route's admission reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spent {
    pub spent: Money,
    /// Calls without a cost the catalog could not price.
    pub unpriced_calls: i64,
    /// The stream sequence the budgets projection had applied when this was read.
    pub applied: u64,
}

/// What `project` spent in `period` and the stream sequence the budgets projection had applied
/// then, read together (one statement, one snapshot): what a route's admission adds the
/// budget aggregate's reservations and later settlements to.
pub async fn spent(
    pool: &PgPool,
    project: &ProjectId,
    period: Period,
) -> Result<Spent, sqlx::Error> {
    let (spent, unpriced, applied): (i64, i64, i64) = sqlx::query_as(
        "SELECT coalesce(s.spent_nanos, 0), coalesce(s.unpriced_calls, 0),
                coalesce((SELECT last_seq FROM kairos.checkpoints WHERE projection = 'budgets'), 0)
         FROM (SELECT 1) one
         LEFT JOIN budgets.spend s ON s.project = $1 AND s.period = $2",
    )
    .bind(project.as_str())
    .bind(period.to_string())
    .fetch_one(pool)
    .await?;
    Ok(Spent {
        spent: money(spent),
        unpriced_calls: unpriced,
        applied: u64::try_from(applied).unwrap_or(0),
    })
}

/// The open reservations that expired at `now`, oldest first, at most `limit`.
pub async fn expired_reservations(
    pool: &PgPool,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<(ProjectId, String)>, sqlx::Error> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT project, reservation_id FROM budgets.reservations WHERE expires_at <= $1
         ORDER BY expires_at LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|(p, id)| Ok((parse_project(p)?, id)))
        .collect()
}

/// The thresholds a project crossed in `period`, in the order it crossed them.
pub async fn crossings(
    pool: &PgPool,
    project: &ProjectId,
    period: Period,
) -> Result<Vec<(String, u64)>, sqlx::Error> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT threshold, seq FROM budgets.crossings WHERE project = $1 AND period = $2 ORDER BY seq, threshold DESC",
    )
    .bind(project.as_str())
    .bind(period.to_string())
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(t, s)| (t, u64::try_from(s).unwrap_or(0)))
        .collect())
}

/// A stored snapshot could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum AsOfError {
    #[error("snapshot of budgets is unreadable: {0}")]
    Snapshot(String),
    #[error(transparent)]
    History(#[from] kairos_runtime::HistoryError),
    #[error("projection database: {0}")]
    Database(#[from] sqlx::Error),
    /// The projection has not applied the events up to the instant yet.
    #[error("{0}")]
    NotYetApplied(String),
}

#[derive(serde::Deserialize)]
struct SnapshotRows {
    limits: Vec<LimitRow>,
    spend: Vec<SpendRow>,
    crossings: Vec<CrossingRow>,
    /// Snapshots taken before reservations existed have none.
    #[serde(default)]
    reservations: Vec<ReservationRow>,
    #[serde(default)]
    priced: Vec<PricedRow>,
    #[serde(default)]
    catalog: Option<CatalogRow>,
}

#[derive(serde::Deserialize)]
struct ReservationRow {
    project: ProjectId,
    reservation_id: String,
    period: String,
    model: String,
    amount_nanos: i64,
    expires_at: DateTime<Utc>,
    seq: u64,
}

#[derive(serde::Deserialize)]
struct LimitRow {
    project: ProjectId,
    monthly_limit_nanos: i64,
    warn_at_percent: u8,
    on_exceeded: OnExceeded,
    fallback_model: Option<String>,
    set_by: Option<String>,
    set_seq: u64,
    set_at: DateTime<Utc>,
}

#[derive(serde::Deserialize)]
struct SpendRow {
    project: ProjectId,
    period: String,
    spent_nanos: i64,
    calls: i64,
    failed_calls: i64,
    input_tokens: i64,
    output_tokens: i64,
    last_seq: u64,
    #[serde(default)]
    unpriced_calls: i64,
}

#[derive(serde::Deserialize)]
struct PricedRow {
    project: ProjectId,
    period: String,
    model: String,
    day: NaiveDate,
    calls: i64,
    input_tokens: i64,
    output_tokens: i64,
    cost_nanos: Option<i64>,
}

#[derive(serde::Deserialize)]
struct CatalogRow {
    seq: u64,
    models: Vec<ModelSpec>,
}

#[derive(serde::Deserialize)]
struct CrossingRow {
    project: ProjectId,
    period: String,
    threshold: Threshold,
}

impl Ledger {
    /// The ledger a snapshot (from [`Budgets`]' `snapshot`) describes.
    pub fn from_snapshot(state: serde_json::Value) -> Result<Self, AsOfError> {
        let bad = |e: &dyn std::fmt::Display| AsOfError::Snapshot(e.to_string());
        let rows: SnapshotRows = serde_json::from_value(state).map_err(|e| bad(&e))?;
        let mut ledger = Ledger::default();
        for l in rows.limits {
            ledger.limits.insert(
                l.project,
                Limit {
                    monthly_limit: money(l.monthly_limit_nanos),
                    warn_at_percent: l.warn_at_percent,
                    on_exceeded: l.on_exceeded,
                    fallback_model: l.fallback_model,
                    set_by: l.set_by,
                    set_seq: l.set_seq,
                    set_at: l.set_at,
                },
            );
        }
        for s in rows.spend {
            let period = Period::parse(&s.period).map_err(|e| bad(&e))?;
            ledger.spend.insert(
                (s.project, period),
                Spend {
                    spent: money(s.spent_nanos),
                    calls: s.calls,
                    failed_calls: s.failed_calls,
                    input_tokens: s.input_tokens,
                    output_tokens: s.output_tokens,
                    last_seq: s.last_seq,
                    unpriced_calls: s.unpriced_calls,
                },
            );
        }
        for c in rows.crossings {
            let period = Period::parse(&c.period).map_err(|e| bad(&e))?;
            ledger.crossed.insert((c.project, period, c.threshold));
        }
        for u in rows.priced {
            ledger.usage.insert(
                UsageKey {
                    project: u.project,
                    period: Period::parse(&u.period).map_err(|e| bad(&e))?,
                    model: u.model,
                    day: u.day,
                },
                Usage {
                    calls: u.calls,
                    input_tokens: u.input_tokens,
                    output_tokens: u.output_tokens,
                    cost: u.cost_nanos.map(money),
                },
            );
        }
        if let Some(c) = rows.catalog {
            ledger.catalog = Arc::new(c.models);
            ledger.catalog_seq = c.seq;
        }
        for r in rows.reservations {
            ledger.reservations.insert(
                (r.project, r.reservation_id),
                Reservation {
                    period: Period::parse(&r.period).map_err(|e| bad(&e))?,
                    model: r.model,
                    amount: money(r.amount_nanos),
                    expires_at: r.expires_at,
                    seq: r.seq,
                },
            );
        }
        Ok(ledger)
    }
}

impl Budgets {
    /// The whole ledger as it stood once the stream held exactly the events up to `seq` (at most
    /// the projection's checkpoint): the nearest snapshot plus the events after it, folded in
    /// memory.
    /// The ledger as it stood at `seq` (`project` is kept for callers; every subject is read,
    /// since catalog changes price every project's calls).
    pub async fn ledger_as_of(
        &self,
        bus: &kairos_bus::Bus,
        pool: &PgPool,
        seq: kairos_events::StreamSeq,
        project: Option<&ProjectId>,
    ) -> Result<Ledger, AsOfError> {
        let (from, mut ledger) = match kairos_runtime::snapshot_at(pool, NAME, seq).await? {
            Some((at, state)) => (at, Ledger::from_snapshot(state)?),
            None => (kairos_events::StreamSeq(0), Ledger::default()),
        };
        // Every subject: a catalog change (on its own subject) prices this project's calls
        // too. A snapshot is at most `snapshot_every` sequences back.
        let _ = project;
        let filter = None;
        for item in kairos_runtime::items_between(self, bus, pool, from, seq, filter).await? {
            // The live projection applied exactly these items; a fold error was dead-lettered
            // there and changed nothing, here too.
            let _ = ledger.fold(&item);
        }
        Ok(ledger)
    }

    /// The ledger as it stood at the instant `at`, and the stream sequence that is: from the
    /// snapshot before `at`, reading forward until the first event stored after it (one pass over
    /// the stream; see [`kairos_runtime::as_of_span`]). `applied` waits until the projection
    /// has applied a sequence. Without a snapshot that records its time, the sequence is looked
    /// up first ([`kairos_runtime::seq_at_time`]) and [`Budgets::ledger_as_of`] answers.
    pub async fn ledger_at<F, Fut>(
        &self,
        bus: &kairos_bus::Bus,
        pool: &PgPool,
        at: chrono::DateTime<chrono::Utc>,
        project: Option<&ProjectId>,
        applied: F,
    ) -> Result<(Ledger, kairos_events::StreamSeq), AsOfError>
    where
        F: FnOnce(kairos_events::StreamSeq) -> Fut,
        Fut: std::future::Future<Output = Result<(), AsOfError>>,
    {
        // Every subject: a catalog change (on its own subject) prices this project's calls
        // too. A snapshot is at most `snapshot_every` sequences back.
        let _ = project;
        let filter = None;
        let Some(span) = kairos_runtime::as_of_span(self, bus, pool, NAME, at, filter).await?
        else {
            let seq = kairos_runtime::seq_at_time(bus, pool, at).await?;
            applied(seq).await?;
            return Ok((self.ledger_as_of(bus, pool, seq, project).await?, seq));
        };
        applied(span.seq).await?;
        let mut ledger = Ledger::from_snapshot(span.snapshot.1)?;
        for item in kairos_runtime::first_applied(self, pool, span.decoded).await? {
            // As in `ledger_as_of`: what failed to fold live changed nothing, here too.
            let _ = ledger.fold(&item);
        }
        Ok((ledger, span.seq))
    }
}

impl Ledger {
    /// A project's budget in `period`; `None` if it has neither a limit nor spend then.
    pub fn view(&self, project: &ProjectId, period: Period, seq: u64) -> Option<BudgetView> {
        let limit = self.limits.get(project);
        let spend = self.spend.get(&(project.clone(), period));
        let reserved = self.reserved(project, period);
        if limit.is_none() && spend.is_none() && reserved == Money::ZERO {
            return None;
        }
        let spend = spend.cloned().unwrap_or_default();
        Some(BudgetView::assemble(
            project.to_string(),
            period,
            limit,
            &spend,
            reserved,
            seq,
        ))
    }

    /// What open reservations hold against `project` in `period`.
    pub fn reserved(&self, project: &ProjectId, period: Period) -> Money {
        self.reservations
            .iter()
            .filter(|((p, _), r)| p == project && r.period == period)
            .fold(Money::ZERO, |sum, (_, r)| {
                sum.checked_add(r.amount).unwrap_or(Money::MAX)
            })
    }

    /// Every project with a limit or with spend in `period`, by project id.
    pub fn views(&self, period: Period, seq: u64) -> Vec<BudgetView> {
        let mut projects: Vec<&ProjectId> = self
            .limits
            .keys()
            .chain(
                self.spend
                    .keys()
                    .filter(|(_, p)| *p == period)
                    .map(|(p, _)| p),
            )
            .collect();
        projects.sort();
        projects.dedup();
        projects
            .into_iter()
            .filter_map(|p| self.view(p, period, seq))
            .collect()
    }
}

mod api;

pub use api::{
    BudgetCommands, BudgetPreset, BudgetSetting, BudgetSettings, BudgetsModule, MODULE,
    apply_presets,
};

#[cfg(test)]
mod tests;
