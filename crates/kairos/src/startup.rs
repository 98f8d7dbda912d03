//! Wiring: connect, migrate, create streams, run projections and the API.

use std::sync::Arc;

use anyhow::Context;
use chrono_tz::Tz;
use std::collections::HashSet;
use std::sync::Mutex;

use kairos_access::KeySecret;
use kairos_api::{AppState, Counters, ReplayRefused, Replayer};
use kairos_budgets::Budgets;
use kairos_bus::Bus;
use kairos_events::Event;
use kairos_runtime::{
    CheckpointWatch, Progress, ReplayOptions, ReplayReport, Runner, RunnerError, Seat,
};
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;
use tokio::task::JoinHandle;

use crate::configuration::Settings;

/// Every migration: the runtime's tables and each projection's.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations");

/// The projections this build runs, by name.
pub const PROJECTIONS: &[&str] = &[
    kairos_budgets::NAME,
    kairos_audit::NAME,
    kairos_access::NAME,
];

/// Runs `$body` with `$p` bound to the projection called `$name`; the one place that maps
/// names to projection types.
macro_rules! with_projection {
    ($kairos:expr, $name:expr, |$p:ident| $body:expr) => {
        match $name {
            kairos_budgets::NAME => {
                let $p = Budgets { tz: $kairos.tz };
                $body
            }
            kairos_audit::NAME => {
                let $p = kairos_audit::Audit;
                $body
            }
            kairos_access::NAME => {
                let $p = kairos_access::Access;
                $body
            }
            other => anyhow::bail!(
                "unknown projection {other:?}; known: {}",
                PROJECTIONS.join(", ")
            ),
        }
    };
}

/// A connected Kairos: settings, the bus (streams ensured) and a migrated database.
#[derive(Clone)]
pub struct Kairos {
    pub settings: Settings,
    pub bus: Bus,
    pub pool: PgPool,
    pub tz: Tz,
    /// "Now" for the API and the commands; tests pin it.
    pub clock: kairos_events::Clock,
}

/// How Kairos pools its PostgreSQL connections (at most `max_connections`).
pub fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(std::time::Duration::from_secs(10))
        // No ping before handing out a pooled connection: a round trip per transaction, and a
        // connection the server dropped fails its next statement anyway, which the runtime
        // retries and the API answers with 503.
        .test_before_acquire(false)
}

impl Kairos {
    /// Connects to PostgreSQL and NATS as configured, applies migrations, ensures the streams.
    pub async fn connect(settings: Settings) -> anyhow::Result<Self> {
        let pool = pool_options(settings.database.max_connections)
            .connect(&settings.database.url)
            .await
            .with_context(|| {
                format!(
                    "cannot connect to PostgreSQL at {}",
                    redact(&settings.database.url)
                )
            })?;
        Self::with_pool(settings, pool).await
    }

    /// As [`Kairos::connect`], on an existing pool (tests hand in a fresh database).
    pub async fn with_pool(settings: Settings, pool: PgPool) -> anyhow::Result<Self> {
        MIGRATOR.run(&pool).await.context("applying migrations")?;
        claim_database(&pool, &settings).await?;
        let bus = Bus::connect(&settings.nats, "kairos").await?;
        bus.ensure_streams().await?;
        let tz = settings.timezone()?;
        Ok(Self {
            settings,
            bus,
            pool,
            tz,
            clock: kairos_events::Clock::system(),
        })
    }

    /// Starts the projection called `name` on its own task.
    pub fn spawn_projection(
        &self,
        name: &str,
    ) -> anyhow::Result<JoinHandle<Result<(), RunnerError>>> {
        let config = self.settings.projections.clone();
        let (bus, pool) = (self.bus.clone(), self.pool.clone());
        with_projection!(self, name, |p| Ok(tokio::spawn(
            Runner::new(p, bus, pool, config).run()
        )))
    }

    /// Rebuilds the projection called `name` from the stream (see `kairos_runtime::replay`).
    pub async fn replay(
        &self,
        name: &str,
        opts: &ReplayOptions,
        seat: Option<Seat>,
        progress: impl FnMut(Progress),
    ) -> anyhow::Result<ReplayReport> {
        let opts = ReplayOptions {
            snapshot_every: self.settings.projections.snapshot_every,
            identities_in_memory: self.settings.projections.replay_identities_in_memory,
            ..opts.clone()
        };
        with_projection!(self, name, |p| Ok(kairos_runtime::replay(
            p, &self.bus, &self.pool, &opts, seat, progress
        )
        .await?))
    }

    /// Places in one read of the stream for `n` replays run side by side (`kairos replay
    /// --all`): the stream is read once for all of them.
    pub fn shared_read(&self, n: usize, opts: &ReplayOptions) -> Vec<Seat> {
        let opts = ReplayOptions {
            snapshot_every: self.settings.projections.snapshot_every,
            ..opts.clone()
        };
        kairos_runtime::shared_read(&self.bus, n, &opts)
    }

    /// The HMAC key of API keys and invitation tokens.
    pub async fn key_secret(&self) -> anyhow::Result<KeySecret> {
        Ok(KeySecret::load(&self.pool, self.settings.auth.key_secret.as_deref()).await?)
    }

