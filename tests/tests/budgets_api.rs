//! Setting and reading budgets over HTTP: writes are events, reads wait for them with min_seq,
//! bad input gets a 4xx naming the field, thresholds are announced once.

use kairos_tests::{llm_call, spawn_app, spawn_app_with, test_settings};
use serde_json::{Value, json};
use sqlx::PgPool;

#[sqlx::test(migrations = false)]
async fn a_budget_set_over_http_is_read_back_with_its_sequence(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (status, r) = app
        .put_json(
            "/v1/projects/acme/budget",
            &json!({"monthly_limit": "10.00", "warn_at_percent": 50, "on_exceeded": "block"}),
        )
        .await;
    assert_eq!(status, 202, "{r}");
    let seq = r["seq"].as_u64().unwrap();
    let (status, b) = app
        .get(&format!("/v1/projects/acme/budget?min_seq={seq}"))
        .await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["limit"], "10.00");
    assert_eq!(b["spent"], "0.00");
    assert_eq!(b["remaining"], "10.00");
    assert_eq!(b["status"], "ok");
    assert_eq!(b["on_exceeded"], "block");
    assert!(b["as_of_seq"].as_u64().unwrap() >= seq);
    assert_eq!(b["period"].as_str().map(str::len), Some(7));

    // Spend this month (the API's period is the current month) crosses 50 % then 100 %.
    let now = app.kairos.clock.now().to_rfc3339();
    let calls: Vec<Value> = ["4.99", "0.01", "4.99", "0.01", "3"]
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut e = llm_call(&format!("c-{i}"), "acme", c);
            e["time"] = json!(now);
            e
        })
        .collect();
    let mut statuses = Vec::new();
    for c in &calls {
        let seq = app.ingest(std::slice::from_ref(c)).await;
        let (_, b) = app
            .get(&format!("/v1/projects/acme/budget?min_seq={seq}"))
            .await;
        statuses.push(b["status"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        statuses,
        ["ok", "warning", "warning", "exceeded", "exceeded"]
    );
    let (_, b) = app.get("/v1/projects/acme/budget").await;
    assert_eq!(b["spent"], "13.00");
    assert_eq!(b["remaining"], "-3.00");

    // Lowering, then raising the limit does not announce anything twice.
    let (_, r) = app
        .put_json("/v1/projects/acme/budget", &json!({"monthly_limit": "100"}))
        .await;
    let seq = r["seq"].as_u64().unwrap();
    let (_, b) = app
        .get(&format!("/v1/projects/acme/budget?min_seq={seq}"))
        .await;
    assert_eq!(
        (b["status"].as_str(), b["warn_at_percent"].as_u64()),
        (Some("ok"), Some(80))
    );
    let crossed: Vec<String> = app
        .thresholds_crossed(2)
        .await
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    assert_eq!(crossed, ["warning", "exceeded"]);

    let (status, list) = app.get("/v1/budgets").await;
    assert_eq!(status, 200);
    assert_eq!(list["budgets"].as_array().map(Vec::len), Some(1));
    app.cleanup().await;
}

#[sqlx::test(migrations = false)]
async fn budget_writes_and_reads_refuse_bad_input(pool: PgPool) {
    let mut settings = test_settings();
    settings.http.read_wait_ms = 300;
    let mut app = spawn_app_with(pool, settings, true).await;
    let cases = [
        (json!({"monthly_limit": "-1"}), "monthly_limit"),
        (json!({"monthly_limit": "1.0000000001"}), "monthly_limit"),
        (json!({"monthly_limit": "ten"}), "monthly_limit"),
        (json!({"monthly_limit": [1]}), "monthly_limit"),
        (
            json!({"monthly_limit": "1", "warn_at_percent": 0}),
            "warn_at_percent",
        ),
        (
            json!({"monthly_limit": "1", "warn_at_percent": 101}),
            "warn_at_percent",
        ),
        (
            json!({"monthly_limit": "1", "warn_at_percent": "80"}),
            "warn_at_percent",
        ),
        (
            json!({"monthly_limit": "1", "on_exceeded": "pray"}),
            "on_exceeded",
        ),
        (
            json!({"monthly_limit": "1", "fallback_model": ""}),
            "fallback_model",
        ),
        (json!({"monthly_limit": "1", "surprise": true}), "surprise"),
        (json!({}), "monthly_limit"),
        (json!([]), "body"),
    ];
    for (body, field) in cases {
        let (status, r) = app.put_json("/v1/projects/acme/budget", &body).await;
        assert_eq!(status, 400, "{body} -> {r}");
        assert_eq!(r["error"]["field"], field, "{body} -> {r}");
    }
    let resp = app
        .http
        .put(format!("{}/v1/projects/acme/budget", app.url))
        .header("content-type", "application/json")
        .body("{\"monthly_limit\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let (status, r) = app
        .put_json(
            "/v1/projects/bad.project/budget",
            &json!({"monthly_limit": "1"}),
        )
        .await;
    assert_eq!(
        (status, r["error"]["field"].as_str()),
        (400, Some("project"))
    );

    for (path, status, field) in [
        ("/v1/projects/nobody/budget", 404, None),
        ("/v1/projects/a%20b/budget", 400, Some("project")),
        (
            "/v1/projects/acme/budget?period=2026-13",
            400,
            Some("period"),
        ),
        (
            "/v1/projects/acme/budget?period=yesterday",
            400,
            Some("period"),
        ),
        ("/v1/projects/acme/budget?min_seq=-1", 400, Some("min_seq")),
        ("/v1/projects/acme/budget?min_seq=1e9", 400, Some("min_seq")),
        ("/v1/budgets?limit=0", 400, Some("limit")),
        ("/v1/budgets?limit=abc", 400, Some("limit")),
        ("/v1/budgets?after=a.b", 400, Some("after")),
    ] {
        let (s, r) = app.get(path).await;
        assert_eq!(s, status, "{path} -> {r}");
        assert_eq!(r["error"]["field"].as_str(), field, "{path} -> {r}");
    }
    // A sequence past the stream's last one names no write: refused at once.
    let (s, r) = app.get("/v1/budgets?min_seq=999999").await;
    assert_eq!(
        (s, r["error"]["field"].as_str()),
        (400, Some("min_seq")),
        "{r}"
    );
    // Nothing invalid reached the stream.
    assert!(app.events_in("budget").await.is_empty());

    // Waiting for a stored event the projection does not apply (it is stopped) is bounded and
    // says so.
    app.stop_projections();
    let seq = app.ingest(&[llm_call("waited-for", "acme", "1")]).await;
    let (s, r) = app.get(&format!("/v1/budgets?min_seq={seq}")).await;
    assert_eq!(
        (s, r["error"]["code"].as_str()),
        (503, Some("not_yet_applied")),
        "{r}"
    );
    app.cleanup().await;
}

#[sqlx::test(migrations = false)]
async fn listing_pages_through_projects(pool: PgPool) {
    let app = spawn_app(pool).await;
    let events: Vec<Value> = (0..25)
        .map(|i| llm_call(&format!("c-{i}"), &format!("p{i:02}"), "1"))
        .collect();
    let seq = app.ingest(&events).await;
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/v1/budgets?period=2026-11&limit=10&min_seq={seq}&after={a}"),
            None => format!("/v1/budgets?period=2026-11&limit=10&min_seq={seq}"),
        };
        let (status, page) = app.get(&path).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(
            page["budgets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["project"].as_str().unwrap().to_owned()),
        );
        match page["next_after"].as_str() {
            Some(a) => after = Some(a.to_owned()),
            None => break,
        }
    }
    let expected: Vec<String> = (0..25).map(|i| format!("p{i:02}")).collect();
    assert_eq!(seen, expected);
    app.cleanup().await;
}

#[sqlx::test(migrations = false)]
async fn budgets_from_the_configuration_apply_once_per_value(pool: PgPool) {
    let settings = kairos_tests::test_settings_with(
        "[[budgets.preset]]\nproject = \"from-config\"\nmonthly_limit = \"42.50\"\n\
         warn_at_percent = 90\non_exceeded = \"block\"\n",
    );
    let app = spawn_app_with(pool, settings, true).await;
    let presets: kairos_budgets::BudgetSettings = app.kairos.section("budgets").unwrap();
    let apply = || kairos_budgets::apply_presets(&app.kairos.bus, &presets);
    // Start-up published the preset; a restart publishes the same identity again.
    assert_eq!(apply().await.unwrap(), 1);
    assert_eq!(apply().await.unwrap(), 1);
    let seq = app.kairos.bus.last_seq().await.unwrap().0;
    let (status, b) = app
        .get(&format!("/v1/projects/from-config/budget?min_seq={seq}"))
        .await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(
        (b["limit"].as_str(), b["warn_at_percent"].as_u64()),
        (Some("42.50"), Some(90))
    );
    assert_eq!(b["on_exceeded"], "block");
    // A budget changed through the API afterwards is not reverted by the next start-up.
    let (_, r) = app
        .put_json(
            "/v1/projects/from-config/budget",
            &json!({"monthly_limit": "7"}),
        )
        .await;
    apply().await.unwrap();
    let seq = app
        .kairos
        .bus
        .last_seq()
        .await
        .unwrap()
        .0
        .max(r["seq"].as_u64().unwrap());
    let (_, b) = app
        .get(&format!("/v1/projects/from-config/budget?min_seq={seq}"))
        .await;
    assert_eq!(b["limit"], "7.00");
    let cp = kairos_runtime::checkpoint(&app.kairos.pool, "budgets")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cp.events_applied, 2, "the repeated preset was applied once");
    app.cleanup().await;
}

