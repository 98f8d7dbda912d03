//! Hello agent, in Rust: the agent of `docs/tutorials/hello-agent.md`.
//!
//! It runs a three-task workflow, plan → draft → review. For each task it asks the router which
//! model to use (`POST /v1/route`), reports the task's start, "calls" the model (simulated: no
//! real LLM) and reports the call with the route's `decision_id`, which settles the route's
//! reservation, then reports the task's end. It runs the workflow `RUNS` times, each run a
//! session of its own; then it starts one more session, does plan and draft, and asks Kairos what
//! comes next (`GET /v1/workflows/sessions/{session}/suggestions`).
//!
//! Events are built with the typed builders of `kairos-client` and published straight to
//! JetStream with its `Producer`. kairos-client has no HTTP client, so the two HTTP calls (and
//! the budget it sets first) go through a few lines of HTTP/1.1 over `std::net::TcpStream`.
//!
//! Start Kairos first (`make run`), then:
//!
//! ```sh
//! . ./.kairos/env && export KEY=$KAIROS_BOOTSTRAP_ADMIN_KEY
//! cargo run -p kairos-client --example hello_agent
//! ```
//!
//! Environment, with defaults:
//!
//! | variable                     | default                              |
//! |------------------------------|--------------------------------------|
//! | `KAIROS_URL`                 | `http://127.0.0.1:8080`              |
//! | `KEY`                        | `$KAIROS_BOOTSTRAP_ADMIN_KEY`        |
//! | `PROJECT`                    | `hello-agent`                        |
//! | `NOW`                        | now (RFC 3339: when the events happened) |
//! | `SESSION`                    | a fresh id                           |
//! | `KAIROS_NATS_URL`            | `nats://127.0.0.1:4222`              |
//! | `KAIROS_NATS_STREAM`         | `KAIROS_EVENTS`                      |
//! | `KAIROS_NATS_SUBJECT_PREFIX` | `kairos`                             |
//! | `KAIROS_NATS_USER`, `KAIROS_NATS_PASSWORD` | none (a NATS server without authorisation) |

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kairos_client::{BusConfig, LlmCall, Producer, TaskCompleted, TaskStarted};
use serde_json::{Value, json};

/// The workflow, and the tokens each task's prompt and answer take (made up).
const WORKFLOW: [(&str, u64, u64); 3] = [
    ("plan", 800, 200),
    ("draft", 2400, 900),
    ("review", 3000, 300),
];
const RUNS: usize = 3;
const SOURCE: &str = "examples/hello-agent-rs";
const ACTOR: &str = "agent:hello";

type Error = Box<dyn std::error::Error + Send + Sync>;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hello_agent: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What the agent needs for every task.
struct Agent {
    kairos: Http,
    producer: Producer,
    project: String,
    now: DateTime<Utc>,
}

