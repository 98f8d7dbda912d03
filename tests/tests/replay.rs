//! Replay: a projection rebuilt from the stream is identical to the one built live, readers never
//! see a half-built generation, and an interrupted replay resumes.

use std::collections::BTreeMap;
use std::time::Duration;

use kairos_runtime::ReplayOptions;
use kairos_tests::{
    TestApp, budget_set, llm_call, schema_digest, spawn_app, spawn_app_with, test_settings,
};
use serde_json::{Value, json};
use sqlx::PgPool;

/// Where the checkpoint `key` stands (it must exist).
async fn checkpoint(pool: &PgPool, key: &str) -> kairos_runtime::Checkpoint {
    kairos_runtime::checkpoint(pool, key)
        .await
        .unwrap()
        .expect("the checkpoint exists")
}

/// Whether `schema.kairos_applied` has its primary key (without it nothing stops an identity
/// being recorded twice).
async fn identities_keyed(pool: &PgPool, schema: &str) -> bool {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_constraint
                        WHERE conrelid = format('%I.kairos_applied', $1::text)::regclass
                          AND contype = 'p')",
    )
    .bind(schema)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// The snapshots recorded under `key`, by sequence; arrays sorted, since a snapshot lists rows in
/// whatever order the table returns them.
async fn snapshots(pool: &PgPool, key: &str) -> Vec<(i64, Value)> {
    let rows: Vec<(i64, Value)> = sqlx::query_as(
        "SELECT seq, state FROM kairos.snapshots WHERE projection = $1 ORDER BY seq",
    )
    .bind(key)
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(seq, mut state)| {
            if let Some(fields) = state.as_object_mut() {
                for v in fields.values_mut() {
                    if let Some(rows) = v.as_array_mut() {
                        rows.sort_by_key(Value::to_string);
                    }
                }
            }
            (seq, state)
        })
        .collect()
}

/// A history with every kind of event the budgets projection sees: limits, calls, failures,
/// retries inside and past the duplicate window, unknown types, poison published to NATS.
/// The rebuilt audit chain verifies, against itself and against the stream.
async fn audit_chain_holds(app: &TestApp, pool: &PgPool) {
    assert_eq!(
        kairos_audit::verify_chain(pool).await.unwrap().first_bad,
        None
    );
    assert_eq!(
        kairos_audit::verify_against_stream(&app.kairos.bus, pool)
            .await
            .unwrap()
            .first_bad,
        None
    );
}

