//! Hostile input at the doors: control characters are refused where they arrive, error messages
//! quote input only escaped and cut short, and nothing PostgreSQL cannot store reaches a
//! projection, whichever way it came.

use kairos_tests::{llm_call, send, spawn_app};
use serde_json::{Value, json};
use sqlx::PgPool;

/// An anonymous caller sending a NUL byte in a field name gets a 400 that quotes it escaped, and
/// the audit entry of its attempt is kept: nothing was dead-lettered.
#[sqlx::test(migrations = false)]
async fn a_nul_in_a_body_is_refused_and_its_attempt_stays_audited(pool: PgPool) {
    let app = spawn_app(pool).await;
    let r = reqwest::Client::new()
        .post(format!("{}/v1/invitations/accept", app.url))
        .header("content-type", "application/json")
        .body(r#"{"\u0000":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let text = r.text().await.unwrap();
    assert!(!text.contains('\0'), "no raw NUL in the answer: {text:?}");
    let body: Value = serde_json::from_str(&text).unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("\\u{0}"), "quoted escaped: {message}");

    // Refused without a key: counted for the address's minute, published once it is over.
    app.kairos.clock.advance(chrono::TimeDelta::seconds(60));
    let entries = app.refusals().await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["outcome"], "denied");
    assert!(
        entries[0]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("1 request without a valid key")
                && r.contains("\\u{0}")
                && !r.contains('\0')),
        "{entries:?}"
    );
    let last = app.kairos.bus.last_seq().await.unwrap().0;
    app.wait_for("audit", last).await;
    let cp = kairos_runtime::checkpoint(&app.kairos.pool, "audit")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cp.dead_lettered, 0, "the attempt's record was not lost");
    app.cleanup().await;
}

/// Control characters in an event are refused at the HTTP door naming the field; the same event
/// published straight to NATS is dead-lettered at decode and does not hold up the event behind
/// it. Tab, line feed and carriage return are fine in the values of data.
#[sqlx::test(migrations = false)]
async fn control_characters_in_events_are_refused_at_every_door(pool: PgPool) {
    let app = spawn_app(pool).await;
    let mut bad = llm_call("bad-1", "acme", "1");
    bad["data"]["model"] = json!("gpt\u{0}4o");
    let (status, r) = app
        .post_events(
            "application/cloudevents+json",
            serde_json::to_vec(&bad).unwrap(),
        )
        .await;
    assert_eq!(status, 400, "{r}");
    assert_eq!(
        (r["error"]["code"].as_str(), r["error"]["field"].as_str()),
        (Some("control_character"), Some("data.model")),
        "{r}"
    );
    for (attribute, value) in [("source", "gate\u{7}way"), ("id", "c\u{1b}[2J")] {
        let mut e = llm_call("bad-2", "acme", "1");
        e[attribute] = json!(value);
        let (status, r) = app
            .post_events(
                "application/cloudevents+json",
                serde_json::to_vec(&e).unwrap(),
            )
            .await;
        assert_eq!(
            (status, r["error"]["field"].as_str()),
            (400, Some(attribute)),
            "{r}"
        );
    }
    let mut key = llm_call("bad-3", "acme", "1");
    key["data"]["a\u{0}b"] = json!(1);
    let (status, r) = app
        .post_events(
            "application/cloudevents+json",
            serde_json::to_vec(&key).unwrap(),
        )
        .await;
    assert_eq!(status, 400, "{r}");
    let mut multiline = llm_call("ok-1", "acme", "2");
    multiline["data"]["status"] = json!("error");
    multiline["data"]["error"] = json!("upstream said:\n\ttimeout\r\n");
    let seq = app.ingest(&[multiline]).await;
    app.wait_for("budgets", seq).await;

    // Straight to NATS, past the HTTP door.
    let js = app.kairos.bus.jetstream();
    let subject = format!("{}.events.llm.acme", app.prefix());
    js.publish(subject, serde_json::to_vec(&bad).unwrap().into())
        .await
        .unwrap()
        .await
        .unwrap();
    let seq = app.ingest(&[llm_call("ok-2", "acme", "3")]).await;
    app.wait_for("budgets", seq).await;
    let (_, b) = app
        .get(&format!(
            "/v1/projects/acme/budget?period=2026-11&min_seq={seq}"
        ))
        .await;
    assert_eq!(b["spent"], "5.00", "{b}");
    let dlq = app
        .read_stream(
            &app.kairos.bus.dlq_stream_name(),
            &format!("{}.dlq.budgets", app.prefix()),
        )
        .await;
    assert_eq!(dlq.len(), 1);
    let h = dlq[0].headers.as_ref().unwrap();
    assert_eq!(
        h.get("Kairos-Dlq-Code").map(|v| v.as_str()),
        Some("control_character")
    );
    app.cleanup().await;
}

