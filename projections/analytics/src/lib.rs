//! The model analytics projection: LLM calls per model, in UTC minute, hour and day buckets.
//!
//! Folds `kairos.llm.call.completed.v1` into one row per (bucket start, project, model,
//! provider) at each granularity — calls, errors, tokens, the cost producers reported, the cost
//! the catalog gives, and a latency [`DDSketch`] (relative accuracy [`RELATIVE_ERROR`]) — and
//! `kairos.catalog.changed.v1` into its own copy of the catalog in force (`analytics.catalog`:
//! a projection never reads another projection's tables).
//!
//! **Pricing.** A call that carries a `cost` keeps it. One without is priced from the catalog in
//! force, at the price in force at the call's minute. Catalog prices are whole nano-dollars per
//! token and start on whole minutes, so one minute's calls cost exactly the minute's token sums
//! at that minute's price: the catalog-derived columns of a minute (`catalog_cost`, `cost`,
//! `unpriced_calls`) are a function of the catalog and the minute's sums alone ([`price`]), and
//! those of an hour or a day are the sums of its minutes'. A call without a cost whose model has
//! no price then is *unpriced*: counted in `unpriced_calls`, never as free, its tokens kept so a
//! later price prices it.
//!
//! **Re-pricing.** Whatever order calls and catalog changes arrive in, every row is priced with
//! the catalog in force now: a change re-prices the minutes of every model whose price it
//! changes ([`repricings`]; an entry dated in the past, a corrected price, a model added or
//! removed), then the hours and days containing them, in three set-based statements.
//!
//! The pure logic is [`Rows::fold`], [`price`], [`repricings`] and [`tiles`]; [`Analytics`]
//! loads the rows a batch touches, folds and writes them back. [`models`], [`project`] and
//! [`health`] are the reads.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use kairos_events::types::{CATALOG_CHANGED, CallStatus, LLM_CALL_COMPLETED, LlmCallCompleted};
use kairos_events::types::{ModelSpec, PriceSpec};
use kairos_events::{Event, Money};
use kairos_runtime::{ApplyError, Projection, Rejection, StoredEvent};
use serde::Serialize;
use sketches_ddsketch::{Config, DDSketch};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};

mod api;

pub use api::{AnalyticsModule, MODULE};

/// The name of the projection: consumer, checkpoint and dead-letter subject.
pub const NAME: &str = "analytics";

/// The relative accuracy of every latency percentile: a sketch's quantile is within this
/// fraction of the exact order statistic (rank `floor(q * (n - 1))` of the sorted values).
pub const RELATIVE_ERROR: f64 = 0.01;

/// Most buckets one answer of `GET /v1/analytics/models` holds.
pub const MAX_BUCKETS: usize = 10_000;

/// An empty latency sketch, as every bucket's starts.
pub fn sketch() -> DDSketch {
    DDSketch::new(Config::new(RELATIVE_ERROR, 2048, 1.0e-9))
}

/// A bucket's granularity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Grain {
    Minute,
    Hour,
    Day,
}

impl Grain {
    pub const ALL: [Grain; 3] = [Grain::Minute, Grain::Hour, Grain::Day];

    pub fn as_str(self) -> &'static str {
        match self {
            Grain::Minute => "minute",
            Grain::Hour => "hour",
            Grain::Day => "day",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|g| g.as_str() == s)
    }

    /// Its length in seconds.
    pub fn seconds(self) -> i64 {
        match self {
            Grain::Minute => 60,
            Grain::Hour => 3_600,
            Grain::Day => 86_400,
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The start of the bucket containing `at` (UTC).
    pub fn floor(self, at: DateTime<Utc>) -> DateTime<Utc> {
        let into = at.timestamp().rem_euclid(self.seconds());
        at - TimeDelta::seconds(into)
            - TimeDelta::nanoseconds(i64::from(at.timestamp_subsec_nanos()))
    }

    /// The first bucket start at or after `at`.
    pub fn ceil(self, at: DateTime<Utc>) -> DateTime<Utc> {
        let floor = self.floor(at);
        if floor == at {
            at
        } else {
            floor + TimeDelta::seconds(self.seconds())
        }
    }

    /// How many buckets start in `[from, to)`.
    pub fn count(self, from: DateTime<Utc>, to: DateTime<Utc>) -> i64 {
        let (a, b) = (self.ceil(from), self.ceil(to));
        if b <= a {
            0
        } else {
            (b - a).num_seconds() / self.seconds()
        }
    }
}

/// Before every instant an event can carry (RFC 3339 years start at 0000), and one PostgreSQL
/// stores.
pub fn beginning() -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(-1, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map_or(DateTime::<Utc>::UNIX_EPOCH, |d| d.and_utc())
}

/// After every instant an event can carry (RFC 3339 years end at 9999).
pub fn end_of_time() -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(10_000, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map_or(DateTime::<Utc>::UNIX_EPOCH, |d| d.and_utc())
}

/// What identifies a bucket at one granularity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub start: DateTime<Utc>,
    pub project: String,
    pub model: String,
    pub provider: String,
}

/// One LLM call, as the fold needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub at: DateTime<Utc>,
    pub project: String,
    pub model: String,
    pub provider: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// What the producer reported; `None`: priced from the catalog.
    pub cost: Option<Money>,
    pub latency_ms: u64,
    pub error: bool,
}

impl Call {
    pub fn new(at: DateTime<Utc>, c: LlmCallCompleted) -> Self {
        Self {
            at,
            project: c.project.as_str().to_owned(),
            model: c.model,
            provider: c.provider,
            input_tokens: c.input_tokens,
            output_tokens: c.output_tokens,
            cost: c.cost,
            latency_ms: c.latency_ms,
            error: c.status == CallStatus::Error,
        }
    }