async fn history(app: &TestApp, n: usize) -> u64 {
    let mut events: Vec<Value> = (0..4)
        .map(|p| budget_set(&format!("b{p}"), &format!("p{p}"), "5", 60))
        .collect();
    for i in 0..n {
        events.push(call(i));
        if i % 250 == 0 {
            events.push(
                json!({"specversion": "1.0", "id": format!("x{i}"), "source": "other",
                               "type": "com.example.unrelated.v1", "data": {"i": i}}),
            );
            events.push(budget_set(
                &format!("b-late-{i}"),
                &format!("p{}", i % 4),
                &format!("{}", 5 + i / 100),
                75,
            ));
        }
    }
    app.ingest(&events).await;
    let js = app.kairos.bus.jetstream();
    js.publish(format!("{}.events.llm.p0", app.prefix()), "{poison".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let retries: Vec<Value> = events.iter().skip(5).step_by(50).cloned().collect();
    app.ingest(&retries).await; // inside the window: acknowledged as duplicates, not stored
    app.kairos.bus.last_seq().await.unwrap().0
}

/// The `i`th LLM call of a [`history`].
fn call(i: usize) -> Value {
    let mut e = llm_call(
        &format!("c{i}"),
        &format!("p{}", i % 4),
        &format!("0.{:03}", i % 997),
    );
    if i.is_multiple_of(17) {
        e["data"]["status"] = json!("error");
    }
    e
}

/// A [`history`] of `n` calls, then copies of every `step`th call re-sent once JetStream's
/// duplicate window (set to 1 s by the caller) has passed: stored again, for the projections
/// to skip by identity. Returns the copies' last sequence.
async fn history_with_late_copies(app: &TestApp, n: usize, step: usize) -> u64 {
    history(app, n).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let copies: Vec<Value> = (0..n).step_by(step).map(call).collect();
    app.ingest(&copies).await
}

#[sqlx::test(migrations = false)]
async fn every_replayed_projection_is_identical_to_the_live_one(pool: PgPool) {
    let mut settings = test_settings();
    settings.nats.duplicate_window_secs = 1;
    // Live batches of at most 100 pass each multiple of snapshot_every at a different place
    // than the replay's single batch does.
    settings.projections.batch_size = 100;
    let app = spawn_app_with(pool.clone(), settings, true).await;
    history_with_late_copies(&app, 3_000, 100).await;
    // Let the threshold events the budgets projection emitted land and be folded by audit too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let last = app.kairos.bus.last_seq().await.unwrap().0;
    let names = app.kairos.projection_names();
    let mut live = BTreeMap::new();
    for name in names.iter().copied() {
        app.wait_for(name, last).await;
        let cp = checkpoint(&pool, name).await;
        live.insert(name, (schema_digest(&pool, name).await, cp));
    }
    let (budgets, budgets_cp) = &live["budgets"];
    assert!(
        budgets["spend"].0 == 4 && budgets["crossings"].0 > 0,
        "{budgets:?}"
    );
    assert_eq!(budgets_cp.dead_lettered, 1);
    assert!(budgets_cp.duplicates >= 30);
    assert!(live["audit"].0["entries"].0 > 10, "{:?}", live["audit"]);
    let live_snapshots = snapshots(&pool, "budgets").await;
    assert!(
        live_snapshots.len() >= 3 && live_snapshots.iter().all(|(seq, _)| seq % 1000 == 0),
        "live snapshots at each multiple of snapshot_every: {:?}",
        live_snapshots.iter().map(|(s, _)| s).collect::<Vec<_>>()
    );

    // Every projection side by side, from one read of the stream (as `kairos replay --all`), in
    // batches of 1,500: the copies re-sent past the window are in other batches than their
    // originals, so the replay's in-memory record of identities is what skips them.
    let opts = ReplayOptions {
        batch_size: 1_500,
        ..Default::default()
    };
    let seats = app.kairos.shared_read(names.len(), &opts);
    let reports = futures_util::future::join_all(
        names
            .iter()
            .zip(seats)
            .map(|(name, seat)| app.kairos.replay(name, &opts, Some(seat), |_| {})),
    )
    .await;
    for (name, report) in names.iter().zip(reports) {
        let report = report.unwrap();
        assert!(report.switched);
        assert_eq!(report.reached.0, last, "{name}");
        let (tables, cp) = &live[name];
        assert_eq!(&schema_digest(&pool, name).await, tables, "{name}");
        let after = checkpoint(&pool, name).await;
        assert_eq!(
            (
                after.last_seq,
                after.events_applied,
                after.duplicates,
                after.dead_lettered
            ),
            (
                cp.last_seq,
                cp.events_applied,
                cp.duplicates,
                cp.dead_lettered
            ),
            "{name}"
        );
        let schemas: Vec<String> =
            sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE nspname LIKE $1")
                .bind(format!("{name}%"))
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(schemas, [*name], "the old generation is dropped");
    }
    // The replay's batches pass the multiples elsewhere than the live runner's: its snapshots
    // still hold the state at each multiple, as the live runner's small batches recorded it.
    assert_eq!(snapshots(&pool, "budgets").await, live_snapshots);
    audit_chain_holds(&app, &pool).await;
    // Nothing was announced twice: replay does not re-emit threshold events.
    let crossings = app
        .events_in("budget")
        .await
        .into_iter()
        .filter(|e| e.event_type().as_str() == "kairos.budget.threshold_crossed.v1")
        .count() as i64;
    assert_eq!(crossings, budgets["crossings"].0);

    // The rebuilt identity tables got their key before the switch ...
    for name in names {
        assert!(
            identities_keyed(&pool, name).await,
            "{name}.kairos_applied has its primary key"
        );
    }
    // ... and the live runners carry on after it, skipping an event already folded.
    let seq = app
        .ingest(&[llm_call("c1", "p1", "0.001"), llm_call("after", "p1", "1")])
        .await;
    let (status, b) = app
        .get(&format!(
            "/v1/projects/p1/budget?period=2026-11&min_seq={seq}"
        ))
        .await;
    assert_eq!(status, 200, "{b}");
    let after = checkpoint(&pool, "budgets").await;
    assert_eq!(
        (after.events_applied, after.duplicates),
        (budgets_cp.events_applied + 1, budgets_cp.duplicates + 1),
        "the copy of c1 is skipped, the new call applied"
    );
    app.cleanup().await;
}

#[sqlx::test(migrations = false)]
async fn readers_never_see_a_half_built_generation(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let last = history(&app, 8_000).await;
    app.wait_for("budgets", last).await;
    let (_, before) = app.get("/v1/budgets?period=2026-11").await;

    let url = format!("{}/v1/budgets?period=2026-11", app.url);
    let http = app.http.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut reads = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = http.get(&url).send().await.expect("request");
                assert_eq!(r.status(), 200);
                let body: Value = r.json().await.expect("json");
                // Without new events, every read during the replay equals the read before it.
                assert_eq!(
                    body["budgets"], before["budgets"],
                    "a read saw another state"
                );
                reads += 1;
            }
            reads
        })
    };
    let report = app
        .kairos
        .replay(
            "budgets",
            &ReplayOptions {
                batch_size: 500,
                ..Default::default()
            },
            None,
            |_| {},
        )
        .await
        .unwrap();
    assert!(report.switched);
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reader.await.expect("no read failed");
    assert!(reads > 10, "queries ran throughout the replay ({reads})");
    app.cleanup().await;
}