/// Strings of identity and budget commands carry no control characters either: refused with a
/// 400 naming the field, before anything is appended.
#[sqlx::test(migrations = false)]
async fn commands_refuse_control_characters_naming_the_field(pool: PgPool) {
    let app = spawn_app(pool).await;
    let before = app.kairos.bus.last_seq().await.unwrap().0;
    for (method, path, body, field) in [
        (
            "POST",
            "/v1/api-keys",
            json!({"name": "lap\u{0}top"}),
            "name",
        ),
        (
            "PUT",
            "/v1/projects/acme/budget",
            json!({"monthly_limit": "1", "fallback_model": "llama\u{0}"}),
            "fallback_model",
        ),
        (
            "POST",
            "/v1/invitations",
            json!({"email": "a\u{0}@example.com", "role": "viewer"}),
            "email",
        ),
    ] {
        let req = app
            .http
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{}{path}", app.url),
            )
            .json(&body);
        let (status, r) = send(req).await;
        assert_eq!(
            (status, r["error"]["field"].as_str()),
            (400, Some(field)),
            "{method} {path}: {r}"
        );
        assert!(!r.to_string().contains('\0'), "{r}");
    }
    // Only the audit records of the refusals reached the stream: no identity or budget event.
    let events = app.stored_events().await;
    assert!(
        events
            .iter()
            .filter(|(_, seq, _)| *seq > before)
            .all(|(_, _, e)| e.event_type().as_str() == "kairos.user.action.v1"),
        "{:?}",
        events
            .iter()
            .map(|(_, _, e)| e.event_type().as_str().to_owned())
            .collect::<Vec<_>>()
    );
    app.cleanup().await;
}

/// The same (source, id) with other content is a conflict, not a retry: a producer narrowed to
/// one project cannot hide another project's call by reusing its identity. A true retry is still
/// a duplicate.
#[sqlx::test(migrations = false)]
async fn a_reused_identity_with_other_content_is_refused(pool: PgPool) {
    let app = spawn_app(pool).await;
    let mut first = llm_call("call-9", "pa", "0.10");
    first["source"] = json!("my-gateway");
    let seq = app.ingest(std::slice::from_ref(&first)).await;
    let mut other = llm_call("call-9", "pb", "7.00");
    other["source"] = json!("my-gateway");
    let (status, r) = app
        .post_events(
            "application/cloudevents+json",
            serde_json::to_vec(&other).unwrap(),
        )
        .await;
    assert_eq!(status, 409, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("seq {seq}"))),
        "{r}"
    );
    // In a batch, that event is refused and the others stored.
    let (status, r) = app
        .post_events(
            "application/cloudevents-batch+json",
            serde_json::to_vec(&[other.clone(), llm_call("fresh", "pb", "1.00")]).unwrap(),
        )
        .await;
    assert_eq!(status, 202, "{r}");
    assert_eq!(r["results"][0]["error"]["code"], "identity_conflict", "{r}");
    assert_eq!(r["results"][1]["status"], "accepted", "{r}");
    // The retry of the first, byte for byte, is a duplicate as before.
    let (status, r) = app
        .post_events(
            "application/cloudevents+json",
            serde_json::to_vec(&first).unwrap(),
        )
        .await;
    assert_eq!(status, 202, "{r}");
    assert_eq!(r["results"][0]["duplicate"], true, "{r}");
    app.cleanup().await;
}

