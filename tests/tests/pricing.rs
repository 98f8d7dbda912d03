//! Calls without a cost, priced from the catalog in force at their time; a correction dated in
//! the past re-prices them; an unpriced call is never free.

use kairos_tests::{TestApp, spawn_app_with, test_settings_with};
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

[[catalog.model]]
name = "local"
provider = "ollama"
context_window = 100000
max_output_tokens = 4000
local = true
tier = 1
"#;

fn call(id: &str, project: &str, model: &str, day: u32, input: u64, output: u64) -> Value {
    json!({
        "specversion": "1.0", "id": id, "source": "test/gateway", "type": "kairos.llm.call.completed.v1",
        "subject": project, "time": format!("2026-11-{day:02}T10:00:00Z"),
        "data": {"project": project, "model": model, "provider": "p", "input_tokens": input,
                 "output_tokens": output, "latency_ms": 100, "status": "ok"}
    })
}

async fn budget(app: &TestApp, project: &str) -> Value {
    let (status, b) = app.get(&format!("/v1/projects/{project}/budget")).await;
    assert_eq!(status, 200, "{b}");
    b
}

#[sqlx::test(migrations = false)]
async fn a_correction_dated_in_the_past_reprices_to_the_brute_force_total(pool: PgPool) {
    let app = spawn_app_with(pool, test_settings_with(CATALOG), true).await;
    let (_, r) = app
        .put_json(
            "/v1/projects/acme/budget",
            &json!({"monthly_limit": "100", "on_exceeded": "block"}),
        )
        .await;
    let mut seq = r["seq"].as_u64().unwrap();
    // 300 calls over the 1st-18th, none with a cost; one producer-costed call keeps its cost.
    let mut calls = Vec::new();
    let mut brute_v1: i64 = 0;
    let mut brute_v2: i64 = 0;
    for i in 0..300u64 {
        let day = 1 + (i % 18) as u32;
        let (inp, out) = (1_000 + i * 7, 100 + i * 3);
        calls.push(call(&format!("c{i}"), "acme", "m1", day, inp, out));
        // Nano-dollars per token: $2/M = 2,000, $8/M = 8,000; from the 10th $3/M and $9/M.
        brute_v1 += (inp * 2_000 + out * 8_000) as i64;
        brute_v2 += if day >= 10 {
            (inp * 3_000 + out * 9_000) as i64
        } else {
            (inp * 2_000 + out * 8_000) as i64
        };
    }
    let mut reported = call("reported", "acme", "m1", 12, 1_000_000, 0);
    reported["data"]["cost"] = json!("1.5");
    calls.push(reported);
    seq = seq.max(app.ingest(&calls).await);
    app.wait_for("budgets", seq).await;
    let nanos = |b: &Value| {
        kairos_events::Money::parse(b["spent"].as_str().unwrap())
            .unwrap()
            .nanos()
    };
    let b = budget(&app, "acme").await;
    assert_eq!(nanos(&b), brute_v1 + 1_500_000_000, "{b}");
    assert_eq!(b["unpriced_calls"], 0);

    // The correction: from the 10th m1 cost $3 and $9 per million.
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
    let b = budget(&app, "acme").await;
    assert_eq!(nanos(&b), brute_v2 + 1_500_000_000, "{b}");
    app.cleanup().await;
}

#[sqlx::test(migrations = false)]
async fn an_unpriced_call_is_never_free_and_the_budget_fails_closed(pool: PgPool) {
    let app = spawn_app_with(pool, test_settings_with(CATALOG), true).await;
    let (_, r) = app
        .put_json(
            "/v1/projects/acme/budget",
            &json!({"monthly_limit": "100", "on_exceeded": "fallback_to_local"}),
        )
        .await;
    let seq = r["seq"].as_u64().unwrap();
    let ask = json!({"project": "acme", "input_tokens": 100, "expected_output_tokens": 10});
    let (_, r) = app
        .post_json(&format!("/v1/route?min_seq={seq}"), &ask)
        .await;
    assert_eq!(r["model"], "m1", "{r}");
    // A call to a model the catalog does not know, on the 20th (the app's month).
    let seq = app
        .ingest(&[call("u1", "acme", "mystery", 20, 5_000, 500)])
        .await;
    let (_, b) = app
        .get(&format!("/v1/projects/acme/budget?min_seq={seq}"))
        .await;
    assert_eq!(b["unpriced_calls"], 1, "{b}");
    assert_eq!(b["spent"], "0.00");
    let (status, r) = app
        .post_json(&format!("/v1/route?min_seq={seq}"), &ask)
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["model"], "local", "fails closed: {r}");
    // A price for it from the 1st prices the call, and routes are paid again.
    let (_, cat) = app.get("/v1/catalog").await;
    let mut models = cat["models"].as_array().unwrap().clone();
    models.push(json!({"name": "mystery", "provider": "p", "context_window": 1000, "max_output_tokens": 100,
        "tier": 1, "prices": [{"valid_from": "2026-11-01T00:00:00Z", "input_per_mtok": "1.00", "output_per_mtok": "2.00"}]}));
    let (status, r) = app
        .put_json("/v1/catalog", &json!({"models": models}))
        .await;
    assert_eq!(status, 202, "{r}");
    let seq = r["seq"].as_u64().unwrap();
    let (_, b) = app
        .get(&format!("/v1/projects/acme/budget?min_seq={seq}"))
        .await;
    assert_eq!(b["unpriced_calls"], 0, "{b}");
    // 5,000 × $1 + 500 × $2 per million.
    assert_eq!(b["spent"], "0.006", "{b}");
    let (_, r) = app
        .post_json(&format!("/v1/route?min_seq={seq}"), &ask)
        .await;
    assert_eq!(r["model"], "m1", "{r}");
    app.cleanup().await;
}

