//! The budgets projection run as partitions (`projections.partitions`), in-process: a global
//! event (a catalog correction) re-prices every partition's projects once, as one runner would;
//! the partitioning is guarded (one runner, or another count, is refused); and a replay brings
//! a partitioned projection back to one position, from which the partitions go on.

use std::collections::BTreeMap;
use std::time::Duration;

use kairos_runtime::{ReplayOptions, Runner, RunnerConfig};
use kairos_tests::{TestApp, budget_set, llm_call, spawn_app_with, test_settings_with};
use serde_json::{Value, json};
use sqlx::PgPool;

const CATALOG: &str = r#"
[[catalog.model]]
name = "m1"
provider = "p"
context_window = 100000
max_output_tokens = 4000
tier = 3
prices = [{ valid_from = "2026-11-01T00:00:00Z", input_per_mtok = "2.00", output_per_mtok = "8.00" }]
"#;

const PROJECTS: usize = 12;

fn unpriced(i: usize, day: u32) -> Value {
    json!({
        "specversion": "1.0", "id": format!("c{i}"), "source": "test/gateway",
        "type": "kairos.llm.call.completed.v1", "subject": format!("p{}", i % PROJECTS),
        "time": format!("2026-11-{day:02}T10:00:00Z"),
        "data": {"project": format!("p{}", i % PROJECTS), "model": "m1", "provider": "p",
                 "input_tokens": 1_000 + i, "output_tokens": 100 + i, "latency_ms": 100,
                 "status": "ok"}
    })
}

async fn partitioned_app(pool: PgPool, partitions: u32, members: usize) -> TestApp {
    let mut settings = test_settings_with(CATALOG);
    settings.projections.partitions = partitions;
    let mut app = spawn_app_with(pool, settings, false).await;
    app.start_projection("catalog");
    for _ in 0..members {
        app.start_projection("budgets");
    }
    app
}

async fn spend(app: &TestApp) -> BTreeMap<String, (i64, i64)> {
    sqlx::query_as::<_, (String, i64, i64)>(
        "SELECT project, spent_nanos, calls FROM budgets.spend WHERE period = '2026-11'",
    )
    .fetch_all(&app.kairos.pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(p, s, c)| (p, (s, c)))
    .collect()
}

async fn partition_checkpoints(app: &TestApp) -> Vec<(String, i64)> {
    sqlx::query_as(
        "SELECT projection, last_seq FROM kairos.checkpoints
         WHERE projection LIKE 'budgets/%' ORDER BY projection",
    )
    .fetch_all(&app.kairos.pool)
    .await
    .unwrap()
}

/// A runner of budgets with `partitions`, outside the app (to see what it answers).
async fn run_budgets(app: &TestApp, partitions: u32) -> Result<(), kairos_runtime::RunnerError> {
    let config = RunnerConfig {
        partitions,
        ..RunnerConfig::default()
    };
    let budgets = kairos_budgets::Budgets { tz: chrono_tz::UTC };
    let run = Runner::new(
        budgets,
        app.kairos.bus.clone(),
        app.kairos.pool.clone(),
        config,
    )
    .run();
    tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("the runner answers at once")
}

#[sqlx::test(migrations = false)]
async fn a_catalog_correction_reprices_each_partition_once(pool: PgPool) {
    let app = partitioned_app(pool, 3, 2).await;
    let calls: Vec<Value> = (0..600).map(|i| unpriced(i, 1 + (i % 18) as u32)).collect();
    let seq = app.ingest(&calls).await;
    app.wait_for("budgets", seq).await;
    // Nano-dollars per token: $2/M = 2,000, $8/M = 8,000; from the 10th $3/M and $9/M.
    let mut v1: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let mut v2: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for i in 0..600usize {
        let (inp, out, day) = ((1_000 + i) as i64, (100 + i) as i64, 1 + (i % 18));
        let p = format!("p{}", i % PROJECTS);
        let a = v1.entry(p.clone()).or_default();
        a.0 += inp * 2_000 + out * 8_000;
        a.1 += 1;
        let b = v2.entry(p).or_default();
        b.0 += if day >= 10 {
            inp * 3_000 + out * 9_000
        } else {
            inp * 2_000 + out * 8_000
        };
        b.1 += 1;
    }
    assert_eq!(spend(&app).await, v1, "priced by the first catalog");

    let (_, cat) = app.get("/v1/catalog").await;
    let mut models = cat["models"].clone();
    models[0]["prices"] = json!([
        {"valid_from": "2026-11-01T00:00:00Z", "input_per_mtok": "2.00", "output_per_mtok": "8.00"},
        {"valid_from": "2026-11-10T00:00:00Z", "input_per_mtok": "3.00", "output_per_mtok": "9.00"}
    ]);
    let (status, r) = app
        .put_json("/v1/catalog", &json!({"models": models}))
        .await;
    assert_eq!(status, 202, "{r}");
    app.wait_for("budgets", r["seq"].as_u64().unwrap()).await;
    assert_eq!(spend(&app).await, v2, "re-priced once, every project");
    // Each partition folded the correction for itself, and keeps its own catalog.
    let parts: Vec<String> =
        sqlx::query_scalar("SELECT part FROM budgets.catalog WHERE part <> '' ORDER BY part")
            .fetch_all(&app.kairos.pool)
            .await
            .unwrap();
    assert_eq!(parts, ["0/3", "1/3", "2/3"]);
    let (status, b) = app.get("/v1/projects/p0/budget").await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["calls"], 50, "{b}");
    app.cleanup().await;
}