/// A producer publishing straight to NATS, or retrying after the duplicate window, is past the
/// HTTP door's check: the projection compares what a reused `(source, id)` says with the event
/// that carried it first. A retry (the same event, even re-serialised) is a duplicate; other
/// content is dead-lettered `identity_conflict`, whether the first is in the same batch or long
/// applied, and a replay counts the same.
#[sqlx::test(migrations = false)]
async fn a_reused_identity_published_straight_to_nats_is_dead_lettered(pool: PgPool) {
    let mut app = spawn_app(pool.clone()).await;
    // pb has a budget, so it reports what it spent even when that is nothing.
    app.ingest(&[kairos_tests::budget_set("b-pb", "pb", "100", 80)])
        .await;
    let js = app.kairos.bus.jetstream().clone();
    let prefix = app.prefix().to_owned();
    let publish = |event: &Value, pretty: bool| {
        let subject = format!("{prefix}.events.llm.{}", event["subject"].as_str().unwrap());
        let body = if pretty {
            serde_json::to_vec_pretty(event)
        } else {
            serde_json::to_vec(event)
        }
        .unwrap();
        let js = js.clone();
        async move {
            js.publish(subject, body.into())
                .await
                .unwrap()
                .await
                .unwrap()
                .sequence
        }
    };
    // Far apart: the first is applied before its conflict and its retry arrive. Those two then
    // come in one batch (the projection is stopped while they are published): the retry is
    // compared with the first event, not with the conflict ahead of it in the batch.
    let first = llm_call("call-1", "pa", "1.00");
    let seq = publish(&first, false).await;
    app.wait_for("budgets", seq).await;
    app.stop_projections();
    publish(&llm_call("call-1", "pb", "9.00"), false).await;
    publish(&first, true).await;
    // Close together: a first and its conflict in one batch.
    publish(&llm_call("call-2", "pa", "0.10"), false).await;
    let last = publish(&llm_call("call-2", "pb", "3.00"), false).await;
    app.start_projection("budgets");
    app.wait_for("budgets", last).await;
    let spent = |project: &'static str| {
        let app = &app;
        async move {
            let (status, b) = app
                .get(&format!("/v1/projects/{project}/budget?period=2026-11"))
                .await;
            assert_eq!(status, 200, "{b}");
            b["spent"].as_str().unwrap().to_owned()
        }
    };
    assert_eq!(spent("pa").await, "1.10");
    assert_eq!(spent("pb").await, "0.00");
    let cp = kairos_runtime::checkpoint(&pool, "budgets")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((cp.dead_lettered, cp.duplicates), (2, 1), "{cp:?}");
    let codes = dlq_codes(&app, "budgets").await;
    assert_eq!(
        codes,
        ["identity_conflict", "identity_conflict"],
        "{codes:?}"
    );
    // A replay, which dedupes against the identities it keeps in memory, counts the same.
    let report = app
        .kairos
        .replay("budgets", &Default::default(), None, |_| {})
        .await
        .unwrap();
    assert!(report.switched);
    assert_eq!(spent("pa").await, "1.10", "after replay");
    assert_eq!(spent("pb").await, "0.00", "after replay");
    app.cleanup().await;
}

