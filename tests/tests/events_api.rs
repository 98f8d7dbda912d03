//! `GET /v1/events`: the stream for auditors, paged by sequence, filtered by time, type, project.

use kairos_tests::{budget_set, llm_call, spawn_app};
use serde_json::Value;
use sqlx::PgPool;

#[sqlx::test(migrations = false)]
async fn events_page_by_sequence_and_filter(pool: PgPool) {
    let app = spawn_app(pool).await;
    let mut events: Vec<Value> = (0..250)
        .map(|i| llm_call(&format!("c{i}"), &format!("p{}", i % 5), "0.01"))
        .collect();
    events.push(budget_set("b1", "p1", "3", 50));
    let before = chrono::Utc::now();
    app.ingest(&events).await;
    let js = app.kairos.bus.jetstream();
    js.publish(format!("{}.events.llm.p2", app.prefix()), "not json".into())
        .await
        .unwrap()
        .await
        .unwrap();

    // Every event exactly once, in order, across pages.
    let mut seqs = Vec::new();
    let mut after: Option<u64> = None;
    loop {
        let path = match after {
            Some(a) => format!("/v1/events?limit=100&after={a}"),
            None => "/v1/events?limit=100".to_owned(),
        };
        let (status, page) = app.get(&path).await;
        assert_eq!(status, 200, "{page}");
        seqs.extend(
            page["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["seq"].as_u64().unwrap()),
        );
        match page["next_after"].as_u64() {
            Some(a) => after = Some(a),
            None => break,
        }
    }
    // The bootstrap admin (1), the 251 events, the audit record of their request, and the
    // message that is not JSON.
    assert_eq!(seqs, (1..=254).collect::<Vec<u64>>());

    let (_, page) = app.get("/v1/events?project=p1&limit=1000").await;
    let p1 = page["events"].as_array().unwrap();
    assert_eq!(p1.len(), 51);
    assert!(p1.iter().all(|e| e["event"]["subject"] == "p1"));
    let (_, page) = app.get("/v1/events?type=kairos.budget.set.v1").await;
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    let (_, page) = app.get("/v1/events?project=p2&limit=1000").await;
    let raw = page["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (raw["event"].clone(), raw["raw"].as_str()),
        (Value::Null, Some("not json"))
    );
    let t = before.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let (_, page) = app.get(&format!("/v1/events?to={t}")).await;
    assert_eq!(
        page["events"].as_array().unwrap().len(),
        1,
        "only the bootstrap admin was stored before {t}"
    );
    let (_, page) = app.get(&format!("/v1/events?from={t}&limit=5")).await;
    assert_eq!(page["events"][0]["seq"], 2);

    app.assert_bad_queries(&[
        ("/v1/events?limit=0", "limit"),
        ("/v1/events?limit=1001", "limit"),
        ("/v1/events?after=-3", "after"),
        ("/v1/events?from=noon", "from"),
        ("/v1/events?to=2026-13-01T00:00:00Z", "to"),
        ("/v1/events?project=a.b", "project"),
    ])
    .await;
    app.cleanup().await;
}

/// A page is written as it is read, not built whole first: 40 events of 200 kB each (a page of
/// 1,000 such would be 200 MB held at once) come back chunked, with no length known up front,
/// each whole and in order, and the page still ends with its `next_after`.
#[sqlx::test(migrations = false)]
async fn a_page_of_large_events_is_streamed(pool: PgPool) {
    let app = kairos_tests::spawn_app_with(pool, kairos_tests::test_settings(), false).await;
    let js = app.kairos.bus.jetstream();
    let pad = "x".repeat(200_000);
    for i in 0..40 {
        let body = serde_json::json!({"type": "big", "n": i, "pad": pad});
        js.publish(
            format!("{}.events.llm.p9", app.prefix()),
            body.to_string().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let answer = app
        .http
        .get(format!("{}/v1/events?project=p9&limit=1000", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert!(
        answer.content_length().is_none(),
        "a length up front means the page was built whole: {:?}",
        answer.headers()
    );
    assert_eq!(
        answer.headers()["transfer-encoding"],
        "chunked",
        "{:?}",
        answer.headers()
    );
    let page: Value = answer.json().await.unwrap();
    let events = page["events"].as_array().unwrap();
    let ns: Vec<u64> = events
        .iter()
        .map(|e| e["event"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, (0..40).collect::<Vec<u64>>());
    assert!(events.iter().all(|e| e["event"]["pad"] == pad.as_str()));
    assert_eq!(page["next_after"], Value::Null);

    // A page cut by its limit names where the next one starts, the streamed way too.
    let (status, page) = app.get("/v1/events?project=p9&limit=3").await;
    assert_eq!(status, 200, "{page}");
    let seqs: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs.len(), 3);
    assert_eq!(page["next_after"].as_u64(), seqs.last().copied());
    // Nothing matches: an empty page, whole.
    let (status, page) = app.get("/v1/events?type=nothing-has-this").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["events"], serde_json::json!([]));
    app.cleanup().await;
}
