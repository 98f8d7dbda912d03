//! The command path: admin commands are decided against the events of their own aggregate and
//! appended with optimistic concurrency, so they neither wait for a projection nor for the rest
//! of the stream. Here every projection is stopped and LLM calls pour in while a hundred admin
//! commands arrive at once; each must succeed, reads must keep answering, and the database pool
//! must keep connections free. (How fast: `kairos bench`, "admin commands under an ingest
//! flood".)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use kairos_tests::{llm_call, send, spawn_app_with, test_settings};
use serde_json::{Value, json};
use sqlx::PgPool;

#[sqlx::test(migrations = false)]
async fn admin_commands_succeed_while_every_projection_is_stopped_and_events_pour_in(pool: PgPool) {
    let mut settings = test_settings();
    // The admin issues itself 25 keys here: more than the default cap.
    settings.auth.max_keys_per_member = 100;
    let mut app = spawn_app_with(pool.clone(), settings, false).await;
    // Members whose roles change, while the access projection still runs.
    let mut members = Vec::new();
    for i in 0..25 {
        let (status, inv) = app
            .post_json(
                "/v1/invitations",
                &json!({"email": format!("m{i}@example.com"), "role": "viewer"}),
            )
            .await;
        assert_eq!(status, 201, "{inv}");
        let (status, joined) = send(
            reqwest::Client::new()
                .post(format!("{}{}", app.url, inv["accept"].as_str().unwrap()))
                .json(&json!({"token": inv["token"]})),
        )
        .await;
        assert_eq!(status, 201, "{joined}");
        members.push(joined["member_id"].as_str().unwrap().to_owned());
    }
    app.stop_access();

    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let (http, url, stop) = (app.http.clone(), app.url.clone(), stop.clone());
        tokio::spawn(async move {
            let mut sent = 0usize;
            while !stop.load(Ordering::Relaxed) && sent < 200_000 {
                let batch: Vec<Value> = (0..500)
                    .map(|i| llm_call(&format!("flood-{}", sent + i), "flooded", "0.001"))
                    .collect();
                let r = http
                    .post(format!("{url}/v1/events"))
                    .header("content-type", "application/cloudevents-batch+json")
                    .body(serde_json::to_vec(&batch).unwrap())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 202);
                sent += batch.len();
            }
            sent
        })
    };
    let reads_failed = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (http, url, stop, failed) = (
            app.http.clone(),
            app.url.clone(),
            stop.clone(),
            reads_failed.clone(),
        );
        tokio::spawn(async move {
            let mut reads = 0;
            while !stop.load(Ordering::Relaxed) {
                let r = http.get(format!("{url}/v1/me")).send().await;
                if !r.is_ok_and(|r| r.status().as_u16() == 200) {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                reads += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            reads
        })
    };
    let max = app.kairos.settings.database.max_connections;
    let sampler = {
        let (pool, stop) = (app.kairos.pool.clone(), stop.clone());
        tokio::spawn(async move {
            let mut exhausted = 0;
            while !stop.load(Ordering::Relaxed) {
                if pool.size() >= max && pool.num_idle() == 0 {
                    exhausted += 1;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            exhausted
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    let commands = (0..100).map(|i| {
        let (app, members) = (&app, &members);
        async move {
            let n = i / 4;
            match i % 4 {
                0 => {
                    app.post_json(
                        "/v1/invitations",
                        &json!({"email": format!("new{n}@example.com"), "role": "developer"}),
                    )
                    .await
                }
                1 => {
                    app.put_json(
                        &format!("/v1/members/{}/role", members[n]),
                        &json!({"role": "developer"}),
                    )
                    .await
                }
                2 => {
                    app.post_json("/v1/api-keys", &json!({"name": format!("key {n}")}))
                        .await
                }
                _ => {
                    app.put_json(
                        &format!("/v1/projects/cmd-{n}/budget"),
                        &json!({"monthly_limit": format!("{}.00", 10 + n)}),
                    )
                    .await
                }
            }
        }
    });
    let answers = futures_util::future::join_all(commands).await;
    stop.store(true, Ordering::Relaxed);
    let flooded = flood.await.unwrap();
    let reads = reader.await.unwrap();
    let exhausted = sampler.await.unwrap();

    for (i, (status, body)) in answers.iter().enumerate() {
        assert!(
            (200..300).contains(status),
            "command {i} answered {status}: {body}"
        );
        assert!(body["seq"].as_u64().is_some_and(|s| s > 0), "{body}");
    }
    assert!(flooded >= 500, "events flowed meanwhile ({flooded})");
    assert!(reads > 0);
    assert_eq!(
        reads_failed.load(Ordering::Relaxed),
        0,
        "every read answered"
    );
    assert_eq!(exhausted, 0, "the pool always had a connection free");

    // What the commands appended is what the access projection then folds.
    app.start_access();
    let last = app.kairos.bus.last_seq().await.unwrap().0;
    app.wait_for("access", last).await;
    let developers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM access.members WHERE role = 'developer' AND status = 'active'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(developers, 25);
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM access.invitations WHERE accepted_at IS NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(pending, 25);
    let (_, keys) = app.get(&format!("/v1/api-keys?min_seq={last}")).await;
    // The bootstrap admin's first key and the 25 issued.
    assert_eq!(
        keys["api_keys"].as_array().map(Vec::len),
        Some(26),
        "{keys}"
    );
    app.cleanup().await;
}

/// Commands that queue on one aggregate while another appends are decided together, each on
/// the state with the ones before it folded in, and appended as one event: here twenty
/// reservations of $1 arrive at once on a $5 budget. Five are admitted, in one
/// `kairos.budget.reserved_batch.v1`, and the fifteen others refused, by the aggregate and then
/// by every later command; the budgets projection folds the batch as five reservations.
#[sqlx::test(migrations = false)]
async fn commands_that_arrive_together_are_appended_as_one_event(pool: PgPool) {
    use kairos_budgets::BudgetSetting;
    use kairos_events::types::{BUDGET_RESERVED, Reserved};
    use kairos_events::{Emit, Money, ProjectId};
    use kairos_runtime::Decision;

    let app = kairos_tests::spawn_app(pool.clone()).await;
    let (status, set) = app
        .put_json("/v1/projects/grp/budget", &json!({"monthly_limit": "5"}))
        .await;
    assert_eq!(status, 202, "{set}");
    let project = ProjectId::parse("grp").unwrap();
    let store = kairos_budgets::BudgetCommands::new(app.kairos.bus.clone()).of(&project);
    let one = Money::parse("1").unwrap();
    let reserve = |i: usize| {
        let (store, project) = (store.clone(), project.clone());
        async move {
            store
                .execute_grouped(move |b: &BudgetSetting| {
                    let limit = b.budget.as_ref().expect("a budget").monthly_limit;
                    let held = b.reserved_in("2026-11");
                    if held.checked_add(one).unwrap() > limit {
                        return Err(format!("{held} of {limit} held"));
                    }
                    let data = serde_json::to_value(Reserved {
                        project: project.clone(),
                        reservation_id: format!("r{i}"),
                        period: "2026-11".into(),
                        model: "m".into(),
                        amount: one,
                        expires_at: "2026-11-20T13:00:00Z".parse().unwrap(),
                    })
                    .unwrap();
                    let event = Emit::new(BUDGET_RESERVED, "kairos/router", data)
                        .id(format!("reserved/r{i}"))
                        .subject("grp")
                        .time("2026-11-20T12:00:00Z".parse().unwrap())
                        .build()
                        .unwrap();
                    Ok(Decision::append(event, i))
                })
                .await
        }
    };
    // All twenty queue before the first group is taken (the test runs on one thread).
    let done = futures_util::future::join_all((0..20).map(reserve)).await;
    let admitted: Vec<_> = done.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(admitted.len(), 5, "{done:?}");
    let seqs: std::collections::HashSet<_> = admitted.iter().map(|e| e.seq).collect();
    assert_eq!(seqs.len(), 1, "appended as one event: {seqs:?}");
    let seq = admitted[0].seq.unwrap();
    let refused = done
        .iter()
        .filter(|r| matches!(r, Err(kairos_runtime::CommandError::Rejected(_))))
        .count();
    assert_eq!(refused, 15, "{done:?}");
    let stored = app.kairos.bus.payload_at(seq).await.unwrap().unwrap();
    let event = kairos_events::Event::from_slice(&stored).unwrap();
    assert_eq!(
        event.event_type().as_str(),
        "kairos.budget.reserved_batch.v1"
    );
    assert_eq!(
        event.json()["data"]["reservations"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    // The aggregate refuses what comes later, and the projection holds the five.
    assert!(reserve(99).await.is_err());
    app.wait_for("budgets", seq.0).await;
    let (status, b) = app.get("/v1/projects/grp/budget?period=2026-11").await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(
        (b["reserved"].as_str(), b["available"].as_str()),
        (Some("5.00"), Some("0.00")),
        "{b}"
    );
    app.cleanup().await;
}