/// A member may hold `auth.max_keys_per_member` keys at once: one more is refused until one is
/// revoked.
#[sqlx::test(migrations = false)]
async fn keys_per_member_are_capped(pool: PgPool) {
    let mut settings = kairos_tests::test_settings();
    settings.auth.max_keys_per_member = 3;
    let app = kairos_tests::spawn_app_with(pool, settings, false).await;
    // The bootstrap admin holds its first key; two more reach the cap.
    let mut ids = Vec::new();
    for n in 0..2 {
        let (status, r) = app
            .post_json("/v1/api-keys", &json!({"name": format!("k{n}")}))
            .await;
        assert_eq!(status, 201, "{r}");
        ids.push(r["key_id"].as_str().unwrap().to_owned());
    }
    let (status, r) = app.post_json("/v1/api-keys", &json!({"name": "k2"})).await;
    assert_eq!(status, 409, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("max_keys_per_member")),
        "{r}"
    );
    let (status, _) = app.delete(&format!("/v1/api-keys/{}", ids[0])).await;
    assert_eq!(status, 200);
    let (status, r) = app.post_json("/v1/api-keys", &json!({"name": "k2"})).await;
    assert_eq!(status, 201, "{r}");
    app.cleanup().await;
}

/// A key issued with `expires_in_days` works until that instant of Kairos' clock and is refused
/// from then on, with the same 401 as any invalid key; the refusal is counted for the audit log.
#[sqlx::test(migrations = false)]
async fn a_key_is_refused_once_it_has_expired(pool: PgPool) {
    let app = kairos_tests::spawn_app_with(pool, kairos_tests::test_settings(), false).await;
    let (status, r) = app
        .post_json(
            "/v1/api-keys",
            &json!({"name": "short", "expires_in_days": 1}),
        )
        .await;
    assert_eq!(status, 201, "{r}");
    assert_eq!(r["expires_at"], "2026-11-21T12:00:00Z", "{r}");
    let key = r["api_key"]
        .as_str()
        .expect("the key, shown once")
        .to_owned();
    let me = || send(kairos_tests::client(&key).get(format!("{}/v1/me", app.url)));
    let (status, r) = me().await;
    assert_eq!(status, 200, "{r}");
    app.kairos
        .clock
        .advance(chrono::TimeDelta::days(1) - chrono::TimeDelta::seconds(1));
    let (status, r) = me().await;
    assert_eq!(status, 200, "a second before its expiry: {r}");
    app.kairos.clock.advance(chrono::TimeDelta::seconds(1));
    let (status, r) = me().await;
    assert_eq!(
        (status, r["error"]["code"].as_str()),
        (401, Some("unauthorized")),
        "at its expiry: {r}"
    );
    // The admin's own key, issued without an expiry, still works.
    let (status, r) = app.get("/v1/me").await;
    assert_eq!(status, 200, "{r}");
    app.cleanup().await;
}