#[sqlx::test(migrations = false)]
async fn an_interrupted_replay_resumes_and_until_keeps_the_live_tables(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let last = history(&app, 2_000).await;
    app.wait_for("budgets", last).await;
    let live = schema_digest(&pool, "budgets").await;

    // Built up to a point and left beside the live tables.
    let half = kairos_events::StreamSeq(last / 2);
    let r = app
        .kairos
        .replay(
            "budgets",
            &ReplayOptions {
                until_seq: Some(half),
                ..Default::default()
            },
            None,
            |_| {},
        )
        .await
        .unwrap();
    assert!(!r.switched);
    assert_eq!((r.reached, r.schema.as_str()), (half, "budgets_next"));
    assert_eq!(
        schema_digest(&pool, "budgets").await,
        live,
        "the live tables are untouched"
    );
    let partial = checkpoint(&pool, "budgets@next").await;
    assert_eq!(partial.last_seq, half.0);
    // A replay stopped before the end of its first pass leaves the identity table without its
    // key (it builds it once, at the end): the next one must give it back before going on.
    sqlx::query("ALTER TABLE budgets_next.kairos_applied DROP CONSTRAINT kairos_applied_pkey")
        .execute(&pool)
        .await
        .unwrap();

    // The next replay resumes from there instead of starting over, sharing its read of the
    // stream with an audit replay that starts from the beginning.
    app.wait_for("audit", last).await;
    let opts = ReplayOptions {
        keep_old: true,
        ..Default::default()
    };
    let mut seats = app.kairos.shared_read(2, &opts).into_iter();
    let (r, audit) = tokio::join!(
        app.kairos.replay("budgets", &opts, seats.next(), |_| {}),
        app.kairos.replay("audit", &opts, seats.next(), |_| {}),
    );
    let (r, audit) = (r.unwrap(), audit.unwrap());
    assert!(r.switched && audit.switched);
    // Audit read from the start (its live tables may have gone past `last`: the threshold events
    // budgets announced) and its rebuilt chain matches the stream.
    assert!(audit.reached.0 >= last);
    assert_eq!(audit.events_read, audit.reached.0);
    audit_chain_holds(&app, &pool).await;
    assert_eq!(
        r.events_read,
        r.reached.0 - half.0,
        "resumed after the half already built"
    );
    assert_eq!(schema_digest(&pool, "budgets").await, live);
    assert!(identities_keyed(&pool, "budgets").await);
    let old = r.kept_old.expect("kept");
    assert_eq!(schema_digest(&pool, &old).await, live);
    app.cleanup().await;
}

#[sqlx::test(migrations = false)]
async fn a_replay_leaves_what_the_live_runner_has_not_seen_to_it(pool: PgPool) {
    let mut app = spawn_app(pool.clone()).await;
    app.ingest(&[llm_call("c0", "beta", "1")]).await;
    // The request's own audit record follows the event; the runner's checkpoint passes it too.
    let seq = app.kairos.bus.last_seq().await.unwrap().0;
    app.wait_for("budgets", seq).await;
    // The live runner stops; a budget and a crossing call arrive; an operator replays.
    app.stop_projections();
    app.ingest(&[
        budget_set("b-beta", "beta", "10", 50),
        llm_call("c1", "beta", "9.50"),
    ])
    .await;
    let r = app
        .kairos
        .replay("budgets", &ReplayOptions::default(), None, |_| {})
        .await
        .unwrap();
    assert_eq!(
        r.reached.0, seq,
        "the generation stops at the live checkpoint"
    );
    // The live runner applies the rest and announces the crossings, once each.
    app.start_projection("budgets");
    let crossed: Vec<String> = app
        .thresholds_crossed(2)
        .await
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    assert_eq!(crossed, ["warning", "exceeded"]);

    // An --until before a generation left further along rebuilds it instead of resuming.
    let until = |s| ReplayOptions {
        until_seq: Some(kairos_events::StreamSeq(s)),
        ..Default::default()
    };
    assert_eq!(
        app.kairos
            .replay("budgets", &until(3), None, |_| {})
            .await
            .unwrap()
            .reached
            .0,
        3
    );
    assert_eq!(
        app.kairos
            .replay("budgets", &until(1), None, |_| {})
            .await
            .unwrap()
            .reached
            .0,
        1
    );
    app.cleanup().await;
}

