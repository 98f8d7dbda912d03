//! `kairos bench`: how fast Kairos is, held against what the same NATS server does raw.
//!
//! One run measures, in order:
//!
//! 1. **raw publish**: async JetStream publishes of 300-byte messages with a unique `Nats-Msg-Id`,
//!    up to 4096 acknowledgements in flight, to a temporary file-storage stream;
//! 2. **raw consume**: a durable pull consumer fetching batches of 1000 from that stream, once
//!    without acks and once acking every message;
//! 3. **ingest**: Kairos in-process (fresh stream, fresh database), HTTP batches of
//!    `kairos.llm.call.completed.v1` to `POST /v1/events`, every event acknowledged (events and
//!    request bodies are built before the clock starts);
//! 4. **apply**: the budgets projection folding those events, from start until its checkpoint
//!    reaches the stream's last sequence; the spend it shows must equal the costs sent, exactly;
//! 5. **latency**: events published at a steady rate while the projection runs, from the moment
//!    a tick is published until the projection's checkpoint covers it;
//! 6. **reads** ([`reads`]): authenticated budget reads over many keep-alive connections,
//!    against as many concurrent point selects of the same row;
//! 7. **commands under a flood** ([`commands`]): admin commands at once while LLM calls pour in
//!    and every projection is far behind.
//!
//! How to read it: absolute figures swing with whatever else the machine is doing, so each
//! Kairos figure is also printed as a ratio of the raw ceiling measured in the same run: steps 1-2
//! run before the Kairos figures and again after them (and after the history figures), and each
//! figure is held against the mean of the two measurements around it. The ratios are what the targets judge: ingest ≥ 0.5 of raw publish, apply ≥ 0.5 of
//! raw consume with acks (the projection acks too), p99 latency < 250 ms at 5,000 events/s.
//! Everything temporary (streams, the `kairos_bench_*` database) is removed at the end.

use std::collections::VecDeque;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use async_nats::HeaderMap;
use async_nats::jetstream::consumer::pull::Config as PullConfig;
use async_nats::jetstream::consumer::{AckPolicy, PullConsumer};
use async_nats::jetstream::{self, stream};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use kairos_client::LlmCall;
use kairos_events::{Event, Money, Period};
use serde_json::Value;
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::configuration::Settings;
use crate::startup::Kairos;

mod anomalies;
mod commands;
mod pages;
mod reads;
mod routes;
mod scale;
mod workflows;

/// Bytes of each raw message: about one small CloudEvent.
const RAW_BYTES: usize = 300;
static RAW_PAYLOAD: [u8; RAW_BYTES] = [b'x'; RAW_BYTES];
/// Most raw publishes awaiting their acknowledgement.
const WINDOW: usize = 4096;
/// Messages per pull, raw and (by default) for the projection alike.
const FETCH: usize = 1000;
/// Events per HTTP batch request, and requests in flight.
const HTTP_BATCH: usize = 1000;
const HTTP_IN_FLIGHT: usize = 4;
const PROJECTS: usize = 10;
/// Latency ticks: events go out every `TICK`, visibility is polled every `POLL`.
const TICK: Duration = Duration::from_millis(10);
const POLL: Duration = Duration::from_millis(5);
/// How long the projection may take to catch up before the bench gives up.
const CATCH_UP: Duration = Duration::from_secs(300);

/// `kairos bench` options.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchOptions {
    /// Messages and events for the throughput figures (publish, consume, ingest, apply).
    #[arg(long, default_value_t = 200_000)]
    pub events: usize,
    /// Events per second for the latency figure.
    #[arg(long, default_value_t = 5_000)]
    pub rate: u32,
    /// Seconds of steady publishing for the latency figure.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Events of history for the replay and point-in-time figures (0 skips them).
    #[arg(long, default_value_t = 1_000_000)]
    pub history: usize,
    /// Point-in-time (`as_of`) reads to time over that history.
    #[arg(long, default_value_t = 200)]
    pub as_of_reads: usize,
    /// Times each dashboard page is fetched over that history (0 skips the page figures).
    #[arg(long, default_value_t = 100)]
    pub page_reads: usize,
    /// Keep-alive connections reading a budget at once (0 skips the read figure).
    #[arg(long, default_value_t = 1_000)]
    pub read_connections: usize,
    /// Seconds each side of the read figure runs.
    #[arg(long, default_value_t = 10)]
    pub read_seconds: u64,
    /// Route requests sent at once (0 skips the route figures).
    #[arg(long, default_value_t = 200)]
    pub route_concurrency: usize,
    /// Seconds each side of the route figures runs.
    #[arg(long, default_value_t = 5)]
    pub route_seconds: u64,
    /// Admin commands sent at once under an ingest flood (0 skips the figure).
    #[arg(long, default_value_t = 200)]
    pub commands: usize,
    /// LLM calls per second posted over HTTP while the commands run.
    #[arg(long, default_value_t = 20_000.0)]
    pub flood_rate: f64,
    /// Events published before the projections start, so that they are behind.
    #[arg(long, default_value_t = 1_000_000)]
    pub backlog: usize,
    /// Task events (started and completed) the workflows projection applies (0 skips it).
    #[arg(long, default_value_t = 100_000)]
    pub workflow_events: usize,
    /// Metric samples the anomalies projection scores (0 skips it).
    #[arg(long, default_value_t = 200_000)]
    pub metric_points: usize,
    /// The series those samples are spread over.
    #[arg(long, default_value_t = 1000)]
    pub metric_series: usize,
    /// LLM calls the budgets projection folds with 1, 2 and 3 `kairos consume` processes (0
    /// skips the scale-out figures).
    #[arg(long, default_value_t = 100_000)]
    pub scale_out_events: usize,
    /// Partitions of budgets those processes share.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub scale_out_partitions: u32,
}