    /// The bucket it falls in at `grain`.
    pub fn key(&self, grain: Grain) -> Key {
        Key {
            start: grain.floor(self.at),
            project: self.project.clone(),
            model: self.model.clone(),
            provider: self.provider.clone(),
        }
    }
}

/// A bucket's catalog-derived columns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Priced {
    /// The catalog's price of all the bucket's calls (priced minutes only), nano-dollars.
    pub catalog_cost: i64,
    /// Reported costs where sent, the catalog's price otherwise, nano-dollars.
    pub cost: i64,
    /// Calls without a cost whose model had no price in force at the call's minute.
    pub unpriced_calls: i64,
}

impl Priced {
    fn checked_sub(self, o: Priced) -> Option<Priced> {
        Some(Priced {
            catalog_cost: self.catalog_cost.checked_sub(o.catalog_cost)?,
            cost: self.cost.checked_sub(o.cost)?,
            unpriced_calls: self.unpriced_calls.checked_sub(o.unpriced_calls)?,
        })
    }

    fn checked_add(self, o: Priced) -> Option<Priced> {
        Some(Priced {
            catalog_cost: self.catalog_cost.checked_add(o.catalog_cost)?,
            cost: self.cost.checked_add(o.cost)?,
            unpriced_calls: self.unpriced_calls.checked_add(o.unpriced_calls)?,
        })
    }
}

/// A latency sketch (`DDSketch` has no `Debug`).
#[derive(Clone)]
pub struct Latency(pub DDSketch);

impl Default for Latency {
    fn default() -> Self {
        Self(sketch())
    }
}

impl std::fmt::Debug for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Latency({} values)", self.0.count())
    }
}

impl Latency {
    /// The `q` quantile of the values, within [`RELATIVE_ERROR`]; `None` if there are none.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        self.0.quantile(q).ok().flatten()
    }

    /// p50, p95 and p99.
    pub fn percentiles(&self) -> Percentiles {
        Percentiles {
            p50: self.quantile(0.5),
            p95: self.quantile(0.95),
            p99: self.quantile(0.99),
        }
    }

    /// The sketch in its stored form (the crate's serde, as JSON).
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(&self.0)
    }

    /// A stored sketch; refused if its configuration is not this projection's (sketches of two
    /// configurations do not merge).
    pub fn from_json(text: &str) -> Result<Self, String> {
        let s: DDSketch = serde_json::from_str(text).map_err(|e| format!("latency sketch: {e}"))?;
        let mut probe = sketch();
        probe
            .merge(&s)
            .map_err(|_| "latency sketch: not of relative accuracy 0.01".to_owned())?;
        Ok(Self(s))
    }
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

/// One bucket's row (or the merge of several).
#[derive(Debug, Clone, Default)]
pub struct Bucket {
    pub calls: i64,
    pub errors: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// Calls that carried a cost.
    pub reported_calls: i64,
    /// The sum of those costs, nano-dollars.
    pub reported_cost: i64,
    /// Tokens of the calls without a cost: what the catalog prices.
    pub unreported_input_tokens: i64,
    pub unreported_output_tokens: i64,
    pub priced: Priced,
    pub latency: Latency,
}

fn add_u(sum: i64, n: u64) -> Option<i64> {
    sum.checked_add(i64::try_from(n).ok()?)
}

impl Bucket {
    /// Counts `call` in (its catalog-derived columns are left to [`price`]).
    pub fn add(&mut self, call: &Call) -> Result<(), String> {
        let overflow = || format!("a bucket of {} {} overflows", call.project, call.model);
        self.calls = add_u(self.calls, 1).ok_or_else(overflow)?;
        if call.error {
            self.errors = add_u(self.errors, 1).ok_or_else(overflow)?;
        }
        self.input_tokens = add_u(self.input_tokens, call.input_tokens).ok_or_else(overflow)?;
        self.output_tokens = add_u(self.output_tokens, call.output_tokens).ok_or_else(overflow)?;
        match call.cost {
            Some(cost) => {
                self.reported_calls = add_u(self.reported_calls, 1).ok_or_else(overflow)?;
                self.reported_cost = self
                    .reported_cost
                    .checked_add(cost.nanos())
                    .ok_or_else(overflow)?;
            }
            None => {
                self.unreported_input_tokens =
                    add_u(self.unreported_input_tokens, call.input_tokens).ok_or_else(overflow)?;
                self.unreported_output_tokens =
                    add_u(self.unreported_output_tokens, call.output_tokens)
                        .ok_or_else(overflow)?;
            }
        }
        // Latencies are at most 24 h in milliseconds: exact as f64.
        self.latency.0.add(call.latency_ms as f64);
        Ok(())
    }

    /// Adds `other` in: sums, catalog-derived columns and the sketch (merged).
    pub fn merge(&mut self, other: &Bucket) -> Result<(), String> {
        let overflow = || "the sum overflows".to_owned();
        let add = |a: i64, b: i64| a.checked_add(b).ok_or_else(overflow);
        self.calls = add(self.calls, other.calls)?;
        self.errors = add(self.errors, other.errors)?;
        self.input_tokens = add(self.input_tokens, other.input_tokens)?;
        self.output_tokens = add(self.output_tokens, other.output_tokens)?;
        self.reported_calls = add(self.reported_calls, other.reported_calls)?;
        self.reported_cost = add(self.reported_cost, other.reported_cost)?;
        self.unreported_input_tokens =
            add(self.unreported_input_tokens, other.unreported_input_tokens)?;
        self.unreported_output_tokens = add(
            self.unreported_output_tokens,
            other.unreported_output_tokens,
        )?;
        self.priced = self.priced.checked_add(other.priced).ok_or_else(overflow)?;
        self.latency
            .0
            .merge(&other.latency.0)
            .map_err(|e| e.to_string())
    }

    /// Errors over calls (0 without calls).
    pub fn error_rate(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.errors as f64 / self.calls as f64
        }
    }
}

