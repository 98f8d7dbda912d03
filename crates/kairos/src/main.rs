//! `kairos`: the command line. Parses arguments and calls into the library; nothing else.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use kairos::configuration::Settings;
use kairos::startup::{Kairos, redact};
use kairos::{demo, publish, telemetry};
use tracing::{error, info};

// Ingest and projections allocate many small JSON values; mimalloc makes that markedly cheaper
// than glibc's allocator (measured with `kairos bench`, see docs/operations.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "kairos",
    version,
    about = "Event-sourced control plane for LLM and agent platforms"
)]
struct Cli {
    /// Configuration file (default: ./kairos.toml when it exists, else built-in defaults).
    #[arg(long, short, global = true, env = "KAIROS_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API and every projection in one process.
    Serve {
        /// Also publish demo traffic.
        #[arg(long)]
        demo: bool,
        /// Run the API only (projections run elsewhere with `kairos consume`).
        #[arg(long)]
        no_projections: bool,
    },
    /// Run one projection alone.
    Consume {
        /// The projection's name.
        projection: String,
    },
    /// Publish CloudEvents, one JSON object per line, from FILE or stdin.
    Publish {
        /// File of JSON lines; `-` or nothing reads stdin.
        file: Option<PathBuf>,
    },
    /// Apply database migrations and create the streams, then exit.
    Migrate,
    /// Write the events stream and the key secret into a new folder (see docs/backup.md).
    Backup {
        /// The folder to write `manifest.json` and `stream.jsonl` into.
        #[arg(long)]
        out: PathBuf,
    },
    /// Put a backup back onto an events stream that never held a message and a new database;
    /// the projections then rebuild from it on start.
    Restore {
        /// The folder `kairos backup` wrote.
        #[arg(long)]
        from: PathBuf,
    },
    /// Publish demo traffic only.
    Demo,
    /// Validate the configuration and print it.
    CheckConfig,
    /// Rebuild projections from the stream into a fresh generation, then switch to it.
    Replay(ReplayArgs),
    /// Check the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Inspect, export and import the event stream.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Members, roles, invitations and API keys, for operators (same checks as the API).
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Measure ingest, projection and latency against raw JetStream in one run (logs off
    /// unless RUST_LOG is set).
    Bench(kairos::bench::BenchOptions),
    /// Ask the router for a model, or replay history under another catalog.
    #[command(subcommand)]
    Route(RouteCommand),
    /// Measure a model offline on a log file (no NATS or database needed).
    #[command(subcommand)]
    Eval(kairos::eval::EvalCommand),
}

#[derive(Subcommand)]
enum RouteCommand {
    /// Ask a running Kairos which model a call should use (POST /v1/route); prints the answer
    /// as JSON. Exits 0 when routed, 2 when no model fits (422), 3 when the budget blocks (402).
    Ask {
        #[arg(long)]
        project: String,
        #[arg(long)]
        input_tokens: u64,
        #[arg(long)]
        expected_output_tokens: u64,
        #[arg(long)]
        max_output_tokens: Option<u64>,
        #[arg(long)]
        task: Option<String>,
        #[arg(long)]
        min_tier: Option<u8>,
        /// A tag every candidate must carry (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// The API (default: http://<http.addr>).
        #[arg(long, env = "KAIROS_URL")]
        url: Option<String>,
        /// An API key with the `route` permission.
        #[arg(long, env = "KAIROS_KEY", hide_env_values = true)]
        key: String,
    },
    /// Replay the recorded decisions and LLM calls of [--from, --to) under another catalog;
    /// prints one JSON report per project: the cost as it was and as it would have been, the
    /// calls that would have gone to another model, the days each budget would have entered
    /// warning or exceeded.
    Simulate {
        /// A catalog file: [[catalog.model]] tables as in kairos.toml, or [[model]] tables.
        #[arg(long)]
        catalog: PathBuf,
        /// RFC 3339.
        #[arg(long)]
        from: chrono::DateTime<chrono::Utc>,
        /// RFC 3339.
        #[arg(long)]
        to: chrono::DateTime<chrono::Utc>,
        #[arg(long)]
        project: Option<String>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Recompute the hash chain from the database and rebuild the entries from the stream;
    /// report the first entry altered, deleted, inserted or reordered.
    Verify,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Print the permission matrix (Markdown), as the API enforces it.
    Permissions,
    /// List members.
    Members {
        /// Include removed members.
        #[arg(long)]
        all: bool,
    },
    /// Add a member directly (no invitation) and print their first API key.
    AddMember {
        #[arg(long)]
        email: String,
        /// admin, developer or viewer.
        #[arg(long)]
        role: String,
        /// Narrow the role to this project (repeatable).
        #[arg(long = "project")]
        projects: Vec<String>,
        #[arg(long)]
        name: Option<String>,
    },
    /// Invite someone; prints the one-time token.
    Invite {
        #[arg(long)]
        email: String,
        #[arg(long)]
        role: String,
        #[arg(long = "project")]
        projects: Vec<String>,
        /// Hours until the token expires (default: auth.invitation_ttl_hours).
        #[arg(long)]
        expires_in_hours: Option<u32>,
    },
    /// List invitations (never their tokens).
    Invitations,
    /// Change a member's role.
    SetRole {
        member_id: String,
        role: String,
        #[arg(long = "project")]
        projects: Vec<String>,
    },
    /// Remove a member; their keys stop working.
    Remove {
        member_id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Issue an API key for a member and print it (shown once).
    IssueKey {
        member_id: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        expires_in_days: Option<u32>,
        /// A CloudEvent source prefix the key may publish under (repeat for more); none: any.
        #[arg(long = "allowed-source")]
        allowed_sources: Vec<String>,
    },
    /// Revoke an API key.
    RevokeKey { key_id: String },
    /// List API keys (of one member, or all).
    Keys {
        #[arg(long)]
        member: Option<String>,
    },
}

#[derive(Subcommand)]
enum EventsCommand {
    /// Print events as they are stored.
    Tail {
        #[command(flatten)]
        sel: SelectionArgs,
        /// One JSON line per event instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Write stored events as JSON lines to stdout.
    Export {
        /// First stored time (RFC 3339); default: the beginning.
        #[arg(long)]
        from: Option<chrono::DateTime<chrono::Utc>>,
        /// Last stored time (RFC 3339); default: now.
        #[arg(long)]
        to: Option<chrono::DateTime<chrono::Utc>>,
        #[command(flatten)]
        sel: SelectionArgs,
    },
    /// Publish exported JSON lines again; already stored events are recognised by identity.
    Import {
        /// File of JSON lines; `-` or nothing reads stdin.
        file: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct SelectionArgs {
    /// Only this CloudEvent type.
    #[arg(long = "type", value_name = "TYPE")]
    ty: Option<String>,
    /// Only this project.
    #[arg(long)]
    project: Option<String>,
}

impl SelectionArgs {
    fn parse(self) -> anyhow::Result<kairos::history::Selection> {
        let project = self
            .project
            .map(|p| {
                kairos_events::ProjectId::parse(&p)
                    .map_err(|e| anyhow::anyhow!("--project: {}", e.message))
            })
            .transpose()?;
        Ok(kairos::history::Selection {
            ty: self.ty,
            project,
        })
    }
}

#[derive(clap::Args)]
struct ReplayArgs {
    /// The projection to rebuild.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    projection: Option<String>,
    /// Rebuild every projection.
    #[arg(long)]
    all: bool,
    /// Stop at the last event stored at or before this RFC 3339 time; keep the generation
    /// beside the live tables instead of switching.
    #[arg(long, conflicts_with = "until_seq")]
    until: Option<chrono::DateTime<chrono::Utc>>,
    /// Stop at this stream sequence; keep the generation beside the live tables.
    #[arg(long)]
    until_seq: Option<u64>,
    /// Keep the previous live tables after the switch.
    #[arg(long)]
    keep_old: bool,
    /// Discard a half-built generation instead of resuming it.
    #[arg(long)]
    restart: bool,
    /// Rebuild even though retention removed the stream's first events.
    #[arg(long)]
    allow_partial: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kairos: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let path = cli.config.or_else(|| {
        let default = PathBuf::from("kairos.toml");
        default.is_file().then_some(default)
    });
    let settings = Settings::load(path.as_deref())?;
    // The bench prints a table; logs would only garble it.
    if !matches!(cli.command, Command::Bench(_)) || std::env::var_os("RUST_LOG").is_some() {
        telemetry::init(&settings.log);
    }
    match cli.command {
        Command::CheckConfig => {
            kairos::startup::configure(
                &settings,
                &kairos::startup::registry(),
                &Default::default(),
            )?;
            let mut shown = settings.clone();
            shown.database.url = redact(&shown.database.url);
            shown.nats.url = redact(&shown.nats.url);
            // BusConfig's Debug shows whether its secrets are set, never what they are.
            for secret in [
                &mut shown.auth.bootstrap_admin_key,
                &mut shown.auth.key_secret,
            ] {
                if secret.is_some() {
                    *secret = Some("***".into());
                }
            }
            // A module's secrets (say, `[anomalies] webhook_secret`) are not printed either, nor the
            // paths of its URLs.
            for section in shown.modules.values_mut() {
                if let figment::value::Value::Dict(_, dict) = section {
                    for (key, value) in dict.iter_mut() {
                        if key.contains("secret") || key.contains("password") {
                            *value = figment::value::Value::from("***");
                        } else if key.ends_with("url")
                            && let Some(url) =
                                value.as_str().and_then(|u| reqwest::Url::parse(u).ok())
                        {
                            // A webhook's path is often its secret: only where it goes.
                            let host = url.host_str().unwrap_or("?");
                            *value = figment::value::Value::from(format!(
                                "{}://{host}/***",
                                url.scheme()
                            ));
                        }
                    }
                }
            }
            println!("{shown:#?}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => {
            let k = Kairos::connect(settings).await?;
            info!(
                modules = k.projection_names().join(", "),
                stream = k.bus.stream_name(),
                "database migrated, streams ready"
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Backup { out } => {
            let k = Kairos::connect(settings).await?;
            let m = kairos::backup::backup(&k, &out, chrono::Utc::now()).await?;
            eprintln!(
                "kairos backup: {} messages (sequences {}..={}) of {} into {}{}",
                m.messages,
                m.first_seq,
                m.last_seq,
                m.stream,
                out.display(),
                if m.key_secret.is_some() {
                    "; manifest.json holds the key secret: keep it as you keep passwords"
                } else {
                    ""
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore { from } => {
            let k = Kairos::connect(settings).await?;
            let r = kairos::backup::restore(&k, &from).await?;
            eprintln!(
                "kairos restore: {} messages put back at sequences {}..={} of {}{}; the \
                 projections rebuild when Kairos starts (kairos serve, or kairos replay --all)",
                r.messages,
                r.first_seq,
                r.last_seq,
                k.bus.stream_name(),
                if r.key_secret {
                    ", and the key secret"
                } else {
                    ""
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Events(EventsCommand::Import { file }) | Command::Publish { file } => {
            let bus = kairos_bus::Bus::connect(&settings.nats, "kairos-publish").await?;
            bus.ensure_streams().await?;
            let mut stdout = std::io::stdout().lock();
            let summary = match file.filter(|f| f.as_os_str() != "-") {
                Some(f) => {
                    let input = tokio::fs::File::open(&f)
                        .await
                        .with_context(|| format!("cannot open {}", f.display()))?;
                    publish::publish_lines(&bus, input, &mut stdout).await?
                }
                None => publish::publish_lines(&bus, tokio::io::stdin(), &mut stdout).await?,
            };
            eprintln!(
                "kairos: {} accepted ({} duplicates), {} rejected, {} failed",
                summary.accepted, summary.duplicates, summary.rejected, summary.failed
            );
            Ok(match (summary.failed, summary.rejected) {
                (0, 0) => ExitCode::SUCCESS,
                (0, _) => ExitCode::from(1),
                _ => ExitCode::from(2),
            })
        }
        Command::Demo => {
            let bus = kairos_bus::Bus::connect(&settings.nats, "kairos-demo").await?;
            bus.ensure_streams().await?;
            demo::run(bus, settings.demo.events_per_second).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Consume { projection } => {
            let registry = kairos::startup::registry();
            if registry.get(&projection).is_none() {
                anyhow::bail!(registry.unknown(&projection));
            }
            let k = Kairos::connect(settings).await?;
            let task = k.spawn_projection(&projection)?;
            tokio::select! {
                r = task => { r??; }
                _ = shutdown_signal() => info!("stopping"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(opts) => {
            kairos::bench::run(settings, opts).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay(args) => replay(settings, args).await,
        Command::Route(RouteCommand::Simulate {
            catalog,
            from,
            to,
            project,
        }) => {
            let k = Kairos::connect(settings).await?;
            let reports =
                kairos::route::simulate_file(&k, &catalog, from, to, project.as_deref()).await?;
            for r in reports {
                println!("{}", serde_json::to_string(&r)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Route(RouteCommand::Ask {
            project,
            input_tokens,
            expected_output_tokens,
            max_output_tokens,
            task,
            min_tier,
            tags,
            url,
            key,
        }) => {
            let url = url.unwrap_or_else(|| format!("http://{}", settings.http.addr));
            let body = serde_json::json!({
                "project": project, "input_tokens": input_tokens,
                "expected_output_tokens": expected_output_tokens,
                "max_output_tokens": max_output_tokens, "task": task, "min_tier": min_tier,
                "tags": tags,
            });
            let answer = reqwest::Client::new()
                .post(format!("{}/v1/route", url.trim_end_matches('/')))
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .with_context(|| format!("cannot reach Kairos at {url}"))?;
            let status = answer.status().as_u16();
            println!("{}", answer.text().await?);
            Ok(match status {
                200 => ExitCode::SUCCESS,
                422 => ExitCode::from(2),
                402 => ExitCode::from(3),
                _ => ExitCode::from(1),
            })
        }
        Command::Audit(AuditCommand::Verify) => {
            let k = Kairos::connect(settings).await?;
            let chain = kairos_audit::verify_chain(&k.pool).await?;
            let stream = kairos_audit::verify_against_stream(&k.bus, &k.pool).await?;
            let ok = chain.first_bad.is_none() && stream.first_bad.is_none();
            println!(
                "{}",
                serde_json::json!({"ok": ok, "chain": chain, "stream": stream})
            );
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Events(EventsCommand::Tail { sel, json }) => {
            let sel = sel.parse()?;
            let bus = kairos_bus::Bus::connect(&settings.nats, "kairos-tail").await?;
            let mut out = std::io::stdout().lock();
            tokio::select! {
                r = kairos::history::tail(&bus, &sel, json, &mut out) => r?,
                _ = shutdown_signal() => {}
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Events(EventsCommand::Export { from, to, sel }) => {
            let sel = sel.parse()?;
            let bus = kairos_bus::Bus::connect(&settings.nats, "kairos-export").await?;
            let n = kairos::history::export(&bus, from, to, &sel, &mut std::io::stdout().lock())
                .await?;
            eprintln!("kairos events export: {n} events");
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve {
            demo,
            no_projections,
        } => serve(settings, demo, !no_projections).await,
        Command::Admin(cmd) => admin(settings, cmd).await,
        Command::Eval(cmd) => {
            kairos::eval::run(cmd, &mut std::io::stdout().lock())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn serve(
    settings: Settings,
    with_demo: bool,
    with_projections: bool,
) -> anyhow::Result<ExitCode> {
    let addr = settings.http.addr.clone();
    let limits = kairos_api::ServeLimits::from(&settings.http);
    let demo_rate = settings.demo.events_per_second;
    let k = Kairos::connect(settings).await?;
    let mut tasks = tokio::task::JoinSet::new();
    let names = k.projection_names();
    if with_projections {
        for name in names.clone() {
            let handle = k.spawn_projection(name)?;
            tasks.spawn(async move { (name, handle.await) });
        }
    }
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (set http.addr or KAIROS_HTTP_ADDR)"))?;
    let url = format!("http://{}", listener.local_addr()?);
    let kairos::startup::Api {
        router: app,
        banner,
        refusals,
    } = k.api().await?;
    // The port opens at once, whatever the projections' lag; the first admin is decided on the
    // identity events in the background.
    tokio::spawn(bootstrap_in_background(k.clone()));
    if with_demo {
        let bus = k.bus.clone();
        tokio::spawn(async move {
            if let Err(e) = demo::run(bus, demo_rate).await {
                error!(error = %e, "demo traffic stopped");
            }
        });
    }
    println!("\nKairos is running at {url}");
    if k.settings.dashboard.enabled {
        println!(
            "  dashboard: {url}/ (sign in with an API key; `make run` keeps the first admin's in .kairos/env)"
        );
    }
    let running = if with_projections {
        names.join(", ")
    } else {
        "none in this process (run kairos consume)".into()
    };
    let mut line = format!("  stream {} · projections: {running}", k.bus.stream_name());
    for b in banner {
        line.push_str(" · ");
        line.push_str(&b);
    }
    println!("{line}");
    if !k.bus.server_requires_auth() {
        println!(
            "  NATS at {} asks for no credentials: any process that reaches it may publish \
             anything, Kairos' own facts included (nats.conf locks it down; docs/security.md)",
            redact(&k.settings.nats.url)
        );
    }
    if let Some(warning) = kairos::startup::unsigned_warning(k.bus.config()) {
        println!("{warning}");
    }
    println!(
        "\nTry (every endpoint but /health needs the key; KAIROS_BOOTSTRAP_ADMIN_KEY is the first admin's):"
    );
    println!("  export KEY=$KAIROS_BOOTSTRAP_ADMIN_KEY   # `make run` puts it in .kairos/env");
    println!("  curl -s -H \"Authorization: Bearer $KEY\" {url}/v1/budgets | jq");
    println!("  curl -s -H \"Authorization: Bearer $KEY\" {url}/v1/projects/research/budget | jq");
    println!(
        "  curl -s -X POST {url}/v1/events -H \"Authorization: Bearer $KEY\" -H 'content-type: application/cloudevents+json' -d \
         '{{\"specversion\":\"1.0\",\"id\":\"call-1\",\"source\":\"my-gateway\",\"type\":\"kairos.llm.call.completed.v1\",\"subject\":\"checkout\",\"data\":{{\"project\":\"checkout\",\"model\":\"gpt-4o\",\"provider\":\"openai\",\"input_tokens\":1200,\"output_tokens\":300,\"cost\":\"0.0123\",\"latency_ms\":840,\"status\":\"ok\"}}}}'"
    );
    println!("  (more: {url}/v1/projections, {url}/metrics; Ctrl-C stops)\n");
    let server = kairos_api::serve(listener, app, limits, shutdown_signal());
    tokio::select! {
        () = server => {
            // The minute under way is counted too: a tally is not lost with the process.
            refusals.publish(true).await;
            Ok(ExitCode::SUCCESS)
        }
        Some(done) = tasks.join_next(), if with_projections => {
            let (name, result) = done?;
            error!(projection = name, ?result, "projection stopped");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Makes the bootstrap key the first admin's (see `Kairos::bootstrap_admin`), trying again (every
/// 5 s) while NATS or PostgreSQL do not answer.
async fn bootstrap_in_background(k: Kairos) {
    loop {
        match k.bootstrap_admin().await {
            Ok(Some(member)) => {
                info!(%member, "the bootstrap key is now the first admin's key");
                return;
            }
            Ok(None) => return,
            Err(e) => {
                error!(error = %e, "could not bootstrap the first admin yet; trying again in 5 s");
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            }
        }
    }
}

/// Ctrl-C or SIGTERM (what a container runtime sends).
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

async fn replay(settings: Settings, args: ReplayArgs) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let registry = kairos::startup::registry();
    let names: Vec<String> = match &args.projection {
        Some(p) if registry.get(p).is_none() => anyhow::bail!(registry.unknown(p)),
        Some(p) => vec![p.clone()],
        None => registry.names().into_iter().map(str::to_owned).collect(),
    };
    let k = Kairos::connect(settings).await?;
    let until_seq = match (args.until, args.until_seq) {
        (Some(t), _) => Some(kairos_runtime::seq_at_time(&k.bus, &k.pool, t).await?),
        (None, Some(s)) => Some(kairos_events::StreamSeq(s)),
        (None, None) => None,
    };
    let opts = kairos_runtime::ReplayOptions {
        until_seq,
        keep_old: args.keep_old,
        restart: args.restart,
        allow_partial: args.allow_partial,
        ..Default::default()
    };
    // Projections rebuild side by side from one read of the stream, one progress line for all
    // of them.
    let progress: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, String>>> =
        std::sync::Arc::default();
    let seats = k.shared_read(names.len(), &opts);
    let rebuilds = names.iter().zip(seats).map(|(name, seat)| {
        let progress = progress.clone();
        let (k, opts) = (&k, &opts);
        async move {
            let report = k
                .replay(name, opts, Some(seat), |p| {
                    let pct = if p.target == 0 {
                        100.0
                    } else {
                        p.at as f64 * 100.0 / p.target as f64
                    };
                    let eta = p.eta().map_or("?".into(), |d| format!("{}s", d.as_secs()));
                    let mut all = progress
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    all.insert(
                        name.clone(),
                        format!("{name} {pct:.1}% ({:.0}/s, ETA {eta})", p.events_per_sec),
                    );
                    let line: Vec<&str> = all.values().map(String::as_str).collect();
                    eprint!("\r{}   ", line.join(" · "));
                    let _ = std::io::stderr().flush();
                })
                .await?;
            anyhow::Ok((name, report))
        }
    });
    let reports = futures_util::future::try_join_all(rebuilds).await?;
    eprintln!();
    for (name, report) in reports {
        let rate = report.events_read as f64 / report.elapsed.as_secs_f64().max(1e-6);
        println!(
            "{name}: rebuilt to sequence {} ({} events read in {:.1}s, {rate:.0} events/s); {}",
            report.reached.0,
            report.events_read,
            report.elapsed.as_secs_f64(),
            if report.switched {
                match &report.kept_old {
                    Some(old) => format!("now live, previous tables kept in schema {old}"),
                    None => "now live".to_owned(),
                }
            } else {
                format!(
                    "kept beside the live tables in schema {} (not switched)",
                    report.schema
                )
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn admin(settings: Settings, cmd: AdminCommand) -> anyhow::Result<ExitCode> {
    use kairos_access::commands;
    if matches!(cmd, AdminCommand::Permissions) {
        let modules = kairos::startup::configure(
            &settings,
            &kairos::startup::registry(),
            &Default::default(),
        )?;
        print!(
            "{}",
            kairos_api::permission_table(&kairos::startup::endpoints(&modules))
        );
        return Ok(ExitCode::SUCCESS);
    }
    let ttl_hours = settings.auth.invitation_ttl_hours;
    let k = Kairos::connect(settings).await?;
    let secret = k.key_secret().await?;
    let directory = k.directory();
    let ctx = k.access(&secret, &directory);
    let origin = commands::Origin {
        actor: format!(
            "cli:{}",
            std::env::var("USER").unwrap_or_else(|_| "operator".into())
        ),
        source: "kairos/cli".into(),
        ..Default::default()
    };
    let scope = |p: Vec<String>| (!p.is_empty()).then_some(p);
    let out = match cmd {
        AdminCommand::Permissions => unreachable!("handled above"),
        AdminCommand::Members { all } => {
            serde_json::json!({"members": kairos_access::members(&k.pool, all, kairos_access::Page::ALL).await?})
        }
        AdminCommand::Invitations => {
            serde_json::json!({"invitations": kairos_access::invitations(&k.pool, false, kairos_access::Page::ALL).await?})
        }
        AdminCommand::Keys { member } => {
            serde_json::json!({"api_keys": kairos_access::keys(&k.pool, member.as_deref(), kairos_access::Page::ALL).await?})
        }
        AdminCommand::AddMember {
            email,
            role,
            projects,
            name,
        } => serde_json::to_value(
            commands::add_member(ctx, &origin, &email, &role, scope(projects), name).await?,
        )?,
        AdminCommand::Invite {
            email,
            role,
            projects,
            expires_in_hours,
        } => {
            let hours = expires_in_hours.unwrap_or(ttl_hours);
            if !(1..=720).contains(&hours) {
                anyhow::bail!("--expires-in-hours must be between 1 and 720");
            }
            let ttl = chrono::Duration::hours(i64::from(hours));
            serde_json::to_value(
                commands::invite(ctx, &origin, &email, &role, scope(projects), ttl).await?,
            )?
        }
        AdminCommand::SetRole {
            member_id,
            role,
            projects,
        } => serde_json::to_value(
            commands::set_role(ctx, &origin, &member_id, &role, scope(projects)).await?,
        )?,
        AdminCommand::Remove { member_id, reason } => serde_json::to_value(
            commands::remove(ctx, &origin, &member_id, reason.as_deref()).await?,
        )?,
        AdminCommand::IssueKey {
            member_id,
            name,
            expires_in_days,
            allowed_sources,
        } => {
            let expires = match expires_in_days {
                None => None,
                Some(d @ 1..=3650) => Some(chrono::Duration::days(i64::from(d))),
                Some(_) => anyhow::bail!("--expires-in-days must be between 1 and 3650"),
            };
            serde_json::to_value(
                commands::issue_key(
                    ctx,
                    &origin,
                    &member_id,
                    &name,
                    expires,
                    (!allowed_sources.is_empty()).then_some(allowed_sources),
                )
                .await?,
            )?
        }
        AdminCommand::RevokeKey { key_id } => {
            serde_json::to_value(commands::revoke_key(ctx, &origin, &key_id).await?)?
        }
    };
    println!("{out:#}");
    Ok(ExitCode::SUCCESS)
}
