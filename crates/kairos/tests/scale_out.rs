//! Scale-out of one projection, from outside: three `kairos consume budgets` processes share
//! six partitions of the budgets projection while LLM calls stream in; one of them is killed
//! with SIGKILL and a fourth joins, mid-run. Every partition ends at the stream's end, each
//! event is applied exactly once (the partitions' counts add up to the events sent, with no
//! duplicate), the spend is exact to the nano-dollar, and the tables equal, row for row, those a
//! single unpartitioned runner builds from the same stream into another database: thresholds
//! crossed at the same event with the same spend, which an event applied out of its project's
//! order would change.

mod common;
use common::unique_tag;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kairos_events::Event;
use serde_json::json;
use sqlx::PgPool;

const PROJECTS: usize = 30;
const CALLS: usize = 36_000;
const CHUNK: usize = 500;
const PARTITIONS: u32 = 6;

fn kairos(env: &[(String, String)], args: &[&str], log: Option<&Path>) -> Child {
    let stderr = match log {
        Some(path) => Stdio::from(std::fs::File::create(path).expect("a log file")),
        None => Stdio::null(),
    };
    Command::new(env!("CARGO_BIN_EXE_kairos"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env_remove("KAIROS_CONFIG")
        .env("RUST_LOG", "kairos_runtime=info,error")
        .env("KAIROS_LOG_FORMAT", "pretty")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("kairos runs")
}

/// The cost of call `i`, in nano-dollars: exact, and different from call to call.
fn cost_nanos(i: usize) -> i64 {
    ((i * 7_919) % 100_000 + 1) as i64
}

fn event(value: serde_json::Value) -> Event {
    Event::from_slice(value.to_string().as_bytes()).expect("a valid event")
}

fn budget_set(p: usize) -> Event {
    let limits = ["0.05", "0.06", "0.07", "0.08", "0.10"];
    event(json!({
        "specversion": "1.0", "id": format!("set-{p}"), "source": "test/admin",
        "type": "kairos.budget.set.v1", "subject": format!("p{p}"),
        "time": "2026-11-01T00:00:00Z",
        "data": {"project": format!("p{p}"), "monthly_limit": limits[p % limits.len()],
                 "warn_at_percent": 50, "on_exceeded": "fallback_to_local"}
    }))
}

fn call(i: usize) -> Event {
    let nanos = cost_nanos(i);
    event(json!({
        "specversion": "1.0", "id": format!("call-{i}"), "source": "test/gateway",
        "type": "kairos.llm.call.completed.v1", "subject": format!("p{}", i % PROJECTS),
        "time": "2026-11-10T12:00:00Z",
        "data": {"project": format!("p{}", i % PROJECTS), "model": "gpt-4o",
                 "provider": "openai", "input_tokens": 100, "output_tokens": 20,
                 "cost": format!("0.{nanos:09}"), "latency_ms": 300, "status": "ok"}
    }))
}

async fn checkpoints(pool: &PgPool) -> BTreeMap<String, (i64, i64, i64)> {
    sqlx::query_as::<_, (String, i64, i64, i64)>(
        "SELECT projection, last_seq, events_applied, duplicates FROM kairos.checkpoints
         WHERE projection = 'budgets' OR projection LIKE 'budgets/%'",
    )
    .fetch_all(pool)
    .await
    .expect("checkpoints")
    .into_iter()
    .map(|(k, a, b, c)| (k, (a, b, c)))
    .collect()
}

/// The budgets tables as one JSON text, in a fixed order.
async fn tables(pool: &PgPool) -> String {
    sqlx::query_scalar(
        "SELECT json_build_object(
           'spend', (SELECT json_agg(s ORDER BY project, period) FROM budgets.spend s),
           'crossings', (SELECT json_agg(c ORDER BY project, period, threshold)
                         FROM budgets.crossings c),
           'limits', (SELECT json_agg(l ORDER BY project) FROM budgets.limits l))::text",
    )
    .fetch_one(pool)
    .await
    .expect("the budgets tables")
}

async fn stream_end(js: &async_nats::jetstream::Context, stream: &str) -> u64 {
    js.get_stream(stream)
        .await
        .expect("the stream")
        .info()
        .await
        .expect("its info")
        .state
        .last_sequence
}

/// Waits until `pool`'s budgets checkpoint (and, when `partitioned`, every partition's) is at
/// the stream's end, and stays there.
async fn wait_caught_up(
    pool: &PgPool,
    js: &async_nats::jetstream::Context,
    stream: &str,
    partitioned: bool,
    within: Duration,
) -> u64 {
    let deadline = Instant::now() + within;
    let mut steady = 0;
    loop {
        let end = stream_end(js, stream).await as i64;
        let cps = checkpoints(pool).await;
        let at_end = cps
            .iter()
            .filter(|(k, _)| partitioned || k.as_str() == "budgets")
            .all(|(_, (seq, _, _))| *seq >= end);
        let complete =
            cps.contains_key("budgets") && (!partitioned || cps.len() == PARTITIONS as usize + 1);
        steady = if at_end && complete { steady + 1 } else { 0 };
        if steady >= 5 {
            return end as u64;
        }
        assert!(
            Instant::now() < deadline,
            "not caught up with {end}: {cps:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn kill(child: &mut Child, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status();
    let _ = child.wait();
}

#[test]
fn three_members_one_killed_one_added_count_every_event_once_in_order() {
    let tag = unique_tag();
    let base = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let (server, _) = base.rsplit_once('/').expect("a database URL");
    let (db, reference) = (
        format!("kairos_scale_{tag}"),
        format!("kairos_scale_ref_{tag}"),
    );
    let stream = format!("SCALE_{tag}");
    let nats_url =
        std::env::var("KAIROS_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let env_for = |database: &str, partitions: u32| -> Vec<(String, String)> {
        [
            ("KAIROS_DATABASE_URL", format!("{server}/{database}")),
            ("KAIROS_DATABASE_MAX_CONNECTIONS", "4".into()),
            ("KAIROS_NATS_URL", nats_url.clone()),
            ("KAIROS_NATS_STREAM", stream.clone()),
            ("KAIROS_NATS_SUBJECT_PREFIX", format!("scale{tag}")),
            // The budget settings this test publishes are signed with the processes' key.
            (
                "KAIROS_NATS_SIGNING_KEY",
                format!("scale-out-signing-key-{tag}-0123456789"),
            ),
            ("KAIROS_PROJECTIONS_PARTITIONS", partitions.to_string()),
            ("KAIROS_PROJECTIONS_BATCH_SIZE", "500".into()),
            ("KAIROS_PROJECTIONS_ACK_WAIT_MS", "2000".into()),
            ("KAIROS_PROJECTIONS_IDLE_WAIT_MS", "200".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    };
    let env = env_for(&db, PARTITIONS);
    let logs = std::env::temp_dir().join(format!("kairos-scale-{tag}"));
    std::fs::create_dir_all(&logs).expect("a log directory");
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let (admin, pool, js, bus) = rt.block_on(async {
        let admin = PgPool::connect(&base).await.expect("PostgreSQL");
        for name in [&db, &reference] {
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&admin)
                .await
                .expect("CREATE DATABASE");
        }
        let pool = PgPool::connect(&format!("{server}/{db}"))
            .await
            .expect("the test database");
        let mut settings = kairos::configuration::Settings::from_toml("").expect("defaults");
        settings.nats.url = nats_url.clone();
        settings.nats.stream = stream.clone();
        settings.nats.subject_prefix = format!("scale{tag}");
        settings.nats.signing_key = Some(format!("scale-out-signing-key-{tag}-0123456789"));
        let bus = kairos_bus::Bus::connect(&settings.nats, "scale-out-test")
            .await
            .expect("NATS");
        bus.ensure_streams().await.expect("the streams");
        let js = bus.jetstream().clone();
        (admin, pool, js, bus)
    });
    let migrated = kairos(&env, &["migrate"], None).wait().expect("migrate");
    assert!(migrated.success(), "kairos migrate: {migrated}");

    // The load: every project's budget, then the calls, in chunks, while the members work.
    let publisher = rt.spawn({
        let bus = bus.clone();
        async move {
            let sets: Vec<Event> = (0..PROJECTS).map(budget_set).collect();
            for r in bus.publish_events(&sets).await {
                r.expect("a budget published");
            }
            for chunk in (0..CALLS).collect::<Vec<_>>().chunks(CHUNK) {
                let events: Vec<Event> = chunk.iter().map(|i| call(*i)).collect();
                for r in bus.publish_events(&events).await {
                    assert!(!r.expect("a call published").duplicate);
                }
                tokio::time::sleep(Duration::from_millis(120)).await;
            }
        }
    });
    let log = |n: usize| logs.join(format!("member-{n}.log"));
    let mut members: Vec<Child> = (0..3)
        .map(|n| kairos(&env, &["consume", "budgets"], Some(&log(n))))
        .collect();

    let taken = |n: usize| {
        std::fs::read_to_string(log(n))
            .unwrap_or_default()
            .matches("took the partition")
            .count()
    };
    // Mid-run: once every member holds partitions and they have folded part of the load, one
    // dies without a word.
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let cps = checkpoints(&pool).await;
            let low = cps
                .iter()
                .filter(|(k, _)| k.contains('/'))
                .map(|(_, (seq, _, _))| *seq)
                .min()
                .unwrap_or(0);
            if cps.len() == PARTITIONS as usize + 1 && low > 3_000 && (0..3).all(|n| taken(n) > 0) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the members did not start: {cps:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    assert!(
        !publisher.is_finished(),
        "the kill comes while the load is still arriving"
    );
    kill(&mut members[1], "-KILL");
    std::thread::sleep(Duration::from_secs(2));
    members.push(kairos(&env, &["consume", "budgets"], Some(&log(3))));
    let added_while_loading = !publisher.is_finished();
    rt.block_on(publisher).expect("the load was published");

    let end = rt.block_on(wait_caught_up(
        &pool,
        &js,
        &stream,
        true,
        Duration::from_secs(240),
    ));
    let cps = rt.block_on(checkpoints(&pool));
    let parts: Vec<&(i64, i64, i64)> = cps
        .iter()
        .filter(|(k, _)| k.contains('/'))
        .map(|(_, v)| v)
        .collect();
    assert_eq!(parts.len(), PARTITIONS as usize, "{cps:?}");
    let applied: i64 = parts.iter().map(|(_, a, _)| a).sum();
    let duplicates: i64 = parts.iter().map(|(_, _, d)| d).sum();
    assert_eq!(
        applied,
        (PROJECTS + CALLS) as i64,
        "each event applied once, by one partition: {cps:?}"
    );
    assert_eq!(duplicates, 0, "{cps:?}");
    assert!(
        parts.iter().all(|(_, a, _)| *a > 0),
        "every partition had work: {cps:?}"
    );

    // Exact spend, against the ground truth.
    let mut truth: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for i in 0..CALLS {
        let t = truth.entry(format!("p{}", i % PROJECTS)).or_default();
        t.0 += cost_nanos(i);
        t.1 += 1;
    }
    let spend: BTreeMap<String, (i64, i64)> = rt.block_on(async {
        sqlx::query_as::<_, (String, i64, i64)>(
            "SELECT project, spent_nanos, calls FROM budgets.spend WHERE period = '2026-11'",
        )
        .fetch_all(&pool)
        .await
        .expect("spend")
        .into_iter()
        .map(|(p, s, c)| (p, (s, c)))
        .collect()
    });
    assert_eq!(spend, truth, "spend per project, to the nano-dollar");

    // The killed member held partitions, which were taken over (every partition reached the
    // end above), and the fourth member took some.
    assert!(taken(3) > 0, "the added member took no partition");
    assert!(taken(1) > 0, "the killed member held no partition");

    // One unpartitioned runner folds the same stream into another database: the same tables,
    // row for row (per project, the same order of application).
    let mut single = kairos(
        &env_for(&reference, 1),
        &["consume", "budgets"],
        Some(&logs.join("single.log")),
    );
    let (partitioned, sequential) = rt.block_on(async {
        let ref_pool = PgPool::connect(&format!("{server}/{reference}"))
            .await
            .expect("the reference database");
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            let cps = match sqlx::query_scalar::<_, i64>(
                "SELECT last_seq FROM kairos.checkpoints WHERE projection = 'budgets'",
            )
            .fetch_optional(&ref_pool)
            .await
            {
                Ok(cp) => cp.unwrap_or(0),
                Err(_) => 0, // not migrated yet
            };
            if cps >= end as i64 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the single runner stopped at {cps}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let out = (tables(&pool).await, tables(&ref_pool).await);
        ref_pool.close().await;
        out
    });
    assert!(
        partitioned.contains("exceeded"),
        "some budgets were exceeded"
    );
    assert_eq!(
        partitioned, sequential,
        "partitioned and single-runner tables differ"
    );
    eprintln!(
        "{} events to sequence {end}; partitions {:?}; added while loading: {added_while_loading}",
        PROJECTS + CALLS,
        parts
    );

    // Nobody fell over on the way (a member that exited would leave its share to the others).
    for (n, m) in members.iter_mut().enumerate() {
        if n != 1 {
            assert!(m.try_wait().expect("wait").is_none(), "member {n} exited");
        }
    }
    kill(&mut single, "-TERM");
    for m in &mut members {
        kill(m, "-TERM");
    }
    rt.block_on(async {
        pool.close().await;
        let _ = js.delete_stream(&stream).await;
        let _ = js.delete_stream(format!("{stream}_DLQ")).await;
        for name in [&db, &reference] {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&admin)
            .await;
        }
    });
    let _ = std::fs::remove_dir_all(&logs);
}
