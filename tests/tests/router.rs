//! The router against real NATS and PostgreSQL: the seed's acceptance cases, reservations
//! under concurrency, settlement and expiry, decisions explained, bad input.

use kairos_tests::{TestApp, llm_call, spawn_app_with, test_settings_with};
use serde_json::{Value, json};
use sqlx::PgPool;

const CATALOG: &str = r#"
[router]
expiry_sweep_ms = 50
reservation_ttl_secs = 60

[[catalog.model]]
name = "gpt-4o"
provider = "openai"
context_window = 128000
max_output_tokens = 16384
tier = 4
prices = [{ valid_from = "2026-01-01T00:00:00Z", input_per_mtok = "2.50", output_per_mtok = "10.00" }]

[[catalog.model]]
name = "gpt-4o-azure"
provider = "azure"
context_window = 128000
max_output_tokens = 16384
tier = 4
prices = [{ valid_from = "2026-01-01T00:00:00Z", input_per_mtok = "2.50", output_per_mtok = "10.00" }]

[[catalog.model]]
name = "claude-long"
provider = "anthropic"
context_window = 200000
max_output_tokens = 50000
tier = 3
prices = [{ valid_from = "2026-01-01T00:00:00Z", input_per_mtok = "1.00", output_per_mtok = "1.00" }]

[[catalog.model]]
name = "llama"
provider = "ollama"
context_window = 200000
max_output_tokens = 50000
local = true
tier = 2
"#;

async fn app(pool: PgPool) -> TestApp {
    spawn_app_with(pool, test_settings_with(CATALOG), true).await
}

/// An LLM call of `project` now (the app's clock), costing `cost`.
fn call_now(app: &TestApp, id: &str, project: &str, cost: &str) -> Value {
    let mut c = llm_call(id, project, cost);
    c["time"] = json!(app.kairos.clock.now().to_rfc3339());
    c
}

async fn set_budget(app: &TestApp, project: &str, limit: &str, policy: &str) -> u64 {
    let (status, r) = app
        .put_json(
            &format!("/v1/projects/{project}/budget"),
            &json!({"monthly_limit": limit, "on_exceeded": policy, "fallback_model": "llama"}),
        )
        .await;
    assert_eq!(status, 202, "{r}");
    r["seq"].as_u64().unwrap()
}

async fn route(app: &TestApp, body: Value, min_seq: u64) -> (u16, Value) {
    app.post_json(&format!("/v1/route?min_seq={min_seq}"), &body)
        .await
}

#[sqlx::test(migrations = false)]
async fn a_ten_dollar_budget_gets_remote_models_then_a_local_one_once_spent(pool: PgPool) {
    let app = app(pool).await;
    let seq = set_budget(&app, "acme", "10.00", "fallback_to_local").await;
    let ask = json!({"project": "acme", "input_tokens": 2000, "expected_output_tokens": 500, "max_output_tokens": 500});
    let (status, r) = route(&app, ask.clone(), seq).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["model"], "gpt-4o", "{r}");
    assert_eq!(r["rule"], "best_quality");
    assert_eq!(r["outcome"], "reserved");
    // 2,000 × $2.50 + 500 × $10 per million: the worst case with max_tokens 500.
    assert_eq!(r["reserved"], "0.01");
    let first = r["decision_id"].as_str().unwrap().to_owned();

    // The call that followed settles the reservation; then spend reaches $10.
    let mut settled = call_now(&app, "c-first", "acme", "0.008");
    settled["data"]["decision_id"] = json!(first);
    let mut calls = vec![settled];
    calls.extend((0..4).map(|i| call_now(&app, &format!("c-{i}"), "acme", "2.498")));
    let seq = app.ingest(&calls).await;
    let (_, b) = app
        .get(&format!("/v1/projects/acme/budget?min_seq={seq}"))
        .await;
    assert_eq!(b["spent"], "10.00", "{b}");
    assert_eq!(b["status"], "exceeded");

    // The first route after it: the local model.
    let (status, r) = route(&app, ask.clone(), seq).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["model"], "llama", "{r}");
    assert_eq!(r["rule"], "budget_exceeded_fallback");
    assert_eq!(r["outcome"], "routed");
    assert!(r["reserved"].is_null());
    let gpt = r["alternatives"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["model"] == "gpt-4o")
        .unwrap();
    assert!(
        gpt["reason"]
            .as_str()
            .unwrap()
            .contains("budget is exceeded"),
        "{gpt}"
    );
    // The settled reservation holds nothing any more.
    let settled = app.events_in("budget").await;
    assert!(
        settled
            .iter()
            .any(|e| e.event_type().as_str() == "kairos.budget.reservation_settled.v1"),
        "no settlement on the budget's subject"
    );
    let (_, b) = app
        .get(&format!("/v1/projects/acme/budget?min_seq={seq}"))
        .await;
    assert_eq!(b["reserved"], "0.00", "{b}");
    app.cleanup().await;
}

