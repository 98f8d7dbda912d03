//! Route decisions under load: `--route-concurrency` clients sending `POST /v1/route` for
//! `--route-seconds`, twice: for a project without a budget (no reservation: a decision and its
//! event) and for one with a budget large enough to admit every call (each route also appends
//! its reservation on the budget's subject with optimistic concurrency). The reserved rate is
//! held against the raw ceiling measured in the same run: the same count of concurrent
//! synchronous JetStream publishes (each awaiting its ack) on one subject.

use std::time::Duration;

use async_nats::jetstream;
use serde_json::json;

use super::reads::{Load, load};
use super::{BenchOptions, Instance, print_rows, row};
use crate::configuration::Settings;

pub(super) struct RouteFigures {
    concurrency: usize,
    unreserved: Load,
    reserved: Load,
    raw: Load,
}

/// Runs the phase on an instance of its own and removes it.
pub(super) async fn figures(
    mut settings: Settings,
    js: &jetstream::Context,
    opts: &BenchOptions,
) -> anyhow::Result<RouteFigures> {
    settings.http.rate_limit_per_second = 0;
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let instance = Instance::start(settings, &run_id).await?;
    let measured = measure(&instance, js, opts).await;
    instance.remove(js).await;
    measured
}

async fn measure(
    instance: &Instance,
    js: &jetstream::Context,
    opts: &BenchOptions,
) -> anyhow::Result<RouteFigures> {
    let (base, _server) = instance.serve_api().await?;
    let _budgets = super::AbortOnDrop(instance.k.spawn_projection(kairos_budgets::NAME)?);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(opts.route_concurrency)
        .default_headers({
            let mut h = reqwest::header::HeaderMap::new();
            h.insert(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {}", instance.key).parse()?,
            );
            h
        })
        .build()?;
    http.put(format!("{base}/v1/projects/bench-paid/budget"))
        .json(&json!({"monthly_limit": "900000000", "on_exceeded": "block"}))
        .send()
        .await?
        .error_for_status()?;
    let route = |project: &'static str, outcome: &'static str| {
        let (http, url) = (http.clone(), format!("{base}/v1/route"));
        move || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let body = json!({"project": project, "input_tokens": 2000,
                                  "expected_output_tokens": 500, "max_output_tokens": 500});
                match http.post(&url).json(&body).send().await {
                    Ok(r) if r.status().as_u16() == 200 => r
                        .json::<serde_json::Value>()
                        .await
                        .is_ok_and(|v| v["outcome"] == outcome),
                    _ => false,
                }
            }
        }
    };
    let n = opts.route_concurrency;
    let secs = opts.route_seconds;
    // A first route of each kind warms the aggregate and the health figures.
    anyhow::ensure!(
        route("bench-free", "routed")().await,
        "a route without a budget is decided"
    );
    anyhow::ensure!(
        route("bench-paid", "reserved")().await,
        "a route with a budget reserves"
    );
    let unreserved = load(n, secs, route("bench-free", "routed")).await;
    let reserved = load(n, secs, route("bench-paid", "reserved")).await;
    let raw = {
        let stream = format!("BENCH_ROUTE_RAW_{}", uuid::Uuid::new_v4().simple());
        let subject = format!("{stream}.x");
        js.create_stream(jetstream::stream::Config {
            name: stream.clone(),
            subjects: vec![subject.clone()],
            ..Default::default()
        })
        .await?;
        // The size of a decision event.
        let payload: &'static [u8] = &[b'x'; 700];
        let (js2, subject2) = (js.clone(), subject.clone());
        let figures = load(n, secs, move || {
            let (js, subject) = (js2.clone(), subject2.clone());
            async move {
                match js.publish(subject, payload.into()).await {
                    Ok(ack) => ack.await.is_ok(),
                    Err(_) => false,
                }
            }
        })
        .await;
        let _ = js.delete_stream(&stream).await;
        figures
    };
    Ok(RouteFigures {
        concurrency: n,
        unreserved,
        reserved,
        raw,
    })
}

pub(super) fn print(f: &RouteFigures) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let ratio = f.reserved.per_second / f.raw.per_second.max(1e-9);
    let p99 = ms(f.unreserved.percentile(0.99));
    let n = f.concurrency;
    let rows = [
        row(
            format!("raw sync publishes, {n} at once"),
            f.raw.per_second,
            "msg/s",
        ),
        row("raw publish p50", ms(f.raw.percentile(0.5)), "ms"),
        row("raw publish p99", ms(f.raw.percentile(0.99)), "ms"),
        row(
            format!("routes, no reservation, {n} at once"),
            f.unreserved.per_second,
            "dec/s",
        ),
        row("  p50", ms(f.unreserved.percentile(0.5)), "ms"),
        row("  p99", p99, "ms").target("< 5 ms", p99 < 5.0),
        row(
            format!("routes with a reservation, {n} at once"),
            f.reserved.per_second,
            "dec/s",
        )
        .ratio(ratio, "raw sync publishes")
        .target(">= 0.50", ratio >= 0.5),
        row("  p50", ms(f.reserved.percentile(0.5)), "ms"),
        row("  p99", ms(f.reserved.percentile(0.99)), "ms"),
        row(
            "route errors",
            (f.unreserved.errors + f.reserved.errors) as f64,
            "",
        )
        .target("0", f.unreserved.errors + f.reserved.errors == 0),
    ];
    println!("\nRoute decisions (POST /v1/route over HTTP, the catalog of kairos.toml):\n");
    print_rows(rows);
}