#[sqlx::test(migrations = false)]
async fn a_bad_catalog_is_refused_naming_the_field(pool: PgPool) {
    let app = spawn_app_with(pool, test_settings_with(CATALOG), true).await;
    let (_, cat) = app.get("/v1/catalog").await;
    let version = cat["version"].as_u64().unwrap();
    assert!(version > 0);
    let base = cat["models"].clone();
    let with = |i: usize, k: &str, v: Value| {
        let mut m = base.clone();
        m[i][k] = v;
        json!({"models": m})
    };
    let mut dup = base.as_array().unwrap().clone();
    dup.push(base[0].clone());
    for (body, field) in [
        (json!({"models": dup}), "model[2].name"),
        (
            with(0, "context_window", json!(0)),
            "model[0].context_window",
        ),
        (with(0, "tier", json!(7)), "model[0].tier"),
        (
            with(
                0,
                "prices",
                json!([{"valid_from": "2026-11-01T00:00:00Z", "input_per_mtok": "0.0001", "output_per_mtok": "1"}]),
            ),
            "model[0].prices[0].input_per_mtok",
        ),
        (
            with(
                0,
                "prices",
                json!([{"valid_from": "2026-11-01T10:00:00Z", "input_per_mtok": "1", "output_per_mtok": "1"}]),
            ),
            "model[0].prices[0].valid_from",
        ),
        (
            with(
                1,
                "prices",
                json!([{"valid_from": "2026-11-01T00:00:00Z", "input_per_mtok": "1", "output_per_mtok": "1"}]),
            ),
            "model[1].prices",
        ),
        (with(0, "name", json!("a\u{0007}b")), "model[0].name"),
    ] {
        let (status, r) = app.put_json("/v1/catalog", &body).await;
        assert_eq!(status, 400, "{body}: {r}");
        assert_eq!(r["error"]["field"], field, "{r}");
    }
    for body in [
        with(
            0,
            "prices",
            json!([{"valid_from": "2026-11-01T00:00:00Z", "input_per_mtok": "-1", "output_per_mtok": "1"}]),
        ),
        with(0, "context_window", json!("big")),
        json!({"models": "all"}),
        json!({"models": [], "extra": 1}),
    ] {
        let (status, r) = app.put_json("/v1/catalog", &body).await;
        assert_eq!(status, 400, "{body}: {r}");
    }
    // A stale If-Match is a conflict; nothing changed.
    let r = app
        .http
        .put(format!("{}/v1/catalog", app.url))
        .header("If-Match", "\"999999\"")
        .json(&json!({"models": base}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let (_, after) = app.get("/v1/catalog").await;
    assert_eq!(after["version"], version);

    // A change never unprices what was priced: a model stays (retired, if need be), local or
    // remote as it was, priced from its first valid_from on.
    for (body, field) in [
        (json!({"models": [base[1].clone()]}), "model"),
        (
            {
                let mut m = base.clone();
                m[0]["local"] = json!(true);
                m[0]["prices"] = json!([]);
                json!({"models": m})
            },
            "model[0].local",
        ),
        (
            with(
                0,
                "prices",
                json!([{"valid_from": "2026-11-05T00:00:00Z", "input_per_mtok": "2", "output_per_mtok": "8"}]),
            ),
            "model[0].prices",
        ),
    ] {
        let (status, r) = app.put_json("/v1/catalog", &body).await;
        assert_eq!(status, 400, "{body}: {r}");
        assert_eq!(r["error"]["field"], field, "{r}");
    }
    let (status, r) = app
        .put_json("/v1/catalog", &with(0, "retired", json!(true)))
        .await;
    assert_eq!(status, 202, "retiring is how a model leaves: {r}");
    let (_, r) = app
        .post_json(
            &format!("/v1/route?min_seq={}", r["seq"]),
            &json!({"project": "x", "input_tokens": 10, "expected_output_tokens": 10}),
        )
        .await;
    assert_eq!(r["model"], "local", "a retired model is not routed to: {r}");
    app.cleanup().await;
}
