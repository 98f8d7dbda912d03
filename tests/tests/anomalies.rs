//! Anomalies end to end, against real NATS and PostgreSQL: a model that starts failing is taken
//! out of routing by its error-rate alert and comes back when the alert resolves (with the
//! half-open probe in between); a cost alert lowers a project's effective limit until an admin
//! acknowledges; a restarted projection scores exactly as an uninterrupted detector; and bad
//! input is refused naming the parameter.

use chrono::{DateTime, TimeDelta, Utc};
use kairos_anomalies::detector::score_series;
use kairos_runtime::ReplayOptions;
use kairos_tests::{TestApp, schema_digest, spawn_app_with, test_settings_with};
use serde_json::{Value, json};
use sqlx::PgPool;

const CONFIG: &str = r#"
[anomalies]
grace_seconds = 0
resolve_points = 3
probe_after_seconds = 300
probe_calls = 2
save_every = 100
keep_points = 1000
cost_action = "lower_limit"

[[catalog.model]]
name = "alpha"
provider = "acme"
context_window = 128000
max_output_tokens = 4096
tier = 4
prices = [{ valid_from = "2026-01-01T00:00:00Z", input_per_mtok = "2.00", output_per_mtok = "8.00" }]

[[catalog.model]]
name = "beta"
provider = "other"
context_window = 128000
max_output_tokens = 4096
tier = 3
prices = [{ valid_from = "2026-01-01T00:00:00Z", input_per_mtok = "1.00", output_per_mtok = "4.00" }]

[[catalog.model]]
name = "local"
provider = "ollama"
context_window = 32000
max_output_tokens = 4096
local = true
tier = 1
"#;

/// Where the generated series start: far from the fixture clock, so the router's last-hour
/// health figures see none of these calls and only the breaker can keep a model out.
fn base() -> DateTime<Utc> {
    "2026-03-01T00:00:00Z".parse().unwrap()
}

/// `n` calls of `model` in minute `minute`, `errors` of them failed, costing `cost` each.
fn calls(model: &str, project: &str, minute: i64, n: i64, errors: i64, cost: &str) -> Vec<Value> {
    (0..n)
        .map(|j| {
            let at = base() + TimeDelta::minutes(minute) + TimeDelta::seconds(j * 50 / n.max(1));
            let latency = 300 + (minute * 7 + j * 13) % 50;
            json!({
                "specversion": "1.0", "id": format!("{model}-{project}-{minute}-{j}"),
                "source": "test/gateway", "type": "kairos.llm.call.completed.v1",
                "subject": project, "time": at.to_rfc3339(),
                "data": {"project": project, "model": model, "provider": "acme",
                         "input_tokens": 100, "output_tokens": 20, "cost": cost,
                         "latency_ms": latency, "status": if j < errors { "error" } else { "ok" }}
            })
        })
        .collect()
}

/// About 1 % of calls fail in normal times (deterministically spread).
fn normal_errors(minute: i64) -> i64 {
    i64::from(minute % 37 == 0)
}