/// A key bound to source prefixes (`allowed_sources`) publishes only under them: another
/// source is refused `forbidden` naming `source` (403 when it was the request's only event), so a
/// producer's key cannot take another producer's `(source, id)`. Bad bindings are refused naming
/// the field.
#[sqlx::test(migrations = false)]
async fn a_key_bound_to_sources_publishes_only_under_them(pool: PgPool) {
    let app = kairos_tests::spawn_app_with(pool, kairos_tests::test_settings(), false).await;
    let (status, r) = app
        .post_json(
            "/v1/api-keys",
            &json!({"name": "gateway", "allowed_sources": ["llm-gateway/", "batch-jobs"]}),
        )
        .await;
    assert_eq!(status, 201, "{r}");
    assert_eq!(
        r["allowed_sources"],
        json!(["llm-gateway/", "batch-jobs"]),
        "{r}"
    );
    let issued_at = r["seq"].as_u64().unwrap();
    let gateway = kairos_tests::client(r["api_key"].as_str().unwrap());
    let post = |body: Value, media: &'static str| {
        send(
            gateway
                .post(format!("{}/v1/events", app.url))
                .header("content-type", media)
                .body(body.to_string()),
        )
    };
    let from = |id: &str, source: &str| {
        let mut e = llm_call(id, "pa", "0.10");
        e["source"] = json!(source);
        e
    };
    let one = "application/cloudevents+json";
    let (status, r) = post(from("c1", "llm-gateway/eu-1"), one).await;
    assert_eq!(status, 202, "{r}");
    let (status, r) = post(from("c2", "batch-jobs"), one).await;
    assert_eq!(status, 202, "{r}");
    // Another producer's source, and one that only contains an allowed prefix.
    for source in ["my-gateway", "x/llm-gateway/eu-1", "llm-gateway"] {
        let (status, r) = post(from("c3", source), one).await;
        assert_eq!(
            (status, r["error"]["code"].as_str()),
            (403, Some("forbidden")),
            "{source}: {r}"
        );
        assert_eq!(r["results"][0]["error"]["field"], "source", "{r}");
    }
    let (status, r) = post(
        json!([from("c4", "llm-gateway/us-1"), from("c5", "my-gateway")]),
        "application/cloudevents-batch+json",
    )
    .await;
    assert_eq!(status, 202, "{r}");
    assert_eq!(r["results"][0]["status"], "accepted", "{r}");
    assert_eq!(r["results"][1]["error"]["code"], "forbidden", "{r}");
    assert_eq!(r["results"][1]["error"]["field"], "source", "{r}");
    // Only the three allowed calls are on the stream.
    let calls = app.events_in("llm").await;
    let ids: Vec<&str> = calls.iter().map(|e| e.id()).collect();
    assert_eq!(ids, ["c1", "c2", "c4"]);

    // The binding is listed with the key (once the access tables have it); a key without one
    // lists null.
    app.wait_for("access", issued_at).await;
    let (status, r) = app.get("/v1/api-keys").await;
    assert_eq!(status, 200, "{r}");
    let keys = r["api_keys"].as_array().unwrap();
    let gateway_row = keys.iter().find(|k| k["name"] == "gateway").unwrap();
    assert_eq!(
        gateway_row["allowed_sources"],
        json!(["llm-gateway/", "batch-jobs"])
    );
    assert!(keys.iter().any(|k| k["allowed_sources"].is_null()), "{r}");

    let many: Vec<String> = (0..21).map(|i| format!("s{i}")).collect();
    for bad in [
        json!([]),
        json!(many),
        json!(["ok", "ok"]),
        json!(["kairos/api"]),
        json!(["tab\there"]),
        json!([""]),
        json!(["x".repeat(201)]),
        json!("llm-gateway/"),
        json!([7]),
    ] {
        let (status, r) = app
            .post_json(
                "/v1/api-keys",
                &json!({"name": "bad", "allowed_sources": bad}),
            )
            .await;
        assert_eq!(status, 400, "{bad}: {r}");
        assert!(
            r["error"]["field"]
                .as_str()
                .is_some_and(|f| f.starts_with("allowed_sources")),
            "{bad}: {r}"
        );
    }
    app.cleanup().await;
}

