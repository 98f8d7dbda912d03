//! The end-to-end test harness: a real Kairos (API + projections) on a random port, against the
//! real NATS server on a fresh stream and subject prefix, and a fresh PostgreSQL database (from
//! `#[sqlx::test]`). Tests talk HTTP to it and read the stream directly. No mocks.

use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use futures_util::StreamExt;
use kairos::configuration::Settings;
use kairos::startup::Kairos;
use kairos_events::Event;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::task::JoinHandle;

/// A running Kairos for one test.
pub struct TestApp {
    pub url: String,
    pub kairos: Kairos,
    /// A client that sends the bootstrap admin's key with every request.
    pub http: reqwest::Client,
    /// The first admin's key (`auth.bootstrap_admin_key`).
    pub admin_key: String,
    pub projections: Vec<JoinHandle<Result<(), kairos_runtime::RunnerError>>>,
    /// The access projection runs from the start (keys are checked against it), apart from
    /// the projections a test starts and stops.
    access: JoinHandle<Result<(), kairos_runtime::RunnerError>>,
    server: JoinHandle<()>,
}

/// Settings for an isolated instance: unique stream and subject prefix, short timeouts.
pub fn test_settings() -> Settings {
    test_settings_with("")
}

/// [`test_settings`] over `toml` (say, a module's section).
pub fn test_settings_with(toml: &str) -> Settings {
    let mut s = Settings::from_toml(toml).expect("the test's kairos.toml is valid");
    // The built-in configuration ships a model catalog; a test has one only if it says so, so
    // the events a test counts are its own (and a registry without the catalog module runs).
    if !toml.contains("catalog") {
        s.modules.remove("catalog");
    }
    let tag = uuid::Uuid::new_v4().simple().to_string();
    s.nats.url =
        std::env::var("KAIROS_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    s.nats.stream = format!("TEST_{}", &tag[..16]);
    s.nats.subject_prefix = format!("t{}", &tag[..12]);
    // Let NATS clean up streams a crashed test leaves behind.
    s.nats.max_age_days = 1;
    s.http.addr = "127.0.0.1:0".into();
    s.http.read_wait_ms = 10_000;
    // Tests hammer the API from one address; the limit has its own test.
    s.http.rate_limit_per_second = 0;
    s.auth.bootstrap_admin_key = Some(format!("test-admin-{tag}"));
    // Kairos signs its own facts, as `make run` has it do.
    s.nats.signing_key = Some(format!("test-signing-key-{tag}"));
    s.projections.ack_wait_ms = 2_000;
    s.projections.idle_wait_ms = 200;
    s
}

/// Starts Kairos with the default test settings and every projection.
pub async fn spawn_app(pool: PgPool) -> TestApp {
    spawn_app_with(pool, test_settings(), true).await
}

/// The instant a test's clock stands at unless it says otherwise: inside the month the fixtures
/// date their events in, so "this month" reads are the same on any day the suite runs.
pub const FIXTURE_NOW: &str = "2026-11-20T12:00:00Z";

/// A manual clock at [`FIXTURE_NOW`].
pub fn fixture_clock() -> kairos_events::Clock {
    kairos_events::Clock::fixed(FIXTURE_NOW.parse().expect("an RFC 3339 time"))
}

/// Starts Kairos with `settings`; projections only if `projections` (the access projection
/// always, and the bootstrap admin whose key `TestApp::http` sends). Its clock stands at
/// [`FIXTURE_NOW`].
pub async fn spawn_app_with(pool: PgPool, settings: Settings, projections: bool) -> TestApp {
    spawn_app_at(pool, settings, projections, fixture_clock()).await
}

/// As [`spawn_app_with`], with `clock` as Kairos' "now". Point-in-time reads name instants the
/// stream stored events at (the system's time), so their tests run on the system clock.
pub async fn spawn_app_at(
    pool: PgPool,
    settings: Settings,
    projections: bool,
    clock: kairos_events::Clock,
) -> TestApp {
    spawn_app_registered(
        pool,
        settings,
        projections,
        clock,
        kairos::startup::registry(),
    )
    .await
}

/// As [`spawn_app_at`], running `registry`'s modules (a test registers its own beside the
/// shipped ones the way the binary does).
pub async fn spawn_app_registered(
    pool: PgPool,
    settings: Settings,
    projections: bool,
    clock: kairos_events::Clock,
    registry: kairos_api::Registry,
) -> TestApp {
    let kairos = Kairos::with_registry(settings, pool, registry, clock)
        .await
        .expect("Kairos starts");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let router = kairos.api().await.expect("api").router;
    let limits = kairos_api::ServeLimits::from(&kairos.settings.http);
    // Stopped by `cleanup`, which aborts the task and with it every connection.
    let server = tokio::spawn(kairos_api::serve(
        listener,
        router,
        limits,
        std::future::pending(),
    ));
    let access = kairos
        .spawn_projection(kairos_access::NAME)
        .expect("access projection");
    let admin_key = kairos
        .settings
        .auth
        .bootstrap_admin_key
        .clone()
        .expect("test settings carry a bootstrap key");
    kairos.bootstrap_admin().await.expect("bootstrap admin");
    let mut app = TestApp {
        url,
        http: client(&admin_key),
        admin_key,
        kairos,
        projections: Vec::new(),
        access,
        server,
    };
    if projections {
        for name in app.kairos.projection_names() {
            if name != kairos_access::NAME {
                app.start_projection(name);
            }
        }
    }
    app
}

/// Sends a request; its status and JSON body (`null` if none).
pub async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let r = request.send().await.expect("request sent");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// An HTTP client that sends `key` as its bearer token.
pub fn client(key: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {key}").parse().expect("header value"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("client")
}

impl TestApp {
    pub fn start_projection(&mut self, name: &str) {
        let handle = self
            .kairos
            .spawn_projection(name)
            .expect("known projection");
        self.projections.push(handle);
    }

    pub fn stop_projections(&mut self) {
        for p in self.projections.drain(..) {
            p.abort();
        }
    }

    /// Stops the access projection too (keys are still checked: the API authenticates against
    /// the identity events themselves).
    pub fn stop_access(&mut self) {
        self.access.abort();
    }

    /// Starts the access projection again after [`TestApp::stop_access`].
    pub fn start_access(&mut self) {
        self.access = self
            .kairos
            .spawn_projection(kairos_access::NAME)
            .expect("the access projection");
    }

    pub fn prefix(&self) -> &str {
        &self.kairos.settings.nats.subject_prefix
    }

    /// POSTs `body` to `/v1/events` with `content_type`.
    pub async fn post_events(
        &self,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/v1/events", self.url))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request sent");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// POSTs batches of 1000; panics unless every event was accepted. Returns the last stream
    /// sequence.
    pub async fn ingest(&self, events: &[Value]) -> u64 {
        let mut last = 0;
        for chunk in events.chunks(1000) {
            let (status, body) = self
                .post_events(
                    "application/cloudevents-batch+json",
                    serde_json::to_vec(chunk).expect("json"),
                )
                .await;
            assert_eq!(status, 202, "{body}");
            assert_eq!(body["accepted"], json!(chunk.len()), "{body}");
            last = last.max(
                body["results"]
                    .as_array()
                    .and_then(|r| r.iter().filter_map(|r| r["seq"].as_u64()).max())
                    .expect("seqs"),
            );
        }
        last
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .expect("request sent");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Invites `email` as `role` (on `projects`, or all) and accepts the invitation; the new
    /// member's id and key, once the access projection knows them.
    pub async fn join(
        &self,
        email: &str,
        role: &str,
        projects: Option<&[&str]>,
    ) -> (String, String) {
        let mut body = json!({"email": email, "role": role});
        if let Some(p) = projects {
            body["projects"] = json!(p);
        }
        let (status, inv) = self.post_json("/v1/invitations", &body).await;
        assert_eq!(status, 201, "{inv}");
        let (status, joined) = send(
            reqwest::Client::new()
                .post(format!("{}{}", self.url, inv["accept"].as_str().unwrap()))
                .json(&json!({"token": inv["token"], "name": email})),
        )
        .await;
        assert_eq!(status, 201, "{joined}");
        assert_eq!(joined["role"], role);
        // Commands answer once their event is stored; the lists read the access projection.
        self.wait_for("access", joined["seq"].as_u64().unwrap())
            .await;
        (
            joined["member_id"].as_str().unwrap().to_owned(),
            joined["api_key"].as_str().unwrap().to_owned(),
        )
    }

    /// The audit entries counting requests refused for want of a valid key, once there are
    /// some (10 s at most). They are published once the clock has left their minute.
    pub async fn refusals(&self) -> Vec<Value> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (_, r) = self.get("/v1/audit?action=auth.refused").await;
            let entries = r["entries"].as_array().cloned().unwrap_or_default();
            if !entries.is_empty() || std::time::Instant::now() > deadline {
                return entries;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn put_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .put(format!("{}{path}", self.url))
            .json(body)
            .send()
            .await
            .expect("request sent");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// GETs each path and checks it is refused with `400` naming the field given with it.
    pub async fn assert_bad_queries(&self, cases: &[(&str, &str)]) {
        for (path, field) in cases {
            let (status, r) = self.get(path).await;
            assert_eq!(
                (status, r["error"]["field"].as_str()),
                (400, Some(*field)),
                "{path}: {r}"
            );
        }
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        send(self.http.post(format!("{}{path}", self.url)).json(body)).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        send(self.http.delete(format!("{}{path}", self.url))).await
    }

    /// Waits (bounded) until `projection` applied stream sequence `seq`.
    pub async fn wait_for(&self, projection: &str, seq: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let reached = kairos_runtime::checkpoint(&self.kairos.pool, projection)
                .await
                .expect("checkpoint query")
                .map_or(0, |c| c.last_seq);
            if reached >= seq {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{projection} stuck at {reached}, waiting for {seq}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every message on `filter` in the events stream (or the stream named `stream`), in order.
    pub async fn read_stream(
        &self,
        stream: &str,
        filter: &str,
    ) -> Vec<async_nats::jetstream::Message> {
        let js = self.kairos.bus.jetstream();
        let stream = js.get_stream(stream).await.expect("stream exists");
        let consumer = stream
            .create_consumer(pull::Config {
                filter_subject: filter.to_owned(),
                ack_policy: AckPolicy::None,
                deliver_policy: DeliverPolicy::All,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .expect("consumer");
        let mut out = Vec::new();
        loop {
            let mut batch = consumer
                .fetch()
                .max_messages(5000)
                .messages()
                .await
                .expect("fetch");
            let mut got = 0;
            while let Some(m) = batch.next().await {
                out.push(m.expect("message"));
                got += 1;
            }
            if got == 0 {
                return out;
            }
        }
    }

    /// Every event on the stream as (when it was stored, stream sequence, event), in order.
    pub async fn stored_events(&self) -> Vec<(chrono::DateTime<chrono::Utc>, u64, Event)> {
        let filter = format!("{}.events.>", self.prefix());
        self.read_stream(self.kairos.bus.stream_name(), &filter)
            .await
            .iter()
            .map(|m| {
                let info = m.info().expect("a stream message");
                (
                    info.published,
                    info.stream_sequence,
                    Event::from_slice(&m.payload).expect("valid event on the stream"),
                )
            })
            .collect()
    }

    /// Parsed events on `<prefix>.events.<category>.>`.
    pub async fn events_in(&self, category: &str) -> Vec<Event> {
        let filter = format!("{}.events.{category}.>", self.prefix());
        self.read_stream(self.kairos.bus.stream_name(), &filter)
            .await
            .iter()
            .map(|m| Event::from_slice(&m.payload).expect("valid event on the stream"))
            .collect()
    }

    /// The threshold events on the stream, as (project, threshold) in order, once at least
    /// `expected` have landed (they are published after the commit that records them) or after
    /// 10 s, whichever comes first.
    pub async fn thresholds_crossed(&self, expected: usize) -> Vec<(String, String)> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let crossed: Vec<(String, String)> = self
                .events_in("budget")
                .await
                .into_iter()
                .filter(|e| e.event_type().as_str() == "kairos.budget.threshold_crossed.v1")
                .map(|e| {
                    let d = &e.json()["data"];
                    let s = |k: &str| d[k].as_str().unwrap_or_default().to_owned();
                    (s("project"), s("threshold"))
                })
                .collect();
            if crossed.len() >= expected || tokio::time::Instant::now() >= deadline {
                return crossed;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every event stored so far expires, as if `nats.max_age_days` had passed: retention is
    /// shortened to a second until the stream is empty, then set back (no limit, and the
    /// duplicate window of two minutes).
    pub async fn expire_stored_events(&self) {
        let js = self.kairos.bus.jetstream();
        let mut stream = js
            .get_stream(self.kairos.bus.stream_name())
            .await
            .expect("stream exists");
        let mut config = stream.info().await.expect("stream info").config.clone();
        config.max_age = Duration::from_secs(1);
        config.duplicate_window = Duration::from_secs(1);
        js.update_stream(config.clone()).await.expect("retention");
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while stream.info().await.expect("stream info").state.messages > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "events did not expire"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        config.max_age = Duration::ZERO;
        config.duplicate_window = Duration::from_secs(120);
        js.update_stream(config).await.expect("retention back");
    }

    /// Deletes this test's streams.
    pub async fn cleanup(mut self) {
        self.stop_projections();
        self.access.abort();
        self.server.abort();
        let js = self.kairos.bus.jetstream().clone();
        let _ = js.delete_stream(self.kairos.bus.stream_name()).await;
        let _ = js.delete_stream(self.kairos.bus.dlq_stream_name()).await;
    }
}

/// A valid `kairos.llm.call.completed.v1` as JSON.
pub fn llm_call(id: &str, project: &str, cost: &str) -> Value {
    json!({
        "specversion": "1.0", "id": id, "source": "test/gateway", "type": "kairos.llm.call.completed.v1",
        "subject": project, "time": "2026-11-10T12:00:00Z", "datacontenttype": "application/json",
        "data": {"project": project, "model": "gpt-4o", "provider": "openai", "input_tokens": 100,
                 "output_tokens": 20, "cost": cost, "latency_ms": 300, "status": "ok"}
    })
}

/// A valid `kairos.budget.set.v1` as JSON.
pub fn budget_set(id: &str, project: &str, limit: &str, warn: u8) -> Value {
    json!({
        "specversion": "1.0", "id": id, "source": "test/admin", "type": "kairos.budget.set.v1",
        "subject": project, "time": "2026-11-01T00:00:00Z",
        "data": {"project": project, "monthly_limit": limit, "warn_at_percent": warn,
                 "on_exceeded": "fallback_to_local"}
    })
}

/// `n` instants spread pseudo-randomly (xorshift, from `seed`) over `first..end`.
pub fn instants(
    first: chrono::DateTime<chrono::Utc>,
    end: chrono::DateTime<chrono::Utc>,
    n: usize,
    seed: u64,
) -> Vec<chrono::DateTime<chrono::Utc>> {
    let span = (end - first).num_nanoseconds().unwrap_or(1).max(1) as u64;
    let mut x = seed;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            first + chrono::Duration::nanoseconds((x % span) as i64)
        })
        .collect()
}

/// md5 of every row of every table in `schema`, by table: two digests are equal when the tables
/// hold the same rows (a replay against the live build, say).
pub async fn schema_digest(
    pool: &PgPool,
    schema: &str,
) -> std::collections::BTreeMap<String, (i64, String)> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1",
    )
    .bind(schema)
    .fetch_all(pool)
    .await
    .expect("the schema's tables");
    let mut out = std::collections::BTreeMap::new();
    for t in tables {
        let sql = format!(
            "SELECT count(*), coalesce(md5(string_agg(r::text, '|' ORDER BY r::text)), '') FROM \"{schema}\".\"{t}\" r"
        );
        let row: (i64, String) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_one(pool)
            .await
            .expect("the table's digest");
        out.insert(t, row);
    }
    out
}

impl TestApp {
    /// Runs `examples/<script>` against this instance (as the admin, at [`FIXTURE_NOW`]);
    /// panics with its output unless it succeeds, else returns its standard output.
    pub async fn run_example(&self, script: &str) -> String {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        let out = tokio::process::Command::new("bash")
            .arg(format!("{root}/examples/{script}"))
            .env("KAIROS_URL", &self.url)
            .env("KEY", &self.admin_key)
            .env("NOW", FIXTURE_NOW)
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env_remove("KAIROS_BOOTSTRAP_ADMIN_KEY")
            .current_dir(root)
            .output()
            .await
            .expect("bash runs");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
}

// ---------------------------------------------------------------------------------------------
// The repository's files and the programs the docs' examples run.

/// The workspace root (the repository).
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// The repository's file at `relative`; panics naming it when it cannot be read.
pub fn read_repo(relative: &str) -> String {
    let path = repo_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A finished program's exit code and both outputs, for a failure message.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The Python of the examples' virtualenv: `KAIROS_PYTHON`, else what `scripts/pyenv.sh` prints
/// (it makes the virtualenv and installs the examples' requirements the first time).
pub async fn examples_python() -> String {
    if let Ok(p) = std::env::var("KAIROS_PYTHON")
        && !p.is_empty()
    {
        return p;
    }
    let root = repo_root();
    let out = tokio::process::Command::new("bash")
        .arg(root.join("scripts/pyenv.sh"))
        .current_dir(&root)
        .output()
        .await
        .expect("bash runs");
    assert!(
        out.status.success(),
        "scripts/pyenv.sh failed:\n{}",
        output_text(&out)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// GitHub's anchor of a Markdown heading: trimmed, lower case; letters, digits, `-` and `_`
/// kept, spaces made `-`, everything else (backticks, `/`, `{}`, `:`) dropped.
pub fn heading_anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .collect()
}