/// The raw ceilings, in messages per second.
struct Raw {
    publish: f64,
    consume_no_ack: f64,
    consume_ack: f64,
}

impl Raw {
    /// The ceilings measured before and after a set of Kairos figures, averaged: what the
    /// machine gave raw JetStream around the time those figures were taken.
    fn around(before: &Raw, after: &Raw) -> Raw {
        let mean = |a: f64, b: f64| (a + b) / 2.0;
        Raw {
            publish: mean(before.publish, after.publish),
            consume_no_ack: mean(before.consume_no_ack, after.consume_no_ack),
            consume_ack: mean(before.consume_ack, after.consume_ack),
        }
    }

    fn print(&self, when: &str) {
        println!(
            "  raw {when}: publish {:.0}/s, consume {:.0}/s without acks, {:.0}/s acking each",
            self.publish, self.consume_no_ack, self.consume_ack
        );
    }
}

/// Kairos' own figures.
struct Figures {
    ingest: f64,
    event_bytes: usize,
    apply: f64,
    analytics_apply: f64,
    latency: Latency,
}

struct Latency {
    /// One per tick, sorted.
    samples: Vec<Duration>,
    events: usize,
    achieved_rate: f64,
}

/// Runs every measurement, prints the table, and removes what it created.
pub async fn run(settings: Settings, opts: BenchOptions) -> anyhow::Result<()> {
    ensure!(
        opts.events >= 1 && opts.rate >= 1 && opts.seconds >= 1,
        "--events, --rate and --seconds must be at least 1"
    );
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let client = async_nats::connect(&settings.nats.url)
        .await
        .with_context(|| format!("cannot connect to NATS at {}", settings.nats.url))?;
    let js = jetstream::ContextBuilder::new()
        .max_ack_inflight(WINDOW)
        .build(client.clone());
    println!(
        "kairos bench: nats-server {} · {} events · raw messages {RAW_BYTES} B · latency at {}/s for {} s",
        client.server_info().version,
        opts.events,
        opts.rate,
        opts.seconds
    );
    // The raw ceilings are measured before and after each group of Kairos figures, and each
    // figure is held against their mean: the load of a shared machine drifts within a minute.
    let before = raw_ceilings(&js, &run_id, opts.events).await?;
    before.print("before");
    let figures = kairos_figures(settings.clone(), &js, &run_id, &opts).await?;
    let after = raw_ceilings(&js, &run_id, opts.events).await?;
    after.print("after");
    print_table(&Raw::around(&before, &after), &figures, &opts);
    if opts.read_connections > 0 {
        let figures = reads::figures(settings.clone(), &js, &opts).await?;
        reads::print(&figures);
    }
    if opts.commands > 0 {
        let figures = commands::figures(settings.clone(), &js, &opts).await?;
        commands::print(&figures, &opts);
    }
    if opts.route_concurrency > 0 {
        let figures = routes::figures(settings.clone(), &js, &opts).await?;
        routes::print(&figures);
    }
    if opts.workflow_events > 0 {
        let figures = workflows::figures(settings.clone(), &js, &opts).await?;
        workflows::print(&figures);
    }
    if opts.metric_points > 0 {
        let figures = anomalies::figures(settings.clone(), &js, &opts).await?;
        anomalies::print(&figures);
    }
    if opts.scale_out_events > 0 {
        let figures = scale::figures(settings.clone(), &js, &opts).await?;
        scale::print(&figures);
    }
    if opts.history > 0 {
        let history = history_figures(settings, &js, &run_id, &opts).await?;
        let end = raw_ceilings(&js, &run_id, opts.events).await?;
        end.print("after the history");
        print_history(&Raw::around(&after, &end), &history, &opts);
    }
    Ok(())
}

fn per_second(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(1e-9)
}

// ---------------------------------------------------------------------------------------------
// 1–2: raw JetStream