/// A fact only Kairos may state that reaches the stream without Kairos' signature (published
/// straight to NATS by a user allowed to, unsigned or signed with another key) is dead-lettered
/// by the projections that fold it: the admin it would remove keeps its key, and the audit log
/// has no entry for it.
#[sqlx::test(migrations = false)]
async fn a_forged_identity_event_on_the_stream_is_dead_lettered(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (status, me) = app.get("/v1/me").await;
    assert_eq!(status, 200, "{me}");
    let admin = me["member_id"].as_str().unwrap().to_owned();
    let removal = kairos_events::Emit::new(
        "kairos.member.removed.v1",
        "kairos/api",
        json!({"member_id": admin, "actor": "admin@kairos.local", "reason": "forged"}),
    );
    // Unsigned, then signed with a key that is not this Kairos'.
    let mut unsigned = app.kairos.settings.nats.clone();
    unsigned.signing_key = None;
    let mut other = app.kairos.settings.nats.clone();
    other.signing_key = Some("not-this-kairos-signing-key-0123456789".into());
    let mut last = 0;
    for (i, config) in [&unsigned, &other].into_iter().enumerate() {
        let bus = kairos_bus::Bus::connect(config, "forger").await.unwrap();
        let event = removal.clone().id(format!("forged-{i}")).build().unwrap();
        last = bus.publish_event(&event).await.unwrap().seq.0;
    }
    // A reservation that would hold the whole of a project's month: a type only Kairos
    // publishes, forged the same way.
    let hold = kairos_events::Emit::new(
        "kairos.budget.reserved.v1",
        "kairos/router",
        json!({"project": "acme", "reservation_id": "forged-hold", "period": "2026-11",
               "model": "gpt-4o", "amount": "1000", "expires_at": "2099-01-01T00:00:00Z"}),
    )
    .subject("acme")
    .build()
    .unwrap();
    // And the same hold as a group of routes' reservations.
    let held_together = kairos_events::Emit::new(
        "kairos.budget.reserved_batch.v1",
        "kairos/router",
        json!({"project": "acme", "reservations": [hold.json()["data"]]}),
    )
    .subject("acme")
    .build()
    .unwrap();
    let bus = kairos_bus::Bus::connect(&unsigned, "forger").await.unwrap();
    for forged in [&hold, &held_together] {
        last = last.max(bus.publish_event(forged).await.unwrap().seq.0);
    }
    // The real one, signed by this Kairos, would be folded: the forged ones are not.
    let seq = app.ingest(&[llm_call("after", "acme", "1")]).await;
    for projection in ["access", "audit", "budgets"] {
        app.wait_for(projection, seq.max(last)).await;
    }
    assert_eq!(dlq_codes(&app, "budgets").await, ["unsigned", "unsigned"]);
    let held: i64 = sqlx::query_scalar("SELECT count(*) FROM budgets.reservations")
        .fetch_one(&app.kairos.pool)
        .await
        .unwrap();
    assert_eq!(held, 0, "the forged hold is not folded");
    let (status, me) = app.get("/v1/me").await;
    assert_eq!(status, 200, "the admin is still a member: {me}");
    // Audit reads budget events too: it refuses the forged hold as well.
    assert_eq!(
        dlq_codes(&app, "access").await,
        ["unsigned", "bad_signature"]
    );
    assert_eq!(
        dlq_codes(&app, "audit").await,
        ["unsigned", "bad_signature", "unsigned", "unsigned"]
    );
    let (_, log) = app.get("/v1/audit?action=member.remove").await;
    assert_eq!(log["entries"].as_array().unwrap().len(), 0, "{log}");
    app.cleanup().await;
}

