//! Scale-out of the budgets projection: `--scale-out-events` LLM calls over 60 projects are
//! published first; then, each time into a database of its own, the budgets projection folds
//! them all, run by `kairos consume budgets` processes (this binary): once unpartitioned, then as
//! `--scale-out-partitions` partitions shared by 1, 2 and 3 processes. Timed from the processes'
//! start until the projection's checkpoint is at the stream's end (start-up and the first
//! partition count, about a second, included), checked exact against the calls' total.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use async_nats::jetstream;
use kairos_client::LlmCall;
use kairos_events::{Event, Money};

use super::{BenchDb, BenchOptions, per_second, print_rows, row};
use crate::configuration::Settings;

const PROJECTS: usize = 60;

pub(super) struct ScaleFigures {
    events: usize,
    partitions: u32,
    /// Events per second: unpartitioned, then 1, 2 and 3 processes.
    single: f64,
    members: Vec<(usize, f64)>,
}

/// The database URL `url` names, with the database `name` instead.
fn with_database(url: &str, name: &str) -> String {
    let (head, query) = url
        .split_once('?')
        .map_or((url, None), |(h, q)| (h, Some(q)));
    let server = head.rsplit_once('/').map_or(head, |(s, _)| s);
    match query {
        Some(q) => format!("{server}/{name}?{q}"),
        None => format!("{server}/{name}"),
    }
}

struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub(super) async fn figures(
    mut settings: Settings,
    js: &jetstream::Context,
    opts: &BenchOptions,
) -> anyhow::Result<ScaleFigures> {
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    settings.nats.stream = format!("BENCH_{run_id}");
    settings.nats.subject_prefix = format!("bench{}", &run_id[..8]);
    let bus = kairos_bus::Bus::connect(&settings.nats, "kairos-bench-scale").await?;
    bus.ensure_streams().await?;
    let measured = measure(&settings, &bus, opts).await;
    let stream = settings.nats.stream.clone();
    for name in [stream.clone(), format!("{stream}_DLQ")] {
        if let Err(e) = js.delete_stream(&name).await {
            eprintln!("kairos bench: could not delete stream {name}: {e}");
        }
    }
    measured
}

async fn measure(
    settings: &Settings,
    bus: &kairos_bus::Bus,
    opts: &BenchOptions,
) -> anyhow::Result<ScaleFigures> {
    let n = opts.scale_out_events;
    let at = chrono::Utc::now();
    let mut total = Money::ZERO;
    let mut events: Vec<Event> = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let (input, output) = (200 + i * 7_919 % 6_000, 50 + i * 104_729 % 1_500);
        let cost = Money::from_nanos((input * 2_500 + output * 10_000) as i64);
        total = total.checked_add(cost).context("total cost overflows")?;
        events.push(
            LlmCall::new(
                &format!("scale-p{}", i as usize % PROJECTS),
                "gpt-4o",
                "openai",
            )
            .tokens(input, output)
            .cost(&cost.to_string())
            .latency_ms(100)
            .id(format!("scale-{i}"))
            .source("bench/llm-gateway")
            .time(at)
            .build()?,
        );
    }
    for chunk in events.chunks(10_000) {
        for r in bus.publish_events(chunk).await {
            r?;
        }
    }
    let end = bus.last_seq().await?.0;
    let single = fold(settings, 1, 1, end, total).await?;
    let mut members = Vec::new();
    for k in 1..=3 {
        members.push((
            k,
            fold(settings, opts.scale_out_partitions, k, end, total).await?,
        ));
    }
    Ok(ScaleFigures {
        events: n,
        partitions: opts.scale_out_partitions,
        single: per_second(n, single),
        members: members
            .into_iter()
            .map(|(k, took)| (k, per_second(n, took)))
            .collect(),
    })
}

/// Folds the stream into a database of its own with `processes` processes of `kairos consume
/// budgets` and `partitions`; how long until the checkpoint reached `end`.
async fn fold(
    settings: &Settings,
    partitions: u32,
    processes: usize,
    end: u64,
    total: Money,
) -> anyhow::Result<Duration> {
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let db = BenchDb::create(&settings.database.url, &run_id).await?;
    let result = async {
        let exe = std::env::current_exe().context("the kairos binary")?;
        let env = [
            (
                "KAIROS_DATABASE_URL",
                with_database(&settings.database.url, &db.name),
            ),
            ("KAIROS_NATS_URL", settings.nats.url.clone()),
            ("KAIROS_NATS_STREAM", settings.nats.stream.clone()),
            (
                "KAIROS_NATS_SUBJECT_PREFIX",
                settings.nats.subject_prefix.clone(),
            ),
            ("KAIROS_PROJECTIONS_PARTITIONS", partitions.to_string()),
            ("RUST_LOG", "error".into()),
        ];
        let migrated = Command::new(&exe)
            .arg("migrate")
            .envs(env.iter().cloned())
            .stdout(Stdio::null())
            .status()
            .context("kairos migrate")?;
        ensure!(migrated.success(), "kairos migrate failed: {migrated}");
        let pool = db.pool(2).await?;
        let started = Instant::now();
        let mut children = Children(
            (0..processes)
                .map(|_| {
                    Command::new(&exe)
                        .args(["consume", "budgets"])
                        .envs(env.iter().cloned())
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .spawn()
                })
                .collect::<Result<_, _>>()
                .context("kairos consume")?,
        );
        loop {
            let at: i64 = sqlx::query_scalar(
                "SELECT coalesce(max(last_seq), 0) FROM kairos.checkpoints
                 WHERE projection = 'budgets'",
            )
            .fetch_one(&pool)
            .await?;
            if at as u64 >= end {
                break;
            }
            // A figure with a process fewer than it says would be false.
            for c in &mut children.0 {
                if let Some(status) = c.try_wait()? {
                    anyhow::bail!("a `kairos consume budgets` process exited: {status}");
                }
            }
            ensure!(
                started.elapsed() < Duration::from_secs(600),
                "budgets did not reach {end} in 10 minutes ({processes} processes)"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = started.elapsed();
        let spent: i64 =
            sqlx::query_scalar("SELECT coalesce(sum(spent_nanos), 0)::int8 FROM budgets.spend")
                .fetch_one(&pool)
                .await?;
        ensure!(
            spent == total.nanos(),
            "budgets spent {spent} nano-USD, the calls cost {}",
            total.nanos()
        );
        pool.close().await;
        anyhow::Ok(took)
    }
    .await;
    if let Err(e) = db.drop_database().await {
        eprintln!("kairos bench: {e:#}");
    }
    result
}

pub(super) fn print(f: &ScaleFigures) {
    println!(
        "\nscale-out of budgets: {} calls over {PROJECTS} projects, {} partitions, `kairos consume budgets` processes",
        f.events, f.partitions
    );
    let one = f.members.first().map_or(f64::NAN, |(_, r)| *r);
    let mut rows = vec![row("one runner, unpartitioned", f.single, "ev/s")];
    for (k, rate) in &f.members {
        rows.push(row(
            format!("{k} process{}", if *k == 1 { "" } else { "es" }),
            *rate,
            "ev/s",
        ));
        if let Some(last) = rows.last_mut() {
            last.ratio = Some((rate / one, "1 process"));
        }
    }
    print_rows(rows);
}