#[sqlx::test(migrations = false)]
async fn partitioning_is_guarded_and_a_replay_brings_it_to_one_place(pool: PgPool) {
    let mut app = partitioned_app(pool, 3, 2).await;
    let mut events: Vec<Value> = (0..PROJECTS)
        .map(|p| budget_set(&format!("b{p}"), &format!("p{p}"), "1000", 80))
        .collect();
    events.extend(
        (0..900).map(|i| llm_call(&format!("a{i}"), &format!("p{}", i % PROJECTS), "0.25")),
    );
    let seq = app.ingest(&events).await;
    app.wait_for("budgets", seq).await;
    let parts = partition_checkpoints(&app).await;
    assert_eq!(parts.len(), 3, "{parts:?}");
    assert!(parts.iter().all(|(_, s)| *s >= seq as i64), "{parts:?}");

    // One runner, or partitions of another count, would fold events twice: refused, by name.
    let single = run_budgets(&app, 1)
        .await
        .expect_err("one runner is refused");
    assert!(
        single
            .to_string()
            .contains("runs partitioned (checkpoint budgets/0of3)"),
        "{single}"
    );
    let other = run_budgets(&app, 4)
        .await
        .expect_err("another count is refused");
    assert!(
        other.to_string().contains("already partitioned otherwise")
            && other.to_string().contains("not into 4"),
        "{other}"
    );

    // A replay while the partitions run: they start again where the new tables stand.
    let report = app
        .kairos
        .replay("budgets", &ReplayOptions::default(), None, |_| {})
        .await
        .expect("the replay");
    assert!(report.switched);
    let more: Vec<Value> = (900..1_200)
        .map(|i| llm_call(&format!("a{i}"), &format!("p{}", i % PROJECTS), "0.25"))
        .collect();
    let seq = app.ingest(&more).await;
    app.wait_for("budgets", seq).await;
    let all = spend(&app).await;
    assert_eq!(all.len(), PROJECTS);
    for (p, (nanos, calls)) in &all {
        assert_eq!((*nanos, *calls), (100 * 250_000_000, 100), "{p}");
    }
    assert_eq!(partition_checkpoints(&app).await.len(), 3);

    // Back to one runner: stop the partitions, replay, and one runner goes on from there.
    app.stop_projections();
    app.kairos
        .replay("budgets", &ReplayOptions::default(), None, |_| {})
        .await
        .expect("the replay");
    assert!(partition_checkpoints(&app).await.is_empty());
    let runner = {
        let (bus, pool) = (app.kairos.bus.clone(), app.kairos.pool.clone());
        tokio::spawn(async move {
            Runner::new(
                kairos_budgets::Budgets { tz: chrono_tz::UTC },
                bus,
                pool,
                RunnerConfig {
                    idle_wait_ms: 200,
                    ..RunnerConfig::default()
                },
            )
            .run()
            .await
        })
    };
    let last: Vec<Value> = (1_200..1_212)
        .map(|i| llm_call(&format!("a{i}"), &format!("p{}", i % PROJECTS), "0.25"))
        .collect();
    let seq = app.ingest(&last).await;
    app.wait_for("budgets", seq).await;
    assert!(!runner.is_finished(), "the single runner runs");
    for (p, (nanos, calls)) in spend(&app).await {
        assert_eq!((nanos, calls), (101 * 250_000_000, 101), "{p}");
    }
    runner.abort();
    app.cleanup().await;
}
