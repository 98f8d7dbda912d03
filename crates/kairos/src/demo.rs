//! Demo traffic: several projects, models and people, one project that crosses its budget.

use std::time::Duration;

use kairos_bus::Bus;
use kairos_client::{BudgetSet, LlmCall, Metric, Producer, TaskCompleted, TaskStarted, UserAction};
use kairos_events::{Event, Money};
use tracing::{info, warn};

/// (model, provider, USD per million input tokens, per million output tokens): the shipped
/// `kairos.toml` catalog's models and prices.
const MODELS: &[(&str, &str, i64, i64)] = &[
    ("gpt-4o", "openai", 2_500_000, 10_000_000),
    ("gpt-4o-mini", "openai", 150_000, 600_000),
    ("claude-sonnet-4", "anthropic", 3_000_000, 15_000_000),
    ("gemini-2.5-flash", "google", 300_000, 2_500_000),
    ("llama3.1:8b", "ollama", 0, 0),
];
/// (project, monthly budget): `research` is small enough to cross within minutes.
const PROJECTS: &[(&str, &str)] = &[
    ("checkout", "500.00"),
    ("search", "250.00"),
    ("support-bot", "120.00"),
    ("research", "3.00"),
];
const PEOPLE: &[(&str, &str)] = &[
    ("alice", "admin"),
    ("bob", "developer"),
    ("carol", "developer"),
    ("dave", "viewer"),
];
/// The agents' workflows: each demo run follows one, with a noise task now and then, so the
/// workflows projection has patterns to find and next tasks to suggest.
const WORKFLOWS: &[&[&str]] = &[
    &["retrieve", "rerank", "draft", "review"],
    &["plan", "write_code", "test", "build", "deploy"],
    &["classify", "retrieve", "draft", "summarise"],
    &["plan", "web_search", "web_search", "summarise", "review"],
];
const NOISE_TASKS: &[&str] = &["tool_call", "lookup", "notify"];

/// A workflow run in progress.
struct Run {
    project: &'static str,
    session: String,
    actor: &'static str,
    workflow: &'static [&'static str],
    next: usize,
}

/// The workflow runs in flight: each call advances one of them by a task (started, then
/// completed), starting a new run where one finished.
struct Runs {
    live: Vec<Run>,
    started: u64,
    tag: u32,
}

impl Runs {
    fn new() -> Self {
        Self {
            live: Vec::new(),
            started: 0,
            tag: std::process::id(),
        }
    }

    fn step(&mut self, rng: &mut Rng) -> anyhow::Result<Vec<Event>> {
        if self.live.len() < 12 {
            self.started += 1;
            self.live.push(Run {
                project: rng.pick(PROJECTS).0,
                session: format!("run-{}-{}", self.tag, self.started),
                actor: rng.pick(PEOPLE).0,
                workflow: WORKFLOWS[rng.below(WORKFLOWS.len() as u64) as usize],
                next: 0,
            });
        }
        let i = rng.below(self.live.len() as u64) as usize;
        let run = &mut self.live[i];
        let task = match rng.below(8) {
            0 => *rng.pick(NOISE_TASKS),
            _ => {
                run.next += 1;
                run.workflow[run.next - 1]
            }
        };
        let task_id = format!("t-{}", rng.next());
        let status = if rng.below(25) == 0 { "error" } else { "ok" };
        let events = vec![
            TaskStarted::new(run.project, &run.session, &task_id, task)
                .actor(run.actor)
                .source("demo/agents")
                .build()?,
            TaskCompleted::new(run.project, &run.session, &task_id, task, status)
                .duration_ms(rng.below(20_000))
                .actor(run.actor)
                .source("demo/agents")
                .build()?,
        ];
        if run.next == run.workflow.len() {
            self.live.swap_remove(i);
        }
        Ok(events)
    }
}

/// A small deterministic generator: the demo needs variety, not cryptographic randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// The demo's LLM call: tokens drawn at random, cost exact from the model's price list. One
/// call in three comes without a cost, as streamed calls often do: Kairos prices it from the
/// catalog.
fn llm_call(rng: &mut Rng, project: &str, session: &str) -> anyhow::Result<Event> {
    let &(model, provider, price_in, price_out) = rng.pick(MODELS);
    let input = 200 + rng.below(6_000);
    let output = 50 + rng.below(1_500);
    // price is nano-USD per token × 1000 (USD per million tokens in micro-USD): exact integers.
    let nanos = (input as i64 * price_in + output as i64 * price_out) / 1_000;
    let (who, _) = rng.pick(PEOPLE);
    let mut call = LlmCall::new(project, model, provider).tokens(input, output);
    if rng.below(3) != 0 {
        call = call.cost(&Money::from_nanos(nanos).to_string());
    }
    let mut call = call
        .latency_ms(150 + rng.below(3_000))
        .session(session)
        .actor(who)
        .source("demo/llm-gateway");
    if rng.below(40) == 0 {
        call = call.failed("rate limited by provider");
    }
    Ok(call.build()?)
}

/// Publishes demo events at about `per_second` until the task is dropped.
pub async fn run(bus: Bus, per_second: u32) -> anyhow::Result<()> {
    let producer = Producer::from_bus(bus);
    let mut budgets = Vec::new();
    for (project, limit) in PROJECTS {
        let policy = if *project == "research" {
            "block"
        } else {
            "fallback_to_local"
        };
        budgets.push(
            BudgetSet::new(project, limit)
                .on_exceeded(policy)
                .fallback_model("llama3.1:8b")
                .id(format!("demo-budget-{project}"))
                .source("demo/admin")
                .build()?,
        );
    }
    for r in producer.publish_all(&budgets).await {
        r?;
    }
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ u64::from(std::process::id()));
    let tick = Duration::from_millis(100);
    let per_tick = (per_second as usize).div_ceil(10).max(1);
    let mut interval = tokio::time::interval(tick);
    let mut sent: u64 = 0;
    let mut runs = Runs::new();
    info!(per_second, "demo traffic flowing");
    loop {
        interval.tick().await;
        let mut batch = Vec::with_capacity(per_tick);
        for _ in 0..per_tick {
            let (project, _) = *rng.pick(PROJECTS);
            let session = format!("s-{}", rng.below(50));
            let event = match rng.below(20) {
                0 => {
                    let (who, role) = *rng.pick(PEOPLE);
                    let outcome = if role == "viewer" {
                        "denied"
                    } else {
                        "success"
                    };
                    UserAction::new(who, "prompt.update", &format!("project:{project}"), outcome)
                        .project(project)
                        .role(role)
                        .source("demo/console")
                        .build()?
                }
                1 => Metric::new(project, "queue_depth", rng.below(100) as f64)
                    .unit("tasks")
                    .source("demo/metrics")
                    .build()?,
                2 | 3 => {
                    batch.extend(runs.step(&mut rng)?);
                    continue;
                }
                _ => llm_call(&mut rng, project, &session)?,
            };
            batch.push(event);
        }
        for r in producer.publish_all(&batch).await {
            match r {
                Ok(_) => sent += 1,
                Err(e) => warn!(error = %e, "demo publish failed"),
            }
        }
        if sent % (per_second as u64 * 30).max(1) < per_tick as u64 {
            info!(sent, "demo events published");
        }
    }
}