/// The catalog-derived columns of a minute with `bucket`'s sums, at `price` (the price of the
/// bucket's model in force at that minute; `None`: unpriced). Exact: a price is whole
/// nano-dollars per token, so the price of the minute's token sums is the sum of the prices of
/// its calls.
pub fn price(bucket: &Bucket, price: Option<&PriceSpec>) -> Result<Priced, String> {
    let tokens = |n: i64| u64::try_from(n).unwrap_or(0);
    let too_large = || "a minute's cost exceeds 1,000,000,000 USD".to_owned();
    Ok(match price {
        Some(p) => {
            let catalog = p
                .cost(tokens(bucket.input_tokens), tokens(bucket.output_tokens))
                .ok_or_else(too_large)?;
            let unreported = p
                .cost(
                    tokens(bucket.unreported_input_tokens),
                    tokens(bucket.unreported_output_tokens),
                )
                .ok_or_else(too_large)?;
            Priced {
                catalog_cost: catalog.nanos(),
                cost: bucket
                    .reported_cost
                    .checked_add(unreported.nanos())
                    .ok_or_else(too_large)?,
                unpriced_calls: 0,
            }
        }
        None => Priced {
            catalog_cost: 0,
            cost: bucket.reported_cost,
            unpriced_calls: bucket.calls - bucket.reported_calls,
        },
    })
}

/// The catalog in force, by model name.
#[derive(Debug, Clone, Default)]
pub struct Prices {
    models: HashMap<String, ModelSpec>,
}

impl Prices {
    pub fn new(models: &[ModelSpec]) -> Self {
        Self {
            models: models.iter().map(|m| (m.name.clone(), m.clone())).collect(),
        }
    }

    /// The price of `model` in force at `at`: a local model's is zero, a model not in the
    /// catalog has none.
    pub fn at(&self, model: &str, at: DateTime<Utc>) -> Option<PriceSpec> {
        self.models.get(model)?.price_at(at)
    }
}

/// Per token prices (input, output per million tokens) in force, or none.
type Rate = Option<(Money, Money)>;

fn rate(spec: Option<&ModelSpec>, at: DateTime<Utc>) -> Rate {
    spec.and_then(|s| s.price_at(at))
        .map(|p| (p.input_per_mtok, p.output_per_mtok))
}

/// A span of a model's minutes a catalog change prices differently, and the price it gives them
/// (`None`: unpriced from now on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repricing {
    pub model: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Input and output prices per million tokens.
    pub rate: Rate,
}

/// Where the catalog `after` prices calls differently from `before`: for every model either
/// lists, the maximal spans on which its price in force differs (prices hold between their
/// `valid_from`s, so each span has one price under each catalog). Ordered by model, then time.
pub fn repricings(before: &[ModelSpec], after: &[ModelSpec]) -> Vec<Repricing> {
    let find = |list: &'_ [ModelSpec], name: &str| list.iter().find(|m| m.name == name).cloned();
    let names: BTreeSet<&str> = before
        .iter()
        .chain(after)
        .map(|m| m.name.as_str())
        .collect();
    let (low, high) = (beginning(), end_of_time());
    let mut out = Vec::new();
    for name in names {
        let (old, new) = (find(before, name), find(after, name));
        let mut starts: BTreeSet<DateTime<Utc>> = old
            .iter()
            .chain(new.iter())
            .flat_map(|m| m.prices.iter().map(|p| p.valid_from))
            .filter(|t| *t > low && *t < high)
            .collect();
        starts.insert(low);
        let starts: Vec<DateTime<Utc>> = starts.into_iter().collect();
        let mut spans: Vec<Repricing> = Vec::new();
        for (i, &from) in starts.iter().enumerate() {
            let to = starts.get(i + 1).copied().unwrap_or(high);
            let (was, now) = (rate(old.as_ref(), from), rate(new.as_ref(), from));
            if was == now {
                continue;
            }
            match spans.last_mut() {
                Some(last) if last.to == from && last.rate == now => last.to = to,
                _ => spans.push(Repricing {
                    model: name.to_owned(),
                    from,
                    to,
                    rate: now,
                }),
            }
        }
        out.extend(spans);
    }
    out
}

/// The spans of `spans` widened to whole buckets of `grain`, per model, overlapping ones
/// merged: the buckets of `grain` that contain a re-priced minute, each in one span.
pub fn widened(spans: &[Repricing], grain: Grain) -> Vec<(String, DateTime<Utc>, DateTime<Utc>)> {
    let mut out: Vec<(String, DateTime<Utc>, DateTime<Utc>)> = Vec::new();
    let mut sorted: Vec<(String, DateTime<Utc>, DateTime<Utc>)> = spans
        .iter()
        .map(|s| (s.model.clone(), grain.floor(s.from), grain.ceil(s.to)))
        .collect();
    sorted.sort();
    for (model, from, to) in sorted {
        match out.last_mut() {
            Some((m, _, end)) if *m == model && from <= *end => *end = (*end).max(to),
            _ => out.push((model, from, to)),
        }
    }
    out
}

/// A row loaded or created by a batch.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub bucket: Bucket,
    /// Whether the batch changed it (it is written back).
    pub dirty: bool,
}

/// The rows one batch touches, at each granularity, folded in memory.
#[derive(Debug, Clone, Default)]
pub struct Rows {
    pub grains: [HashMap<Key, Loaded>; 3],
}

impl Rows {
    pub fn get(&self, grain: Grain, key: &Key) -> Option<&Bucket> {
        self.grains[grain.index()].get(key).map(|l| &l.bucket)
    }