async fn raw_ceilings(js: &jetstream::Context, run_id: &str, n: usize) -> anyhow::Result<Raw> {
    let name = format!("BENCH_RAW_{run_id}");
    let subject = format!("benchraw{}.m", &run_id[..8]);
    js.create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![subject.clone()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .with_context(|| format!("creating stream {name}"))?;
    let measured = async {
        let publish = raw_publish(js, &subject, n).await?;
        let stored = js.get_stream(&name).await?.info().await?.state.messages;
        ensure!(
            stored == n as u64,
            "raw stream holds {stored} messages, not {n}"
        );
        let stream = js.get_stream(&name).await?;
        let consume_no_ack = raw_consume(&stream, "no-ack", AckPolicy::None, n).await?;
        let consume_ack = raw_consume(&stream, "ack", AckPolicy::Explicit, n).await?;
        Ok(Raw {
            publish,
            consume_no_ack,
            consume_ack,
        })
    }
    .await;
    let deleted = js.delete_stream(&name).await;
    let raw = measured?;
    deleted.with_context(|| format!("deleting stream {name}"))?;
    Ok(raw)
}

async fn raw_publish(js: &jetstream::Context, subject: &str, n: usize) -> anyhow::Result<f64> {
    let mut in_flight = VecDeque::with_capacity(WINDOW);
    let started = Instant::now();
    for i in 0..n {
        if in_flight.len() == WINDOW
            && let Some(ack) = in_flight.pop_front()
        {
            ack.await?;
        }
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("raw-{i}").as_str());
        let payload = RAW_PAYLOAD.as_slice().into();
        in_flight.push_back(
            js.publish_with_headers(subject.to_owned(), headers, payload)
                .await?,
        );
    }
    for ack in in_flight {
        ack.await?;
    }
    Ok(per_second(n, started.elapsed()))
}

async fn raw_consume(
    stream: &stream::Stream,
    name: &str,
    ack_policy: AckPolicy,
    n: usize,
) -> anyhow::Result<f64> {
    let consumer: PullConsumer = stream
        .create_consumer(PullConfig {
            durable_name: Some(format!("bench-{name}")),
            ack_policy,
            // As the projections' consumers: acks never throttle delivery.
            max_ack_pending: 50_000,
            ..Default::default()
        })
        .await?;
    let ack = ack_policy != AckPolicy::None;
    let mut received = 0;
    let started = Instant::now();
    while received < n {
        let mut batch = consumer.fetch().max_messages(FETCH).messages().await?;
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| anyhow::anyhow!("raw consume: {e}"))?;
            if ack {
                message
                    .ack()
                    .await
                    .map_err(|e| anyhow::anyhow!("raw ack: {e}"))?;
            }
            received += 1;
        }
    }
    Ok(per_second(received, started.elapsed()))
}

// ---------------------------------------------------------------------------------------------
// 3–5: Kairos in-process

/// A database of its own, dropped at the end.
struct BenchDb {
    admin: PgConnectOptions,
    name: String,
}

impl BenchDb {
    async fn create(url: &str, run_id: &str) -> anyhow::Result<Self> {
        let admin = PgConnectOptions::from_str(url).context("database.url")?;
        let name = format!("kairos_bench_{}", &run_id[..12]);
        let mut conn = PgConnection::connect_with(&admin)
            .await
            .context("connecting to PostgreSQL to create the bench database")?;
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .with_context(|| format!("creating database {name}"))?;
        conn.close().await?;
        Ok(Self { admin, name })
    }

    async fn pool(&self, max_connections: u32) -> anyhow::Result<PgPool> {
        // As Kairos pools its connections when it serves.
        Ok(crate::startup::pool_options(max_connections)
            .connect_with(self.admin.clone().database(&self.name))
            .await?)
    }

    /// `WITH (FORCE)` also ends connections still open (the checkpoint listener's).
    async fn drop_database(self) -> anyhow::Result<()> {
        let mut conn = PgConnection::connect_with(&self.admin).await?;
        sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name
        )))
        .execute(&mut conn)
        .await
        .with_context(|| format!("dropping database {}", self.name))?;
        conn.close().await?;
        Ok(())
    }
}

/// Aborts a task when it goes out of scope, on success and on error alike.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A Kairos of its own for one phase: fresh stream, subject prefix and database.
struct Instance {
    k: Kairos,
    db: BenchDb,
    /// The bootstrap admin's key, which the benchmark's HTTP requests carry.
    key: String,
}

impl Instance {
    async fn start(mut settings: Settings, run_id: &str) -> anyhow::Result<Self> {
        settings.nats.stream = format!("BENCH_{run_id}");
        settings.nats.subject_prefix = format!("bench{}", &run_id[..8]);
        let key = format!("bench-admin-key-{run_id}");
        settings.auth.bootstrap_admin_key = Some(key.clone());
        let db = BenchDb::create(&settings.database.url, run_id).await?;
        let max = settings.database.max_connections;
        let started = async {
            let k = Kairos::with_pool(settings, db.pool(max).await?).await?;
            // The access projection records the admin and is then stopped: the figures are
            // each of one projection alone, as the raw ceilings are of one consumer alone.
            let access = AbortOnDrop(k.spawn_projection(kairos_access::NAME)?);
            k.bootstrap_admin().await?;
            let last = k.bus.last_seq().await?;
            kairos_runtime::CheckpointWatch::start(k.pool.clone())
                .await?
                .wait_for(kairos_access::NAME, last.0, Duration::from_secs(60))
                .await?;
            drop(access);
            anyhow::Ok(k)
        }
        .await;
        match started {
            Ok(k) => Ok(Self { k, db, key }),
            Err(e) => {
                let _ = db.drop_database().await;
                Err(e)
            }
        }
    }

