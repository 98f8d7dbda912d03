//! Model analytics end to end: a generated history of LLM calls, published to the stream,
//! read back over HTTP at minute, hour and day granularity and compared with a brute-force
//! recount of the calls themselves (counts and money exactly, latency percentiles within the
//! stated 1 %); the same after a replay, which rebuilds byte-identical tables; a catalog
//! correction dated in the past re-prices to the brute force with the final catalog; bad input
//! is refused naming the parameter, and a role narrowed to projects sees only those.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use kairos_events::types::ModelSpec;
use kairos_events::{Event, Money};
use kairos_runtime::ReplayOptions;
use kairos_tests::{
    FIXTURE_NOW, TestApp, client, schema_digest, send, spawn_app_with, test_settings_with,
};
use serde_json::{Value, json};
use sqlx::PgPool;

const NAME: &str = "analytics";

/// The catalog in force from start-up: gpt-4o's price changes mid-history, fresh-model has a
/// price only from the 19th (its earlier calls without a cost are unpriced), llama is local,
/// and `mystery` (called too) is not listed at all.
const CATALOG: &str = r#"
[[catalog.model]]
name = "gpt-4o"
provider = "openai"
context_window = 128000
max_output_tokens = 16384
tier = 4
prices = [
    { valid_from = "2026-01-01T00:00:00Z", input_per_mtok = "2.50", output_per_mtok = "10.00" },
    { valid_from = "2026-11-19T00:00:00Z", input_per_mtok = "2.00", output_per_mtok = "8.00" },
]

[[catalog.model]]
name = "claude-sonnet-4"
provider = "anthropic"
context_window = 200000
max_output_tokens = 64000
tier = 5
prices = [{ valid_from = "2026-01-01T00:00:00Z", input_per_mtok = "3.00", output_per_mtok = "15.00" }]

[[catalog.model]]
name = "fresh-model"
provider = "newco"
context_window = 100000
max_output_tokens = 8000
tier = 3
prices = [{ valid_from = "2026-11-19T00:00:00Z", input_per_mtok = "1.00", output_per_mtok = "2.00" }]

[[catalog.model]]
name = "llama3.1:8b"
provider = "ollama"
context_window = 131072
max_output_tokens = 8192
local = true
tier = 2
"#;

/// (model, provider) pairs the generated calls use; gpt-4o is served by two providers.
const SERVED: [(&str, &str); 6] = [
    ("gpt-4o", "openai"),
    ("gpt-4o", "azure"),
    ("claude-sonnet-4", "anthropic"),
    ("fresh-model", "newco"),
    ("llama3.1:8b", "ollama"),
    ("mystery", "acme-ai"),
];

fn t(s: &str) -> DateTime<Utc> {
    s.parse().expect("an RFC 3339 time")
}