async fn route(app: &TestApp, min_seq: u64) -> Value {
    let (status, r) = app
        .post_json(
            &format!("/v1/route?min_seq={min_seq}"),
            &json!({"project": "chat", "input_tokens": 1000, "expected_output_tokens": 200}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    r
}

async fn open_alerts(app: &TestApp, seq: u64, series: &str) -> Vec<Value> {
    let (status, r) = app
        .get(&format!(
            "/v1/anomalies?status=open&series={series}&min_seq={seq}"
        ))
        .await;
    assert_eq!(status, 200, "{r}");
    r["alerts"].as_array().unwrap().clone()
}

#[sqlx::test(migrations = false)]
async fn a_failing_model_is_taken_out_of_routing_and_returns_once_its_alert_resolves(pool: PgPool) {
    let app = spawn_app_with(pool.clone(), test_settings_with(CONFIG), true).await;
    let series = "model:alpha:error_rate";
    // 220 normal minutes: the detector learns what alpha's error rate looks like.
    let mut events = Vec::new();
    for m in 0..220 {
        events.extend(calls("alpha", "chat", m, 10, normal_errors(m), "0.001"));
        events.extend(calls("beta", "chat", m, 5, 0, "0.001"));
    }
    let seq = app.ingest(&events).await;
    let r = route(&app, seq).await;
    assert_eq!(r["model"], "alpha", "the best model while healthy: {r}");
    assert!(r.get("circuit").is_none(), "{r}");
    assert!(open_alerts(&app, seq, series).await.is_empty());

    // Alpha fails 30 % of its calls from minute 220.
    let mut events = Vec::new();
    for m in 220..224 {
        events.extend(calls("alpha", "chat", m, 10, 3, "0.001"));
        events.extend(calls("beta", "chat", m, 5, 0, "0.001"));
    }
    let seq = app.ingest(&events).await;
    let alerts = open_alerts(&app, seq, series).await;
    assert_eq!(alerts.len(), 1, "one alert: {alerts:?}");
    let alert = &alerts[0];
    let raised: DateTime<Utc> = alert["raised_at"].as_str().unwrap().parse().unwrap();
    let within = (raised - (base() + TimeDelta::minutes(220))).num_minutes();
    assert!(
        (0..3).contains(&within),
        "raised {within} points after the failures began: {alert}"
    );
    assert_eq!(alert["action"], "circuit_breaker", "{alert}");
    assert_eq!(alert["severity"], "critical", "{alert}");
    assert!(
        alert["expected_high"].as_f64().unwrap() < 0.3,
        "the expected range excludes 30 %: {alert}"
    );
    let r = route(&app, seq).await;
    assert_eq!(
        r["model"], "beta",
        "alpha is skipped while its alert is open: {r}"
    );
    let skipped = r["alternatives"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["model"] == "alpha")
        .expect("alpha among the alternatives");
    assert!(
        skipped["reason"]
            .as_str()
            .unwrap()
            .starts_with("circuit open: alert"),
        "{skipped}"
    );

    // Alpha gets no traffic; beta's moves time on. After 5 minutes the breaker is half-open:
    // two probe calls per window go to alpha, then it is skipped again.
    let mut events = Vec::new();
    for m in 224..231 {
        events.extend(calls("beta", "chat", m, 5, 0, "0.001"));
    }
    let seq = app.ingest(&events).await;
    let probes: Vec<Value> = [route(&app, seq).await, route(&app, seq).await].into();
    for p in &probes {
        assert_eq!(p["model"], "alpha", "a probe: {p}");
        assert!(
            p["reason"]
                .as_str()
                .unwrap()
                .contains("probe call of alpha"),
            "{p}"
        );
    }
    let r = route(&app, seq).await;
    assert_eq!(
        r["model"], "beta",
        "the probes of this window are spent: {r}"
    );

    // The probes and what follows succeed: the alert resolves and alpha is routed again.
    let mut events = Vec::new();
    for m in 231..240 {
        events.extend(calls("alpha", "chat", m, 10, 0, "0.001"));
        events.extend(calls("beta", "chat", m, 5, 0, "0.001"));
    }
    let seq = app.ingest(&events).await;
    assert!(
        open_alerts(&app, seq, series).await.is_empty(),
        "resolved once back in range"
    );
    let (_, resolved) = app
        .get(&format!("/v1/anomalies?status=resolved&series={series}"))
        .await;
    assert_eq!(
        resolved["alerts"][0]["resolve_reason"], "recovered",
        "{resolved}"
    );
    let r = route(&app, seq).await;
    assert_eq!(r["model"], "alpha", "back in routing: {r}");
    assert!(r.get("circuit").is_none(), "{r}");

    // Each step is an event on the stream.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let steps = loop {
        let steps: Vec<(String, String)> = app
            .events_in("alert")
            .await
            .iter()
            .map(|e| {
                let d = e.json()["data"].clone();
                (
                    e.event_type().as_str().to_owned(),
                    d["state"]
                        .as_str()
                        .or(d["series"].as_str())
                        .unwrap_or("")
                        .to_owned(),
                )
            })
            .filter(|(ty, s)| ty.contains("breaker") || s == series)
            .collect();
        if steps.len() >= 5 || tokio::time::Instant::now() > deadline {
            break steps;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let expected = [
        ("kairos.alert.raised.v1", series),
        ("kairos.alert.breaker_changed.v1", "open"),
        ("kairos.alert.breaker_changed.v1", "half_open"),
        ("kairos.alert.resolved.v1", series),
        ("kairos.alert.breaker_changed.v1", "closed"),
    ];
    let got: Vec<(&str, &str)> = steps
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let told: Vec<String> = app
        .events_in("alert")
        .await
        .iter()
        .map(|e| e.json()["data"].to_string())
        .collect();
    assert_eq!(got, expected, "{told:#?}");

    // A replay rebuilds the same tables: points, series, alerts, the (closed) breaker.
    let before = schema_digest(&pool, "anomalies").await;
    let report = app
        .kairos
        .replay("anomalies", &ReplayOptions::default(), None, |_| {})
        .await
        .unwrap();
    assert!(report.switched && report.reached.0 >= seq, "{report:?}");
    assert_eq!(
        schema_digest(&pool, "anomalies").await,
        before,
        "the replay rebuilt other rows"
    );
    app.cleanup().await;
}

/// A budget for `shop`, 220 minutes of steady spend, then a runaway loop: the cost alert it
/// raises (action `lower_limit`), with the sequence it was read at.
async fn raise_cost_alert(app: &TestApp) -> (String, u64) {
    let (status, r) = app
        .put_json(
            "/v1/projects/shop/budget",
            &json!({"monthly_limit": "100", "on_exceeded": "block"}),
        )
        .await;
    assert_eq!(status, 202, "{r}");
    let mut events = Vec::new();
    for m in 0..220 {
        let cost = if m % 3 == 0 { "0.0011" } else { "0.0010" };
        events.extend(calls("beta", "shop", m, 5, 0, cost));
    }
    // Then a runaway loop: twenty times the spend per minute.
    for m in 220..223 {
        events.extend(calls("beta", "shop", m, 100, 0, "0.0010"));
    }
    events.extend(calls("beta", "shop", 223, 5, 0, "0.0010"));
    let seq = app.ingest(&events).await;
    let alerts = open_alerts(app, seq, "project:shop:cost_usd_per_minute").await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["action"], "lower_limit");
    (alerts[0]["id"].as_str().unwrap().to_owned(), seq)
}

#[sqlx::test(migrations = false)]
async fn a_cost_alert_lowers_the_limit_until_an_admin_acknowledges(pool: PgPool) {
    let app = spawn_app_with(pool, test_settings_with(CONFIG), true).await;
    let (id, seq) = raise_cost_alert(&app).await;
    let ask = json!({"project": "shop", "input_tokens": 1000, "expected_output_tokens": 200});
    let (status, r) = app
        .post_json(&format!("/v1/route?min_seq={seq}"), &ask)
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        r["budget"]["limit"], "50.00",
        "halved while the alert is unacknowledged: {r}"
    );
    assert_eq!(r["circuit"]["lowered_limit"]["alert_id"], json!(id), "{r}");

    // An admin acknowledges, once (who else may is the access matrix's test).
    let path = format!("/v1/anomalies/{id}/acknowledge");
    let (status, ack) = app
        .post_json(&path, &json!({"note": "a batch job; expected"}))
        .await;
    assert_eq!(status, 202, "{ack}");
    let (status, again) = {
        app.wait_for("anomalies", ack["seq"].as_u64().unwrap())
            .await;
        app.post_json(&path, &json!({})).await
    };
    assert_eq!(status, 409, "{again}");
    let seq = ack["seq"].as_u64().unwrap();
    let (status, r) = app
        .post_json(&format!("/v1/route?min_seq={seq}"), &ask)
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        r["budget"]["limit"], "100.00",
        "lifted by the acknowledgement: {r}"
    );
    let (_, listed) = app.get(&format!("/v1/anomalies?min_seq={seq}")).await;
    let a = listed["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == json!(id))
        .unwrap();
    assert_eq!(a["acknowledged_by"], "admin@kairos.local", "{a}");
    app.cleanup().await;
}

/// A metric sample of `name` at minute `i`.
fn sample(name: &str, i: usize, value: f64) -> Value {
    json!({
        "specversion": "1.0", "id": format!("{name}-{i}"), "source": "test/agent",
        "type": "kairos.metric.recorded.v1", "subject": "ops",
        "time": (base() + TimeDelta::minutes(i as i64)).to_rfc3339(),
        "data": {"project": "ops", "name": name, "value": value, "labels": {"host": "a"}}
    })
}

#[sqlx::test(migrations = false)]
async fn a_restarted_projection_scores_every_point_as_one_uninterrupted_detector(pool: PgPool) {
    let mut app = spawn_app_with(pool, test_settings_with(CONFIG), true).await;
    let values: Vec<f64> = (0..700)
        .map(|i| {
            let x = i as f64;
            50.0 + 10.0 * (x / 20.0).sin()
                + ((i * 7919) % 13) as f64 * 0.3
                + if i == 500 { 40.0 } else { 0.0 }
        })
        .collect();
    let events: Vec<Value> = values
        .iter()
        .enumerate()
        .map(|(i, v)| sample("queue.depth", i, *v))
        .collect();
    // Stopped after 450 points (four saved states behind it, the rest folded again from the
    // scored points), started again, then the rest.
    let seq = app.ingest(&events[..450]).await;
    app.wait_for("anomalies", seq).await;
    app.stop_projections();
    app.start_projection("anomalies");
    let seq = app.ingest(&events[450..]).await;
    app.wait_for("anomalies", seq).await;
    let id = "metric:ops:queue.depth{host=\"a\"}";
    let encoded = "metric:ops:queue.depth%7Bhost=%22a%22%7D";
    let (status, r) = app
        .get(&format!("/v1/series/{encoded}/scores?limit=10000"))
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["series"], id);
    let got: Vec<f64> = r["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["anomaly_score"].as_f64().unwrap())
        .collect();
    let expected = score_series(&values);
    assert_eq!(got.len(), expected.len());
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g.to_bits(), e.to_bits(), "point {i}: {g} vs {e}");
    }
    assert!(
        expected[500] > 0.5,
        "the planted spike scores high: {}",
        expected[500]
    );
    // The series list names it with its last figures.
    let (_, listed) = app.get("/v1/series?project=ops").await;
    let s = &listed["series"][0];
    assert_eq!(s["id"], id, "{listed}");
    assert_eq!(s["points"], 700, "{s}");
    app.cleanup().await;
}