/// A batch is folded in segments that end at its snapshot marks; a project that first appears
/// in a later segment is loaded there, with what earlier batches spent.
#[sqlx::test(migrations = false)]
async fn a_project_first_met_after_a_snapshot_mark_keeps_what_it_spent_before(pool: PgPool) {
    let mut settings = test_settings();
    settings.projections.snapshot_every = 10;
    let mut app = spawn_app_with(pool, settings, true).await;
    let seq = app.ingest(&[llm_call("early", "p2", "1.25")]).await;
    let (status, _) = app
        .get(&format!(
            "/v1/projects/p2/budget?period=2026-11&min_seq={seq}"
        ))
        .await;
    assert_eq!(status, 200);
    // One backlog, one batch: p1's calls pass a multiple of 10, then p2 comes back.
    app.stop_projections();
    let calls: Vec<Value> = (0..15)
        .map(|i| llm_call(&format!("a{i}"), "p1", "0.10"))
        .chain([llm_call("late", "p2", "2")])
        .collect();
    let seq = app.ingest(&calls).await;
    app.start_projection("budgets");
    for (project, spent) in [("p1", "1.50"), ("p2", "3.25")] {
        let (status, b) = app
            .get(&format!(
                "/v1/projects/{project}/budget?period=2026-11&min_seq={seq}"
            ))
            .await;
        assert_eq!(status, 200, "{b}");
        assert_eq!(b["spent"], spent, "{project}: {b}");
    }
    app.cleanup().await;
}