async fn run() -> Result<(), Error> {
    let key = env_or("KEY", &env_or("KAIROS_BOOTSTRAP_ADMIN_KEY", ""));
    if key.is_empty() {
        return Err(
            "set KEY to an API key (make run puts KAIROS_BOOTSTRAP_ADMIN_KEY in .kairos/env)"
                .into(),
        );
    }
    let now = match std::env::var("NOW") {
        Ok(t) if !t.is_empty() => DateTime::parse_from_rfc3339(&t)
            .map_err(|e| format!("NOW={t} is not an RFC 3339 time: {e}"))?
            .with_timezone(&Utc),
        _ => Utc::now(),
    };
    let project = env_or("PROJECT", "hello-agent");
    let session = env_or(
        "SESSION",
        &format!("hello-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
    );
    let mut config = BusConfig::new(
        env_or("KAIROS_NATS_URL", "nats://127.0.0.1:4222"),
        env_or("KAIROS_NATS_STREAM", "KAIROS_EVENTS"),
        env_or("KAIROS_NATS_SUBJECT_PREFIX", "kairos"),
    );
    let set = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    config.user = set("KAIROS_NATS_USER");
    config.password = set("KAIROS_NATS_PASSWORD");
    let agent = Agent {
        kairos: Http::new(&env_or("KAIROS_URL", "http://127.0.0.1:8080"), &key)?,
        producer: Producer::connect(&config).await?,
        project,
        now,
    };

    // A budget, so that each route holds a reservation until its call settles it.
    let budget = json!({"monthly_limit": "5.00", "warn_at_percent": 80});
    agent.kairos.call(
        "PUT",
        &format!("/v1/projects/{}/budget", agent.project),
        Some(&budget),
    )?;
    println!("budget of {}: 5.00 a month", agent.project);

    // Past runs of the workflow, so that Kairos has something to learn from.
    for run in 1..=RUNS {
        agent
            .run_workflow(&format!("{session}-past-{run}"), &WORKFLOW)
            .await?;
    }

    // This run does plan and draft, then asks what comes next.
    let last_seq = agent.run_workflow(&session, &WORKFLOW[..2]).await?;
    let path = format!(
        "/v1/workflows/sessions/{session}/suggestions?project={}&k=3&min_seq={last_seq}",
        agent.project
    );
    let answer = agent.kairos.call("GET", &path, None)?;
    let suggestions = answer["suggestions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let Some(first) = suggestions.first() else {
        return Err(format!("no suggestion for {session}: {answer}").into());
    };
    let recent: Vec<&str> = answer["recent_tasks"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    println!("after {}, Kairos suggests:", recent.join(" -> "));
    for s in &suggestions {
        let what = if s["end"] == true {
            "end the session"
        } else {
            s["task"].as_str().unwrap_or("?")
        };
        let p = s["probability"].as_f64().unwrap_or(0.0);
        println!(
            "  {what} (p={p:.2}): {}",
            s["because"]["text"].as_str().unwrap_or("")
        );
    }
    println!(
        "session={session} next={} last_seq={last_seq}",
        first["task"].as_str().unwrap_or("null")
    );
    Ok(())
}

impl Agent {
    async fn run_workflow(&self, session: &str, tasks: &[(&str, u64, u64)]) -> Result<u64, Error> {
        println!("session {session}");
        let mut seq = 0;
        for (n, (task, input, output)) in tasks.iter().enumerate() {
            seq = self.run_task(session, n + 1, task, *input, *output).await?;
        }
        Ok(seq)
    }

    /// One task: route, started, the (simulated) LLM call, completed. The last event's seq.
    async fn run_task(
        &self,
        session: &str,
        n: usize,
        task: &str,
        input: u64,
        output: u64,
    ) -> Result<u64, Error> {
        let p = &self.project;
        let route = json!({"project": p, "input_tokens": input, "expected_output_tokens": output,
                           "max_output_tokens": 2 * output, "task": task});
        let decision = self.kairos.call("POST", "/v1/route", Some(&route))?;
        let text = |name: &str| decision[name].as_str().unwrap_or_default().to_owned();
        let (model, provider, decision_id) = (text("model"), text("provider"), text("decision_id"));
        let task_id = format!("t{n}");

        let started = TaskStarted::new(p, session, &task_id, task)
            .actor(ACTOR)
            .source(SOURCE)
            .time(self.now)
            .build()?;
        self.producer.publish(&started).await?;

        // A real agent would call `model` here. This one makes up the answer's size.
        let call = LlmCall::new(p, &model, &provider)
            .tokens(input, output)
            .latency_ms(900)
            .decision(&decision_id)
            .session(session)
            .workflow(session)
            .actor(ACTOR)
            .source(SOURCE)
            .time(self.now)
            .build()?;
        let call_seq = self.producer.publish(&call).await?.seq;

        let completed = TaskCompleted::new(p, session, &task_id, task, "ok")
            .duration_ms(1000)
            .actor(ACTOR)
            .source(SOURCE)
            .time(self.now)
            .build()?;
        let seq = self.producer.publish(&completed).await?.seq.0;
        println!(
            "  {task}: model={model} outcome={} reserved={} decision={decision_id} call_seq={call_seq}",
            text("outcome"),
            decision["reserved"].as_str().unwrap_or("0"),
        );
        Ok(seq)
    }
}

/// Just enough HTTP/1.1 for this example: one request per connection, JSON in and out.
struct Http {
    host: String,
    key: String,
}

impl Http {
    fn new(url: &str, key: &str) -> Result<Self, Error> {
        let host = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("KAIROS_URL={url}: this example speaks plain http:// only"))?
            .trim_end_matches('/')
            .to_owned();
        Ok(Self {
            host,
            key: key.to_owned(),
        })
    }

    /// Sends one request; the JSON answer, or an error naming the status and body.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, Error> {
        let body = body.map(Value::to_string).unwrap_or_default();
        let mut stream = TcpStream::connect(&self.host).map_err(|e| {
            format!(
                "cannot reach Kairos at http://{}: {e} (is `make run` running?)",
                self.host
            )
        })?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.host,
            self.key,
            body.len()
        )?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw)?;
        let raw = String::from_utf8(raw)?;
        let (head, rest) = raw
            .split_once("\r\n\r\n")
            .ok_or("an answer without headers")?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or("no status")?;
        let chunked = head.lines().any(|l| {
            l.to_ascii_lowercase().starts_with("transfer-encoding:")
                && l.to_ascii_lowercase().contains("chunked")
        });
        let text = if chunked {
            dechunk(rest)?
        } else {
            rest.to_owned()
        };
        if !(200..300).contains(&status) {
            return Err(format!("{method} {path} answered {status}: {text}").into());
        }
        Ok(serde_json::from_str(&text)?)
    }
}

/// The body of a `Transfer-Encoding: chunked` answer.
fn dechunk(mut rest: &str) -> Result<String, Error> {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").ok_or("a truncated chunk")?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(after.get(..size).ok_or("a truncated chunk")?);
        rest = after.get(size + 2..).ok_or("a truncated chunk")?;
    }
}