    /// The API on a random local port: its base URL, and the task serving it.
    async fn serve_api(&self) -> anyhow::Result<(String, AbortOnDrop<()>)> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let api = self.k.api().await?.router;
        let limits = kairos_api::ServeLimits::from(&self.k.settings.http);
        Ok((
            base,
            AbortOnDrop(tokio::spawn(kairos_api::serve(
                listener,
                api,
                limits,
                std::future::pending(),
            ))),
        ))
    }

    /// An HTTP client sending the admin's key.
    fn client(&self) -> anyhow::Result<reqwest::Client> {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {}", self.key).parse()?,
        );
        Ok(reqwest::Client::builder()
            .default_headers(headers)
            .build()?)
    }

    /// Removes the streams and the database, whatever happened; failures are reported.
    async fn remove(self, js: &jetstream::Context) {
        let stream = self.k.bus.stream_name().to_owned();
        for name in [stream.clone(), format!("{stream}_DLQ")] {
            if let Err(e) = js.delete_stream(&name).await {
                eprintln!("kairos bench: could not delete stream {name}: {e}");
            }
        }
        if let Err(e) = self.db.drop_database().await {
            eprintln!("kairos bench: {e:#}");
        }
    }
}

async fn kairos_figures(
    settings: Settings,
    js: &jetstream::Context,
    run_id: &str,
    opts: &BenchOptions,
) -> anyhow::Result<Figures> {
    let instance = Instance::start(settings, run_id).await?;
    let measured = measure_kairos(&instance, run_id, opts).await;
    instance.remove(js).await;
    measured
}

async fn measure_kairos(
    instance: &Instance,
    run_id: &str,
    opts: &BenchOptions,
) -> anyhow::Result<Figures> {
    let k = &instance.k;
    let (base, _server) = instance.serve_api().await?;
    let at = Utc::now();
    let period = Period::containing(at, &budget_zone(k)?);
    let http = instance.client()?;

    let (events, mut sent) = llm_calls(run_id, "ingest", opts.events, at)?;
    let event_bytes = events.iter().map(|e| e.to_bytes().len()).sum::<usize>() / events.len();
    let ingest = ingest(&http, &base, &events).await?;
    println!("  ingest: {ingest:.0} events/s");

    let started = Instant::now();
    let mut projection = AbortOnDrop(k.spawn_projection(kairos_budgets::NAME)?);
    let last = k.bus.last_seq().await?.0;
    catch_up(&k.pool, &mut projection, last).await?;
    let apply = per_second(opts.events, started.elapsed());
    verify(&http, &base, &k.pool, period, sent, opts.events).await?;
    println!("  apply: {apply:.0} events/s, spend verified");

    // Model analytics over the same events, alone (budgets is caught up and idle).
    let started = Instant::now();
    let analytics = AbortOnDrop(k.spawn_projection(kairos_analytics::NAME)?);
    kairos_runtime::CheckpointWatch::start(k.pool.clone())
        .await?
        .wait_for(kairos_analytics::NAME, last, Duration::from_secs(600))
        .await?;
    let analytics_apply = per_second(opts.events, started.elapsed());
    drop(analytics);
    let (calls,): (i64,) =
        sqlx::query_as("SELECT coalesce(sum(calls), 0)::int8 FROM analytics.days")
            .fetch_one(&k.pool)
            .await?;
    ensure!(
        calls == opts.events as i64,
        "analytics counted {calls} calls, not {}",
        opts.events
    );
    println!("  analytics apply: {analytics_apply:.0} events/s, calls verified");

    let latency = latency(k, &mut projection, run_id, opts, at, &mut sent).await?;
    let total = opts.events + latency.events;
    verify(&http, &base, &k.pool, period, sent, total).await?;
    // No `pool.close()`: the API's checkpoint listener keeps a pooled connection for good, so
    // it would wait forever; dropping the database WITH (FORCE) ends every connection instead.
    Ok(Figures {
        ingest,
        event_bytes,
        apply,
        analytics_apply,
        latency,
    })
}

/// `n` valid LLM calls over ten projects, and what they cost in total.
fn llm_calls(
    run_id: &str,
    phase: &str,
    n: usize,
    at: DateTime<Utc>,
) -> anyhow::Result<(Vec<Event>, Money)> {
    let mut total = Money::ZERO;
    let mut events = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let (input, output) = (200 + i * 7_919 % 6_000, 50 + i * 104_729 % 1_500);
        // gpt-4o list prices in nano-USD per token: exact integers, like real billing.
        let cost = Money::from_nanos((input * 2_500 + output * 10_000) as i64);
        total = total.checked_add(cost).context("total cost overflows")?;
        let project = format!("bench-p{}", i as usize % PROJECTS);
        events.push(
            LlmCall::new(&project, "gpt-4o", "openai")
                .tokens(input, output)
                .cost(&cost.to_string())
                .latency_ms(100 + i % 900)
                .session(&format!("s-{}", i % 97))
                .id(format!("{run_id}-{phase}-{i}"))
                .source("bench/llm-gateway")
                .time(at)
                .build()?,
        );
    }
    Ok((events, total))
}