/// "This month" is the month of the injected clock in the configured zone: 31 Dec 23:59:59.999
/// local is still December, a millisecond later it is January.
async fn the_month_turns_at_local_midnight(pool: PgPool, zone: &str, last_ms_of_december: &str) {
    let settings = kairos_tests::test_settings_with(&format!("[budgets]\ntimezone = \"{zone}\""));
    let clock = kairos_events::Clock::fixed(last_ms_of_december.parse().unwrap());
    let app = kairos_tests::spawn_app_at(pool, settings, true, clock.clone()).await;
    let spend = |id: &str, cost: &str| {
        let mut e = llm_call(id, "acme", cost);
        e["time"] = json!(
            clock
                .now()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        );
        e
    };
    let seq = app.ingest(&[spend("dec", "1.25")]).await;
    let (status, b) = app
        .get(&format!("/v1/projects/acme/budget?min_seq={seq}"))
        .await;
    assert_eq!(status, 200, "{zone}: {b}");
    assert_eq!(
        (b["period"].as_str(), b["spent"].as_str()),
        (Some("2026-12"), Some("1.25")),
        "{zone}"
    );

    clock.advance(chrono::TimeDelta::milliseconds(1));
    let seq = app.ingest(&[spend("jan", "2.50")]).await;
    let (status, b) = app
        .get(&format!("/v1/projects/acme/budget?min_seq={seq}"))
        .await;
    assert_eq!(status, 200, "{zone}: {b}");
    assert_eq!(
        (b["period"].as_str(), b["spent"].as_str()),
        (Some("2027-01"), Some("2.50")),
        "{zone}"
    );
    let (_, b) = app.get("/v1/projects/acme/budget?period=2026-12").await;
    assert_eq!(b["spent"], "1.25", "{zone}: December keeps its own spend");
}