/// A replay reads the stream with a [`kairos_bus::BatchReader`]: when the server drops its
/// consumer half-way (as it does with one idle too long), it carries on where it stood, every
/// message once and in order.
#[tokio::test]
async fn a_batch_reader_carries_on_when_its_consumer_is_dropped() {
    use futures_util::TryStreamExt;
    let settings = test_settings();
    let bus = kairos_bus::Bus::connect(&settings.nats, "test")
        .await
        .unwrap();
    bus.ensure_streams().await.unwrap();
    let events: Vec<kairos_events::Event> = (0..2_500)
        .map(|i| {
            kairos_events::Event::from_value(llm_call(&format!("r-{i}"), "p1", "0.01")).unwrap()
        })
        .collect();
    for r in bus.publish_events(&events).await {
        r.unwrap();
    }
    let mut reader = bus
        .read_batches(kairos_events::StreamSeq(1), 1_000)
        .await
        .unwrap();
    let mut seqs: Vec<u64> = reader
        .next_batch(Duration::from_secs(5))
        .await
        .unwrap()
        .iter()
        .map(|m| m.seq.0)
        .collect();
    assert_eq!(seqs.len(), 1_000);
    let stream = bus.jetstream().get_stream(bus.stream_name()).await.unwrap();
    let names: Vec<String> = stream.consumer_names().try_collect().await.unwrap();
    assert_eq!(names.len(), 1, "the reader's consumer: {names:?}");
    stream.delete_consumer(&names[0]).await.unwrap();
    loop {
        let batch = reader.next_batch(Duration::from_secs(1)).await.unwrap();
        if batch.is_empty() {
            break;
        }
        seqs.extend(batch.iter().map(|m| m.seq.0));
    }
    assert_eq!(seqs, (1..=2_500).collect::<Vec<u64>>());
    reader.close().await;
    let names: Vec<String> = stream.consumer_names().try_collect().await.unwrap();
    assert!(names.is_empty(), "closing removes the consumer: {names:?}");
    bus.jetstream()
        .delete_stream(bus.stream_name())
        .await
        .unwrap();
    let _ = bus.jetstream().delete_stream(bus.dlq_stream_name()).await;
}

/// A replay whose identities outgrow what it may keep in memory
/// (`projections.replay_identities_in_memory`) gives the generation's table its key half-way
/// and deduplicates against the table from there: copies re-sent after that point are still
/// skipped, and the result is the live tables.
#[sqlx::test(migrations = false)]
async fn a_replay_past_its_memory_for_identities_goes_on_against_the_table(pool: PgPool) {
    replay_keeping_at_most(pool, 500).await;
}

#[sqlx::test(migrations = false)]
async fn a_replay_keeping_no_identities_in_memory_dedupes_against_the_table(pool: PgPool) {
    replay_keeping_at_most(pool, 0).await;
}

/// A budgets replay over a history with copies re-sent late, keeping at most `in_memory`
/// identities in memory: the rebuilt tables equal the live ones and every copy is skipped.
async fn replay_keeping_at_most(pool: PgPool, in_memory: usize) {
    let mut settings = test_settings();
    settings.nats.duplicate_window_secs = 1;
    settings.projections.replay_identities_in_memory = in_memory;
    let app = spawn_app_with(pool.clone(), settings, true).await;
    // The copies come after the point where the replay turns to the table.
    let last = history_with_late_copies(&app, 1_200, 40).await;
    app.wait_for("budgets", last).await;
    let live = schema_digest(&pool, "budgets").await;
    let cp = checkpoint(&pool, "budgets").await;
    assert!(cp.duplicates >= 30, "{cp:?}");
    let opts = ReplayOptions {
        batch_size: 200,
        ..Default::default()
    };
    let r = app
        .kairos
        .replay("budgets", &opts, None, |_| {})
        .await
        .unwrap();
    assert!(r.switched);
    assert_eq!(schema_digest(&pool, "budgets").await, live);
    let after = checkpoint(&pool, "budgets").await;
    assert_eq!(
        (after.events_applied, after.duplicates),
        (cp.events_applied, cp.duplicates)
    );
    assert!(identities_keyed(&pool, "budgets").await);
    app.cleanup().await;
}