#[sqlx::test(migrations = false)]
async fn bad_queries_and_forged_alerts_are_refused(pool: PgPool) {
    let app = spawn_app_with(pool, test_settings_with(CONFIG), true).await;
    app.assert_bad_queries(&[
        ("/v1/anomalies?status=closed", "status"),
        ("/v1/anomalies?limit=0", "limit"),
        ("/v1/anomalies?limit=many", "limit"),
        ("/v1/anomalies?from=yesterday", "from"),
        ("/v1/anomalies?series=a%00b", "series"),
        ("/v1/anomalies?project=a.b", "project"),
        ("/v1/anomalies?as_of=2026-01-01T00:00:00Z", "as_of"),
        ("/v1/series?kind=latency", "kind"),
        ("/v1/series?limit=10001", "limit"),
        ("/v1/series/x/scores?to=noon", "to"),
    ])
    .await;
    let (status, r) = app.get("/v1/series/nope/scores").await;
    assert_eq!(status, 404, "{r}");
    let (status, r) = app
        .post_json("/v1/anomalies/alert-x/acknowledge", &json!({"note": 5}))
        .await;
    assert_eq!(status, 400, "wrong-typed note: {r}");
    let (status, r) = app
        .post_json(
            "/v1/anomalies/alert-x/acknowledge",
            &json!({"note": "x".repeat(1001)}),
        )
        .await;
    assert_eq!(status, 400, "{r}");
    let (status, r) = app
        .post_json("/v1/anomalies/alert-x/acknowledge", &json!({}))
        .await;
    assert_eq!(status, 404, "{r}");
    // Alerts and breaker changes are Kairos' own: a producer cannot forge one.
    let forged = json!({
        "specversion": "1.0", "id": "forged-1", "source": "test/evil",
        "type": "kairos.alert.breaker_changed.v1",
        "data": {"model": "alpha", "state": "closed", "alerts": [], "at": "2026-03-01T00:00:00Z",
                 "reason": "trust me"}
    });
    let (status, r) = app
        .post_events("application/cloudevents+json", forged.to_string())
        .await;
    assert_eq!(status, 400, "{r}");
    assert_eq!(r["results"][0]["error"]["code"], "reserved_type", "{r}");
    // A metric sample of the wrong type is refused at the door; nothing is lost.
    let mut bad = sample("m", 1, 1.0);
    bad["data"]["value"] = json!("high");
    let (status, r) = app
        .post_events("application/cloudevents+json", bad.to_string())
        .await;
    assert_eq!(status, 400, "{r}");
    app.cleanup().await;
}