/// A producer's user action says who acted, in which role, from which address and when: the
/// audit log keeps all of that as the producer's claim, apart from who Kairos authenticated (the
/// producer) and when the stream stored it. One published straight to NATS under Kairos' own
/// `kairos/api` source, without Kairos' signature, is a claim too, not an entry in a member's
/// name.
#[sqlx::test(migrations = false)]
async fn a_producer_cannot_act_in_a_members_name_or_backdate_the_log(pool: PgPool) {
    let app = spawn_app(pool).await;
    let claim = |id: &str, source: &str| {
        json!({"specversion": "1.0", "id": id, "source": source, "type": "kairos.user.action.v1",
               "time": "2020-01-01T00:00:00Z",
               "data": {"actor": "admin@kairos.local", "role": "admin", "ip": "10.9.9.9",
                        "request_id": "r-forged", "action": "budget.delete",
                        "resource": "project:acme", "outcome": "success"}})
    };
    app.ingest(&[claim("c-1", "console")]).await;
    // Straight to NATS, as a producer allowed to publish user actions could.
    let mut unsigned = app.kairos.settings.nats.clone();
    unsigned.signing_key = None;
    let bus = kairos_bus::Bus::connect(&unsigned, "producer")
        .await
        .unwrap();
    let forged = kairos_events::Event::from_value(claim("c-2", "kairos/api")).unwrap();
    let seq = bus.publish_event(&forged).await.unwrap().seq.0;
    app.wait_for("audit", seq).await;

    let (_, log) = app.get("/v1/audit?action=budget.delete").await;
    let entries = log["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{log}");
    for (e, source) in entries.iter().zip(["kairos/api", "console"]) {
        assert_eq!(e["actor"], source, "{e}");
        assert_eq!(
            (&e["actor_role"], &e["ip"], &e["request_id"]),
            (&Value::Null, &Value::Null, &Value::Null),
            "{e}"
        );
        assert_eq!(
            e["claimed"],
            json!({"actor": "admin@kairos.local", "role": "admin", "ip": "10.9.9.9",
                   "request_id": "r-forged"}),
            "{e}"
        );
        assert_eq!(e["occurred_at"], "2020-01-01T00:00:00.000000Z", "{e}");
        assert_ne!(e["recorded_at"], e["occurred_at"], "{e}");
    }
    let (_, as_admin) = app
        .get("/v1/audit?actor=admin@kairos.local&action=budget.delete")
        .await;
    assert_eq!(as_admin["entries"].as_array().unwrap().len(), 0);
    // Time filters bound the stream's time unless asked for the claimed one.
    let (_, back) = app
        .get("/v1/audit?action=budget.delete&to=2021-01-01T00:00:00Z")
        .await;
    assert_eq!(back["entries"].as_array().unwrap().len(), 0, "{back}");
    let (_, claimed) = app
        .get("/v1/audit?action=budget.delete&to=2021-01-01T00:00:00Z&time=occurred")
        .await;
    assert_eq!(claimed["entries"].as_array().unwrap().len(), 2, "{claimed}");
    app.assert_bad_queries(&[("/v1/audit?time=wall", "time")])
        .await;
    // A budget setting published as an event by a key with manage_budgets names its producer
    // as who set it, not the member its data claims.
    let mut set = kairos_tests::budget_set("b-1", "beta", "9", 80);
    set["data"]["actor"] = json!("ceo@example.com");
    let seq = app.ingest(&[set]).await;
    app.wait_for("budgets", seq).await;
    let set_by: Option<String> =
        sqlx::query_scalar("SELECT set_by FROM budgets.limits WHERE project = 'beta'")
            .fetch_one(&app.kairos.pool)
            .await
            .unwrap();
    assert_eq!(set_by.as_deref(), Some("test/admin"));
    // What Kairos recorded itself names the member it authenticated.
    let (status, r) = app
        .put_json("/v1/projects/acme/budget", &json!({"monthly_limit": "5"}))
        .await;
    assert_eq!(status, 202, "{r}");
    app.wait_for("audit", r["seq"].as_u64().unwrap()).await;
    let (_, set) = app.get("/v1/audit?action=budget.set").await;
    let set = &set["entries"][0];
    assert_eq!(
        (&set["actor"], &set["actor_role"], &set["claimed"]),
        (&json!("admin@kairos.local"), &json!("admin"), &Value::Null),
        "{set}"
    );
    app.cleanup().await;
}

/// The codes of what `projection` dead-lettered, in order.
async fn dlq_codes(app: &kairos_tests::TestApp, projection: &str) -> Vec<String> {
    app.read_stream(
        &app.kairos.bus.dlq_stream_name(),
        &format!("{}.dlq.{projection}", app.prefix()),
    )
    .await
    .iter()
    .map(|m| {
        m.headers
            .as_ref()
            .and_then(|h| h.get("Kairos-Dlq-Code"))
            .map_or_else(String::new, |v| v.as_str().to_owned())
    })
    .collect()
}