fn rfc(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// xorshift64*: a deterministic history from a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One generated LLM call.
#[derive(Debug, Clone)]
struct Gen {
    id: String,
    at: DateTime<Utc>,
    project: String,
    model: String,
    provider: String,
    input: u64,
    output: u64,
    cost: Option<Money>,
    latency: u64,
    error: bool,
}

impl Gen {
    fn event(&self) -> Value {
        let mut data = json!({
            "project": self.project, "model": self.model, "provider": self.provider,
            "input_tokens": self.input, "output_tokens": self.output,
            "latency_ms": self.latency, "status": if self.error { "error" } else { "ok" },
        });
        if let Some(c) = self.cost {
            data["cost"] = json!(c.to_string());
        }
        if self.error {
            data["error"] = json!("upstream timeout");
        }
        json!({
            "specversion": "1.0", "id": self.id, "source": "test/gateway",
            "type": "kairos.llm.call.completed.v1", "subject": self.project,
            "time": self.at.to_rfc3339_opts(SecondsFormat::Millis, true),
            "datacontenttype": "application/json", "data": data,
        })
    }
}

/// `n` calls over `[from, to)`, roughly in time order (ten minutes of jitter either way), over
/// four projects and the served models: about 5 % errors, 40 % without a cost, latencies from 0
/// to a minute with a long tail.
fn history(n: usize, seed: u64, tag: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<Gen> {
    let mut rng = Rng(seed);
    let span = (to - from).num_milliseconds();
    (0..n)
        .map(|i| {
            let base = span * i as i64 / n as i64;
            let jitter = rng.below(1_200_000) as i64 - 600_000;
            let at = from + TimeDelta::milliseconds((base + jitter).clamp(0, span - 1));
            let (model, provider) = SERVED[rng.below(SERVED.len() as u64) as usize];
            let latency = match rng.below(1000) {
                0..10 => 0,
                10..900 => 20 + rng.below(800),
                _ => 1_000 + rng.below(60_000),
            };
            Gen {
                id: format!("{tag}-{i}"),
                at,
                project: format!("p{}", rng.below(4)),
                model: model.into(),
                provider: provider.into(),
                input: rng.below(20_000),
                output: rng.below(4_000),
                cost: (rng.below(10) >= 4).then(|| Money::from_nanos(rng.below(50_000_000) as i64)),
                latency,
                error: rng.below(100) < 5,
            }
        })
        .collect()
}

/// Publishes the calls straight to the stream (validated as every door validates them), in
/// batches; the last sequence.
async fn publish(app: &TestApp, calls: &[Gen]) -> u64 {
    let events: Vec<Event> = calls
        .iter()
        .map(|c| Event::from_slice(&serde_json::to_vec(&c.event()).unwrap()).expect("valid"))
        .collect();
    let mut last = 0;
    for chunk in events.chunks(10_000) {
        for r in app.kairos.bus.publish_events(chunk).await {
            let r = r.expect("stored");
            assert!(!r.duplicate);
            last = last.max(r.seq.0);
        }
    }
    last
}

/// Sums over calls, as a bucket answers them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Sums {
    calls: i64,
    errors: i64,
    input_tokens: i64,
    output_tokens: i64,
    reported_calls: i64,
    reported_cost: i64,
    catalog_cost: i64,
    cost: i64,
    unpriced_calls: i64,
}

impl Sums {
    /// Counts one call in, priced call by call with `catalog`.
    fn add(&mut self, c: &Gen, catalog: &[ModelSpec]) {
        let priced = catalog
            .iter()
            .find(|m| m.name == c.model)
            .and_then(|m| m.cost_at(c.at, c.input, c.output))
            .map(Money::nanos);
        self.calls += 1;
        self.errors += i64::from(c.error);
        self.input_tokens += c.input as i64;
        self.output_tokens += c.output as i64;
        self.catalog_cost += priced.unwrap_or(0);
        match (c.cost, priced) {
            (Some(cost), _) => {
                self.reported_calls += 1;
                self.reported_cost += cost.nanos();
                self.cost += cost.nanos();
            }
            (None, Some(p)) => self.cost += p,
            (None, None) => self.unpriced_calls += 1,
        }
    }

    /// What an answer's item says.
    fn read(v: &Value) -> Self {
        let int = |k: &str| v[k].as_i64().unwrap_or_else(|| panic!("{k} in {v}"));
        let money = |k: &str| {
            Money::parse(v[k].as_str().unwrap_or_else(|| panic!("{k} in {v}")))
                .unwrap()
                .nanos()
        };
        Self {
            calls: int("calls"),
            errors: int("errors"),
            input_tokens: int("input_tokens"),
            output_tokens: int("output_tokens"),
            reported_calls: int("reported_calls"),
            reported_cost: money("reported_cost"),
            catalog_cost: money("catalog_cost"),
            cost: money("cost"),
            unpriced_calls: int("unpriced_calls"),
        }
    }
}

/// The exact order statistic the sketch approximates: rank floor(q * (n - 1)) of the sorted
/// values.
fn exact(sorted: &[u64], q: f64) -> f64 {
    sorted[(q * (sorted.len() as f64 - 1.0)).floor() as usize] as f64
}

/// Checks an item's sums, error rate and percentiles against the calls it counts.
fn check_item(item: &Value, calls: &[&Gen], catalog: &[ModelSpec], what: &str) {
    let mut expected = Sums::default();
    for c in calls {
        expected.add(c, catalog);
    }
    assert_eq!(Sums::read(item), expected, "{what}: {item}");
    let rate = item["error_rate"].as_f64().unwrap();
    assert!(
        (rate - expected.errors as f64 / expected.calls as f64).abs() < 1e-12,
        "{what}: {item}"
    );
    let mut latencies: Vec<u64> = calls.iter().map(|c| c.latency).collect();
    latencies.sort_unstable();
    for (q, k) in [(0.5, "p50"), (0.95, "p95"), (0.99, "p99")] {
        let got = item["latency_ms"][k]
            .as_f64()
            .unwrap_or_else(|| panic!("{what}: {item}"));
        let want = exact(&latencies, q);
        assert!(
            (got - want).abs() <= 0.01 * want + 1e-9,
            "{what} {k}: sketch {got}, exact {want}"
        );
    }
}

type BucketKey = (DateTime<Utc>, String, String, String);

fn floor(at: DateTime<Utc>, secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(at.timestamp().div_euclid(secs) * secs, 0).unwrap()
}

/// Every bucket of `grain` over `[from, to)` (windows of `window`), as the API answers them.
async fn buckets(
    app: &TestApp,
    grain: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    window: TimeDelta,
    seq: u64,
) -> BTreeMap<BucketKey, Value> {
    let mut out = BTreeMap::new();
    let mut lo = from;
    while lo < to {
        let hi = (lo + window).min(to);
        let (status, r) = app
            .get(&format!(
                "/v1/analytics/models?bucket={grain}&from={}&to={}&min_seq={seq}",
                rfc(lo),
                rfc(hi)
            ))
            .await;
        assert_eq!(status, 200, "{r}");
        assert_eq!(r["bucket"], grain);
        assert_eq!(r["latency_relative_error"], 0.01);
        assert!(r["as_of_seq"].as_u64().unwrap() >= seq, "{r}");
        for item in r["items"].as_array().unwrap() {
            let key = (
                t(item["start"].as_str().unwrap()),
                item["project"].as_str().unwrap().to_owned(),
                item["model"].as_str().unwrap().to_owned(),
                item["provider"].as_str().unwrap().to_owned(),
            );
            assert!(
                out.insert(key, item.clone()).is_none(),
                "one item per bucket"
            );
        }
        lo = hi;
    }
    out
}

/// The calls of each bucket of `secs` seconds.
fn truth(calls: &[Gen], secs: i64) -> BTreeMap<BucketKey, Vec<&Gen>> {
    let mut out: BTreeMap<BucketKey, Vec<&Gen>> = BTreeMap::new();
    for c in calls {
        let key = (
            floor(c.at, secs),
            c.project.clone(),
            c.model.clone(),
            c.provider.clone(),
        );
        out.entry(key).or_default().push(c);
    }
    out
}

/// The catalog in force, as Kairos serves it.
async fn catalog(app: &TestApp) -> Vec<ModelSpec> {
    let (status, c) = app.get("/v1/catalog").await;
    assert_eq!(status, 200, "{c}");
    serde_json::from_value(c["models"].clone()).unwrap()
}

/// Every minute (if `minutes`), hour and day bucket of the history over HTTP against the brute
/// force, and each project's totals over an unaligned range; the number of buckets compared.
async fn check_all(
    app: &TestApp,
    calls: &[Gen],
    catalog: &[ModelSpec],
    seq: u64,
    minutes: bool,
) -> usize {
    let (from, to) = (t("2026-11-16T00:00:00Z"), t("2026-11-21T00:00:00Z"));
    assert!(calls.iter().all(|c| from <= c.at && c.at < to));
    let mut compared = 0;
    for (grain, secs, window) in [
        ("day", 86_400, TimeDelta::days(5)),
        ("hour", 3_600, TimeDelta::days(5)),
        ("minute", 60, TimeDelta::hours(4)),
    ] {
        if grain == "minute" && !minutes {
            continue;
        }
        let got = buckets(app, grain, from, to, window, seq).await;
        let want = truth(calls, secs);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{grain}: the buckets with calls"
        );
        for (key, calls) in &want {
            check_item(&got[key], calls, catalog, &format!("{grain} {key:?}"));
        }
        compared += want.len();
    }
    // Per project, from a minute edge to another (tiled by minutes, hours and days).
    let (lo, hi) = (t("2026-11-17T05:17:30Z"), t("2026-11-20T09:42:10Z"));
    let (first, end) = (t("2026-11-17T05:18:00Z"), t("2026-11-20T09:43:00Z"));
    for p in 0..4 {
        let project = format!("p{p}");
        let (status, r) = app
            .get(&format!(
                "/v1/analytics/projects/{project}?from={}&to={}&min_seq={seq}",
                rfc(lo),
                rfc(hi)
            ))
            .await;
        assert_eq!(status, 200, "{r}");
        let mine: Vec<&Gen> = calls
            .iter()
            .filter(|c| c.project == project && floor(c.at, 60) >= first && floor(c.at, 60) < end)
            .collect();
        check_item(&r["total"], &mine, catalog, &format!("{project} total"));
        let models: BTreeSet<&str> = mine.iter().map(|c| c.model.as_str()).collect();
        let listed: Vec<&str> = r["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["model"].as_str().unwrap())
            .collect();
        assert_eq!(listed, models.iter().copied().collect::<Vec<_>>());
        for m in r["models"].as_array().unwrap() {
            let of: Vec<&Gen> = mine
                .iter()
                .copied()
                .filter(|c| c.model == m["model"].as_str().unwrap())
                .collect();
            let providers: BTreeSet<&str> = of.iter().map(|c| c.provider.as_str()).collect();
            assert_eq!(
                m["providers"],
                json!(providers.into_iter().collect::<Vec<_>>())
            );
            check_item(m, &of, catalog, &format!("{project} {}", m["model"]));
        }
        compared += 1;
    }
    compared
}

/// Rebuilds the projection from the stream and checks it wrote exactly the live tables.
async fn replay_is_identical(app: &TestApp, pool: &PgPool, seq: u64) {
    let live = schema_digest(pool, NAME).await;
    assert!(live["minutes"].0 > 0, "{live:?}");
    let started = Instant::now();
    let report = app
        .kairos
        .replay(NAME, &ReplayOptions::default(), None, |_| {})
        .await
        .unwrap();
    eprintln!(
        "replay: {:?} for {} events",
        started.elapsed(),
        report.events_read
    );
    assert!(report.switched, "{report:?}");
    assert!(report.reached.0 >= seq, "{report:?}");
    assert_eq!(
        schema_digest(pool, NAME).await,
        live,
        "the replay rebuilt other rows"
    );
}

/// Starts Kairos with the test catalog, running the analytics projection only.
async fn spawn(pool: PgPool) -> TestApp {
    let mut app = spawn_app_with(pool, test_settings_with(CATALOG), false).await;
    app.start_projection(NAME);
    app
}

#[sqlx::test(migrations = false)]
async fn a_hundred_thousand_calls_match_a_brute_force_recount_live_and_replayed(pool: PgPool) {
    let app = spawn(pool.clone()).await;
    let calls = history(
        100_000,
        0x5EED,
        "h",
        t("2026-11-17T00:00:00Z"),
        t(FIXTURE_NOW),
    );
    let started = Instant::now();
    let seq = publish(&app, &calls).await;
    let published = started.elapsed();
    app.wait_for(NAME, seq).await;
    eprintln!(
        "100,000 calls: published in {published:?}, applied {:?} after the first was published",
        started.elapsed()
    );
    let catalog = catalog(&app).await;
    assert_eq!(catalog.len(), 4);
    // The history exercises what it should: unpriced calls (mystery, fresh-model before the
    // 19th), both gpt-4o prices, reported and catalog costs.
    let mut all = Sums::default();
    for c in &calls {
        all.add(c, &catalog);
    }
    assert!(
        all.unpriced_calls > 5_000 && all.reported_calls > 50_000,
        "{all:?}"
    );

    let started = Instant::now();
    let compared = check_all(&app, &calls, &catalog, seq, true).await;
    eprintln!("compared {compared} buckets in {:?}", started.elapsed());
    assert!(compared > 50_000, "{compared}");

    // An answer holds at most 10,000 buckets: one day of minutes has more here.
    let day = (t("2026-11-18T00:00:00Z"), t("2026-11-19T00:00:00Z"));
    let minutes = truth(&calls, 60)
        .keys()
        .filter(|k| day.0 <= k.0 && k.0 < day.1)
        .count();
    assert!(minutes > 10_000, "{minutes}");
    let (status, r) = app
        .get(&format!(
            "/v1/analytics/models?bucket=minute&from={}&to={}",
            rfc(day.0),
            rfc(day.1)
        ))
        .await;
    assert_eq!(
        (
            status,
            r["error"]["code"].as_str(),
            r["error"]["field"].as_str()
        ),
        (400, Some("too_many_buckets"), Some("from")),
        "{r}"
    );

    replay_is_identical(&app, &pool, seq).await;
    check_all(&app, &calls, &catalog, seq, true).await;

    // The live runner carries on from the rebuilt tables.
    let more = history(1_000, 7, "late", t("2026-11-20T00:00:00Z"), t(FIXTURE_NOW));
    let seq = publish(&app, &more).await;
    app.wait_for(NAME, seq).await;
    let calls: Vec<Gen> = calls.into_iter().chain(more).collect();
    check_all(&app, &calls, &catalog, seq, false).await;
    app.cleanup().await;
}

#[sqlx::test(migrations = false)]
async fn a_catalog_correction_dated_in_the_past_reprices_to_the_brute_force(pool: PgPool) {
    let app = spawn(pool.clone()).await;
    let mut calls = history(6_000, 42, "c", t("2026-11-17T00:00:00Z"), t(FIXTURE_NOW));
    let seq = publish(&app, &calls).await;
    app.wait_for(NAME, seq).await;
    let before = catalog(&app).await;
    check_all(&app, &calls, &before, seq, true).await;

    // The correction, through the API as an admin changes it: gpt-4o gets an entry dated the
    // 18th and its price of the 19th on is corrected; fresh-model was priced from the 17th;
    // mystery gets a price from the 18th; claude-sonnet-4 is retired (no longer routed to; its
    // prices still price its calls: a change cannot unprice them).
    let (_, served) = app.get("/v1/catalog").await;
    let mut models: Vec<Value> = served["models"].as_array().unwrap().to_vec();
    for m in &mut models {
        match m["name"].as_str().unwrap() {
            "claude-sonnet-4" => m["retired"] = json!(true),
            "gpt-4o" => {
                m["prices"] = json!([
                    {"valid_from": "2026-01-01T00:00:00Z", "input_per_mtok": "2.50", "output_per_mtok": "10.00"},
                    {"valid_from": "2026-11-18T00:00:00Z", "input_per_mtok": "3.00", "output_per_mtok": "12.00"},
                    {"valid_from": "2026-11-19T00:00:00Z", "input_per_mtok": "2.20", "output_per_mtok": "8.80"},
                ])
            }
            "fresh-model" => {
                m["prices"] = json!([
                    {"valid_from": "2026-11-17T00:00:00Z", "input_per_mtok": "1.00", "output_per_mtok": "2.00"},
                ])
            }
            _ => {}
        }
    }
    models.push(json!({
        "name": "mystery", "provider": "acme-ai", "context_window": 32000,
        "max_output_tokens": 4000, "tier": 2,
        "prices": [{"valid_from": "2026-11-18T00:00:00Z", "input_per_mtok": "0.50", "output_per_mtok": "1.50"}],
    }));
    let (status, r) = app
        .put_json("/v1/catalog", &json!({"models": models}))
        .await;
    assert_eq!(status, 202, "{r}");
    let seq = r["seq"].as_u64().unwrap();
    app.wait_for(NAME, seq).await;
    let after = catalog(&app).await;
    assert_eq!(after.len(), 5);

    // The correction changes the totals (else this test would show nothing), and the
    // projection follows it to the call.
    let total = |catalog: &[ModelSpec]| {
        let mut s = Sums::default();
        for c in &calls {
            s.add(c, catalog);
        }
        s
    };
    let (was, now) = (total(&before), total(&after));
    assert_ne!(was.cost, now.cost);
    assert_ne!(was.catalog_cost, now.catalog_cost);
    assert_ne!(was.unpriced_calls, now.unpriced_calls);
    assert_eq!(was.reported_cost, now.reported_cost);
    check_all(&app, &calls, &after, seq, true).await;

    // Calls after it are priced with it, beside the re-priced ones, in the same buckets.
    let more = history(
        1_000,
        43,
        "after",
        t("2026-11-18T00:00:00Z"),
        t(FIXTURE_NOW),
    );
    let seq = publish(&app, &more).await;
    app.wait_for(NAME, seq).await;
    calls.extend(more);
    check_all(&app, &calls, &after, seq, true).await;

    // Re-pricing in place and folding from the beginning write the same rows.
    replay_is_identical(&app, &pool, seq).await;
    check_all(&app, &calls, &after, seq, true).await;
    app.cleanup().await;
}

/// Invites `email` as a viewer narrowed to `projects` and accepts: the key.
async fn narrowed_viewer(app: &TestApp, projects: &[&str]) -> String {
    let body = json!({"email": "vera@example.com", "role": "viewer", "projects": projects});
    let (status, inv) = app.post_json("/v1/invitations", &body).await;
    assert_eq!(status, 201, "{inv}");
    let (status, joined) = send(
        reqwest::Client::new()
            .post(format!("{}{}", app.url, inv["accept"].as_str().unwrap()))
            .json(&json!({"token": inv["token"], "name": "Vera"})),
    )
    .await;
    assert_eq!(status, 201, "{joined}");
    app.wait_for("access", joined["seq"].as_u64().unwrap())
        .await;
    joined["api_key"].as_str().unwrap().to_owned()
}

#[sqlx::test(migrations = false)]
async fn bad_input_is_refused_naming_the_parameter_and_narrowed_roles_see_their_projects(
    pool: PgPool,
) {
    let mut settings = test_settings_with(CATALOG);
    settings.http.read_wait_ms = 300;
    let mut app = spawn_app_with(pool, settings, false).await;
    app.start_projection(NAME);
    let now = t(FIXTURE_NOW);
    let calls = history(400, 9, "b", now - TimeDelta::hours(30), now);
    let seq = publish(&app, &calls).await;
    app.wait_for(NAME, seq).await;

    let m = "/v1/analytics/models";
    let p = "/v1/analytics/projects/p0";
    let minute_month =
        format!("{m}?bucket=minute&from=2026-11-01T00:00:00Z&to=2026-11-08T00:00:00Z");
    app.assert_bad_queries(&[
        (&format!("{m}?bucket=week"), "bucket"),
        (&format!("{m}?bucket="), "bucket"),
        (&format!("{m}?bucket=hour%00"), "bucket"),
        (&format!("{m}?from=yesterday"), "from"),
        (&format!("{m}?from="), "from"),
        (&format!("{m}?from=2026-11-20T00:00:00Z%0A"), "from"),
        (&format!("{m}?to=2026-13-01T00:00:00Z"), "to"),
        (
            &format!("{m}?from=2026-11-20T00:00:00Z&to=2026-11-20T00:00:00Z"),
            "from",
        ),
        (
            &format!("{m}?from=2026-11-20T00:00:00Z&to=2026-11-19T00:00:00Z"),
            "from",
        ),
        // Without to, to is now: a from after it is refused too.
        (&format!("{m}?from=2026-12-01T00:00:00Z"), "from"),
        (&format!("{m}?project=a%20b"), "project"),
        (&format!("{m}?project=p0%01"), "project"),
        (&format!("{m}?project="), "project"),
        (&format!("{m}?model="), "model"),
        (&format!("{m}?model=gpt%00"), "model"),
        (&format!("{m}?model={}", "x".repeat(201)), "model"),
        // Seven days of minutes: 10,080 buckets, more than an answer holds.
        (&minute_month, "from"),
        (&format!("{m}?min_seq=-1"), "min_seq"),
        (&format!("{m}?min_seq=99999999"), "min_seq"),
        (&format!("{m}?as_of=2026-11-19T00:00:00Z"), "as_of"),
        (&format!("{m}?surprise=1"), "query"),
        ("/v1/analytics/projects/a%20b", "project"),
        ("/v1/analytics/projects/p0%00", "project"),
        (&format!("{p}?from=soon"), "from"),
        (&format!("{p}?to=2026-11-20T25:00:00Z"), "to"),
        (
            &format!("{p}?from=2026-11-20T00:00:00Z&to=2026-11-20T00:00:00Z"),
            "from",
        ),
        (&format!("{p}?to=2026-11-20%0700:00:00Z"), "to"),
        (&format!("{p}?bucket=day"), "query"),
        (&format!("{p}?as_of=2026-11-19T00:00:00Z"), "as_of"),
        (&format!("{p}?min_seq=x"), "min_seq"),
    ])
    .await;
    let (_, r) = app.get(&minute_month).await;
    assert_eq!(r["error"]["code"], "too_many_buckets", "{r}");
    let (_, r) = app.get(&format!("{m}?bucket=hour%00")).await;
    assert_eq!(r["error"]["code"], "control_character", "{r}");
    // 10,000 minutes exactly is an answer.
    let (status, r) = app
        .get(&format!(
            "{m}?bucket=minute&from=2026-11-13T13:20:00Z&to={FIXTURE_NOW}"
        ))
        .await;
    assert_eq!(status, 200, "{r}");

    // The defaults: hourly buckets of the 24 hours before Kairos' clock (not the wall clock's).
    let (status, r) = app.get(&format!("{m}?min_seq={seq}")).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        (r["bucket"].as_str(), r["from"].as_str(), r["to"].as_str()),
        (
            Some("hour"),
            Some("2026-11-19T12:00:00Z"),
            Some(FIXTURE_NOW)
        )
    );
    let recent: Vec<Gen> = calls
        .iter()
        .filter(|c| c.at >= now - TimeDelta::hours(24))
        .cloned()
        .collect();
    assert_eq!(
        r["items"].as_array().unwrap().len(),
        truth(&recent, 3_600).len()
    );
    let (status, r) = app.get(p).await;
    assert_eq!(status, 200, "{r}");
    let mine: Vec<&Gen> = recent.iter().filter(|c| c.project == "p0").collect();
    check_item(
        &r["total"],
        &mine,
        &catalog(&app).await,
        "p0, the last 24 h",
    );
    // A project without calls has nothing to total.
    let (status, r) = app.get("/v1/analytics/projects/nobody").await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        (
            r["total"]["calls"].as_i64(),
            r["models"].as_array().map(Vec::len)
        ),
        (Some(0), Some(0))
    );

    // A key is needed; a viewer narrowed to p0 sees p0's buckets only.
    let (status, _) = send(reqwest::Client::new().get(format!("{}{m}", app.url))).await;
    assert_eq!(status, 401);
    let vera = client(&narrowed_viewer(&app, &["p0"]).await);
    let (status, r) = send(vera.get(format!(
        "{}{m}?bucket=day&from=2026-11-01T00:00:00Z",
        app.url
    )))
    .await;
    assert_eq!(status, 200, "{r}");
    let projects: BTreeSet<&str> = r["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["project"].as_str().unwrap())
        .collect();
    assert_eq!(projects, BTreeSet::from(["p0"]));
    let seen: i64 = r["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["calls"].as_i64().unwrap())
        .sum();
    assert_eq!(
        seen,
        calls.iter().filter(|c| c.project == "p0").count() as i64
    );
    for path in [
        format!("{m}?project=p1"),
        "/v1/analytics/projects/p1".to_owned(),
    ] {
        let (status, r) = send(vera.get(format!("{}{path}", app.url))).await;
        assert_eq!(
            (status, r["error"]["code"].as_str()),
            (403, Some("forbidden")),
            "{path}: {r}"
        );
    }
    let (status, _) = send(vera.get(format!("{}{p}", app.url))).await;
    assert_eq!(status, 200);

    // Waiting for a sequence the projection does not reach is bounded and says so.
    app.stop_projections();
    let seq = publish(&app, &history(1, 10, "w", now - TimeDelta::hours(1), now)).await;
    let (status, r) = app.get(&format!("{m}?min_seq={seq}")).await;
    assert_eq!(
        (status, r["error"]["code"].as_str()),
        (503, Some("not_yet_applied")),
        "{r}"
    );
    app.cleanup().await;
}