    /// Folds `calls` into their minute, hour and day rows (loaded beforehand, or new), then
    /// prices every minute they touched with `prices` and carries the change of each minute's
    /// catalog-derived columns into its hour and day.
    pub fn fold(&mut self, calls: &[Call], prices: &Prices) -> Result<(), String> {
        for call in calls {
            for grain in Grain::ALL {
                let row = self.grains[grain.index()]
                    .entry(call.key(grain))
                    .or_default();
                row.bucket.add(call)?;
                row.dirty = true;
            }
        }
        let mut deltas: Vec<(Key, Priced)> = Vec::new();
        for (key, row) in self.grains[Grain::Minute.index()].iter_mut() {
            if !row.dirty {
                continue;
            }
            let now = price(&row.bucket, prices.at(&key.model, key.start).as_ref())?;
            let delta = now
                .checked_sub(row.bucket.priced)
                .ok_or("a minute's cost overflows")?;
            row.bucket.priced = now;
            deltas.push((key.clone(), delta));
        }
        for (minute, delta) in deltas {
            for grain in [Grain::Hour, Grain::Day] {
                let key = Key {
                    start: grain.floor(minute.start),
                    ..minute.clone()
                };
                let row = self.grains[grain.index()].get_mut(&key).ok_or_else(|| {
                    format!("the {} row of {key:?} was not loaded", grain.as_str())
                })?;
                row.bucket.priced = row
                    .bucket
                    .priced
                    .checked_add(delta)
                    .ok_or("a bucket's cost overflows")?;
                row.dirty = true;
            }
        }
        Ok(())
    }
}

/// One event the analytics fold cares about.
#[derive(Debug, Clone)]
pub enum Item {
    Call(Call),
    /// The whole catalog from this change on.
    Catalog {
        seq: u64,
        models: Vec<ModelSpec>,
    },
}

/// The projection.
#[derive(Debug, Clone, Default)]
pub struct Analytics;

/// What [`Analytics::apply`] keeps for a batch: the catalog in force, loaded at its start.
#[derive(Debug, Default)]
pub struct Carry {
    catalog: Option<Vec<ModelSpec>>,
}

/// The stored columns of a bucket, after its key.
macro_rules! columns {
    () => {
        "calls, errors, input_tokens, output_tokens, reported_calls, reported_cost_nanos, \
         unreported_input_tokens, unreported_output_tokens, catalog_cost_nanos, cost_nanos, \
         unpriced_calls, latency::text AS latency"
    };
}

/// The rows of one table whose keys are in the four arrays starting at parameter `$n`.
macro_rules! load_keys {
    ($grain:literal, $table:literal, $a:literal, $b:literal, $c:literal, $d:literal) => {
        concat!(
            "SELECT ",
            $grain,
            "::int2 AS grain, t.bucket, t.project, t.model, t.provider, ",
            columns!(),
            " FROM ",
            $table,
            " t JOIN unnest(",
            $a,
            "::timestamptz[], ",
            $b,
            "::text[], ",
            $c,
            "::text[], ",
            $d,
            "::text[]) AS k(bucket, project, model, provider) ",
            "USING (bucket, project, model, provider)"
        )
    };
}

const LOAD_SQL: &str = concat!(
    load_keys!("0", "minutes", "$1", "$2", "$3", "$4"),
    " UNION ALL ",
    load_keys!("1", "hours", "$5", "$6", "$7", "$8"),
    " UNION ALL ",
    load_keys!("2", "days", "$9", "$10", "$11", "$12"),
);

/// Writes back the rows of one table from sixteen arrays starting at parameter `$n`.
macro_rules! upsert {
    ($table:literal, $p:literal) => {
        concat!(
            "INSERT INTO ", $table, " (bucket, project, model, provider, calls, errors, \
             input_tokens, output_tokens, reported_calls, reported_cost_nanos, \
             unreported_input_tokens, unreported_output_tokens, catalog_cost_nanos, cost_nanos, \
             unpriced_calls, latency) \
             SELECT b, p, m, v, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, l::jsonb FROM \
             unnest(", $p, ") AS u(b, p, m, v, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, l) \
             ON CONFLICT (bucket, project, model, provider) DO UPDATE SET \
             calls = excluded.calls, errors = excluded.errors, \
             input_tokens = excluded.input_tokens, output_tokens = excluded.output_tokens, \
             reported_calls = excluded.reported_calls, \
             reported_cost_nanos = excluded.reported_cost_nanos, \
             unreported_input_tokens = excluded.unreported_input_tokens, \
             unreported_output_tokens = excluded.unreported_output_tokens, \
             catalog_cost_nanos = excluded.catalog_cost_nanos, cost_nanos = excluded.cost_nanos, \
             unpriced_calls = excluded.unpriced_calls, latency = excluded.latency"
        )
    };
}

const SAVE_SQL: &str = concat!(
    "WITH minute_rows AS (",
    upsert!(
        "minutes",
        "$1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[], \
         $7::int8[], $8::int8[], $9::int8[], $10::int8[], $11::int8[], $12::int8[], $13::int8[], \
         $14::int8[], $15::int8[], $16::text[]"
    ),
    "), hour_rows AS (",
    upsert!(
        "hours",
        "$17::timestamptz[], $18::text[], $19::text[], $20::text[], $21::int8[], $22::int8[], \
         $23::int8[], $24::int8[], $25::int8[], $26::int8[], $27::int8[], $28::int8[], \
         $29::int8[], $30::int8[], $31::int8[], $32::text[]"
    ),
    ") ",
    upsert!(
        "days",
        "$33::timestamptz[], $34::text[], $35::text[], $36::text[], $37::int8[], $38::int8[], \
         $39::int8[], $40::int8[], $41::int8[], $42::int8[], $43::int8[], $44::int8[], \
         $45::int8[], $46::int8[], $47::int8[], $48::text[]"
    ),
);

