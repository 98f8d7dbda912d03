//! The workflows projection: `--workflow-events` task events (started and completed, sessions of
//! planted workflows with 15 % noise tasks, 200 runs in flight at a time, 20 projects) posted
//! first, then the projection started alone and timed until it has applied them all (checked:
//! the sessions' steps add up to the tasks sent); then `GET …/suggestions` for random sessions
//! from 8 concurrent clients for `--read-seconds` (at most 5 s).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use kairos_client::{TaskCompleted, TaskStarted};
use kairos_events::Event;

use super::reads::{Load, load};
use super::{AbortOnDrop, BenchOptions, Instance, ingest, per_second, print_rows, row};
use crate::configuration::Settings;

const PROJECTS: usize = 20;
const IN_FLIGHT: usize = 200;
const READERS: usize = 8;

pub(super) struct WorkflowFigures {
    events: usize,
    apply: f64,
    sessions: i64,
    reads: Load,
}

/// Runs the phase on an instance of its own and removes it.
pub(super) async fn figures(
    mut settings: Settings,
    js: &jetstream::Context,
    opts: &BenchOptions,
) -> anyhow::Result<WorkflowFigures> {
    settings.http.rate_limit_per_second = 0;
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let instance = Instance::start(settings, &run_id).await?;
    let measured = measure(&instance, &run_id, opts).await;
    instance.remove(js).await;
    measured
}

/// A small deterministic generator.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Task events of interleaved runs of 5 planted workflows over 30 task types, and the number of
/// tasks (steps) they hold.
fn task_events(run_id: &str, n: usize) -> anyhow::Result<(Vec<Event>, usize, Vec<String>)> {
    let types: Vec<String> = (0..30).map(|i| format!("task-{i}")).collect();
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let workflows: Vec<Vec<usize>> = (0..5)
        .map(|_| {
            let len = 4 + rng.below(3) as usize;
            (0..len).map(|_| rng.below(30) as usize).collect()
        })
        .collect();
    // (project, session, workflow, next step)
    let mut live: Vec<(usize, String, usize, usize)> = Vec::new();
    let (mut events, mut tasks, mut started) = (Vec::with_capacity(n), 0, 0usize);
    let mut sessions = Vec::new();
    while events.len() + 2 <= n {
        while live.len() < IN_FLIGHT {
            started += 1;
            let session = format!("{run_id}-w{started}");
            live.push((
                started % PROJECTS,
                session,
                rng.below(workflows.len() as u64) as usize,
                0,
            ));
        }
        let i = rng.below(live.len() as u64) as usize;
        let (project, session, w, step) = &mut live[i];
        if *step == 0 {
            // Its first task: the session exists from now on.
            sessions.push(session.clone());
        }
        let task = if rng.below(100) < 15 {
            &types[rng.below(30) as usize]
        } else {
            *step += 1;
            &types[workflows[*w][*step - 1]]
        };
        let project = format!("bench-p{project}");
        let task_id = format!("t{tasks}");
        events.push(
            TaskStarted::new(&project, session, &task_id, task)
                .actor("agent")
                .id(format!("{run_id}-s{tasks}"))
                .source("bench/agents")
                .build()?,
        );
        events.push(
            TaskCompleted::new(&project, session, &task_id, task, "ok")
                .actor("agent")
                .id(format!("{run_id}-c{tasks}"))
                .source("bench/agents")
                .build()?,
        );
        tasks += 1;
        if *step == workflows[*w].len() {
            live.swap_remove(i);
        }
    }
    // A run whose first tasks were noise was pushed more than once.
    sessions.sort_unstable();
    sessions.dedup();
    Ok((events, tasks, sessions))
}

async fn measure(
    instance: &Instance,
    run_id: &str,
    opts: &BenchOptions,
) -> anyhow::Result<WorkflowFigures> {
    let k = &instance.k;
    let (base, _server) = instance.serve_api().await?;
    let http = instance.client()?;
    let (events, tasks, sessions) = task_events(run_id, opts.workflow_events)?;
    ingest(&http, &base, &events).await?;
    let last = k.bus.last_seq().await?.0;
    let started = Instant::now();
    let _projection = AbortOnDrop(k.spawn_projection(kairos_workflows::NAME)?);
    kairos_runtime::CheckpointWatch::start(k.pool.clone())
        .await?
        .wait_for(kairos_workflows::NAME, last, Duration::from_secs(900))
        .await?;
    let apply = per_second(events.len(), started.elapsed());
    let (steps, stored): (i64, i64) =
        sqlx::query_as("SELECT coalesce(sum(steps), 0)::int8, count(*) FROM workflows.sessions")
            .fetch_one(&k.pool)
            .await?;
    anyhow::ensure!(
        steps == tasks as i64,
        "the workflows projection counted {steps} steps, not {tasks}"
    );
    println!("  workflows apply: {apply:.0} events/s, {tasks} steps verified");
    let picks = Arc::new(sessions);
    let next = Arc::new(AtomicUsize::new(0));
    let reads = load(READERS, opts.read_seconds.clamp(1, 5), {
        let (http, base) = (http.clone(), base.clone());
        move || {
            let (http, base, picks) = (http.clone(), base.clone(), picks.clone());
            let n = next.fetch_add(1, Ordering::Relaxed);
            async move {
                // Sessions in a scattered order (Knuth's multiplicative hash).
                let i = n.wrapping_mul(2_654_435_761) % picks.len().max(1);
                let url = format!("{base}/v1/workflows/sessions/{}/suggestions", picks[i]);
                match http.get(url).send().await {
                    Ok(r) if r.status().is_success() => r
                        .json::<serde_json::Value>()
                        .await
                        .is_ok_and(|v| v["suggestions"].is_array()),
                    _ => false,
                }
            }
        }
    })
    .await;
    Ok(WorkflowFigures {
        events: events.len(),
        apply,
        sessions: stored,
        reads,
    })
}

pub(super) fn print(f: &WorkflowFigures) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p99 = ms(f.reads.percentile(0.99));
    let rows = [
        row(
            format!(
                "workflows apply ({} events, {} sessions)",
                f.events, f.sessions
            ),
            f.apply,
            "ev/s",
        )
        .target(">= 20,000", f.apply >= 20_000.0),
        row(
            format!("suggestion reads, {READERS} at once"),
            f.reads.per_second,
            "req/s",
        ),
        row("  p50", ms(f.reads.percentile(0.5)), "ms"),
        row("  p99", p99, "ms").target("< 10 ms", p99 < 10.0),
        row("suggestion read errors", f.reads.errors as f64, "").target("0", f.reads.errors == 0),
    ];
    println!("\nWorkflows (task events posted first, then the projection alone):\n");
    print_rows(rows);
}