/// Posts every event in batches, a few requests in flight; events per second.
async fn ingest(http: &reqwest::Client, base: &str, events: &[Event]) -> anyhow::Result<f64> {
    let url = format!("{base}/v1/events");
    let bodies: Vec<(usize, Vec<u8>)> = events
        .chunks(HTTP_BATCH)
        .map(|chunk| (chunk.len(), batch_body(chunk)))
        .collect();
    let started = Instant::now();
    let mut posts = futures_util::stream::iter(bodies)
        .map(|(count, body)| post_batch(http, &url, count, body))
        .buffer_unordered(HTTP_IN_FLIGHT);
    while let Some(posted) = posts.next().await {
        posted?;
    }
    Ok(per_second(events.len(), started.elapsed()))
}

/// A JSON array of the events, as they are.
fn batch_body(events: &[Event]) -> Vec<u8> {
    let mut body = Vec::with_capacity(events.iter().map(|e| e.to_bytes().len() + 1).sum());
    body.push(b'[');
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(e.to_bytes());
    }
    body.push(b']');
    body
}

async fn post_batch(
    http: &reqwest::Client,
    url: &str,
    count: usize,
    body: Vec<u8>,
) -> anyhow::Result<()> {
    let response = http
        .post(url)
        .header("content-type", "application/cloudevents-batch+json")
        .body(body)
        .send()
        .await?;
    let status = response.status();
    let text = response.text().await?;
    ensure!(
        status == reqwest::StatusCode::ACCEPTED,
        "POST /v1/events answered {status}: {}",
        text.chars().take(500).collect::<String>()
    );
    // Only what is checked, not a JSON tree of 1,000 results: the client shares the cores with
    // the server it measures.
    let answer: IngestAnswer = serde_json::from_str(&text)?;
    let duplicates = answer.results.iter().filter(|r| r.duplicate).count();
    ensure!(
        answer.accepted == count as u64
            && answer.rejected == 0
            && answer.failed == 0
            && duplicates == 0,
        "POST /v1/events did not accept all {count} events: accepted {}, rejected {}, failed {}, \
         duplicates {duplicates}",
        answer.accepted,
        answer.rejected,
        answer.failed
    );
    Ok(())
}

/// The parts of a `POST /v1/events` answer the benchmark checks.
#[derive(serde::Deserialize)]
struct IngestAnswer {
    accepted: u64,
    rejected: u64,
    failed: u64,
    results: Vec<IngestResult>,
}

#[derive(serde::Deserialize)]
struct IngestResult {
    #[serde(default)]
    duplicate: bool,
}

async fn checkpoint(pool: &PgPool) -> anyhow::Result<u64> {
    Ok(kairos_runtime::checkpoint(pool, kairos_budgets::NAME)
        .await?
        .map_or(0, |c| c.last_seq))
}