/// Re-prices the minutes of the spans (one price each).
const REPRICE_MINUTES_SQL: &str = "
    UPDATE minutes m SET
        catalog_cost_nanos = CASE WHEN r.priced
            THEN div(m.input_tokens::numeric * r.input_nanos
                     + m.output_tokens::numeric * r.output_nanos + 500000, 1000000)::int8
            ELSE 0 END,
        cost_nanos = m.reported_cost_nanos + CASE WHEN r.priced
            THEN div(m.unreported_input_tokens::numeric * r.input_nanos
                     + m.unreported_output_tokens::numeric * r.output_nanos + 500000, 1000000)::int8
            ELSE 0 END,
        unpriced_calls = CASE WHEN r.priced THEN 0 ELSE m.calls - m.reported_calls END
    FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[], $4::bool[], $5::int8[], $6::int8[])
         AS r(model, lo, hi, priced, input_nanos, output_nanos)
    WHERE m.model = r.model AND m.bucket >= r.lo AND m.bucket < r.hi";

/// Sets the catalog-derived columns of the hours in the (whole-hour) spans to the sums of their
/// minutes.
const REPRICE_HOURS_SQL: &str = "
    UPDATE hours h SET catalog_cost_nanos = s.catalog_cost, cost_nanos = s.cost,
                       unpriced_calls = s.unpriced
    FROM (SELECT date_trunc('hour', m.bucket, 'UTC') AS bucket, m.project, m.model, m.provider,
                 sum(m.catalog_cost_nanos)::int8 AS catalog_cost, sum(m.cost_nanos)::int8 AS cost,
                 sum(m.unpriced_calls)::int8 AS unpriced
          FROM minutes m
          JOIN unnest($1::text[], $2::timestamptz[], $3::timestamptz[]) AS r(model, lo, hi)
            ON m.model = r.model AND m.bucket >= r.lo AND m.bucket < r.hi
          GROUP BY 1, 2, 3, 4) s
    WHERE (h.bucket, h.project, h.model, h.provider) = (s.bucket, s.project, s.model, s.provider)";

/// The same for the days in the (whole-day) spans, from their hours.
const REPRICE_DAYS_SQL: &str = "
    UPDATE days d SET catalog_cost_nanos = s.catalog_cost, cost_nanos = s.cost,
                      unpriced_calls = s.unpriced
    FROM (SELECT date_trunc('day', h.bucket, 'UTC') AS bucket, h.project, h.model, h.provider,
                 sum(h.catalog_cost_nanos)::int8 AS catalog_cost, sum(h.cost_nanos)::int8 AS cost,
                 sum(h.unpriced_calls)::int8 AS unpriced
          FROM hours h
          JOIN unnest($1::text[], $2::timestamptz[], $3::timestamptz[]) AS r(model, lo, hi)
            ON h.model = r.model AND h.bucket >= r.lo AND h.bucket < r.hi
          GROUP BY 1, 2, 3, 4) s
    WHERE (d.bucket, d.project, d.model, d.provider) = (s.bucket, s.project, s.model, s.provider)";

fn data(e: impl std::fmt::Display) -> ApplyError {
    ApplyError::Data(e.to_string())
}

/// A bucket from a row carrying [`columns!`].
fn bucket_of(r: &PgRow) -> Result<Bucket, sqlx::Error> {
    let latency: String = r.try_get("latency")?;
    Ok(Bucket {
        calls: r.try_get("calls")?,
        errors: r.try_get("errors")?,
        input_tokens: r.try_get("input_tokens")?,
        output_tokens: r.try_get("output_tokens")?,
        reported_calls: r.try_get("reported_calls")?,
        reported_cost: r.try_get("reported_cost_nanos")?,
        unreported_input_tokens: r.try_get("unreported_input_tokens")?,
        unreported_output_tokens: r.try_get("unreported_output_tokens")?,
        priced: Priced {
            catalog_cost: r.try_get("catalog_cost_nanos")?,
            cost: r.try_get("cost_nanos")?,
            unpriced_calls: r.try_get("unpriced_calls")?,
        },
        latency: Latency::from_json(&latency).map_err(|e| sqlx::Error::Decode(e.into()))?,
    })
}

fn key_of(r: &PgRow) -> Result<Key, sqlx::Error> {
    Ok(Key {
        start: r.try_get("bucket")?,
        project: r.try_get("project")?,
        model: r.try_get("model")?,
        provider: r.try_get("provider")?,
    })
}

/// Columns of keys, for `unnest`.
#[derive(Default)]
struct KeyColumns {
    starts: Vec<DateTime<Utc>>,
    projects: Vec<String>,
    models: Vec<String>,
    providers: Vec<String>,
}

impl KeyColumns {
    fn push(&mut self, k: &Key) {
        self.starts.push(k.start);
        self.projects.push(k.project.clone());
        self.models.push(k.model.clone());
        self.providers.push(k.provider.clone());
    }
}

/// Columns of rows, for `unnest`.
#[derive(Default)]
struct RowColumns {
    keys: KeyColumns,
    values: [Vec<i64>; 11],
    latency: Vec<String>,
}

impl RowColumns {
    fn push(&mut self, k: &Key, b: &Bucket) -> Result<(), ApplyError> {
        self.keys.push(k);
        let values = [
            b.calls,
            b.errors,
            b.input_tokens,
            b.output_tokens,
            b.reported_calls,
            b.reported_cost,
            b.unreported_input_tokens,
            b.unreported_output_tokens,
            b.priced.catalog_cost,
            b.priced.cost,
            b.priced.unpriced_calls,
        ];
        for (column, v) in self.values.iter_mut().zip(values) {
            column.push(v);
        }
        self.latency.push(b.latency.to_json().map_err(data)?);
        Ok(())
    }
}

async fn load_catalog(tx: &mut PgConnection) -> Result<Vec<ModelSpec>, ApplyError> {
    let row: Option<(serde_json::Value,)> = sqlx::query_as("SELECT models FROM catalog")
        .fetch_optional(&mut *tx)
        .await?;
    match row {
        Some((models,)) => serde_json::from_value(models).map_err(data),
        None => Ok(Vec::new()),
    }
}