    /// What `kairos_access::commands` need, with `watch` following the checkpoints.
    pub fn access<'a>(
        &'a self,
        secret: &'a KeySecret,
        watch: &'a CheckpointWatch,
    ) -> kairos_access::commands::Ctx<'a> {
        kairos_access::commands::Ctx {
            bus: &self.bus,
            pool: &self.pool,
            secret,
            watch,
            wait: std::time::Duration::from_millis(self.settings.http.read_wait_ms),
            clock: &self.clock,
        }
    }

    /// The API router with its state.
    pub async fn api(&self) -> anyhow::Result<axum::Router> {
        let checkpoints = CheckpointWatch::start(self.pool.clone()).await?;
        Ok(kairos_api::router(AppState {
            bus: self.bus.clone(),
            pool: self.pool.clone(),
            checkpoints,
            http: Arc::new(self.settings.http.clone()),
            tz: self.tz,
            counters: Arc::new(Counters::default()),
            secret: self.key_secret().await?,
            auth: Arc::new(self.settings.auth.clone()),
            replayer: Some(self.replayer()),
            clock: self.clock.clone(),
        }))
    }

    /// Starts `POST /v1/projections/{name}/replay` rebuilds on background tasks, one per
    /// projection at a time.
    fn replayer(&self) -> Replayer {
        let running: Arc<Mutex<HashSet<String>>> = Arc::default();
        let k = self.clone();
        Arc::new(move |name: &str| {
            let Some(name) = PROJECTIONS.iter().find(|p| **p == name) else {
                return Err(ReplayRefused::Unknown(format!(
                    "unknown projection {name:?}; known: {}",
                    PROJECTIONS.join(", ")
                )));
            };
            let mut set = running
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !set.insert((*name).to_owned()) {
                return Err(ReplayRefused::Running(format!(
                    "{name} is being rebuilt already; follow it on /v1/projections"
                )));
            }
            let (k, running) = (k.clone(), running.clone());
            tokio::spawn(async move {
                let result = k
                    .replay(name, &ReplayOptions::default(), None, |_| {})
                    .await;
                match result {
                    Ok(r) => tracing::info!(
                        projection = name,
                        reached = r.reached.0,
                        events = r.events_read,
                        "rebuilt"
                    ),
                    Err(e) => tracing::error!(projection = name, error = %e, "rebuild failed"),
                }
                running
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(*name);
            });
            Ok(())
        })
    }

    /// First start: when no admin exists and `auth.bootstrap_admin_key` is set, that key becomes
    /// the first admin's. Waits (bounded) for the access projection to catch up first, so it
    /// knows whether an admin exists; the access projection must be running somewhere.
    pub async fn bootstrap_admin(&self) -> anyhow::Result<Option<String>> {
        let Some(key) = &self.settings.auth.bootstrap_admin_key else {
            if kairos_access::active_admins(&self.pool).await? == 0 {
                tracing::warn!(
                    "no admin exists and no bootstrap key is set: set KAIROS_BOOTSTRAP_ADMIN_KEY \
                     or run `kairos admin add-member --role admin`"
                );
            }
            return Ok(None);
        };
        let secret = self.key_secret().await?;
        let watch = CheckpointWatch::start(self.pool.clone()).await?;
        let last = self.bus.last_seq().await?;
        watch
            .wait_for(
                kairos_access::NAME,
                last.0,
                std::time::Duration::from_secs(60),
            )
            .await
            .context("waiting for the access projection before bootstrapping the admin")?;
        let ctx = self.access(&secret, &watch);
        let joined =
            kairos_access::commands::bootstrap(ctx, key, &self.settings.auth.bootstrap_admin_email)
                .await?;
        Ok(joined.map(|j| {
            tracing::info!(member = %j.member_id, email = %j.email, "bootstrap admin created");
            j.member_id
        }))
    }

    /// Publishes a `kairos.budget.set.v1` for each `[[budgets.preset]]`. The event id is derived
    /// from the preset's values, so a preset takes effect once per distinct value, however often
    /// Kairos restarts, and a budget changed through the API later is not reverted by a restart.
    pub async fn apply_budget_presets(&self) -> anyhow::Result<usize> {
        let mut events = Vec::new();
        for p in &self.settings.budgets.preset {
            let mut data = json!({
                "project": p.project, "monthly_limit": p.monthly_limit,
                "warn_at_percent": p.warn_at_percent, "on_exceeded": p.on_exceeded,
            });
            if let Some(m) = &p.fallback_model {
                data["fallback_model"] = json!(m);
            }
            let digest = Sha256::digest(data.to_string().as_bytes());
            let id: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
            events.push(Event::from_value(json!({
                "specversion": "1.0", "id": format!("preset-{id}"), "source": "kairos/config",
                "type": kairos_events::types::BUDGET_SET, "subject": p.project,
                "datacontenttype": "application/json", "data": data,
            }))?);
        }
        for r in self.bus.publish_events(&events).await {
            r?;
        }
        Ok(events.len())
    }
}

/// Ties the database to the configured stream on first use; refuses another stream later, since
/// checkpoints of one stream mean nothing on another.
async fn claim_database(pool: &PgPool, settings: &Settings) -> anyhow::Result<()> {
    let (stream, prefix) = (&settings.nats.stream, &settings.nats.subject_prefix);
    sqlx::query("INSERT INTO kairos.instance (stream, subject_prefix) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(stream)
        .bind(prefix)
        .execute(pool)
        .await?;
    let (s, p): (String, String) =
        sqlx::query_as("SELECT stream, subject_prefix FROM kairos.instance")
            .fetch_one(pool)
            .await?;
    if (&s, &p) != (stream, prefix) {
        anyhow::bail!(
            "database {} holds projections of stream {s} (subjects {p}.*), not {stream} ({prefix}.*): \
             point database.url at another database or nats.stream back at {s}",
            redact(&settings.database.url)
        );
    }
    Ok(())
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redact_hides_passwords_only() {
        assert_eq!(
            super::redact("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(super::redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}