/// Waits (polling every 20 ms) until the budgets projection has applied stream sequence `seq`.
async fn catch_up(
    pool: &PgPool,
    projection: &mut AbortOnDrop<Result<(), kairos_runtime::RunnerError>>,
    seq: u64,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let reached = checkpoint(pool).await?;
        if reached >= seq {
            return Ok(());
        }
        if projection.0.is_finished() {
            let outcome = (&mut projection.0).await;
            bail!("the budgets projection stopped at {reached} of {seq}: {outcome:?}");
        }
        if Instant::now() > deadline {
            bail!("the budgets projection reached {reached} of {seq} within {CATCH_UP:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The spend the API shows must be exactly what was sent, with nothing dead-lettered.
async fn verify(
    http: &reqwest::Client,
    base: &str,
    pool: &PgPool,
    period: Period,
    sent: Money,
    calls: usize,
) -> anyhow::Result<()> {
    let url = format!("{base}/v1/budgets?period={period}&limit=1000");
    let answer: Value = http
        .get(&url)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let (mut spent, mut counted) = (Money::ZERO, 0);
    for budget in answer["budgets"].as_array().into_iter().flatten() {
        spent = spent
            .checked_add(Money::from_json(&budget["spent"])?)
            .context("spend overflows")?;
        counted += budget["calls"].as_u64().unwrap_or(0);
    }
    ensure!(
        (spent, counted) == (sent, calls as u64),
        "GET /v1/budgets shows {spent} spent over {counted} calls; {sent} over {calls} were sent"
    );
    let checkpoint = kairos_runtime::checkpoint(pool, kairos_budgets::NAME)
        .await?
        .context("the budgets projection has no checkpoint")?;
    ensure!(
        checkpoint.dead_lettered == 0 && checkpoint.duplicates == 0,
        "the budgets projection dead-lettered {} and skipped {} duplicates",
        checkpoint.dead_lettered,
        checkpoint.duplicates
    );
    Ok(())
}

/// One tick of paced publishing: when it went out and the last sequence it got.
struct Tick {
    sent: Instant,
    last_seq: u64,
}

impl Latency {
    fn percentile(&self, p: f64) -> Duration {
        let rank = ((p * self.samples.len() as f64).ceil() as usize).clamp(1, self.samples.len());
        self.samples[rank - 1]
    }
}

/// Events in each tick, spread so that the total is exactly `rate × seconds`.
fn ticks(opts: &BenchOptions) -> Vec<usize> {
    let per_tick = |i: u64| (i * u64::from(opts.rate) / 100) as usize;
    (0..opts.seconds * 100)
        .map(|i| per_tick(i + 1) - per_tick(i))
        .filter(|n| *n > 0)
        .collect()
}

/// Publishes at `opts.rate` for `opts.seconds` straight to the stream while the projection runs;
/// every tick's latency is the time until the checkpoint covers its last event.
async fn latency(
    k: &Kairos,
    projection: &mut AbortOnDrop<Result<(), kairos_runtime::RunnerError>>,
    run_id: &str,
    opts: &BenchOptions,
    at: DateTime<Utc>,
    sent: &mut Money,
) -> anyhow::Result<Latency> {
    let sizes = ticks(opts);
    let total = sizes.iter().sum();
    let (events, cost) = llm_calls(run_id, "latency", total, at)?;
    *sent = sent.checked_add(cost).context("total cost overflows")?;
    let mut events = events.into_iter();
    let batches: Vec<Vec<Event>> = sizes
        .iter()
        .map(|n| events.by_ref().take(*n).collect())
        .collect();
    let (tx, rx) = mpsc::unbounded_channel();
    let observer = tokio::spawn(observe(k.pool.clone(), rx));
    let mut publishes = tokio::task::JoinSet::new();
    let mut interval = tokio::time::interval(TICK);
    let started = Instant::now();
    for batch in batches {
        interval.tick().await;
        let (bus, tx) = (k.bus.clone(), tx.clone());
        publishes.spawn(async move {
            let sent = Instant::now();
            let mut last_seq = 0;
            for receipt in bus.publish_events(&batch).await {
                last_seq = last_seq.max(receipt?.seq.0);
            }
            let _ = tx.send(Tick { sent, last_seq });
            anyhow::Ok(())
        });
    }
    drop(tx);
    while let Some(published) = publishes.join_next().await {
        published??;
    }
    let achieved_rate = per_second(total, started.elapsed());
    let mut samples = tokio::select! {
        observed = observer => observed??,
        outcome = &mut projection.0 => {
            bail!("the budgets projection stopped during the latency run: {outcome:?}")
        }
    };
    samples.sort();
    Ok(Latency {
        samples,
        events: total,
        achieved_rate,
    })
}

/// Polls the checkpoint every `POLL` and records, for each tick, when it became visible.
async fn observe(
    pool: PgPool,
    mut ticks: mpsc::UnboundedReceiver<Tick>,
) -> anyhow::Result<Vec<Duration>> {
    let (mut pending, mut samples) = (Vec::new(), Vec::new());
    let mut deadline = None;
    loop {
        let mut open = true;
        loop {
            match ticks.try_recv() {
                Ok(tick) => pending.push(tick),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        if !open && pending.is_empty() {
            return Ok(samples);
        }
        let reached = checkpoint(&pool).await?;
        let now = Instant::now();
        pending.retain(|t: &Tick| {
            let visible = t.last_seq <= reached;
            if visible {
                samples.push(now - t.sent);
            }
            !visible
        });
        if !open && now > *deadline.get_or_insert(now + CATCH_UP) {
            bail!(
                "{} ticks were still not visible after {CATCH_UP:?}",
                pending.len()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The table

struct Row {
    name: String,
    value: f64,
    unit: &'static str,
    /// The ratio and what it is a ratio of.
    ratio: Option<(f64, &'static str)>,
    /// The target and whether it was met.
    target: Option<(&'static str, bool)>,
}

fn row(name: impl Into<String>, value: f64, unit: &'static str) -> Row {
    Row {
        name: name.into(),
        value,
        unit,
        ratio: None,
        target: None,
    }
}

impl Row {
    fn ratio(mut self, ratio: f64, of: &'static str) -> Self {
        self.ratio = Some((ratio, of));
        self
    }
    fn target(mut self, target: &'static str, met: bool) -> Self {
        self.target = Some((target, met));
        self
    }
}

fn print_table(raw: &Raw, f: &Figures, opts: &BenchOptions) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let lat = &f.latency;
    let ingest_ratio = f.ingest / raw.publish;
    let apply_ack = f.apply / raw.consume_ack;
    let p99 = ms(lat.percentile(0.99));
    let rows = [
        row(
            "raw publish (async, 4096 in flight), mean",
            raw.publish,
            "msg/s",
        ),
        row("raw consume, no ack, mean", raw.consume_no_ack, "msg/s"),
        row("raw consume, ack each, mean", raw.consume_ack, "msg/s"),
        row(
            format!("ingest, HTTP batches of {HTTP_BATCH}, {HTTP_IN_FLIGHT} in flight"),
            f.ingest,
            "ev/s",
        )
        .ratio(ingest_ratio, "raw publish")
        .target(">= 0.50", ingest_ratio >= 0.5),
        row("budgets apply", f.apply, "ev/s")
            .ratio(apply_ack, "consume, ack each")
            .target(">= 0.50", apply_ack >= 0.5),
        row("budgets apply", f.apply, "ev/s")
            .ratio(f.apply / raw.consume_no_ack, "consume, no ack"),
        row("analytics apply", f.analytics_apply, "ev/s")
            .ratio(f.analytics_apply / raw.consume_ack, "consume, ack each")
            .target(">= 0.50", f.analytics_apply / raw.consume_ack >= 0.5),
        row("latency: publish rate achieved", lat.achieved_rate, "ev/s")
            .ratio(lat.achieved_rate / f64::from(opts.rate), "requested rate"),
        row(
            "latency p50, event to visible",
            ms(lat.percentile(0.50)),
            "ms",
        ),
        row("latency p95", ms(lat.percentile(0.95)), "ms"),
        row("latency p99", p99, "ms").target("< 250 ms", p99 < 250.0),
        row("latency max", ms(lat.percentile(1.0)), "ms"),
    ];
    println!(
        "\nKairos events are ~{} B of JSON (raw messages {RAW_BYTES} B); {} latency ticks of {} ms.\n",
        f.event_bytes,
        lat.samples.len(),
        TICK.as_millis()
    );
    println!(
        "{:<46} {:>10} {:<6} {:<28} {:<9} result",
        "figure", "value", "unit", "ratio", "target"
    );
    print_rows(rows);
}

// ---------------------------------------------------------------------------------------------
// 6–7: replay and point-in-time reads over a long history

struct History {
    /// Every projection built live, together, from the whole history.
    live: f64,
    /// `kairos replay` of every projection, one after the other: history events / total time.
    replay: f64,
    as_of: Vec<Duration>,
    /// Each dashboard page's times over the history, sorted.
    pages: Vec<(&'static str, Vec<Duration>)>,
}

/// Publishes `opts.history` events (LLM calls, user actions, budget changes) straight to a fresh
/// stream, lets every projection build from them, replays every projection, then times `as_of`
/// budget reads at random instants of that history.
async fn history_figures(
    mut settings: Settings,
    js: &jetstream::Context,
    run_id: &str,
    opts: &BenchOptions,
) -> anyhow::Result<History> {
    // A page reads through the API several times (Routing about twelve): the per-key limit would
    // time the limiter, not the page.
    settings.http.rate_limit_per_second = 0;
    let run_id = format!("h{}", &run_id[..31]);
    let instance = Instance::start(settings, &run_id).await?;
    let measured = measure_history(&instance, &run_id, opts).await;
    instance.remove(js).await;
    measured
}

async fn measure_history(
    instance: &Instance,
    run_id: &str,
    opts: &BenchOptions,
) -> anyhow::Result<History> {
    let k = &instance.k;
    let at = Utc::now();
    let period = Period::containing(at, &budget_zone(k)?);
    // Build and publish in chunks: a million events do not sit in memory at once.
    let started = Instant::now();
    let mut sent = 0;
    while sent < opts.history {
        let n = (opts.history - sent).min(10_000);
        let mut chunk = Vec::with_capacity(n);
        for i in sent..sent + n {
            let project = format!("bench-p{}", i % PROJECTS);
            chunk.push(history_event(&project, i, run_id, at)?);
        }
        for r in k.bus.publish_events(&chunk).await {
            r?;
        }
        sent += n;
    }
    let last = k.bus.last_seq().await?.0;
    eprintln!(
        "  history: {} events published in {:.1} s",
        opts.history,
        started.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let names = k.projection_names();
    let _live: Vec<AbortOnDrop<_>> = names
        .iter()
        .map(|name| k.spawn_projection(name).map(AbortOnDrop))
        .collect::<anyhow::Result<_>>()?;
    for name in &names {
        loop {
            let reached = kairos_runtime::checkpoint(&k.pool, name)
                .await?
                .map_or(0, |c| c.last_seq);
            if reached >= last {
                break;
            }
            ensure!(
                started.elapsed() < CATCH_UP * 4,
                "{name} stuck at {reached} of {last}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let live = per_second(opts.history, started.elapsed());
    eprintln!("  live build of every projection: {live:.0} events/s");

    // As `kairos replay --all` does: every projection at once, from one read of the stream.
    let started = Instant::now();
    let opts_replay = kairos_runtime::ReplayOptions::default();
    let seats = k.shared_read(names.len(), &opts_replay);
    let reports = futures_util::future::try_join_all(
        names
            .iter()
            .zip(seats)
            .map(|(name, seat)| k.replay(name, &opts_replay, Some(seat), |_| {})),
    )
    .await?;
    // The live projections append to the stream themselves (audit checkpoints): a replay may
    // reach beyond the history.
    for (name, report) in names.iter().zip(reports) {
        ensure!(
            report.switched && report.reached.0 >= last,
            "{name} replay stopped at {}",
            report.reached
        );
    }
    let replay = per_second(opts.history, started.elapsed());
    eprintln!("  replay of every projection: {replay:.0} events/s");

    // Point-in-time reads at random instants of the history, through the API.
    let (base, _server) = instance.serve_api().await?;
    let (first_time, last_time) = stored_span(k).await?;
    let span = (last_time - first_time)
        .num_microseconds()
        .unwrap_or(1)
        .max(1) as u64;
    let http = instance.client()?;
    let mut samples = Vec::with_capacity(opts.as_of_reads);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..opts.as_of_reads {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let instant = first_time + chrono::Duration::microseconds((x % span) as i64);
        let url = format!(
            "{base}/v1/projects/bench-p{}/budget?period={period}&as_of={}",
            i % PROJECTS,
            instant.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        );
        let t = Instant::now();
        let r = http.get(&url).send().await?;
        let status = r.status();
        let _ = r.bytes().await?;
        samples.push(t.elapsed());
        ensure!(
            status == 200 || status == 404,
            "as_of read answered {status}"
        );
    }
    samples.sort();
    let pages = if opts.page_reads > 0 {
        pages::measure(&base, &instance.key, opts.page_reads).await?
    } else {
        Vec::new()
    };
    Ok(History {
        live,
        replay,
        as_of: samples,
        pages,
    })
}

fn return_user_action(project: &str, i: usize) -> kairos_client::UserAction {
    kairos_client::UserAction::new(
        "bench-user",
        "prompt.update",
        &format!("prompt:{i}"),
        "success",
    )
    .project(project)
}

/// One event of the history: mostly LLM calls, some budget changes and user actions.
fn history_event(
    project: &str,
    i: usize,
    run_id: &str,
    at: DateTime<Utc>,
) -> anyhow::Result<Event> {
    let id = format!("{run_id}-{i}");
    let event = match i % 50 {
        0 => kairos_client::BudgetSet::new(project, &format!("{}", 1_000 + i % 7_000))
            .id(id)
            .time(at)
            .build()?,
        1 => return_user_action(project, i).id(id).time(at).build()?,
        _ => {
            let cost = Money::from_nanos(((i * 7_919) % 5_000_000) as i64);
            LlmCall::new(project, "gpt-4o", "openai")
                .tokens(500, 100)
                .cost(&cost.to_string())
                .latency_ms(300)
                .id(id)
                .time(at)
                .build()?
        }
    };
    Ok(event)
}

/// When the history's first and last events were stored.
async fn stored_span(k: &Kairos) -> anyhow::Result<(DateTime<Utc>, DateTime<Utc>)> {
    let mut stream = k.bus.jetstream().get_stream(k.bus.stream_name()).await?;
    let state = stream.info().await?.state.clone();
    Ok((state.first_timestamp, state.last_timestamp))
}

fn print_history(raw: &Raw, h: &History, opts: &BenchOptions) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pct = |p: f64| {
        h.as_of
            .get(((h.as_of.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    let replay_ratio = h.replay / raw.consume_no_ack;
    let p99 = ms(pct(0.99));
    let rows = [
        row(
            "raw consume, no ack, mean after/end",
            raw.consume_no_ack,
            "msg/s",
        ),
        row(
            format!("live build, every projection ({} events)", opts.history),
            h.live,
            "ev/s",
        )
        .ratio(h.live / raw.consume_no_ack, "consume, no ack"),
        row("replay of every projection", h.replay, "ev/s")
            .ratio(replay_ratio, "consume, no ack")
            .target(">= 0.40", replay_ratio >= 0.4),
        row("as_of budget read p50", ms(pct(0.50)), "ms"),
        row("as_of budget read p99", p99, "ms").target("< 50 ms", p99 < 50.0),
    ];
    println!();
    print_rows(rows);
    let at = |times: &[Duration], p: f64| {
        times
            .get(((times.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    print_rows(h.pages.iter().map(|(page, times)| {
        let p99 = ms(at(times, 0.99));
        row(
            format!("dashboard {page} p99 (p50 {:.1} ms)", ms(at(times, 0.5))),
            p99,
            "ms",
        )
        .target("< 50 ms", p99 < 50.0)
    }));
}

fn print_rows(rows: impl IntoIterator<Item = Row>) {
    for r in rows {
        let ratio = r
            .ratio
            .map_or(String::new(), |(x, of)| format!("{x:.2} of {of}"));
        let (target, result) = r
            .target
            .map_or(("", ""), |(t, met)| (t, if met { "PASS" } else { "MISS" }));
        let digits = if r.unit == "ms" { 1 } else { 0 };
        println!(
            "{:<46} {:>10.digits$} {:<6} {:<28} {:<9} {result}",
            r.name, r.value, r.unit, ratio, target
        );
    }
}

/// The time zone budget months are taken in, from the `[budgets]` section.
fn budget_zone(k: &Kairos) -> anyhow::Result<chrono_tz::Tz> {
    let settings: kairos_budgets::BudgetSettings = k.section("budgets")?;
    settings.timezone.parse().map_err(|_| {
        anyhow::anyhow!(
            "budgets.timezone {:?} is not a time zone",
            settings.timezone
        )
    })
}