/// Applies a catalog change to the stored rows: the spans' minutes, then their hours and days.
async fn reprice(tx: &mut PgConnection, spans: &[Repricing]) -> Result<(), ApplyError> {
    let nanos =
        |r: &Rate, input: bool| r.map_or(0, |(i, o)| if input { i.nanos() } else { o.nanos() });
    sqlx::query(REPRICE_MINUTES_SQL)
        .bind(spans.iter().map(|s| s.model.clone()).collect::<Vec<_>>())
        .bind(spans.iter().map(|s| s.from).collect::<Vec<_>>())
        .bind(spans.iter().map(|s| s.to).collect::<Vec<_>>())
        .bind(spans.iter().map(|s| s.rate.is_some()).collect::<Vec<_>>())
        .bind(
            spans
                .iter()
                .map(|s| nanos(&s.rate, true))
                .collect::<Vec<_>>(),
        )
        .bind(
            spans
                .iter()
                .map(|s| nanos(&s.rate, false))
                .collect::<Vec<_>>(),
        )
        .execute(&mut *tx)
        .await?;
    for (grain, sql) in [
        (Grain::Hour, REPRICE_HOURS_SQL),
        (Grain::Day, REPRICE_DAYS_SQL),
    ] {
        let spans = widened(spans, grain);
        sqlx::query(sql)
            .bind(spans.iter().map(|s| s.0.clone()).collect::<Vec<_>>())
            .bind(spans.iter().map(|s| s.1).collect::<Vec<_>>())
            .bind(spans.iter().map(|s| s.2).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// Loads the stored rows of the buckets `calls` fall in.
async fn load(tx: &mut PgConnection, calls: &[Call]) -> Result<Rows, ApplyError> {
    let mut keys: [KeyColumns; 3] = Default::default();
    for grain in Grain::ALL {
        let unique: BTreeSet<Key> = calls.iter().map(|c| c.key(grain)).collect();
        for k in &unique {
            keys[grain.index()].push(k);
        }
    }
    let mut q = sqlx::query(LOAD_SQL);
    for k in keys {
        q = q
            .bind(k.starts)
            .bind(k.projects)
            .bind(k.models)
            .bind(k.providers);
    }
    let mut rows = Rows::default();
    for r in q.fetch_all(&mut *tx).await? {
        let grain: i16 = r.try_get("grain")?;
        let grain = Grain::ALL
            .get(usize::try_from(grain).unwrap_or(usize::MAX))
            .ok_or_else(|| data(format!("no granularity {grain}")))?;
        let bucket = bucket_of(&r).map_err(data)?;
        rows.grains[grain.index()].insert(
            key_of(&r)?,
            Loaded {
                bucket,
                dirty: false,
            },
        );
    }
    Ok(rows)
}

/// Writes back the rows the batch changed, in one statement.
async fn save(tx: &mut PgConnection, rows: &Rows) -> Result<(), ApplyError> {
    let mut q = sqlx::query(SAVE_SQL);
    for grain in Grain::ALL {
        let mut cols = RowColumns::default();
        let mut dirty: Vec<(&Key, &Loaded)> = rows.grains[grain.index()]
            .iter()
            .filter(|(_, l)| l.dirty)
            .collect();
        // In key order: the same batch writes the same statement.
        dirty.sort_by(|a, b| a.0.cmp(b.0));
        for (k, l) in dirty {
            cols.push(k, &l.bucket)?;
        }
        q = q
            .bind(cols.keys.starts)
            .bind(cols.keys.projects)
            .bind(cols.keys.models)
            .bind(cols.keys.providers);
        for v in cols.values {
            q = q.bind(v);
        }
        q = q.bind(cols.latency);
    }
    q.execute(&mut *tx).await?;
    Ok(())
}

impl Projection for Analytics {
    type Item = Item;
    type Carry = Carry;

    fn name(&self) -> &'static str {
        NAME
    }

    fn schema(&self) -> &'static str {
        NAME
    }

    fn categories(&self) -> Option<&'static [&'static str]> {
        Some(&["llm", "catalog"])
    }

    fn decode(&self, stored: &StoredEvent) -> Result<Option<Item>, Rejection> {
        match stored.event.event_type().as_str() {
            LLM_CALL_COMPLETED => Ok(Some(Item::Call(Call::new(
                stored.occurred_at(),
                stored.event.data_as()?,
            )))),
            CATALOG_CHANGED => Ok(
                kairos_catalog::decode_change(stored)?.map(|c| Item::Catalog {
                    seq: stored.seq.0,
                    models: c.models,
                }),
            ),
            _ => Ok(None),
        }
    }

    async fn apply(
        &self,
        tx: &mut PgConnection,
        items: Vec<Item>,
        carry: &mut Carry,
    ) -> Result<Vec<Event>, ApplyError> {
        let before = match carry.catalog.take() {
            Some(c) => c,
            None => load_catalog(tx).await?,
        };
        let mut calls = Vec::with_capacity(items.len());
        let mut change: Option<(u64, Vec<ModelSpec>)> = None;
        for item in items {
            match item {
                Item::Call(c) => calls.push(c),
                Item::Catalog { seq, models } => change = Some((seq, models)),
            }
        }
        // Every row is priced with the catalog in force once the batch is applied: the rows
        // already stored are re-priced where it changed prices, the calls of the batch are
        // priced with it (whether they came before or after the change in the batch).
        let catalog = match change {
            Some((seq, models)) => {
                let spans = repricings(&before, &models);
                if !spans.is_empty() {
                    reprice(tx, &spans).await?;
                }
                let json = serde_json::to_value(&models).map_err(data)?;
                sqlx::query(
                    "INSERT INTO catalog (id, seq, models) VALUES (true, $1, $2)
                     ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, models = excluded.models",
                )
                .bind(i64::try_from(seq).map_err(data)?)
                .bind(json)
                .execute(&mut *tx)
                .await?;
                models
            }
            None => before,
        };
        if !calls.is_empty() {
            let mut rows = load(tx, &calls).await?;
            rows.fold(&calls, &Prices::new(&catalog))
                .map_err(ApplyError::Data)?;
            save(tx, &rows).await?;
        }
        carry.catalog = Some(catalog);
        Ok(Vec::new())
    }
}

