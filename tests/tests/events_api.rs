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