#[sqlx::test(migrations = false)]
async fn the_current_month_turns_over_at_midnight_utc(pool: PgPool) {
    the_month_turns_at_local_midnight(pool, "UTC", "2026-12-31T23:59:59.999Z").await;
}

/// Auckland in summer time is UTC+13: its new year starts at 11:00 UTC on 31 December.
#[sqlx::test(migrations = false)]
async fn the_current_month_turns_over_at_midnight_in_auckland(pool: PgPool) {
    the_month_turns_at_local_midnight(pool, "Pacific/Auckland", "2026-12-31T10:59:59.999Z").await;
}

/// St John's is UTC-3:30: a half-hour offset behind UTC.
#[sqlx::test(migrations = false)]
async fn the_current_month_turns_over_at_midnight_in_st_johns(pool: PgPool) {
    the_month_turns_at_local_midnight(pool, "America/St_Johns", "2027-01-01T03:29:59.999Z").await;
}

/// Two API processes on one stream and database: each keeps its own copy of a project's budget
/// setting, so their writes really race on the stream.
async fn two_instances(pool: PgPool) -> (kairos_tests::TestApp, kairos_tests::TestApp) {
    let settings = test_settings();
    let a = spawn_app_with(pool.clone(), settings.clone(), true).await;
    let b = spawn_app_with(pool, settings, false).await;
    (a, b)
}

