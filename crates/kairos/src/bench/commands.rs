//! Admin commands under an ingest flood: with every projection far behind the stream (a backlog
//! published before they start) and LLM calls still arriving at `--flood-rate`, many admin
//! commands at once (invitations, role changes, key issues, budget sets) must each succeed or
//! answer 409, quickly, while other requests keep answering and the database pool keeps
//! connections free.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use async_nats::jetstream;
use chrono::Utc;
use futures_util::StreamExt;
use serde_json::{Value, json};

use super::{
    AbortOnDrop, BenchOptions, HTTP_BATCH, Instance, batch_body, llm_calls, per_second, post_batch,
    print_rows, row,
};
use crate::configuration::Settings;

/// What the phase measured.
pub(super) struct CommandFigures {
    commands: usize,
    succeeded: usize,
    conflicts: usize,
    /// Answers that were neither a success nor 409: status and the start of the body.
    failures: Vec<String>,
    /// One per command, sorted.
    latencies: Vec<Duration>,
    /// The same by kind of command (invite, role change, key issue, budget set), sorted.
    by_kind: [Vec<Duration>; 4],
    flood_rate: f64,
    /// How far the budgets projection was behind the newest event, in time, when the commands
    /// started and when they had all answered.
    behind_at_start: Duration,
    behind_at_end: Duration,
    reads: usize,
    read_failures: usize,
    read_latencies: Vec<Duration>,
    pool_max: u32,
    pool_most_in_use: u32,
    pool_exhausted_samples: usize,
}

