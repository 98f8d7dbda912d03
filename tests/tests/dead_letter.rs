//! Poison published straight to NATS goes to the dead-letter subject with its reason; the events
//! behind it are applied and the line never stops.

use async_nats::HeaderMap;
use kairos_tests::{llm_call, spawn_app};
use serde_json::json;
use sqlx::PgPool;

#[sqlx::test(migrations = false)]
async fn poison_goes_to_the_dead_letter_subject_and_the_rest_is_applied(pool: PgPool) {
    let app = spawn_app(pool).await;
    let js = app.kairos.bus.jetstream().clone();
    let subject = format!("{}.events.llm.acme", app.prefix());
    let too_precise = serde_json::to_string(&llm_call("p-3", "acme", "X"))
        .unwrap()
        .replace("\"X\"", "0.0000000001");
    let mut wrong_type = llm_call("p-2", "acme", "1");
    wrong_type["data"]["input_tokens"] = json!("lots");
    let poison: Vec<(Vec<u8>, &str)> = vec![
        (b"{not json".to_vec(), "malformed_json"),
        (serde_json::to_vec(&wrong_type).unwrap(), "schema_violation"),
        (too_precise.into_bytes(), "invalid_amount"),
        (b"\x00\x01\x02 binary garbage".to_vec(), "malformed_json"),
        (
            serde_json::to_vec(&json!({"specversion": "1.0"})).unwrap(),
            "missing_attribute",
        ),
        // A valid event of another project, stored under acme's subject.
        (
            serde_json::to_vec(&llm_call("p-6", "other", "1")).unwrap(),
            "subject_mismatch",
        ),
    ];
    let mut expected_total = kairos_events::Money::ZERO;
    let mut last = 0;
    for (i, (payload, _)) in poison.iter().enumerate() {
        // A good event before and after each poison message.
        for id in [format!("good-{i}-a"), format!("good-{i}-b")] {
            let good = serde_json::to_vec(&llm_call(&id, "acme", "0.10")).unwrap();
            js.publish(subject.clone(), good.into())
                .await
                .unwrap()
                .await
                .unwrap();
            expected_total = expected_total
                .checked_add(kairos_events::Money::parse("0.10").unwrap())
                .unwrap();
        }
        let ack = js
            .publish_with_headers(subject.clone(), HeaderMap::new(), payload.clone().into())
            .await
            .unwrap()
            .await
            .unwrap();
        last = ack.sequence;
    }
    let good = serde_json::to_vec(&llm_call("good-last", "acme", "0.10")).unwrap();
    last = last.max(
        js.publish(subject.clone(), good.into())
            .await
            .unwrap()
            .await
            .unwrap()
            .sequence,
    );
    expected_total = expected_total
        .checked_add(kairos_events::Money::parse("0.10").unwrap())
        .unwrap();

    app.wait_for("budgets", last).await;
    let (status, b) = app.get("/v1/projects/acme/budget?period=2026-11").await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["spent"], expected_total.to_string());
    assert_eq!(
        b["calls"],
        2 * poison.len() + 1,
        "two good events around each poison, one last"
    );

    let dlq = app
        .read_stream(
            &app.kairos.bus.dlq_stream_name(),
            &format!("{}.dlq.budgets", app.prefix()),
        )
        .await;
    assert_eq!(dlq.len(), poison.len());
    for (m, (payload, code)) in dlq.iter().zip(&poison) {
        let h = m.headers.as_ref().expect("dead letters carry headers");
        assert_eq!(h.get("Kairos-Dlq-Code").map(|v| v.as_str()), Some(*code));
        assert!(
            h.get("Kairos-Dlq-Reason")
                .is_some_and(|r| !r.as_str().is_empty())
        );
        assert_eq!(
            h.get("Kairos-Original-Subject").map(|v| v.as_str()),
            Some(subject.as_str())
        );
        assert!(
            h.get("Kairos-Original-Seq")
                .is_some_and(|s| s.as_str().parse::<u64>().is_ok())
        );
        assert_eq!(&m.payload[..], &payload[..], "the original bytes are kept");
    }
    let cp = kairos_runtime::checkpoint(&app.kairos.pool, "budgets")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cp.dead_lettered, poison.len() as u64);
    let (_, metrics) = (
        200,
        app.http
            .get(format!("{}/metrics", app.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    assert!(
        metrics.contains(&format!(
            "kairos_projection_dead_lettered_total{{projection=\"budgets\"}} {}",
            poison.len()
        )),
        "{metrics}"
    );
    // The audit projection does not read LLM calls: it neither folds nor judges them.
    app.wait_for("audit", last).await;
    let audit = kairos_runtime::checkpoint(&app.kairos.pool, "audit")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((audit.dead_lettered, audit.events_applied > 0), (0, true));
    assert!(
        metrics.contains("kairos_projection_lag_events{projection=\"budgets\"} 0"),
        "{metrics}"
    );
    app.cleanup().await;
}