/// A write whose audit entry cannot be recorded is answered as failed (503 `audit_unavailable`),
/// not as done; its retry, once the stream takes audit entries again, is deduplicated and
/// recorded. A write that records itself (a budget change is its own audit event) is unaffected.
#[sqlx::test(migrations = false)]
async fn a_write_whose_audit_entry_cannot_be_recorded_fails(pool: PgPool) {
    let app = spawn_app(pool).await;
    // The stream stops taking user actions (no stream listens on their subjects any more): the
    // audit publish fails at once while LLM calls and budget settings are still stored.
    let js = app.kairos.bus.jetstream();
    let name = app.kairos.bus.stream_name().to_owned();
    let mut config = js
        .get_stream(&name)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    let all = config.subjects.clone();
    config.subjects = ["llm", "budget", "access", "audit"]
        .map(|c| format!("{}.events.{c}.>", app.prefix()))
        .to_vec();
    js.update_stream(config.clone()).await.unwrap();

    let call = llm_call("unaudited-1", "acme", "0.50");
    let body = serde_json::to_vec(&call).unwrap();
    let (status, r) = app
        .post_events("application/cloudevents+json", body.clone())
        .await;
    assert_eq!(status, 503, "{r}");
    assert_eq!(r["error"]["code"], "audit_unavailable", "{r}");
    let (status, r) = app
        .put_json(
            "/v1/projects/acme/budget",
            &json!({"monthly_limit": "10", "warn_at_percent": 80}),
        )
        .await;
    assert!(status < 300, "a budget change records itself: {status} {r}");

    config.subjects = all;
    js.update_stream(config).await.unwrap();
    let (status, r) = app.post_events("application/cloudevents+json", body).await;
    assert_eq!(status, 202, "{r}");
    assert_eq!(
        r["results"][0]["duplicate"], true,
        "the first try was stored: {r}"
    );
    let seq = r["results"][0]["seq"].as_u64().unwrap();
    let last = app.kairos.bus.last_seq().await.unwrap().0;
    app.wait_for("audit", last.max(seq)).await;
    let (_, log) = app.get("/v1/audit?action=events.publish").await;
    let entries = log["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "only the retry was recorded: {log}");
    assert_eq!(entries[0]["outcome"], "success", "{log}");
    app.cleanup().await;
}

/// Requests refused for want of a valid key add nothing to the stream one by one: they are
/// counted per address and minute, and the minute becomes one audit entry once it is over.
#[sqlx::test(migrations = false)]
async fn refused_requests_without_a_key_are_audited_per_address_and_minute(pool: PgPool) {
    let app = spawn_app(pool).await;
    let before = app.kairos.bus.last_seq().await.unwrap().0;
    let anonymous = reqwest::Client::new();
    let body = serde_json::to_vec(&llm_call("flood", "acme", "1")).unwrap();
    for i in 0..33 {
        let mut req = anonymous
            .post(format!("{}/v1/events", app.url))
            .header("content-type", "application/cloudevents+json")
            .body(body.clone());
        if i % 11 == 0 {
            req = req.bearer_auth(format!("kairos_{}", "0".repeat(64)));
        }
        let (status, r) = send(req).await;
        assert_eq!(status, 401, "{r}");
    }
    let (status, _) = send(anonymous.get(format!("{}/v1/budgets", app.url))).await;
    assert_eq!(status, 401);
    assert_eq!(
        app.kairos.bus.last_seq().await.unwrap().0,
        before,
        "nothing was published while the minute lasts"
    );
    app.kairos.clock.advance(chrono::TimeDelta::seconds(60));
    let entries = app.refusals().await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    let reason = entries[0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("34 requests without a valid key"),
        "{reason}"
    );
    assert!(reason.contains("no API key ×31"), "{reason}");
    assert!(
        reason.contains("POST /v1/events ×33, GET /v1/budgets ×1"),
        "{reason}"
    );
    assert_eq!(entries[0]["ip"], "127.0.0.1");
    assert_eq!(
        app.kairos.bus.last_seq().await.unwrap().0,
        before + 1,
        "one event for the minute"
    );
    app.cleanup().await;
}
