//! Budgets equal the ground truth to the nano-dollar under duplicates (inside and beyond
//! JetStream's duplicate window), aborted projection tasks, forced NATS redelivery and a second
//! runner of the same projection; each threshold event appears exactly once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use futures_util::StreamExt;
use kairos_events::Money;
use kairos_tests::{budget_set, llm_call, spawn_app_with, test_settings};
use serde_json::Value;
use sqlx::PgPool;

const EVENTS: usize = 20_000;
const PROJECTS: usize = 10;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A cost with up to 9 decimals, as a decimal string or as a JSON number written with its text.
fn cost(rng: &mut Rng) -> (Money, Value) {
    let nanos = 1 + (rng.next() % 50_000_000) as i64;
    let m = Money::from_nanos(nanos);
    let text = m.to_string();
    let json = if rng.next().is_multiple_of(2) {
        Value::String(text)
    } else {
        serde_json::from_str(&text).expect("a decimal is a JSON number")
    };
    (m, json)
}

#[sqlx::test(migrations = false)]
async fn budgets_are_exact_under_duplicates_crashes_and_redelivery(pool: PgPool) {
    let mut settings = test_settings();
    settings.nats.duplicate_window_secs = 2;
    settings.projections.batch_size = 500;
    settings.projections.ack_wait_ms = 1_500;
    let mut app = spawn_app_with(pool, settings, false).await;
    let mut rng = Rng(0x5eed_1234_abcd_ef01);

    // Budgets: three projects will exceed, three will likely warn, four stay fine.
    let limits = [
        "10", "10", "10", "55", "55", "55", "1000", "1000", "1000", "1000",
    ];
    let budgets: Vec<Value> = (0..PROJECTS)
        .map(|p| budget_set(&format!("b-{p}"), &format!("p{p}"), limits[p], 80))
        .collect();
    app.ingest(&budgets).await;

    // The ground truth: distinct events and what each costs.
    let mut events = Vec::with_capacity(EVENTS);
    let mut truth: BTreeMap<String, (Money, u64)> = BTreeMap::new();
    for i in 0..EVENTS {
        let project = format!("p{}", i % PROJECTS);
        let (m, json) = cost(&mut rng);
        let mut e = llm_call(&format!("call-{i}"), &project, "0");
        e["data"]["cost"] = json;
        let t = truth.entry(project).or_insert((Money::ZERO, 0));
        t.0 = t.0.checked_add(m).expect("no overflow");
        t.1 += 1;
        events.push(e);
    }
    let dup_in_window: Vec<Value> = events.iter().step_by(40).cloned().collect(); // 500
    let dup_after_window: Vec<Value> = events.iter().skip(20).step_by(40).cloned().collect(); // 500

    // Phase 1: half the events, with in-window duplicates mixed in, while the projection task is
    // aborted and restarted several times mid-stream; a second runner stands by throughout.
    app.start_projection("budgets");
    app.start_projection("budgets");
    let mut dups_seen = 0;
    for (n, chunk) in events[..EVENTS / 2].chunks(1_000).enumerate() {
        let mut batch = chunk.to_vec();
        if n % 2 == 1 {
            batch.extend(dup_in_window.iter().filter(|d| chunk.contains(d)).cloned());
        }
        let (status, body) = app
            .post_events(
                "application/cloudevents-batch+json",
                serde_json::to_vec(&batch).unwrap(),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        dups_seen += body["results"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["duplicate"] == Value::Bool(true))
            .count();
        if n % 3 == 0 {
            tokio::time::sleep(Duration::from_millis(7 * n as u64 + 5)).await;
            app.stop_projections(); // abort both tasks wherever they are
            app.start_projection("budgets");
            app.start_projection("budgets");
        }
    }
    assert!(dups_seen > 0, "JetStream recognised in-window duplicates");

    // Phase 2: forced redelivery. With the projection stopped, a rogue client pulls 300 events
    // from the projection's own durable consumer and never acks them; the projection must wait for
    // their redelivery rather than skip them.
    app.stop_projections();
    let tail_seq = app.ingest(&events[EVENTS / 2..EVENTS / 2 + 2_000]).await;
    let stream = app
        .kairos
        .bus
        .jetstream()
        .get_stream(app.kairos.bus.stream_name())
        .await
        .unwrap();
    let durable: PullConsumer = stream
        .get_consumer("budgets")
        .await
        .expect("durable consumer exists");
    let mut stolen = durable.fetch().max_messages(300).messages().await.unwrap();
    let mut held = Vec::new();
    while let Some(m) = stolen.next().await {
        held.push(m.unwrap());
    }
    assert_eq!(held.len(), 300, "the rogue pull got its messages");
    app.start_projection("budgets");
    app.ingest(&events[EVENTS / 2 + 2_000..]).await;

    // Phase 3: producer retries after JetStream's duplicate window: stored again on the stream.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, body) = app
        .post_events(
            "application/cloudevents-batch+json",
            serde_json::to_vec(&dup_after_window).unwrap(),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let restored = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["duplicate"] == Value::Bool(false))
        .count();
    assert_eq!(
        restored,
        dup_after_window.len(),
        "past the window the stream stores them again"
    );
    let last_seq = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["seq"].as_u64())
        .max()
        .unwrap();
    drop(held);
    // Catching up (forced redeliveries included) may outlast a read's 10 s wait on a loaded
    // machine; what is checked here is the result, so wait for it first (bounded, 60 s).
    app.wait_for("budgets", last_seq).await;

    // Every project's spend is the exact sum of its distinct events.
    for (project, (spent, calls)) in &truth {
        let (status, b) = app
            .get(&format!(
                "/v1/projects/{project}/budget?period=2026-11&min_seq={last_seq}"
            ))
            .await;
        assert_eq!(status, 200, "{b}");
        assert_eq!(b["spent"], Value::String(spent.to_string()), "{project}");
        assert_eq!(b["calls"], Value::from(*calls), "{project}");
        assert!(b["as_of_seq"].as_u64().unwrap() >= last_seq);
    }
    let cp = kairos_runtime::checkpoint(&app.kairos.pool, "budgets")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cp.events_applied, (EVENTS + PROJECTS) as u64);
    assert_eq!(
        cp.duplicates,
        dup_after_window.len() as u64,
        "retries past the window are skipped by identity"
    );
    assert_eq!(cp.dead_lettered, 0);
    assert!(tail_seq < last_seq);

    // Threshold events: exactly the crossings the truth implies, each exactly once on the stream.
    let expected: BTreeSet<(String, String)> = truth
        .iter()
        .flat_map(|(project, (spent, _))| {
            let idx: usize = project[1..].parse().unwrap();
            let limit = Money::parse(limits[idx]).unwrap();
            let mut v = Vec::new();
            if i128::from(spent.nanos()) * 100 >= i128::from(limit.nanos()) * 80 {
                v.push((project.clone(), "warning".to_owned()));
            }
            if *spent >= limit {
                v.push((project.clone(), "exceeded".to_owned()));
            }
            v
        })
        .collect();
    assert!(
        expected.len() >= 6,
        "the scenario crosses thresholds: {expected:?}"
    );
    // The outbox is drained right after each commit; give the last one a moment to land.
    let mut seen: HashMap<(String, String), usize> = HashMap::new();
    for key in app.thresholds_crossed(expected.len()).await {
        *seen.entry(key).or_default() += 1;
    }
    let seen_keys: BTreeSet<_> = seen.keys().cloned().collect();
    assert_eq!(seen_keys, expected);
    assert!(
        seen.values().all(|n| *n == 1),
        "each threshold event exactly once: {seen:?}"
    );
    app.cleanup().await;
}