// ---------------------------------------------------------------------------------------------
// Reads.
// ---------------------------------------------------------------------------------------------

/// The buckets of `[from, to)` into which minute buckets tile exactly: whole days where they
/// fit, whole hours where they fit, minutes at the edges. The minute buckets starting in
/// `[from, to)` are exactly the minutes of the tiles, each in one; since an hour's or a day's
/// row is the sum (and its sketch the merge) of its minutes', reading the tiles gives what
/// reading every minute would, from at most a few hundred rows per key.
pub fn tiles(from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<(Grain, DateTime<Utc>, DateTime<Utc>)> {
    let (a, b) = (Grain::Minute.ceil(from), Grain::Minute.ceil(to));
    let mut out = Vec::new();
    if a >= b {
        return out;
    }
    let (d0, d1) = (Grain::Day.ceil(a), Grain::Day.floor(b));
    let (h0, h1) = (Grain::Hour.ceil(a), Grain::Hour.floor(b));
    if h0 >= h1 {
        out.push((Grain::Minute, a, b));
        return out;
    }
    out.push((Grain::Minute, a, h0));
    if d0 < d1 {
        out.push((Grain::Hour, h0, d0));
        out.push((Grain::Day, d0, d1));
        out.push((Grain::Hour, d1, h1));
    } else {
        out.push((Grain::Hour, h0, h1));
    }
    out.push((Grain::Minute, h1, b));
    out.retain(|(_, lo, hi)| lo < hi);
    out
}

/// One bucket, as `GET /v1/analytics/models` answers it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BucketView {
    /// The bucket's start (UTC).
    pub start: DateTime<Utc>,
    pub project: String,
    pub model: String,
    pub provider: String,
    #[serde(flatten)]
    pub totals: TotalsView,
}

/// Sums over calls, as the API answers them.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TotalsView {
    pub calls: i64,
    pub errors: i64,
    /// errors / calls.
    pub error_rate: f64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// Calls whose producer reported their cost.
    pub reported_calls: i64,
    /// USD, a decimal string: reported costs where sent, the catalog's price otherwise.
    #[schema(value_type = String)]
    pub cost: Money,
    /// USD: the sum of the costs producers reported.
    #[schema(value_type = String)]
    pub reported_cost: Money,
    /// USD: the catalog's price of all the calls (those with a price in force), for comparison.
    #[schema(value_type = String)]
    pub catalog_cost: Money,
    /// Calls without a cost whose model had no price in force then: not counted in `cost`.
    pub unpriced_calls: i64,
    /// p50, p95, p99 in milliseconds, within `latency_relative_error`.
    pub latency_ms: Percentiles,
}

impl From<&Bucket> for TotalsView {
    fn from(b: &Bucket) -> Self {
        Self {
            calls: b.calls,
            errors: b.errors,
            error_rate: b.error_rate(),
            input_tokens: b.input_tokens,
            output_tokens: b.output_tokens,
            reported_calls: b.reported_calls,
            cost: Money::from_nanos(b.priced.cost),
            reported_cost: Money::from_nanos(b.reported_cost),
            catalog_cost: Money::from_nanos(b.priced.catalog_cost),
            unpriced_calls: b.priced.unpriced_calls,
            latency_ms: b.latency.percentiles(),
        }
    }
}

/// What [`models`] reads.
#[derive(Debug, Clone)]
pub struct ModelsQuery {
    pub grain: Grain,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub project: Option<String>,
    pub model: Option<String>,
    /// A role narrowed to these projects.
    pub only: Option<Vec<String>>,
    /// Most rows returned.
    pub limit: usize,
}

macro_rules! models_sql {
    ($table:literal) => {
        concat!(
            "SELECT bucket, project, model, provider, ",
            columns!(),
            " FROM analytics.", $table,
            " WHERE bucket >= $1 AND bucket < $2 AND ($3::text IS NULL OR project = $3)
               AND ($4::text IS NULL OR model = $4) AND ($5::text[] IS NULL OR project = ANY($5))
             ORDER BY bucket, project, model, provider LIMIT $6"
        )
    };
}

const CHECKPOINT_SQL: &str =
    "SELECT coalesce((SELECT last_seq FROM kairos.checkpoints WHERE projection = 'analytics'), 0)";

/// Opens a read-only transaction whose reads share one snapshot, and reads the checkpoint in it.
async fn snapshot(
    pool: &PgPool,
) -> Result<(sqlx::Transaction<'static, sqlx::Postgres>, u64), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let seq: i64 = sqlx::query_scalar(CHECKPOINT_SQL)
        .fetch_one(&mut *tx)
        .await?;
    Ok((tx, u64::try_from(seq).unwrap_or(0)))
}

