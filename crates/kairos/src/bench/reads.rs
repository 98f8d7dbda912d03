//! Reads under load: `--read-connections` keep-alive connections each sending authenticated
//! `GET /v1/projects/{p}/budget` for `--read-seconds`, held against the raw ceiling measured in
//! the same run: the same count of concurrent point selects of that budget row through sqlx,
//! on a pool of the same size, without HTTP.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::ensure;
use async_nats::jetstream;
use chrono::Utc;
use kairos_events::{Period, ProjectId};
use serde_json::json;

use super::{BenchOptions, Instance, budget_zone, per_second, print_rows, row};
use crate::configuration::Settings;

pub(super) struct ReadFigures {
    connections: usize,
    http: Load,
    raw: Load,
    pool_size: u32,
}

pub(super) struct Load {
    pub(super) per_second: f64,
    /// One per request, sorted.
    pub(super) latencies: Vec<Duration>,
    pub(super) errors: usize,
}

impl Load {
    pub(super) fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank =
            ((p * self.latencies.len() as f64).ceil() as usize).clamp(1, self.latencies.len());
        self.latencies[rank - 1]
    }
}

/// Runs the phase on an instance of its own and removes it.
pub(super) async fn figures(
    mut settings: Settings,
    js: &jetstream::Context,
    opts: &BenchOptions,
) -> anyhow::Result<ReadFigures> {
    // One key sends every request: the per-key limit would measure itself.
    settings.http.rate_limit_per_second = 0;
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let instance = Instance::start(settings, &run_id).await?;
    let measured = measure(&instance, opts).await;
    instance.remove(js).await;
    measured
}

/// Runs `work` on `tasks` concurrent tasks for `seconds`, each task timing its calls.
pub(super) async fn load<F, Fut>(tasks: usize, seconds: u64, work: F) -> Load
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let (work, stop) = (work.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut latencies, mut errors) = (Vec::new(), 0);
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    if work().await {
                        latencies.push(started.elapsed());
                    } else {
                        errors += 1;
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let (mut latencies, mut errors) = (Vec::new(), 0);
    for h in handles {
        if let Ok((l, e)) = h.await {
            latencies.extend(l);
            errors += e;
        }
    }
    latencies.sort();
    Load {
        per_second: per_second(latencies.len(), elapsed),
        latencies,
        errors,
    }
}

async fn measure(instance: &Instance, opts: &BenchOptions) -> anyhow::Result<ReadFigures> {
    let k = &instance.k;
    let (base, _server) = instance.serve_api().await?;
    let _budgets = super::AbortOnDrop(k.spawn_projection(kairos_budgets::NAME)?);
    let project = ProjectId::parse("bench-read")?;
    let put: serde_json::Value = instance
        .client()?
        .put(format!("{base}/v1/projects/{project}/budget"))
        .json(&json!({"monthly_limit": "100"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let seq = put["seq"].as_u64().unwrap_or(0);
    let url = format!("{base}/v1/projects/{project}/budget");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(opts.read_connections)
        .default_headers({
            let mut h = reqwest::header::HeaderMap::new();
            h.insert(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {}", instance.key).parse()?,
            );
            h
        })
        .build()?;
    let read = http
        .get(format!("{url}?min_seq={seq}"))
        .send()
        .await?
        .error_for_status()?;
    ensure!(read.status().as_u16() == 200, "the budget reads back");

    let period = Period::containing(Utc::now(), &budget_zone(k)?);
    let raw = {
        let (pool, project) = (k.pool.clone(), project.clone());
        load(opts.read_connections, opts.read_seconds, move || {
            let (pool, project) = (pool.clone(), project.clone());
            async move {
                matches!(
                    kairos_budgets::read(&pool, &project, period).await,
                    Ok(Some(_))
                )
            }
        })
        .await
    };
    let through_http = {
        let (http, url) = (http.clone(), url.clone());
        load(opts.read_connections, opts.read_seconds, move || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                match http.get(&url).send().await {
                    Ok(r) if r.status().as_u16() == 200 => r.bytes().await.is_ok(),
                    _ => false,
                }
            }
        })
        .await
    };
    Ok(ReadFigures {
        connections: opts.read_connections,
        http: through_http,
        raw,
        pool_size: k.settings.database.max_connections,
    })
}

pub(super) fn print(f: &ReadFigures) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let ratio = f.http.per_second / f.raw.per_second.max(1e-9);
    let p99 = ms(f.http.percentile(0.99));
    let rows = [
        row(
            format!("raw point selects, {} at once", f.connections),
            f.raw.per_second,
            "sel/s",
        ),
        row("raw select p50", ms(f.raw.percentile(0.5)), "ms"),
        row("raw select p99", ms(f.raw.percentile(0.99)), "ms"),
        row(
            format!("GET budget, {} keep-alive connections", f.connections),
            f.http.per_second,
            "req/s",
        )
        .ratio(ratio, "raw point selects")
        .target(">= 0.50", ratio >= 0.5),
        row("GET budget p50", ms(f.http.percentile(0.5)), "ms"),
        row("GET budget p99", p99, "ms").target("< 50 ms", p99 < 50.0),
        row("GET budget errors", f.http.errors as f64, "").target("0", f.http.errors == 0),
    ];
    println!(
        "\nReads under load (a pool of {} connections on both sides):\n",
        f.pool_size
    );
    print_rows(rows);
}
