//! The anomalies projection: `--metric-points` `kairos.metric.recorded.v1` samples across
//! `--metric-series` series (a daily cycle with noise, points interleaved as a service receives
//! them) posted first, then the projection started alone and timed until it has applied them
//! all (checked: the series' point counts add up to the samples sent). The same points through
//! the detectors alone, in this process without I/O, give the ceiling the projection is held
//! against, measured in the same run.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use kairos_anomalies::detector::Detector;
use kairos_client::Metric;
use kairos_events::Event;

use super::{AbortOnDrop, BenchOptions, Instance, ingest, per_second, print_rows, row};
use crate::configuration::Settings;

pub(super) struct AnomalyFigures {
    points: usize,
    series: usize,
    apply: f64,
    detector: f64,
    state_bytes: usize,
    saved_bytes: usize,
}

/// Runs the phase on an instance of its own and removes it.
pub(super) async fn figures(
    mut settings: Settings,
    js: &jetstream::Context,
    opts: &BenchOptions,
) -> anyhow::Result<AnomalyFigures> {
    settings.http.rate_limit_per_second = 0;
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let instance = Instance::start(settings, &run_id).await?;
    let measured = measure(&instance, &run_id, opts).await;
    instance.remove(js).await;
    measured
}

/// The value of series `s` at point `i`: a daily cycle of 5-minute points with noise.
fn value(s: usize, i: usize, noise: &mut u64) -> f64 {
    *noise ^= *noise << 13;
    *noise ^= *noise >> 7;
    *noise ^= *noise << 17;
    let n = (*noise >> 11) as f64 / (1u64 << 53) as f64;
    let phase = (i + 37 * s) as f64 * std::f64::consts::TAU / 288.0;
    100.0 + 30.0 * phase.sin() + 5.0 * n
}

async fn measure(
    instance: &Instance,
    run_id: &str,
    opts: &BenchOptions,
) -> anyhow::Result<AnomalyFigures> {
    let k = &instance.k;
    let series = opts.metric_series.max(1);
    let per_series = (opts.metric_points / series).max(1);
    let points = per_series * series;
    let start: chrono::DateTime<chrono::Utc> = "2026-01-01T00:00:00Z".parse()?;
    let mut noise = 0x2545_F491_4F6C_DD1Du64;
    let mut values = Vec::with_capacity(points);
    let mut events: Vec<Event> = Vec::with_capacity(points);
    // In blocks of 50 points per series, so that each series' points stay in order although
    // the HTTP batches (1,000 events, 4 in flight) may be stored out of order: a point older
    // than its series' last is not scored.
    const BLOCK: usize = 50;
    let order = (0..per_series.div_ceil(BLOCK)).flat_map(|b| {
        (0..series)
            .flat_map(move |s| (b * BLOCK..((b + 1) * BLOCK).min(per_series)).map(move |i| (s, i)))
    });
    for (s, i) in order {
        let at = start + chrono::TimeDelta::minutes(5 * i as i64);
        let v = value(s, i, &mut noise);
        values.push((s, v));
        events.push(
            Metric::new(&format!("bench-p{}", s % 20), "queue.depth", v)
                .label("host", &format!("h{s}"))
                .id(format!("{run_id}-{s}-{i}"))
                .source("bench/agents")
                .time(at)
                .build()?,
        );
    }
    // The ceiling: the same points through the detectors, no I/O.
    let mut detectors: Vec<Detector> = (0..series).map(|_| Detector::default()).collect();
    let began = Instant::now();
    let mut checksum = 0.0;
    for (s, v) in &values {
        checksum += detectors[*s].update(*v);
    }
    let detector = per_second(points, began.elapsed());
    std::hint::black_box(checksum);
    let (state_bytes, saved_bytes) = (detectors[0].state_bytes(), detectors[0].to_bytes().len());
    drop(detectors);

    let (base, _server) = instance.serve_api().await?;
    let http = instance.client()?;
    ingest(&http, &base, &events).await?;
    drop(events);
    let last = k.bus.last_seq().await?.0;
    let began = Instant::now();
    let _projection = AbortOnDrop(k.spawn_projection(kairos_anomalies::NAME)?);
    kairos_runtime::CheckpointWatch::start(k.pool.clone())
        .await?
        .wait_for(kairos_anomalies::NAME, last, Duration::from_secs(1800))
        .await?;
    let apply = per_second(points, began.elapsed());
    let (scored, watched): (i64, i64) =
        sqlx::query_as("SELECT coalesce(sum(points), 0)::int8, count(*) FROM anomalies.series")
            .fetch_one(&k.pool)
            .await?;
    anyhow::ensure!(
        scored == points as i64 && watched == series as i64,
        "the anomalies projection scored {scored} points of {watched} series, not {points} of {series}"
    );
    println!("  anomalies apply: {apply:.0} points/s, {points} points of {series} series verified");
    Ok(AnomalyFigures {
        points,
        series,
        apply,
        detector,
        state_bytes,
        saved_bytes,
    })
}

pub(super) fn print(f: &AnomalyFigures) {
    let rows = [
        row(
            format!("anomalies apply ({} points, {} series)", f.points, f.series),
            f.apply,
            "pt/s",
        )
        .ratio(f.apply / f.detector.max(1e-9), "the detectors alone")
        .target(">= 50,000", f.apply >= 50_000.0),
        row(
            "detectors alone, same points, no I/O (ceiling)",
            f.detector,
            "pt/s",
        ),
        row("detector memory per series", f.state_bytes as f64, "B"),
        row("detector state saved per series", f.saved_bytes as f64, "B"),
    ];
    println!("\nAnomalies (metric samples posted first, then the projection alone):\n");
    print_rows(rows);
}