/// The buckets of `q`, by start, project, model and provider (at most `q.limit`), and the
/// stream sequence the projection had applied, read in one snapshot.
pub async fn models(pool: &PgPool, q: &ModelsQuery) -> Result<(Vec<BucketView>, u64), sqlx::Error> {
    let sql = match q.grain {
        Grain::Minute => models_sql!("minutes"),
        Grain::Hour => models_sql!("hours"),
        Grain::Day => models_sql!("days"),
    };
    let (mut tx, seq) = snapshot(pool).await?;
    let rows = sqlx::query(sql)
        .bind(q.from)
        .bind(q.to)
        .bind(q.project.as_deref())
        .bind(q.model.as_deref())
        .bind(q.only.as_deref())
        .bind(i64::try_from(q.limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    let items = rows
        .iter()
        .map(|r| {
            let key = key_of(r)?;
            Ok(BucketView {
                start: key.start,
                project: key.project,
                model: key.model,
                provider: key.provider,
                totals: TotalsView::from(&bucket_of(r)?),
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok((items, seq))
}

/// The rows of the tiles of `[$2..$7]` (two spans per table), of project `$1` (all if NULL).
const TILES_SQL: &str = concat!(
    "SELECT model, provider, ",
    columns!(),
    " FROM analytics.minutes
     WHERE ($1::text IS NULL OR project = $1)
       AND ((bucket >= $2 AND bucket < $3) OR (bucket >= $4 AND bucket < $5))
     UNION ALL
     SELECT model, provider, ",
    columns!(),
    " FROM analytics.hours
     WHERE ($1::text IS NULL OR project = $1)
       AND ((bucket >= $6 AND bucket < $7) OR (bucket >= $8 AND bucket < $9))
     UNION ALL
     SELECT model, provider, ",
    columns!(),
    " FROM analytics.days
     WHERE ($1::text IS NULL OR project = $1) AND bucket >= $10 AND bucket < $11"
);

/// Per (model, provider), the merged rows of the minute buckets of `[from, to)` (of `project`,
/// or of all), read through [`tiles`], and the checkpoint.
async fn merged(
    pool: &PgPool,
    project: Option<&str>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<(HashMap<(String, String), Bucket>, u64), sqlx::Error> {
    // Two spans of minutes, two of hours, one of days at most; the others empty.
    let empty = (DateTime::<Utc>::UNIX_EPOCH, DateTime::<Utc>::UNIX_EPOCH);
    let mut spans = [[empty; 2]; 3];
    let mut used = [0usize; 3];
    for (grain, lo, hi) in tiles(from, to) {
        let i = grain.index();
        spans[i][used[i]] = (lo, hi);
        used[i] += 1;
    }
    let (mut tx, seq) = snapshot(pool).await?;
    let rows = sqlx::query(TILES_SQL)
        .bind(project)
        .bind(spans[0][0].0)
        .bind(spans[0][0].1)
        .bind(spans[0][1].0)
        .bind(spans[0][1].1)
        .bind(spans[1][0].0)
        .bind(spans[1][0].1)
        .bind(spans[1][1].0)
        .bind(spans[1][1].1)
        .bind(spans[2][0].0)
        .bind(spans[2][0].1)
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    let mut out: HashMap<(String, String), Bucket> = HashMap::new();
    for r in &rows {
        let key = (r.try_get("model")?, r.try_get("provider")?);
        out.entry(key)
            .or_default()
            .merge(&bucket_of(r)?)
            .map_err(|e| sqlx::Error::Decode(e.into()))?;
    }
    Ok((out, seq))
}

/// One model's totals in a project, as `GET /v1/analytics/projects/{project}` answers them.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ModelTotals {
    pub model: String,
    /// The providers that served it.
    pub providers: Vec<String>,
    #[serde(flatten)]
    pub totals: TotalsView,
}

/// A project's totals over a range.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ProjectTotals {
    pub project: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Per model, by name (sketches of its providers merged).
    pub models: Vec<ModelTotals>,
    /// All of them.
    pub total: TotalsView,
    /// The relative error of every latency percentile (0.01).
    pub latency_relative_error: f64,
    /// The stream sequence the analytics projection had applied.
    pub as_of_seq: u64,
}

/// Project `project`'s calls in the minutes of `[from, to)`, per model and in total.
pub async fn project(
    pool: &PgPool,
    project: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<ProjectTotals, sqlx::Error> {
    let (rows, seq) = merged(pool, Some(project), from, to).await?;
    let mut per_model: std::collections::BTreeMap<String, (Vec<String>, Bucket)> =
        Default::default();
    let mut total = Bucket::default();
    let merge_err = |e: String| sqlx::Error::Decode(e.into());
    for ((model, provider), b) in rows {
        let entry = per_model.entry(model).or_default();
        entry.0.push(provider);
        entry.1.merge(&b).map_err(merge_err)?;
        total.merge(&b).map_err(merge_err)?;
    }
    Ok(ProjectTotals {
        project: project.to_owned(),
        from,
        to,
        models: per_model
            .into_iter()
            .map(|(model, (mut providers, b))| {
                providers.sort();
                ModelTotals {
                    model,
                    providers,
                    totals: TotalsView::from(&b),
                }
            })
            .collect(),
        total: TotalsView::from(&total),
        latency_relative_error: RELATIVE_ERROR,
        as_of_seq: seq,
    })
}

/// A model's health over a window: what the router weighs.
#[derive(Debug, Clone, Serialize)]
pub struct Health {
    pub calls: u64,
    pub errors: u64,
    pub error_rate: f64,
    /// Within [`RELATIVE_ERROR`]; `None` without calls.
    pub p95_ms: Option<f64>,
}

/// Per model (all projects and providers merged), from the minute buckets in [from, to).
pub async fn health(
    pool: &PgPool,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<HashMap<String, Health>, sqlx::Error> {
    let (rows, _) = merged(pool, None, from, to).await?;
    let mut per_model: HashMap<String, Bucket> = HashMap::new();
    for ((model, _), b) in rows {
        per_model
            .entry(model)
            .or_default()
            .merge(&b)
            .map_err(|e| sqlx::Error::Decode(e.into()))?;
    }
    Ok(per_model
        .into_iter()
        .map(|(model, b)| {
            let health = Health {
                calls: u64::try_from(b.calls).unwrap_or(0),
                errors: u64::try_from(b.errors).unwrap_or(0),
                error_rate: b.error_rate(),
                p95_ms: b.latency.quantile(0.95),
            };
            (model, health)
        })
        .collect())
}

#[cfg(test)]
mod tests;