/// Two budget sets on one project, each conditional on the version both read: one wins, the
/// other is refused with 409 naming the version it missed, and the winner's budget is the one
/// in force. Nothing is lost or applied twice.
#[sqlx::test(migrations = false)]
async fn racing_conditional_budget_sets_let_exactly_one_win(pool: PgPool) {
    let (a, b) = two_instances(pool).await;
    let (status, r) = a
        .put_json("/v1/projects/race/budget", &json!({"monthly_limit": "1"}))
        .await;
    assert_eq!(status, 202, "{r}");
    let mut version = r["version"].as_u64().unwrap();
    for round in 0..10 {
        let (_, read) = a
            .get(&format!("/v1/projects/race/budget?min_seq={version}"))
            .await;
        assert_eq!(read["version"].as_u64(), Some(version), "{read}");
        let put = |app: &kairos_tests::TestApp, limit: String| {
            app.http
                .put(format!("{}/v1/projects/race/budget", app.url))
                .header("if-match", format!("\"{version}\""))
                .json(&json!({ "monthly_limit": limit }))
                .send()
        };
        let (ra, rb) = tokio::join!(
            put(&a, format!("{}.10", round + 10)),
            put(&b, format!("{}.20", round + 10))
        );
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        let (sa, sb) = (ra.status().as_u16(), rb.status().as_u16());
        let (ba, bb): (Value, Value) = (ra.json().await.unwrap(), rb.json().await.unwrap());
        let (winner, loser, limit) = match (sa, sb) {
            (202, 409) => (&ba, &bb, format!("{}.10", round + 10)),
            (409, 202) => (&bb, &ba, format!("{}.20", round + 10)),
            other => panic!("round {round}: exactly one must win, got {other:?}: {ba} {bb}"),
        };
        assert_eq!(loser["error"]["code"], "conflict", "{loser}");
        assert!(
            loser["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&format!("not {version}")),
            "{loser}"
        );
        version = winner["version"].as_u64().unwrap();
        let (_, now) = a
            .get(&format!("/v1/projects/race/budget?min_seq={version}"))
            .await;
        assert_eq!(now["limit"], Value::String(limit), "round {round}: {now}");
        assert_eq!(now["version"].as_u64(), Some(version));
    }
    // Eleven sets stored, one per winner: the losers appended nothing.
    let sets = a
        .stored_events()
        .await
        .into_iter()
        .filter(|(_, _, e)| e.event_type().as_str() == "kairos.budget.set.v1")
        .count();
    assert_eq!(sets, 11);
    b.cleanup().await;
    a.cleanup().await;
}

/// Unconditional sets racing from two processes: each is decided again on the newer state when
/// the other appended first, so every answered set is on the stream once, in the order the
/// stream took them, and the budget in force is the last one stored.
#[sqlx::test(migrations = false)]
async fn racing_budget_sets_are_each_stored_once_and_the_last_one_holds(pool: PgPool) {
    let (a, b) = two_instances(pool).await;
    let puts = (0..40).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        async move {
            let (status, r) = app
                .put_json(
                    "/v1/projects/race/budget",
                    &json!({"monthly_limit": format!("{i}.50")}),
                )
                .await;
            (status, r)
        }
    });
    let answers = futures_util::future::join_all(puts).await;
    let mut stored_by_answer = Vec::new();
    for (status, r) in &answers {
        match status {
            202 => stored_by_answer.push(r["seq"].as_u64().unwrap()),
            // Every attempt met another writer's set: refused, nothing appended.
            409 => assert_eq!(r["error"]["code"], "conflict", "{r}"),
            other => panic!("{other}: {r}"),
        }
    }
    assert!(!stored_by_answer.is_empty());
    let sets: Vec<(u64, String)> = a
        .stored_events()
        .await
        .into_iter()
        .filter(|(_, _, e)| e.event_type().as_str() == "kairos.budget.set.v1")
        .map(|(_, seq, e)| {
            (
                seq,
                e.json()["data"]["monthly_limit"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )
        })
        .collect();
    let mut seqs: Vec<u64> = sets.iter().map(|(s, _)| *s).collect();
    stored_by_answer.sort_unstable();
    seqs.sort_unstable();
    assert_eq!(
        seqs, stored_by_answer,
        "each accepted set stored once, no other"
    );
    let (last_seq, last_limit) = sets.iter().max_by_key(|(s, _)| *s).unwrap().clone();
    let (_, now) = a
        .get(&format!("/v1/projects/race/budget?min_seq={last_seq}"))
        .await;
    assert_eq!(now["limit"], Value::String(last_limit), "{now}");
    assert_eq!(now["version"].as_u64(), Some(last_seq));
    b.cleanup().await;
    a.cleanup().await;
}

/// A process that has not seen another's latest set decides on the latest state before it
/// refuses: `If-Match` with the version the other process just wrote is accepted.
#[sqlx::test(migrations = false)]
async fn a_conditional_set_is_judged_on_the_latest_version_whichever_process_gets_it(pool: PgPool) {
    let (a, b) = two_instances(pool).await;
    // Both processes load the project's budget setting.
    for app in [&a, &b] {
        let (status, r) = app
            .put_json("/v1/projects/stale/budget", &json!({"monthly_limit": "1"}))
            .await;
        assert_eq!(status, 202, "{r}");
    }
    let (status, r) = a
        .put_json("/v1/projects/stale/budget", &json!({"monthly_limit": "2"}))
        .await;
    assert_eq!(status, 202, "{r}");
    let latest = r["version"].as_u64().unwrap();
    // b last saw its own set; the version a wrote is the current one.
    let r = b
        .http
        .put(format!("{}/v1/projects/stale/budget", b.url))
        .header("if-match", format!("\"{latest}\""))
        .json(&json!({"monthly_limit": "3"}))
        .send()
        .await
        .unwrap();
    let (status, body): (u16, Value) = (r.status().as_u16(), r.json().await.unwrap());
    assert_eq!(status, 202, "{body}");
    // And a version that is not the current one is still refused.
    let r = a
        .http
        .put(format!("{}/v1/projects/stale/budget", a.url))
        .header("if-match", format!("\"{latest}\""))
        .json(&json!({"monthly_limit": "4"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 409);
    b.cleanup().await;
    a.cleanup().await;
}
