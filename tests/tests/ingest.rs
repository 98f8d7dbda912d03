//! The HTTP door: every encoding, and malformed, wrong-typed, oversized and hostile input. Bad
//! input gets a precise 4xx and loses nothing: good events around it are stored and applied.

use kairos_tests::{llm_call, spawn_app};
use serde_json::{Value, json};
use sqlx::PgPool;

const STRUCTURED: &str = "application/cloudevents+json";
const BATCH: &str = "application/cloudevents-batch+json";

fn body(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("serialisable")
}

#[sqlx::test(migrations = false)]
async fn structured_binary_and_batch_are_stored_and_applied(pool: PgPool) {
    let app = spawn_app(pool).await;

    let (status, r) = app
        .post_events(STRUCTURED, body(&llm_call("s-1", "acme", "0.25")))
        .await;
    assert_eq!(status, 202, "{r}");
    assert_eq!(r["accepted"], 1);
    let first_seq = r["results"][0]["seq"].as_u64().unwrap();
    assert_eq!(r["results"][0]["id"], "s-1");
    assert_eq!(r["results"][0]["duplicate"], false);

    // Binary mode: attributes in percent-encoded ce-* headers, data in the body.
    let data = llm_call("x", "acme", "0.5")["data"].clone();
    let resp = app
        .http
        .post(format!("{}/v1/events", app.url))
        .header("content-type", "application/json")
        .header("ce-specversion", "1.0")
        .header("ce-id", "b%C3%A9-1")
        .header("ce-source", "test/binary")
        .header("ce-type", "kairos.llm.call.completed.v1")
        .header("ce-subject", "acme")
        .header("ce-time", "2026-11-10T12:00:00Z")
        .body(body(&data))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let r: Value = resp.json().await.unwrap();
    assert_eq!(r["results"][0]["id"], "bé-1");

    // Batch: the good ones are accepted, the bad one is reported with its index and field.
    let mut bad = llm_call("b-2", "acme", "1");
    bad["data"]["input_tokens"] = json!("ten");
    let batch = json!([
        llm_call("b-1", "acme", "1"),
        bad,
        llm_call("b-3", "acme", "0.000000001")
    ]);
    let (status, r) = app.post_events(BATCH, body(&batch)).await;
    assert_eq!(status, 202, "{r}");
    assert_eq!(
        (r["accepted"].as_u64(), r["rejected"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(r["results"][1]["status"], "rejected");
    assert_eq!(r["results"][1]["error"]["field"], "data.input_tokens");
    assert_eq!(r["results"][1]["error"]["code"], "schema_violation");
    let last = r["results"][2]["seq"].as_u64().unwrap();
    assert!(last > first_seq);

    // The same event again (a producer retry) is acknowledged as a duplicate with its old seq.
    let (status, r) = app
        .post_events(STRUCTURED, body(&llm_call("s-1", "acme", "0.25")))
        .await;
    assert_eq!(status, 202);
    assert_eq!(r["results"][0]["duplicate"], true);
    assert_eq!(r["results"][0]["seq"].as_u64(), Some(first_seq));

    let (status, b) = app
        .get(&format!(
            "/v1/projects/acme/budget?period=2026-11&min_seq={last}"
        ))
        .await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["spent"], "1.750000001");
    assert_eq!(b["calls"], 4);
    assert_eq!(b["limit"], Value::Null);
    app.cleanup().await;
}

#[sqlx::test(migrations = false)]
async fn bad_events_get_a_precise_400_naming_the_field(pool: PgPool) {
    let app = spawn_app(pool).await;
    let base = llm_call("e-1", "acme", "0.1");
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = base.clone();
        f(&mut v);
        v
    };
    let cases: Vec<(Value, &str, Option<&str>)> = vec![
        (
            with(&|v| {
                v.as_object_mut().unwrap().remove("source");
            }),
            "missing_attribute",
            Some("source"),
        ),
        (
            with(&|v| {
                v.as_object_mut().unwrap().remove("id");
            }),
            "missing_attribute",
            Some("id"),
        ),
        (
            with(&|v| v["id"] = json!(42)),
            "invalid_attribute",
            Some("id"),
        ),
        (
            with(&|v| v["id"] = json!("")),
            "invalid_attribute",
            Some("id"),
        ),
        (
            with(&|v| v["id"] = json!("x".repeat(10_000))),
            "invalid_attribute",
            Some("id"),
        ),
        (
            with(&|v| v["specversion"] = json!("0.3")),
            "unsupported_specversion",
            Some("specversion"),
        ),
        (
            with(&|v| v["time"] = json!("last tuesday")),
            "invalid_attribute",
            Some("time"),
        ),
        (
            with(&|v| v["subject"] = json!("acme.>")),
            "invalid_project",
            Some("subject"),
        ),
        (
            with(&|v| v["subject"] = json!("*")),
            "invalid_project",
            Some("subject"),
        ),
        (
            with(&|v| v["subject"] = json!("other")),
            "subject_mismatch",
            Some("subject"),
        ),
        (
            with(&|v| v["type"] = json!("kairos.LLM")),
            "invalid_attribute",
            Some("type"),
        ),
        (
            with(&|v| v["data"]["cost"] = json!("-0.5")),
            "schema_violation",
            Some("data.cost"),
        ),
        (
            with(&|v| v["data"]["cost"] = json!(true)),
            "schema_violation",
            Some("data.cost"),
        ),
        (
            with(&|v| v["data"]["status"] = json!("maybe")),
            "schema_violation",
            Some("data.status"),
        ),
        (
            with(&|v| v["data"]["latency_ms"] = json!(-1)),
            "schema_violation",
            Some("data.latency_ms"),
        ),
        (
            with(&|v| v["data"]["output_tokens"] = json!(1.5)),
            "schema_violation",
            Some("data.output_tokens"),
        ),
        (
            with(&|v| {
                v["data"].as_object_mut().unwrap().remove("model");
            }),
            "schema_violation",
            Some("data.model"),
        ),
        (
            with(&|v| v["data"]["model"] = json!("<script>alert(1)</script>".repeat(20))),
            "schema_violation",
            Some("data.model"),
        ),
        (
            with(&|v| v["data"]["injected"] = json!("'; DROP TABLE budgets.spend; --")),
            "schema_violation",
            Some("data.injected"),
        ),
        (
            with(&|v| v["Data"] = json!(1)),
            "invalid_attribute",
            Some("Data"),
        ),
        (
            with(&|v| v["ext"] = json!({"nested": 1})),
            "invalid_attribute",
            Some("ext"),
        ),
        (
            with(&|v| {
                v.as_object_mut().unwrap().remove("data");
            }),
            "missing_attribute",
            Some("data"),
        ),
        (json!([1, 2]), "invalid_event", None),
        (json!("just a string"), "invalid_event", None),
        (json!(null), "invalid_event", None),
    ];
    for (event, code, field) in cases {
        let (status, r) = app.post_events(STRUCTURED, body(&event)).await;
        assert_eq!(status, 400, "{event} -> {r}");
        assert_eq!(r["error"]["code"], code, "{r}");
        assert_eq!(r["error"]["field"].as_str(), field, "{r}");
        assert!(
            r["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty() && m.len() < 1000)
        );
    }
    // A number too precise to keep exactly is refused at the door, not rounded.
    let (status, r) = app
        .post_events(
            STRUCTURED,
            body(&llm_call("e-2", "acme", "0"))
                .into_iter()
                .collect::<Vec<u8>>(),
        )
        .await;
    assert_eq!(status, 202, "{r}");
    let raw = String::from_utf8(body(&llm_call("e-3", "acme", "X")))
        .unwrap()
        .replace("\"X\"", "0.0000000001");
    let (status, r) = app.post_events(STRUCTURED, raw).await;
    assert_eq!(status, 400, "{r}");
    assert_eq!(r["error"]["field"], "data.cost");

    // Nothing bad reached the stream.
    let stored = app.events_in("llm").await;
    assert_eq!(stored.len(), 1);
    app.cleanup().await;
}

#[sqlx::test(migrations = false)]
async fn malformed_oversized_and_unsupported_bodies(pool: PgPool) {
    let app = spawn_app(pool).await;
    for junk in [
        &b"{"[..],
        b"{\"specversion\": }",
        b"\xff\xfe",
        b"",
        b"nul\0l",
    ] {
        let (status, r) = app.post_events(STRUCTURED, junk.to_vec()).await;
        assert_eq!(status, 400, "{r}");
        assert_eq!(r["error"]["code"], "malformed_json", "{r}");
    }
    let (status, r) = app.post_events(BATCH, b"[{".to_vec()).await;
    assert_eq!(
        (status, r["error"]["code"].as_str()),
        (400, Some("malformed_json"))
    );
    let (status, r) = app.post_events(BATCH, b"{}".to_vec()).await;
    assert_eq!(
        (status, r["error"]["code"].as_str()),
        (400, Some("invalid_batch"))
    );
    let (status, r) = app.post_events(BATCH, b"[]".to_vec()).await;
    assert_eq!(
        (status, r["error"]["code"].as_str()),
        (400, Some("invalid_batch"))
    );

    // 10 MB: refused with 413 and a JSON error, whatever the encoding.
    let huge = format!("{{\"pad\": \"{}\"}}", "x".repeat(10 * 1024 * 1024));
    for ct in [STRUCTURED, BATCH, "application/json"] {
        let (status, r) = app.post_events(ct, huge.clone()).await;
        assert_eq!(status, 413, "{ct}");
        assert_eq!(r["error"]["code"], "payload_too_large");
    }
    // One event over the per-event limit inside an acceptable body.
    let mut big = llm_call("big", "acme", "1");
    big["pad"] = json!("y".repeat(300 * 1024));
    let (status, r) = app.post_events(STRUCTURED, body(&big)).await;
    assert_eq!(
        (status, r["error"]["code"].as_str()),
        (400, Some("event_too_large"))
    );

    // Too many events in one batch.
    let many: Vec<Value> = (0..5001)
        .map(|i| llm_call(&format!("m-{i}"), "acme", "0"))
        .collect();
    let (status, r) = app.post_events(BATCH, body(&json!(many))).await;
    assert_eq!(
        (status, r["error"]["code"].as_str()),
        (400, Some("batch_too_large"))
    );

    // All rejected: 400 with every reason.
    let (status, r) = app.post_events(BATCH, body(&json!([{"id": 1}, 5]))).await;
    assert_eq!(status, 400);
    assert_eq!(r["error"]["code"], "all_events_rejected");
    assert_eq!(r["results"].as_array().map(Vec::len), Some(2));

    let (status, r) = app.post_events("text/plain", b"hello".to_vec()).await;
    assert_eq!(
        (status, r["error"]["code"].as_str()),
        (415, Some("unsupported_media_type"))
    );

    // Binary mode with a body that is not JSON, or a broken percent-encoding.
    let resp = app
        .http
        .post(format!("{}/v1/events", app.url))
        .header("content-type", "application/octet-stream")
        .header("ce-specversion", "1.0")
        .header("ce-id", "bin")
        .header("ce-source", "s")
        .header("ce-type", "com.example.blob")
        .body(vec![0u8, 1, 2])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let resp = app
        .http
        .post(format!("{}/v1/events", app.url))
        .header("content-type", "application/json")
        .header("ce-specversion", "1.0")
        .header("ce-id", "bad%zz")
        .header("ce-source", "s")
        .header("ce-type", "com.example.x")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let r: Value = resp.json().await.unwrap();
    assert_eq!(r["error"]["field"], "id");

    // The server still works and nothing was stored.
    let (status, _) = app.get("/health/ready").await;
    assert_eq!(status, 200);
    assert!(app.events_in("llm").await.is_empty());
    app.cleanup().await;
}

#[sqlx::test(migrations = false)]
async fn unknown_types_are_kept_and_ignored_by_budgets(pool: PgPool) {
    let app = spawn_app(pool).await;
    let foreign = json!({"specversion": "1.0", "id": "f-1", "source": "elsewhere", "type": "com.example.deploy.v1",
                         "subject": "acme", "data": {"anything": [1, {"goes": true}]}});
    let future = json!({"specversion": "1.0", "id": "f-2", "source": "gw", "type": "kairos.llm.call.completed.v9",
                        "subject": "acme", "data": {"cost": "99"}});
    let seq = app
        .ingest(&[foreign, future, llm_call("c-1", "acme", "0.5")])
        .await;
    let (status, b) = app
        .get(&format!(
            "/v1/projects/acme/budget?period=2026-11&min_seq={seq}"
        ))
        .await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["spent"], "0.50");
    assert_eq!(b["calls"], 1);
    assert_eq!(
        app.events_in("ext").await.len(),
        1,
        "foreign types are kept on the stream"
    );
    assert_eq!(
        app.events_in("llm").await.len(),
        2,
        "unknown versions are kept too"
    );
    let cp = kairos_runtime::checkpoint(&app.kairos.pool, "budgets")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((cp.events_applied, cp.dead_lettered), (1, 0));
    app.cleanup().await;
}

#[sqlx::test(migrations = false)]
async fn unknown_routes_and_methods_answer_json(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (status, r) = app.get("/v2/nothing").await;
    assert_eq!(
        (status, r["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let r = app
        .http
        .delete(format!("{}/v1/events", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let r: Value = r.json().await.unwrap();
    assert_eq!(r["error"]["code"], "method_not_allowed");
    app.cleanup().await;
}

/// Sends `n` GETs of `path` with `client`; checks the security headers and the shape of each
/// 429; returns the statuses.
async fn hammer(
    app: &kairos_tests::TestApp,
    client: &reqwest::Client,
    path: &str,
    n: usize,
) -> Vec<u16> {
    let mut statuses = Vec::new();
    for _ in 0..n {
        let r = client
            .get(format!("{}{path}", app.url))
            .send()
            .await
            .unwrap();
        for (name, value) in [
            ("x-content-type-options", "nosniff"),
            ("x-frame-options", "DENY"),
            ("referrer-policy", "no-referrer"),
        ] {
            assert_eq!(r.headers()[name], value);
        }
        let status = r.status().as_u16();
        statuses.push(status);
        if status == 429 {
            let retry: u64 = r.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=2).contains(&retry), "{retry}");
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"]["code"], "rate_limited");
        }
    }
    statuses
}

#[sqlx::test(migrations = false)]
async fn clients_over_their_rate_get_429_and_security_headers_are_set(pool: PgPool) {
    let mut settings = kairos_tests::test_settings();
    settings.http.rate_limit_per_second = 5;
    settings.http.rate_limit_burst = 10;
    let app = kairos_tests::spawn_app_with(pool, settings, false).await;
    let passed = |s: &[u16], ok: u16| s.iter().filter(|x| **x == ok).count();
    // A second key of the admin's, and another member (the two requests spend two tokens of the
    // admin's bucket, the acceptance one of the address's).
    let (status, second) = app
        .post_json("/v1/api-keys", &json!({"name": "second"}))
        .await;
    assert_eq!(status, 201, "{second}");
    let second = kairos_tests::client(second["api_key"].as_str().unwrap());
    let other = kairos_tests::client(&app.join("vera@example.com", "viewer", None).await.1);

    // Per member: the admin's burst passes, then its rate; its second key shares the bucket (a
    // member cannot mint itself more), another member has its own.
    let first = hammer(&app, &app.http, "/v1/me", 30).await;
    assert!(
        (8..=13).contains(&passed(&first, 200)),
        "burst, then rate: {first:?}"
    );
    assert!(first.contains(&429));
    assert_eq!(hammer(&app, &second, "/v1/me", 1).await, vec![429]);
    assert_eq!(hammer(&app, &other, "/v1/me", 1).await, vec![200]);

    // Failed keys spend their address's bucket: guessing keys, a new one each time (each with
    // a fresh key bucket), soon gets 429, not 401.
    let mut guesses = Vec::new();
    for i in 0..30 {
        let guess = kairos_tests::client(&format!("kairos_{i:064}"));
        guesses.extend(hammer(&app, &guess, "/v1/me", 1).await);
    }
    let guesser = kairos_tests::client(&format!("kairos_{:064}", 99));
    assert!((9..=13).contains(&passed(&guesses, 401)), "{guesses:?}");
    assert!(guesses.contains(&429));
    // ... the same bucket requests without a key spend.
    let anonymous = reqwest::Client::new();
    let health = hammer(&app, &anonymous, "/health/live", 5).await;
    assert!(health.contains(&429), "{health:?}");
    // A key on a public route does not open another bucket.
    assert_eq!(hammer(&app, &guesser, "/health/live", 1).await, vec![429]);
    // And while the address is blocked for guessing, even a right key is refused unchecked.
    assert_eq!(hammer(&app, &second, "/v1/me", 1).await, vec![429]);
    app.cleanup().await;
}

/// A request no route answers spends its address's bucket, key or not: an `Authorization`
/// header does not make unknown routes unlimited.
#[sqlx::test(migrations = false)]
async fn unknown_routes_are_rate_limited_with_a_key_too(pool: PgPool) {
    let mut settings = kairos_tests::test_settings();
    settings.http.rate_limit_per_second = 5;
    settings.http.rate_limit_burst = 10;
    let app = kairos_tests::spawn_app_with(pool, settings, false).await;
    let statuses = hammer(&app, &app.http, "/v1/no-such-route", 30).await;
    assert!(
        (9..=13).contains(&statuses.iter().filter(|s| **s == 404).count()),
        "{statuses:?}"
    );
    assert!(statuses.contains(&429), "{statuses:?}");
    app.cleanup().await;
}

/// Behind a trusted proxy the client is the address the proxy forwarded: each client has its own
/// bucket and its own address in the audit log, and a forwarded address from anyone else is
/// not believed.
#[sqlx::test(migrations = false)]
async fn behind_a_trusted_proxy_each_client_is_its_forwarded_address(pool: PgPool) {
    let mut settings = kairos_tests::test_settings();
    settings.http.rate_limit_per_second = 5;
    settings.http.rate_limit_burst = 10;
    settings.http.trusted_proxies = vec!["127.0.0.0/8".into()];
    let app = kairos_tests::spawn_app_with(pool, settings, true).await;
    let from = |ip: &str| {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("x-forwarded-for", format!("6.6.6.6, {ip}").parse().unwrap());
        reqwest::Client::builder()
            .default_headers(h)
            .build()
            .unwrap()
    };
    let first = hammer(&app, &from("192.0.2.1"), "/health/live", 30).await;
    assert!(first.contains(&429), "{first:?}");
    assert_eq!(
        hammer(&app, &from("192.0.2.2"), "/health/live", 1).await,
        vec![200],
        "another client behind the proxy has its own bucket"
    );
    // The admin's write through the proxy is audited with the client's address.
    let mut h = reqwest::header::HeaderMap::new();
    h.insert("x-forwarded-for", "198.51.100.7".parse().unwrap());
    let (status, r) = kairos_tests::send(
        app.http
            .post(format!("{}/v1/events", app.url))
            .headers(h)
            .header("content-type", "application/cloudevents+json")
            .body(body(&llm_call("via-proxy", "acme", "1"))),
    )
    .await;
    assert_eq!(status, 202, "{r}");
    let last = app.kairos.bus.last_seq().await.unwrap().0;
    app.wait_for("audit", last).await;
    let (_, log) = app.get("/v1/audit?action=events.publish").await;
    assert_eq!(log["entries"][0]["ip"], "198.51.100.7", "{log}");
    app.cleanup().await;
}

#[sqlx::test(migrations = false)]
async fn concurrent_large_batches_are_all_acknowledged(pool: PgPool) {
    // Four batches of 5000 together exceed the 8192 publishes JetStream may have in flight: each
    // must still get its acknowledgements, not wait for the others forever.
    let app = kairos_tests::spawn_app_with(pool, kairos_tests::test_settings(), false).await;
    let bodies: Vec<Vec<u8>> = (0..4)
        .map(|b| {
            body(&json!(
                (0..5000)
                    .map(|i| llm_call(&format!("b{b}-{i}"), "acme", "0.01"))
                    .collect::<Vec<_>>()
            ))
        })
        .collect();
    let posts = bodies.into_iter().map(|b| app.post_events(BATCH, b));
    let answers = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        futures_util::future::join_all(posts),
    )
    .await
    .expect("no deadlock");
    for (status, r) in answers {
        assert_eq!((status, r["accepted"].as_u64()), (202, Some(5000)));
    }
    // The events, the bootstrap admin's joining and the audit record of each request.
    assert_eq!(app.kairos.bus.last_seq().await.unwrap().0, 20_000 + 1 + 4);
    app.cleanup().await;
}