#[sqlx::test(migrations = false)]
async fn a_100k_task_goes_only_to_a_window_that_holds_it(pool: PgPool) {
    let app = app(pool).await;
    let (status, r) = route(
        &app,
        json!({"project": "docs", "input_tokens": 100000, "expected_output_tokens": 30000}),
        0,
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["model"], "claude-long", "{r}");
    for a in r["alternatives"].as_array().unwrap() {
        if a["model"].as_str().unwrap().starts_with("gpt-4o") {
            assert!(
                a["reason"]
                    .as_str()
                    .unwrap()
                    .starts_with("window of 128000"),
                "{a}"
            );
        }
    }
    // Too large for every window: 422 naming the largest.
    let (status, r) = route(
        &app,
        json!({"project": "docs", "input_tokens": 500000, "expected_output_tokens": 1000}),
        0,
    )
    .await;
    assert_eq!(status, 422, "{r}");
    assert_eq!(r["error"]["code"], "no_model_fits");
    assert!(r["reason"].as_str().unwrap().contains("200000"), "{r}");
    app.cleanup().await;
}

#[sqlx::test(migrations = false)]
async fn a_model_whose_error_rate_jumped_loses_ties(pool: PgPool) {
    let app = app(pool).await;
    let ask = json!({"project": "chat", "input_tokens": 1000, "expected_output_tokens": 200});
    let (_, r) = route(&app, ask.clone(), 0).await;
    // Tied on tier and price, no figures yet: by name.
    assert_eq!(r["model"], "gpt-4o", "{r}");
    // Within the last hour gpt-4o fails half its calls; the Azure deployment none.
    let now = app.kairos.clock.now();
    let mut calls = Vec::new();
    for i in 0..40 {
        for (model, provider) in [("gpt-4o", "openai"), ("gpt-4o-azure", "azure")] {
            let mut c = llm_call(&format!("{model}-{i}"), "chat", "0.001");
            c["time"] = json!((now - chrono::Duration::minutes(10 + i)).to_rfc3339());
            c["data"]["model"] = json!(model);
            c["data"]["provider"] = json!(provider);
            if model == "gpt-4o" && i % 2 == 0 {
                c["data"]["status"] = json!("error");
            }
            calls.push(c);
        }
    }
    let seq = app.ingest(&calls).await;
    let (status, r) = route(&app, ask, seq).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["model"], "gpt-4o-azure", "{r}");
    let lost = &r["alternatives"][0];
    assert_eq!(lost["model"], "gpt-4o");
    assert!(
        lost["reason"]
            .as_str()
            .unwrap()
            .contains("error rate 50.0%"),
        "{lost}"
    );
    // The decision records the figures it used.
    let id = r["decision_id"].as_str().unwrap();
    let (status, d) = app
        .get(&format!("/v1/route/decisions/{id}?min_seq={}", r["seq"]))
        .await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["health"]["gpt-4o"]["errors"], 20, "{d}");
    assert_eq!(d["health"]["gpt-4o-azure"]["errors"], 0, "{d}");
    app.cleanup().await;
}