#[sqlx::test(migrations = false)]
async fn each_alert_is_posted_signed_to_the_webhook_and_retried_when_refused(pool: PgPool) {
    use std::sync::{Arc, Mutex};
    type Seen = Arc<Mutex<Vec<(axum::http::HeaderMap, Vec<u8>)>>>;
    let seen: Seen = Arc::default();
    // The receiver refuses the first delivery, then takes the rest.
    let hook = axum::Router::new().route(
        "/hook",
        axum::routing::post({
            let seen = seen.clone();
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let seen = seen.clone();
                async move {
                    let mut s = seen.lock().unwrap();
                    s.push((headers, body.to_vec()));
                    if s.len() == 1 {
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        axum::http::StatusCode::NO_CONTENT
                    }
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, hook).await });
    let secret = "a-webhook-secret-of-some-length";
    let config = format!("{CONFIG}\n",).replace(
        "[anomalies]\n",
        &format!(
            "[anomalies]\nwebhook_url = \"http://{addr}/hook\"\nwebhook_secret = \"{secret}\"\n"
        ),
    );
    let app = spawn_app_with(pool, test_settings_with(&config), true).await;
    let values: Vec<f64> = (0..400)
        .map(|i| 20.0 + (i % 7) as f64 * 0.5 + if i == 300 { 60.0 } else { 0.0 })
        .collect();
    let events: Vec<Value> = values
        .iter()
        .enumerate()
        .map(|(i, v)| sample("latency.ms", i, *v))
        .collect();
    let seq = app.ingest(&events).await;
    app.wait_for("anomalies", seq).await;
    let (_, alerts) = app.get("/v1/anomalies").await;
    let raised = alerts["alerts"][0]["id"]
        .as_str()
        .expect("an alert")
        .to_owned();
    // The refused delivery is tried again a second later.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let deliveries = loop {
        let got = seen.lock().unwrap().clone();
        if got.len() >= 2 || tokio::time::Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(deliveries.len() >= 2, "{} deliveries", deliveries.len());
    for (headers, body) in &deliveries[..2] {
        let event: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(event["type"], "kairos.alert.raised.v1", "{event}");
        assert_eq!(event["data"]["alert_id"], json!(raised), "{event}");
        assert_eq!(headers["content-type"], "application/cloudevents+json");
        let ts: i64 = headers["x-kairos-timestamp"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            headers["x-kairos-signature"].to_str().unwrap(),
            kairos_anomalies::webhook::signature(secret, ts, body),
            "signed with the secret"
        );
        assert_ne!(
            headers["x-kairos-signature"].to_str().unwrap(),
            kairos_anomalies::webhook::signature("another-secret-entirely", ts, body)
        );
    }
    assert!(
        deliveries[0].0["x-kairos-delivery"]
            .to_str()
            .unwrap()
            .ends_with("/1")
    );
    assert!(
        deliveries[1].0["x-kairos-delivery"]
            .to_str()
            .unwrap()
            .ends_with("/2")
    );
    server.abort();
    app.cleanup().await;
}

#[sqlx::test(migrations = false)]
async fn the_anomalies_example_runs(pool: PgPool) {
    let app = spawn_app_with(pool, test_settings_with(""), true).await;
    let stdout = app.run_example("anomalies.sh").await;
    assert!(stdout.contains("raised at value 400"), "{stdout}");
    assert!(
        stdout.contains("acknowledged by admin@kairos.local"),
        "{stdout}"
    );
    app.cleanup().await;
}

#[sqlx::test(migrations = false)]
async fn calls_without_a_cost_are_priced_from_the_catalog_in_the_cost_series(pool: PgPool) {
    let app = spawn_app_with(pool, test_settings_with(CONFIG), true).await;
    let mut events = Vec::new();
    for m in 0..3 {
        for mut c in calls("beta", "priced", m, 5, 0, "0") {
            c["data"].as_object_mut().unwrap().remove("cost");
            events.push(c);
        }
    }
    let seq = app.ingest(&events).await;
    let (status, r) = app
        .get(&format!(
            "/v1/series/project:priced:cost_usd_per_minute/scores?min_seq={seq}"
        ))
        .await;
    assert_eq!(status, 200, "{r}");
    // beta: $1 per million input and $4 per million output tokens; 5 calls of 100 + 20 a minute.
    let points = r["points"].as_array().unwrap();
    assert_eq!(points.len(), 2, "two minutes closed: {r}");
    for p in points {
        let v = p["value"].as_f64().unwrap();
        assert!((v - 5.0 * 0.000_18).abs() < 1e-12, "{p}");
    }
    app.cleanup().await;
}

/// The series `ops` watches, by id, from `GET /v1/series`.
async fn watched(app: &TestApp) -> Vec<String> {
    let (status, listed) = app.get("/v1/series?project=ops").await;
    assert_eq!(status, 200, "{listed}");
    let mut ids: Vec<String> = listed["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

/// Posts one sample and answers the series watched once the projection applied it.
async fn after(app: &TestApp, sample: Value) -> Vec<String> {
    let seq = app.ingest(&[sample]).await;
    app.wait_for("anomalies", seq).await;
    watched(app).await
}

/// The ids of `sample`'s series of these names, sorted as `watched` answers them.
fn series_ids(names: &[&str]) -> Vec<String> {
    let mut ids: Vec<String> = names
        .iter()
        .map(|name| format!("metric:ops:{name}{{host=\"a\"}}"))
        .collect();
    ids.sort();
    ids
}

#[sqlx::test(migrations = false)]
async fn at_max_series_a_new_series_takes_the_place_of_one_idle_long_enough(pool: PgPool) {
    let config = "[anomalies]\nmax_series = 3\nevict_idle_hours = 1\nsave_every = 20\n";
    let mut app = spawn_app_with(pool.clone(), test_settings_with(config), true).await;
    let mut events = Vec::new();
    for i in 0..100 {
        if i < 10 {
            events.push(sample("a", i, 5.0 + (i % 3) as f64));
        }
        events.push(sample("b", i, 7.0 + (i % 4) as f64));
        events.push(sample("c", i, 9.0 + (i % 5) as f64));
    }
    let seq = app.ingest(&events).await;
    app.wait_for("anomalies", seq).await;
    assert_eq!(watched(&app).await, series_ids(&["a", "b", "c"]));

    // `a` has been quiet for 20 minutes (its last point at minute 9), under the hour: `d`, the
    // fourth series, is not watched.
    assert_eq!(
        after(&app, sample("d", 29, 1.0)).await,
        series_ids(&["a", "b", "c"])
    );

    // At minute 100 `a` has been quiet for 91 minutes: `d` takes its place, and `a`'s points
    // go with it.
    assert_eq!(
        after(&app, sample("d", 100, 1.0)).await,
        series_ids(&["b", "c", "d"])
    );
    let (status, r) = app
        .get("/v1/series/metric:ops:a%7Bhost=%22a%22%7D/scores")
        .await;
    assert_eq!(status, 404, "{r}");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM anomalies.points")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 100 + 100 + 1, "the points of b, c and d only");

    // After a restart (the memory reloaded), the next one goes the same way: `b` and `c` are
    // equally idle (minute 99), and the smaller id goes.
    app.stop_projections();
    app.start_projection("anomalies");
    assert_eq!(
        after(&app, sample("e", 200, 3.0)).await,
        series_ids(&["c", "d", "e"])
    );
    // `a` comes back as a new series, in the place of `c` (its last point the oldest).
    assert_eq!(
        after(&app, sample("a", 300, 5.0)).await,
        series_ids(&["a", "d", "e"])
    );
    let (_, r) = app
        .get("/v1/series/metric:ops:a%7Bhost=%22a%22%7D/scores")
        .await;
    assert_eq!(r["points"].as_array().map(Vec::len), Some(1), "{r}");

    // A replay forgets the same series and numbers the rest the same.
    let before = schema_digest(&pool, "anomalies").await;
    let report = app
        .kairos
        .replay("anomalies", &ReplayOptions::default(), None, |_| {})
        .await
        .unwrap();
    assert!(report.switched, "{report:?}");
    assert_eq!(schema_digest(&pool, "anomalies").await, before);
    app.cleanup().await;
}

#[sqlx::test(migrations = false)]
async fn resolved_alerts_are_kept_for_keep_alerts_days_of_series_time(pool: PgPool) {
    let config = "[anomalies]\nkeep_alerts_days = 1\nresolve_points = 3\n";
    let app = spawn_app_with(pool, test_settings_with(config), true).await;
    // A steady cycle with a spike at point 400, which raises an alert that then resolves.
    let mut events: Vec<Value> = (0..500)
        .map(|i| {
            let x = i as f64;
            let spike = if i == 400 { 60.0 } else { 0.0 };
            sample("queue.depth", i, 50.0 + 10.0 * (x / 20.0).sin() + spike)
        })
        .collect();
    let seq = app.ingest(&events).await;
    app.wait_for("anomalies", seq).await;
    let resolved = |r: &Value| r["alerts"].as_array().map_or(0, Vec::len);
    let (_, r) = app.get("/v1/anomalies?status=resolved").await;
    assert_eq!(resolved(&r), 1, "the spike's alert, resolved: {r}");
    let resolved_at: DateTime<Utc> = r["alerts"][0]["resolved_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    // Points up to just under a day after it resolved keep it; the first a day after drops it.
    let minutes = |t: DateTime<Utc>| (t - base()).num_minutes() as usize;
    let day = minutes(resolved_at) + 24 * 60;
    events = vec![sample("queue.depth", day - 1, 50.0)];
    let seq = app.ingest(&events).await;
    app.wait_for("anomalies", seq).await;
    let (_, r) = app.get("/v1/anomalies?status=resolved").await;
    assert_eq!(resolved(&r), 1, "{r}");
    let seq = app.ingest(&[sample("queue.depth", day + 1, 50.0)]).await;
    app.wait_for("anomalies", seq).await;
    let (_, r) = app.get("/v1/anomalies?status=resolved").await;
    assert_eq!(resolved(&r), 0, "{r}");
    app.cleanup().await;
}

#[sqlx::test(migrations = false)]
async fn a_resolved_alert_whose_limit_waits_for_an_acknowledgement_is_kept(pool: PgPool) {
    let config = CONFIG.replacen("[anomalies]\n", "[anomalies]\nkeep_alerts_days = 1\n", 1);
    let app = spawn_app_with(pool, test_settings_with(&config), true).await;
    let (id, _) = raise_cost_alert(&app).await;
    // Three days later: the silence resolved the alert (reason `gap`) more than a day before
    // the newest point, but its lowered limit waits for an admin, so it stays.
    let later = 223 + 3 * 24 * 60;
    let mut events = calls("beta", "shop", later, 5, 0, "0.0010");
    events.extend(calls("beta", "shop", later + 1, 5, 0, "0.0010"));
    let seq = app.ingest(&events).await;
    app.wait_for("anomalies", seq).await;
    let listed = |r: &Value| -> Vec<Value> {
        r["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["id"] == json!(id))
            .cloned()
            .collect()
    };
    let (_, r) = app.get("/v1/anomalies?status=resolved").await;
    assert_eq!(listed(&r).len(), 1, "{r}");
    assert_eq!(listed(&r)[0]["resolve_reason"], "gap", "{r}");
    // The acknowledgement lifts the limit; then the alert is past its retention.
    let (status, ack) = app
        .post_json(&format!("/v1/anomalies/{id}/acknowledge"), &json!({}))
        .await;
    assert_eq!(status, 202, "{ack}");
    let seq = ack["seq"].as_u64().unwrap();
    let ask = json!({"project": "shop", "input_tokens": 1000, "expected_output_tokens": 200});
    let (status, r) = app
        .post_json(&format!("/v1/route?min_seq={seq}"), &ask)
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["budget"]["limit"], "100.00", "{r}");
    let (_, r) = app.get(&format!("/v1/anomalies?min_seq={seq}")).await;
    assert!(listed(&r).is_empty(), "{r}");
    app.cleanup().await;
}