fn percentile(samples: &[Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
    samples[rank - 1]
}

/// Runs the phase on an instance of its own and removes it.
pub(super) async fn figures(
    mut settings: Settings,
    js: &jetstream::Context,
    opts: &BenchOptions,
) -> anyhow::Result<CommandFigures> {
    // One key sends the flood, the reads and the commands: the per-key limit would measure
    // itself.
    settings.http.rate_limit_per_second = 0;
    // The admin issues itself a key per fourth command: more than the default cap.
    settings.auth.max_keys_per_member = 10_000;
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let instance = Instance::start(settings, &run_id).await?;
    let measured = measure(&instance, &run_id, opts).await;
    instance.remove(js).await;
    measured
}

async fn measure(
    instance: &Instance,
    run_id: &str,
    opts: &BenchOptions,
) -> anyhow::Result<CommandFigures> {
    let k = &instance.k;
    let (base, _server) = instance.serve_api().await?;
    let http = instance.client()?;
    let at = Utc::now();
    let targets = opts.commands.div_ceil(4).max(1);

    // Members whose roles the commands change, made before the flood.
    let mut members = Vec::with_capacity(targets);
    for i in 0..targets {
        let inv: Value = http
            .post(format!("{base}/v1/invitations"))
            .json(&json!({"email": format!("m{i}-{run_id}@bench.local"), "role": "viewer"}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let joined: Value = reqwest::Client::new()
            .post(format!(
                "{base}{}",
                inv["accept"].as_str().unwrap_or_default()
            ))
            .json(&json!({"token": inv["token"]}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        members.push(
            joined["member_id"]
                .as_str()
                .context("an accepted invitation names its member")?
                .to_owned(),
        );
    }

    // The backlog the projections start behind, straight onto the stream.
    let mut published = 0;
    while published < opts.backlog {
        let n = (opts.backlog - published).min(10_000);
        let (chunk, _) = llm_calls(run_id, &format!("backlog{published}"), n, at)?;
        for r in k.bus.publish_events(&chunk).await {
            r?;
        }
        published += n;
    }
    let _projections: Vec<AbortOnDrop<_>> = k
        .projection_names()
        .into_iter()
        .map(|name| k.spawn_projection(name).map(AbortOnDrop))
        .collect::<anyhow::Result<_>>()?;

    // The flood: batches of HTTP_BATCH at `flood_rate`, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let flooded = Arc::new(AtomicU64::new(0));
    let per_second_batches = (opts.flood_rate as usize).div_ceil(HTTP_BATCH).max(1);
    let flood_seconds = 60;
    let (events, _) = llm_calls(
        run_id,
        "flood",
        per_second_batches * HTTP_BATCH * flood_seconds,
        at,
    )?;
    let bodies: Vec<Vec<u8>> = events.chunks(HTTP_BATCH).map(batch_body).collect();
    drop(events);
    let flood = {
        let (http, url, stop, flooded) = (
            http.clone(),
            format!("{base}/v1/events"),
            stop.clone(),
            flooded.clone(),
        );
        let every = Duration::from_secs(1) / per_second_batches as u32;
        AbortOnDrop(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            let mut in_flight = futures_util::stream::FuturesUnordered::new();
            for body in bodies {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                tick.tick().await;
                in_flight.push(post_batch(&http, &url, HTTP_BATCH, body));
                while in_flight.len() >= 8 {
                    if let Some(r) = in_flight.next().await {
                        r?;
                        flooded.fetch_add(HTTP_BATCH as u64, Ordering::Relaxed);
                    }
                }
            }
            while let Some(r) = in_flight.next().await {
                r?;
                flooded.fetch_add(HTTP_BATCH as u64, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }))
    };
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Reads beside the commands, and the pool watched.
    let reader = {
        let (http, base, stop) = (http.clone(), base.clone(), stop.clone());
        AbortOnDrop(tokio::spawn(async move {
            let (mut latencies, mut failures) = (Vec::new(), 0);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let path = if i.is_multiple_of(2) {
                    "/v1/me".to_owned()
                } else {
                    format!("/v1/projects/bench-p{}/budget", i % 10)
                };
                i += 1;
                let started = Instant::now();
                match http.get(format!("{base}{path}")).send().await {
                    Ok(r) if r.status().is_success() || r.status().as_u16() == 404 => {
                        latencies.push(started.elapsed());
                    }
                    _ => failures += 1,
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (latencies, failures)
        }))
    };
    let pool_max = k.settings.database.max_connections;
    let sampler = {
        let (pool, stop) = (k.pool.clone(), stop.clone());
        AbortOnDrop(tokio::spawn(async move {
            let (mut most, mut exhausted) = (0u32, 0usize);
            while !stop.load(Ordering::Relaxed) {
                let in_use = pool.size().saturating_sub(pool.num_idle() as u32);
                most = most.max(in_use);
                if pool.size() >= pool_max && pool.num_idle() == 0 {
                    exhausted += 1;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (most, exhausted)
        }))
    };

    let behind_at_start = behind(k).await?;
    let flooded_before = flooded.load(Ordering::Relaxed);
    let flood_started = Instant::now();
    let commands = (0..opts.commands).map(|i| {
        let (http, base, members) = (&http, &base, &members);
        async move {
            let n = i / 4;
            let request = match i % 4 {
                0 => http.post(format!("{base}/v1/invitations")).json(
                    &json!({"email": format!("new{i}-{run_id}@bench.local"), "role": "developer"}),
                ),
                1 => http
                    .put(format!(
                        "{base}/v1/members/{}/role",
                        members[n % members.len()]
                    ))
                    .json(
                        &json!({"role": if n.is_multiple_of(2) { "developer" } else { "viewer" }}),
                    ),
                2 => http
                    .post(format!("{base}/v1/api-keys"))
                    .json(&json!({"name": format!("bench key {i}")})),
                _ => http
                    .put(format!("{base}/v1/projects/cmd-p{n}/budget"))
                    .json(&json!({"monthly_limit": format!("{}.00", 10 + n)})),
            };
            let started = Instant::now();
            let answer = request.send().await;
            let elapsed = started.elapsed();
            let outcome = match answer {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let body = r.text().await.unwrap_or_default();
                    (status, body.chars().take(200).collect::<String>())
                }
                Err(e) => (0, e.to_string()),
            };
            (i % 4, elapsed, outcome)
        }
    });
    let answers = futures_util::future::join_all(commands).await;
    let behind_at_end = behind(k).await?;
    let flood_rate = per_second(
        (flooded.load(Ordering::Relaxed) - flooded_before) as usize,
        flood_started.elapsed(),
    );
    stop.store(true, Ordering::Relaxed);
    let (read_latencies, read_failures) = reader.wait().await?;
    let (pool_most_in_use, pool_exhausted_samples) = sampler.wait().await?;
    flood.wait().await??;

    let mut latencies = Vec::with_capacity(answers.len());
    let mut by_kind: [Vec<Duration>; 4] = Default::default();
    let (mut succeeded, mut conflicts, mut failures) = (0, 0, Vec::new());
    for (kind, elapsed, (status, body)) in answers {
        latencies.push(elapsed);
        by_kind[kind].push(elapsed);
        match status {
            200..=299 => succeeded += 1,
            409 => conflicts += 1,
            _ => failures.push(format!("{status} {body}")),
        }
    }
    latencies.sort();
    for k in &mut by_kind {
        k.sort();
    }
    let mut read_latencies = read_latencies;
    read_latencies.sort();
    ensure!(
        behind_at_start >= Duration::from_secs(1),
        "the projections were only {behind_at_start:?} behind: raise --backlog"
    );
    Ok(CommandFigures {
        commands: opts.commands,
        succeeded,
        conflicts,
        failures,
        latencies,
        by_kind,
        flood_rate,
        behind_at_start,
        behind_at_end,
        reads: read_latencies.len(),
        read_failures,
        read_latencies,
        pool_max,
        pool_most_in_use,
        pool_exhausted_samples,
    })
}

/// How far the budgets projection is behind the newest event on the stream: the time between
/// when the stream stored the first event it has not applied and now (zero when caught up).
async fn behind(k: &crate::startup::Kairos) -> anyhow::Result<Duration> {
    let applied = kairos_runtime::checkpoint(&k.pool, kairos_budgets::NAME)
        .await?
        .map_or(0, |c| c.last_seq);
    let last = k.bus.last_seq().await?.0;
    if applied >= last {
        return Ok(Duration::ZERO);
    }
    let stored = k
        .bus
        .jetstream()
        .get_stream_no_info(k.bus.stream_name())
        .await?
        .get_raw_message(applied + 1)
        .await?
        .time;
    Ok((Utc::now() - stored).to_std().unwrap_or_default())
}

impl<T> AbortOnDrop<T> {
    /// Waits for the task to finish on its own.
    async fn wait(mut self) -> anyhow::Result<T> {
        Ok((&mut self.0).await?)
    }
}

pub(super) fn print(f: &CommandFigures, opts: &BenchOptions) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p99 = ms(percentile(&f.latencies, 0.99));
    let answered_well = f.failures.is_empty();
    let rows = [
        row("commands: flood rate achieved", f.flood_rate, "ev/s")
            .ratio(f.flood_rate / opts.flood_rate, "requested rate"),
        row(
            "commands: budgets behind the stream, at start",
            f.behind_at_start.as_secs_f64(),
            "s",
        )
        .target(">= 5 s", f.behind_at_start >= Duration::from_secs(5)),
        row(
            "commands: budgets behind the stream, at end",
            f.behind_at_end.as_secs_f64(),
            "s",
        ),
        row(
            format!("commands: {} at once, succeeded", f.commands),
            f.succeeded as f64,
            "",
        ),
        row("commands: answered 409", f.conflicts as f64, ""),
        row("commands: any other answer", f.failures.len() as f64, "").target("0", answered_well),
        row("commands p50", ms(percentile(&f.latencies, 0.50)), "ms"),
        row("commands p99", p99, "ms").target("< 100 ms", p99 < 100.0),
        row(
            "  invitations p50 / p99",
            ms(percentile(&f.by_kind[0], 0.5)),
            "ms",
        ),
        row("", ms(percentile(&f.by_kind[0], 0.99)), "ms"),
        row(
            "  role changes p50 / p99",
            ms(percentile(&f.by_kind[1], 0.5)),
            "ms",
        ),
        row("", ms(percentile(&f.by_kind[1], 0.99)), "ms"),
        row(
            "  key issues p50 / p99",
            ms(percentile(&f.by_kind[2], 0.5)),
            "ms",
        ),
        row("", ms(percentile(&f.by_kind[2], 0.99)), "ms"),
        row(
            "  budget sets p50 / p99",
            ms(percentile(&f.by_kind[3], 0.5)),
            "ms",
        ),
        row("", ms(percentile(&f.by_kind[3], 0.99)), "ms"),
        row("reads beside them (GET /v1/me, budget)", f.reads as f64, ""),
        row("reads failed", f.read_failures as f64, "").target("0", f.read_failures == 0),
        row("reads p99", ms(percentile(&f.read_latencies, 0.99)), "ms"),
        row(
            format!("pool: most connections in use (of {})", f.pool_max),
            f64::from(f.pool_most_in_use),
            "",
        ),
        row(
            "pool: samples with none free",
            f.pool_exhausted_samples as f64,
            "",
        )
        .target("0", f.pool_exhausted_samples == 0),
    ];
    println!(
        "\nAdmin commands under an ingest flood ({} backlog events before the projections start):\n",
        opts.backlog
    );
    print_rows(rows);
    for failure in f.failures.iter().take(5) {
        println!("  unexpected answer: {failure}");
    }
}