/// $0.45 left, 50 simultaneous routes for $0.15 calls: at most 3 admitted to paid models, 20
/// times over, under both policies.
#[sqlx::test(migrations = false)]
async fn concurrent_routes_never_reserve_more_than_is_left(pool: PgPool) {
    let app = app(pool).await;
    // claude-long: $1 per million in and out; 100,000 + 50,000 tokens cost $0.15 exactly.
    let ask = |p: &str| {
        json!({"project": p, "input_tokens": 100000, "expected_output_tokens": 50000,
               "max_output_tokens": 50000, "min_tier": 3})
    };
    for round in 0..20 {
        let project = format!("race-{round}");
        let policy = if round % 2 == 0 {
            "fallback_to_local"
        } else {
            "block"
        };
        set_budget(&app, &project, "1.00", policy).await;
        let seq = app
            .ingest(&[call_now(&app, &format!("spent-{round}"), &project, "0.55")])
            .await;
        let answers =
            futures_util::future::join_all((0..50).map(|_| route(&app, ask(&project), seq))).await;
        let mut paid = 0;
        for (status, r) in &answers {
            match (status, r["outcome"].as_str()) {
                (200, Some("reserved")) => {
                    assert_eq!(r["model"], "claude-long");
                    assert_eq!(r["reserved"], "0.15");
                    paid += 1;
                }
                (200, Some("routed")) => {
                    assert_eq!(policy, "fallback_to_local", "{r}");
                    assert_eq!(r["model"], "llama", "{r}");
                }
                (402, Some("budget_blocked")) => assert_eq!(policy, "block", "{r}"),
                other => panic!("round {round}: unexpected {other:?}: {r}"),
            }
        }
        assert!(paid <= 3, "round {round}: {paid} admitted to paid models");
        assert_eq!(
            paid, 3,
            "round {round}: one process serialises them, so exactly 3"
        );
        let last = answers
            .iter()
            .map(|(_, r)| r["seq"].as_u64().unwrap_or(0))
            .max()
            .unwrap();
        let (_, b) = app
            .get(&format!("/v1/projects/{project}/budget?min_seq={last}"))
            .await;
        assert_eq!(b["reserved"], "0.45", "{b}");
        assert_eq!(b["available"], "0.00", "{b}");
    }
    app.cleanup().await;
}

#[sqlx::test(migrations = false)]
async fn an_unsettled_reservation_expires_as_an_event(pool: PgPool) {
    let app = app(pool).await;
    let seq = set_budget(&app, "slow", "5.00", "block").await;
    let (status, r) = route(
        &app,
        json!({"project": "slow", "input_tokens": 1000, "expected_output_tokens": 100, "max_output_tokens": 100}),
        seq,
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["outcome"], "reserved");
    let (_, b) = app
        .get(&format!(
            "/v1/projects/slow/budget?min_seq={}",
            r["reservation_seq"]
        ))
        .await;
    assert_eq!(b["reserved"], "0.0035", "{b}");
    // Past the reservation's time, the sweeper releases it.
    app.kairos.clock.advance(chrono::TimeDelta::seconds(61));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (_, b) = app.get("/v1/projects/slow/budget").await;
        if b["reserved"] == "0.00" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never expired: {b}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let expired: Vec<_> = app
        .events_in("budget")
        .await
        .into_iter()
        .filter(|e| e.event_type().as_str() == "kairos.budget.reservation_expired.v1")
        .collect();
    assert_eq!(expired.len(), 1);
    // A call arriving late is spend all the same, and settles nothing.
    let mut late = call_now(&app, "late", "slow", "0.002");
    late["data"]["decision_id"] = r["decision_id"].clone();
    let seq = app.ingest(&[late]).await;
    let (_, b) = app
        .get(&format!("/v1/projects/slow/budget?min_seq={seq}"))
        .await;
    assert_eq!(b["spent"], "0.002", "{b}");
    assert_eq!(b["reserved"], "0.00", "{b}");
    app.cleanup().await;
}