/// Identities recorded by an earlier version (32-byte digests in a `bytea` column) are converted
/// when the runner starts, and the events they name are still recognised as retries.
#[sqlx::test(migrations = false)]
async fn identities_recorded_by_an_earlier_version_still_dedupe(pool: PgPool) {
    let mut app = spawn_app_with(pool.clone(), test_settings(), false).await;
    let last = app
        .ingest(&[
            llm_call("old-1", "acme", "5"),
            llm_call("new-1", "acme", "2"),
        ])
        .await;
    // The earlier version applied old-1 where it lies in the stream, one before new-1.
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS budgets.kairos_applied;
         CREATE TABLE budgets.kairos_applied (
             identity bytea PRIMARY KEY CHECK (length(identity) = 32), seq bigint NOT NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO budgets.kairos_applied VALUES (
             sha256(convert_to('test/gateway', 'UTF8') || '\\x00'::bytea || convert_to('old-1', 'UTF8')),
             $1)",
    )
    .bind(last as i64 - 1)
    .execute(&pool)
    .await
    .unwrap();
    // The runner and a replay start together: both find the old table, one converts it.
    app.start_projection("budgets");
    let replayed = app
        .kairos
        .replay(
            "budgets",
            &kairos_runtime::ReplayOptions {
                until_seq: Some(kairos_events::StreamSeq(last)),
                ..Default::default()
            },
            None,
            |_| {},
        )
        .await
        .expect("the replay starting beside the runner converts or finds converted");
    assert_eq!(replayed.reached.0, last);
    app.wait_for("budgets", last).await;
    let ty: String = sqlx::query_scalar(
        "SELECT data_type::text FROM information_schema.columns
         WHERE table_schema = 'budgets' AND table_name = 'kairos_applied' AND column_name = 'identity'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(ty, "uuid");
    let cp = kairos_runtime::checkpoint(&pool, "budgets")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((cp.events_applied, cp.duplicates), (1, 1), "{cp:?}");
    let spent: i64 =
        sqlx::query_scalar("SELECT spent_nanos FROM budgets.spend WHERE project = 'acme'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(spent, 2_000_000_000, "only the new event counts");
    app.cleanup().await;
}

#[sqlx::test(migrations = false)]
async fn a_runner_left_behind_by_retention_goes_on_from_the_oldest_event_kept(pool: PgPool) {
    let mut app = kairos_tests::spawn_app(pool.clone()).await;
    app.ingest(&[llm_call("r0", "gamma", "1")]).await;
    let seen = app.kairos.bus.last_seq().await.unwrap().0;
    app.wait_for("budgets", seen).await;
    app.stop_projections();
    app.ingest(&[llm_call("r1", "gamma", "2")]).await;

    // Retention shortened to a second, while the runner is down: what it has not seen expires.
    app.expire_stored_events().await;
    let js = app.kairos.bus.jetstream();
    let name = app.kairos.bus.stream_name().to_owned();
    let mut stream = js.get_stream(&name).await.unwrap();

    app.ingest(&[llm_call("r2", "gamma", "4")]).await;
    let last = app.kairos.bus.last_seq().await.unwrap().0;
    assert!(stream.info().await.unwrap().state.first_sequence > seen + 1);
    app.start_projection("budgets");
    // The jump over the lost events is recorded, so the batches after it commit.
    app.wait_for("budgets", last).await;
    let (status, b) = app.get("/v1/projects/gamma/budget").await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["spent"], "5.00", "the expired call was never seen: {b}");
    let cp = kairos_runtime::checkpoint(&pool, "budgets")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cp.last_seq, last);
    app.cleanup().await;
}
