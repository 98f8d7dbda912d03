//! Point-in-time reads: the budget and the audit log `as_of` an instant equal a brute-force
//! recomputation from the raw events the stream held at that instant.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::SecondsFormat;
use kairos_events::Clock;
use kairos_events::{Event, Money};
use kairos_tests::{budget_set, instants, llm_call, spawn_app_at, test_settings};
use serde_json::Value;
use sqlx::PgPool;

#[sqlx::test(migrations = false)]
async fn as_of_answers_equal_a_recomputation_from_raw_events(pool: PgPool) {
    let mut settings = test_settings();
    settings.nats.duplicate_window_secs = 1;
    settings.projections.snapshot_every = 400;
    let app = spawn_app_at(pool.clone(), settings, true, Clock::system()).await;
    let mut sent = Vec::new();
    for chunk in 0..30 {
        let mut batch: Vec<Value> = (0..100)
            .map(|i| {
                let n = chunk * 100 + i;
                llm_call(
                    &format!("c{n}"),
                    &format!("p{}", n % 3),
                    &format!("0.{:04}", (n * 7919) % 10_000),
                )
            })
            .collect();
        if chunk % 7 == 3 {
            batch.push(budget_set(
                &format!("b{chunk}"),
                &format!("p{}", chunk % 3),
                &format!("{}", 10 + chunk),
                70,
            ));
        }
        if chunk == 15 {
            // Retries of earlier events after the duplicate window: stored again, never counted.
            tokio::time::sleep(Duration::from_millis(1_200)).await;
            batch.extend(sent.iter().step_by(37).cloned().collect::<Vec<Value>>());
        }
        app.ingest(&batch).await;
        sent.extend(batch);
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let last = app.kairos.bus.last_seq().await.unwrap().0;
    app.wait_for("budgets", last).await;
    let snapshots: i64 =
        sqlx::query_scalar("SELECT count(*) FROM kairos.snapshots WHERE projection = 'budgets'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(snapshots >= 5, "snapshots were taken ({snapshots})");

    // The raw stream, with the time each event was stored.
    let raw = app.stored_events().await;
    let (first, end) = (raw[0].0, raw[raw.len() - 1].0);
    for at in instants(first, end, 20, 0x2545_f491_4f6c_dd1d) {
        // Brute force: distinct calls and the latest limit among events stored by `at`.
        let mut seen = HashSet::new();
        let mut spent: HashMap<String, (Money, u64)> = HashMap::new();
        let mut limit: HashMap<String, String> = HashMap::new();
        for (stored, _, e) in raw.iter().filter(|(t, _, _)| *t <= at) {
            let d = &e.json()["data"];
            // Identity and audit events (the bootstrap admin, each request's record) name no project.
            let Some(project) = d["project"].as_str().map(str::to_owned) else {
                continue;
            };
            match e.event_type().as_str() {
                "kairos.llm.call.completed.v1"
                    if seen.insert((e.source().to_owned(), e.id().to_owned())) =>
                {
                    let s = spent.entry(project).or_insert((Money::ZERO, 0));
                    s.0 =
                        s.0.checked_add(Money::from_json(&d["cost"]).unwrap())
                            .unwrap();
                    s.1 += 1;
                }
                "kairos.budget.set.v1" => {
                    limit.insert(
                        project,
                        Money::from_json(&d["monthly_limit"]).unwrap().to_string(),
                    );
                }
                _ => {}
            }
            let _ = stored;
        }
        for p in ["p0", "p1", "p2"] {
            let t = at.to_rfc3339_opts(SecondsFormat::Nanos, true);
            let (status, b) = app
                .get(&format!("/v1/projects/{p}/budget?period=2026-11&as_of={t}"))
                .await;
            match spent.get(p) {
                None if !limit.contains_key(p) => assert_eq!(status, 404, "{p} at {t}: {b}"),
                expected => {
                    assert_eq!(status, 200, "{p} at {t}: {b}");
                    let (money, calls) = expected.copied().unwrap_or((Money::ZERO, 0));
                    assert_eq!(b["spent"], Value::String(money.to_string()), "{p} at {t}");
                    assert_eq!(b["calls"], Value::from(calls), "{p} at {t}");
                    assert_eq!(
                        b["limit"].as_str(),
                        limit.get(p).map(String::as_str),
                        "{p} at {t}"
                    );
                }
            }
        }
    }
    // The list answers the same as the single reads, at the last instant.
    let t = end.to_rfc3339_opts(SecondsFormat::Nanos, true);
    let (status, list) = app
        .get(&format!("/v1/budgets?period=2026-11&as_of={t}"))
        .await;
    assert_eq!(status, 200, "{list}");
    for b in list["budgets"].as_array().unwrap() {
        let p = b["project"].as_str().unwrap();
        let (_, one) = app
            .get(&format!("/v1/projects/{p}/budget?period=2026-11&as_of={t}"))
            .await;
        assert_eq!(&one, b);
        let (_, now) = app
            .get(&format!("/v1/projects/{p}/budget?period=2026-11"))
            .await;
        assert_eq!(
            one["spent"], now["spent"],
            "at the end, as_of equals the live answer"
        );
    }
    // The sequence an instant maps to, around the places snapshots record (the stream keeps
    // nanoseconds, PostgreSQL microseconds) and at random instants: always the last event
    // stored at or before it.
    let marks: Vec<(i64, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT seq, stored_at FROM kairos.snapshots WHERE stored_at IS NOT NULL")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(marks.len() >= 5, "snapshots record their time: {marks:?}");
    let ns = chrono::Duration::nanoseconds(1);
    let mut checked = instants(first, end, 10, 0x9e37_79b9);
    for (seq, recorded) in marks.iter().take(4) {
        let stored = raw.iter().find(|(_, s, _)| *s as i64 == *seq).unwrap().0;
        checked.extend([*recorded, stored, stored - ns, stored + ns]);
    }
    for at in checked {
        let expected = raw
            .iter()
            .filter(|(t, _, _)| *t <= at)
            .map(|(_, s, _)| *s)
            .max();
        let t = at.to_rfc3339_opts(SecondsFormat::Nanos, true);
        let (status, b) = app
            .get(&format!("/v1/budgets?period=2026-11&as_of={t}"))
            .await;
        assert_eq!(status, 200, "{b}");
        assert_eq!(
            b["as_of_seq"].as_u64(),
            Some(expected.unwrap_or(0)),
            "at {t}"
        );
    }
    let (status, b) = app.get("/v1/projects/p0/budget?as_of=yesterday").await;
    assert_eq!((status, b["error"]["field"].as_str()), (400, Some("as_of")));
    app.cleanup().await;
}

/// (seq, actor, action) of the audit entry an event stored on the stream makes, if any: the
/// brute-force counterpart of the audit projection for the events this test produces.
fn audited(seq: u64, e: &Event) -> Option<(u64, String, String)> {
    let d = &e.json()["data"];
    let s = |k: &str| d[k].as_str().unwrap_or_default().to_owned();
    match e.event_type().as_str() {
        // Recorded by Kairos: the member it names. Reported by a producer: the producer is the
        // actor (who it says acted is its claim).
        "kairos.user.action.v1" if e.source().starts_with("kairos/") => {
            Some((seq, s("actor"), s("action")))
        }
        "kairos.user.action.v1" => Some((seq, e.source().to_owned(), s("action"))),
        "kairos.budget.set.v1" => Some((seq, e.source().to_owned(), "budget.set".into())),
        "kairos.member.joined.v1" => Some((seq, s("actor"), "member.join".into())),
        _ => None,
    }
}

#[sqlx::test(migrations = false)]
async fn audit_as_of_equals_a_recomputation_from_raw_events(pool: PgPool) {
    let app = spawn_app_at(pool, test_settings(), true, Clock::system()).await;
    for round in 0..12 {
        let mut batch: Vec<Value> = (0..20)
            .map(|i| {
                let n = round * 20 + i;
                serde_json::json!({"specversion": "1.0", "id": format!("a{n}"), "source": "console",
                    "type": "kairos.user.action.v1", "subject": "acme",
                    "data": {"project": "acme", "actor": format!("user{}", n % 4), "action": "prompt.update",
                             "resource": format!("prompt:{n}"), "outcome": if n % 6 == 0 { "denied" } else { "success" }}})
            })
            .collect();
        batch.push(llm_call(&format!("c{round}"), "acme", "0.01"));
        if round % 4 == 1 {
            batch.push(budget_set(&format!("b{round}"), "acme", "5", 80));
        }
        app.ingest(&batch).await;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let last = app.kairos.bus.last_seq().await.unwrap().0;
    app.wait_for("audit", last).await;
    let raw = app.stored_events().await;
    let (first, end) = (raw[0].0, raw[raw.len() - 1].0);
    for at in instants(first, end, 20, 0x1234_5678_9abc_def1) {
        let mut expected: Vec<(u64, String, String)> = raw
            .iter()
            .filter(|(stored, _, _)| *stored <= at)
            .filter_map(|(_, seq, e)| audited(*seq, e))
            .collect();
        expected.reverse(); // newest first
        let t = at.to_rfc3339_opts(SecondsFormat::Nanos, true);
        let (status, page) = app.get(&format!("/v1/audit?as_of={t}&limit=1000")).await;
        assert_eq!(status, 200, "{page}");
        let got: Vec<(u64, String, String)> = page["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["seq"].as_u64().unwrap(),
                    e["actor"].as_str().unwrap().to_owned(),
                    e["action"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert!(!expected.is_empty() || got.is_empty());
        assert_eq!(got, expected, "audit as of {t}");
    }
    app.cleanup().await;
}