#[sqlx::test(migrations = false)]
async fn decisions_are_listed_and_explained(pool: PgPool) {
    let app = app(pool).await;
    let seq = set_budget(&app, "ex", "3.00", "fallback_to_local").await;
    let mut last = 0;
    let mut ids = Vec::new();
    for tokens in [1000, 2000, 150000] {
        let (_, r) = route(
            &app,
            json!({"project": "ex", "input_tokens": tokens, "expected_output_tokens": 100, "task": "summarise"}),
            seq,
        )
        .await;
        ids.push(r["decision_id"].as_str().unwrap().to_owned());
        last = r["seq"].as_u64().unwrap();
    }
    let (status, list) = app
        .get(&format!("/v1/route/decisions?project=ex&min_seq={last}"))
        .await;
    assert_eq!(status, 200, "{list}");
    let listed: Vec<&str> = list["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["decision_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ids, "decisions list in stream order");
    let (status, d) = app.get(&format!("/v1/route/decisions/{}", ids[2])).await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["request"]["input_tokens"], 150000);
    assert_eq!(d["request"]["task"], "summarise");
    assert_eq!(d["model"], "claude-long");
    assert_eq!(d["budget"]["limit"], "3.00");
    assert!(d["catalog_version"].as_u64().unwrap() > 0);
    assert!(
        d["alternatives"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["reason"].is_string())
    );
    let (status, _) = app.get("/v1/route/decisions/nope").await;
    assert_eq!(status, 404);
    app.cleanup().await;
}

#[sqlx::test(migrations = false)]
async fn bad_route_requests_get_a_clear_400(pool: PgPool) {
    let app = app(pool).await;
    let ok = json!({"project": "p", "input_tokens": 10, "expected_output_tokens": 10});
    let with = |k: &str, v: Value| {
        let mut b = ok.clone();
        b[k] = v;
        b
    };
    for (body, field) in [
        (
            json!({"input_tokens": 1, "expected_output_tokens": 1}),
            None,
        ),
        (with("project", json!("a.b")), Some("project")),
        (with("project", json!(7)), None),
        (with("input_tokens", json!(-1)), None),
        (with("input_tokens", json!("ten")), None),
        (
            with("input_tokens", json!(20_000_000)),
            Some("input_tokens"),
        ),
        (
            with("max_output_tokens", json!(1)),
            Some("max_output_tokens"),
        ),
        (with("min_tier", json!(9)), Some("min_tier")),
        (with("task", json!("a\u{0000}b")), Some("task")),
        (with("task", json!("x".repeat(201))), Some("task")),
        (with("tags", json!(vec!["t"; 21])), Some("tags")),
        (with("tags", json!(["\u{001b}[31m"])), Some("tags")),
        (with("surprise", json!(true)), None),
    ] {
        let (status, r) = app.post_json("/v1/route", &body).await;
        assert_eq!(status, 400, "{body}: {r}");
        if let Some(f) = field {
            assert_eq!(r["error"]["field"], f, "{body}: {r}");
        }
        // Refusals carry no raw control character back.
        assert!(!r.to_string().contains('\u{0000}'));
    }
    // Nothing was decided.
    let (_, list) = app.get("/v1/route/decisions").await;
    assert_eq!(list["decisions"].as_array().unwrap().len(), 0);
    app.cleanup().await;
}

/// `examples/router.sh`, as docs/router.md shows it, against the shipped catalog.
#[sqlx::test(migrations = false)]
async fn the_router_example_runs(pool: PgPool) {
    // "[catalog]" keeps the built-in catalog of kairos.toml.
    let app = spawn_app_with(pool, test_settings_with("[catalog]\n"), true).await;
    let stdout = app.run_example("router.sh").await;
    // The best tier of the shipped catalog, then the window that holds 302,000 tokens.
    assert!(
        stdout.contains(": claude-sonnet-4 (anthropic), reserved 0.021"),
        "{stdout}"
    );
    assert!(stdout.contains("routed to gemini-2.5-flash"), "{stdout}");
    assert!(
        stdout.contains("\"reserved\":\"0.00\"") || stdout.contains("\"reserved\": \"0.00\""),
        "{stdout}"
    );
    app.cleanup().await;
}

/// What if a cheaper twin of gpt-4o had been in the catalog: every recorded decision goes to
/// it, and the cost moves by the known amount. Over HTTP and with `kairos route simulate`.
#[sqlx::test(migrations = false)]
async fn simulate_reroutes_recorded_decisions_under_another_catalog(pool: PgPool) {
    let app = app(pool).await;
    let mut calls = Vec::new();
    for i in 0..10 {
        let (status, r) = route(
            &app,
            json!({"project": "sim", "input_tokens": 1000, "expected_output_tokens": 200, "max_output_tokens": 200}),
            0,
        )
        .await;
        assert_eq!(status, 200, "{r}");
        assert_eq!(r["model"], "gpt-4o");
        // 1,000 × $2.50 + 200 × $10 per million.
        let mut c = call_now(&app, &format!("sim-{i}"), "sim", "0.0045");
        c["data"]["decision_id"] = r["decision_id"].clone();
        c["data"]["input_tokens"] = json!(1000);
        c["data"]["output_tokens"] = json!(200);
        calls.push(c);
    }
    app.ingest(&calls).await;
    let (_, cat) = app.get("/v1/catalog").await;
    let mut models = cat["models"].as_array().unwrap().clone();
    models.push(json!({"name": "gpt-4o-cheap", "provider": "openai", "context_window": 128000,
        "max_output_tokens": 16384, "tier": 4,
        "prices": [{"valid_from": "2026-01-01T00:00:00Z", "input_per_mtok": "1.00", "output_per_mtok": "1.00"}]}));
    let now = app.kairos.clock.now();
    let from = (now - chrono::Duration::days(1)).to_rfc3339();
    let to = (now + chrono::Duration::days(1)).to_rfc3339();
    let (status, r) = app
        .post_json(
            "/v1/route/simulate",
            &json!({"models": models, "from": from, "to": to, "project": "sim"}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    let p = &r["projects"][0];
    assert_eq!(p["project"], "sim");
    assert_eq!(p["calls"], 10);
    assert_eq!(p["decisions"], 10);
    assert_eq!(p["rerouted"], 10);
    assert_eq!(p["cost_actual"], "0.045");
    // 10 × (1,000 + 200) × $1 per million.
    assert_eq!(p["cost_simulated"], "0.012");
    assert_eq!(p["delta"], "-0.033");
    assert_eq!(
        p["moves"],
        json!([{"from": "gpt-4o", "to": "gpt-4o-cheap", "calls": 10}])
    );

    // A range too long, a bad catalog: 400.
    let (status, _) = app
        .post_json(
            "/v1/route/simulate",
            &json!({"models": models, "from": "2026-01-01T00:00:00Z", "to": "2026-03-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(status, 400);
    let mut bad = models.clone();
    bad[0]["tier"] = json!(0);
    let (status, r) = app
        .post_json(
            "/v1/route/simulate",
            &json!({"models": bad, "from": from, "to": to}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(r["error"]["field"], "model[0].tier");

    // The same from the command line, with the catalog in a file.
    let dir = std::env::temp_dir().join(format!("kairos-sim-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut toml = String::from(CATALOG);
    toml.push_str(
        "\n[[catalog.model]]\nname = \"gpt-4o-cheap\"\nprovider = \"openai\"\ncontext_window = 128000\n\
         max_output_tokens = 16384\ntier = 4\nprices = [{ valid_from = \"2026-01-01T00:00:00Z\", \
         input_per_mtok = \"1.00\", output_per_mtok = \"1.00\" }]\n",
    );
    let file = dir.join("other.toml");
    std::fs::write(
        &file,
        toml.replace(
            "[router]\nexpiry_sweep_ms = 50\nreservation_ttl_secs = 60\n",
            "",
        ),
    )
    .unwrap();
    let reports = kairos::route::simulate_file(
        &app.kairos,
        &file,
        now - chrono::Duration::days(1),
        now + chrono::Duration::days(1),
        Some("sim"),
    )
    .await
    .unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].rerouted, 10);
    assert_eq!(reports[0].delta, "-0.033");
    std::fs::remove_dir_all(&dir).unwrap();
    app.cleanup().await;
}

/// Two Kairos processes (one stream, one database, each its own router and budget aggregates)
/// take routes for one budget at once: only the stream's expected-last-sequence check keeps
/// them apart, and it must never let them admit more than is left together.
#[sqlx::test(migrations = false)]
async fn two_processes_never_reserve_more_than_is_left_together(pool: PgPool) {
    let settings = test_settings_with(CATALOG);
    let one = spawn_app_with(pool.clone(), settings.clone(), true).await;
    let two = spawn_app_with(pool, settings, false).await;
    let ask = |p: &str| {
        json!({"project": p, "input_tokens": 100000, "expected_output_tokens": 50000,
               "max_output_tokens": 50000, "min_tier": 3})
    };
    for round in 0..5 {
        let project = format!("twin-{round}");
        set_budget(&one, &project, "1.00", "block").await;
        let seq = one
            .ingest(&[call_now(
                &one,
                &format!("twin-spent-{round}"),
                &project,
                "0.55",
            )])
            .await;
        // Both have seen the setting and the spend before the race starts.
        route(&one, json!({"project": project, "input_tokens": 1, "expected_output_tokens": 1, "min_tier": 5}), seq).await;
        route(&two, json!({"project": project, "input_tokens": 1, "expected_output_tokens": 1, "min_tier": 5}), seq).await;
        let answers = futures_util::future::join_all((0..40).map(|i| {
            let app = if i % 2 == 0 { &one } else { &two };
            route(app, ask(&project), seq)
        }))
        .await;
        let mut paid = 0;
        for (status, r) in &answers {
            match (status, r["outcome"].as_str()) {
                (200, Some("reserved")) => paid += 1,
                (402, Some("budget_blocked")) => {}
                // Past its retries against the other process, a route answers 409.
                (409, _) => assert_eq!(r["error"]["code"], "conflict", "{r}"),
                other => panic!("round {round}: unexpected {other:?}: {r}"),
            }
        }
        assert!(
            paid <= 3,
            "round {round}: {paid} admitted to paid models by two processes"
        );
        assert!(paid >= 1, "round {round}: the budget admits calls at all");
        let last = answers
            .iter()
            .filter_map(|(_, r)| r["reservation_seq"].as_u64())
            .max()
            .unwrap();
        let (_, b) = one
            .get(&format!("/v1/projects/{project}/budget?min_seq={last}"))
            .await;
        let reserved = kairos_events::Money::parse(b["reserved"].as_str().unwrap()).unwrap();
        assert_eq!(reserved.nanos(), paid * 150_000_000, "{b}");
    }
    // The two did conflict (this process' metrics are both instances'): the check was
    // exercised, not dodged.
    let metrics = one
        .http
        .get(format!("{}/metrics", one.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let conflicts: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("kairos_command_conflicts_total{") && l.contains("aggregate=\"budget\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        conflicts > 0.0,
        "no conflict between the two processes: {metrics}"
    );
    two.cleanup().await;
    one.cleanup().await;
}
