//! Wiring: the modules this build runs, connecting, migrating, creating streams, running
//! projections and the API.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use kairos_access::KeySecret;
use kairos_api::{
    AppState, Configured, Endpoints, Host, ModuleConfig, OPENAPI_ENDPOINT, Registry, ReplayRefused,
    Replayer,
};
use kairos_bus::Bus;
use kairos_events::Clock;
use kairos_runtime::{CheckpointWatch, Progress, ReplayOptions, ReplayReport, RunnerError, Seat};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::task::JoinHandle;

use crate::configuration::{ConfigError, Settings};

/// The projection modules this build runs, in the order their migrations apply: one line each.
pub fn registry() -> Registry {
    Registry::new(vec![
        &kairos_catalog::MODULE,
        &kairos_budgets::MODULE,
        &kairos_analytics::MODULE,
        &kairos_audit::MODULE,
        &kairos_access::MODULE,
        &kairos_router::MODULE,
        &kairos_workflows::MODULE,
        &kairos_anomalies::MODULE,
    ])
}

/// A module with its configuration read.
#[derive(Clone)]
pub struct Loaded {
    pub name: &'static str,
    pub module: &'static dyn kairos_api::Module,
    pub configured: Arc<dyn Configured>,
}

/// Configures every module of `registry` from `settings` (no I/O): a section no module claims,
/// or a bad value in one, is an error that names the key.
pub fn configure(
    settings: &Settings,
    registry: &Registry,
    clock: &Clock,
) -> Result<Vec<Loaded>, ConfigError> {
    if let Some(conflict) = registry.conflicts().into_iter().next() {
        return Err(ConfigError::Invalid(format!("module registry: {conflict}")));
    }
    let sections = registry.sections();
    if let Some(unknown) = settings
        .modules
        .keys()
        .find(|k| !sections.contains(&k.as_str()))
    {
        return Err(ConfigError::Invalid(format!(
            "unknown section [{unknown}]; the sections are http, auth, nats, database, \
             projections, log, demo, dashboard and the modules' ({})",
            sections.join(", ")
        )));
    }
    let peers = Arc::new(settings.modules.clone());
    registry
        .modules()
        .map(|module| {
            let key = module.config_section();
            let section = key.and_then(|k| settings.modules.get(k)).cloned();
            let config = ModuleConfig::new(key, section, clock.clone()).with_peers(peers.clone());
            let configured = module.configure(&config).map_err(|e| {
                ConfigError::Invalid(e.0.trim_start_matches("configuration: ").to_owned())
            })?;
            let projection = configured.projection();
            if projection.name() != module.name() || projection.schema() != module.schema() {
                return Err(ConfigError::Invalid(format!(
                    "module registry: module {} runs projection {} in schema {}, not {}",
                    module.name(),
                    projection.name(),
                    projection.schema(),
                    module.schema()
                )));
            }
            Ok(Loaded {
                name: module.name(),
                module,
                configured: Arc::from(configured),
            })
        })
        .collect()
}

/// Every route the API serves with `modules`, and what each requires.
pub fn endpoints(modules: &[Loaded]) -> Endpoints {
    let mut all = kairos_api::platform_routes().endpoints().to_vec();
    for m in modules {
        all.extend_from_slice(m.configured.routes().endpoints());
    }
    all.push(OPENAPI_ENDPOINT);
    Endpoints::new(all)
}

/// A connected Kairos: settings, its modules, the bus (streams ensured) and a migrated database.
#[derive(Clone)]
pub struct Kairos {
    pub settings: Settings,
    pub bus: Bus,
    pub pool: PgPool,
    /// "Now" for the API, the commands and the modules; tests pin it.
    pub clock: Clock,
    pub registry: Registry,
    pub modules: Arc<Vec<Loaded>>,
    /// The projections this process runs (for `/health/ready`).
    pub local: kairos_api::LocalProjections,
}

/// The API router and the lines its modules add to the start-up banner.
pub struct Api {
    pub router: axum::Router,
    pub banner: Vec<String>,
    /// The refused requests still being counted: publish them all when the server stops.
    pub refusals: kairos_api::Refusals,
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
        // Configuration errors come before any connection attempt.
        configure(&settings, &registry(), &Clock::system())?;
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
        Self::with_registry(settings, pool, registry(), Clock::system()).await
    }

    /// As [`Kairos::with_pool`], running `registry`'s modules with `clock` as "now".
    pub async fn with_registry(
        settings: Settings,
        pool: PgPool,
        registry: Registry,
        clock: Clock,
    ) -> anyhow::Result<Self> {
        // Installed before anything records: the bus counts reconnects from its first connect.
        kairos_api::metrics_recorder();
        let modules = configure(&settings, &registry, &clock)?;
        let migrations: Vec<(&str, &sqlx::migrate::Migrator)> = modules
            .iter()
            .map(|m| (m.name, m.module.migrations()))
            .chain(std::iter::once((
                "dashboard",
                &kairos_dashboard::MIGRATIONS,
            )))
            .collect();
        kairos_runtime::migrate(&pool, &migrations)
            .await
            .context("applying migrations")?;
        claim_database(&pool, &settings).await?;
        let bus = Bus::connect(&settings.nats, "kairos").await?;
        bus.ensure_streams().await?;
        Ok(Self {
            settings,
            bus,
            pool,
            clock,
            registry,
            modules: Arc::new(modules),
            local: kairos_api::LocalProjections::default(),
        })
    }

    /// The module called `name`.
    fn loaded(&self, name: &str) -> anyhow::Result<&Loaded> {
        self.modules
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| self.registry.unknown(name).into())
    }

    /// The module section `key` of the configuration as `T` (errors name the key).
    pub fn section<T: serde::de::DeserializeOwned>(&self, key: &'static str) -> anyhow::Result<T> {
        let section = self.settings.modules.get(key).cloned();
        Ok(ModuleConfig::new(Some(key), section, self.clock.clone()).get()?)
    }

    /// The names of the projections this Kairos runs, in registration order.
    pub fn projection_names(&self) -> Vec<&'static str> {
        self.modules.iter().map(|m| m.name).collect()
    }

    /// Starts the projection called `name` on its own task.
    pub fn spawn_projection(
        &self,
        name: &str,
    ) -> anyhow::Result<JoinHandle<Result<(), RunnerError>>> {
        let config = self.settings.projections.clone();
        let (bus, pool) = (self.bus.clone(), self.pool.clone());
        let loaded = self.loaded(name)?;
        let projection = loaded.configured.projection();
        // Counted as running here while its task lives (aborted or ended, it is not).
        let running = self.local.running(loaded.name);
        Ok(tokio::spawn(async move {
            let _running = running;
            projection.run(bus, pool, config).await
        }))
    }

    /// Rebuilds the projection called `name` from the stream (see `kairos_runtime::replay`).
    pub async fn replay(
        &self,
        name: &str,
        opts: &ReplayOptions,
        seat: Option<Seat>,
        mut progress: impl FnMut(Progress) + Send,
    ) -> anyhow::Result<ReplayReport> {
        let opts = ReplayOptions {
            snapshot_every: self.settings.projections.snapshot_every,
            identities_in_memory: self.settings.projections.replay_identities_in_memory,
            ..opts.clone()
        };
        let projection = self.loaded(name)?.configured.projection();
        Ok(projection
            .replay(&self.bus, &self.pool, &opts, seat, &mut progress)
            .await?)
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

    /// The HMAC key of API keys and invitation tokens (`kairos admin` and the bootstrap admin).
    pub async fn key_secret(&self) -> anyhow::Result<KeySecret> {
        Ok(KeySecret::load(&self.pool, self.settings.auth.key_secret.as_deref()).await?)
    }

    /// A directory of the identity events for access commands run outside the API
    /// (`kairos admin`, the bootstrap admin): folded from the stream on its first command.
    pub fn directory(&self) -> Arc<kairos_runtime::AggregateStore<kairos_access::Directory>> {
        kairos_access::directory_store(self.bus.clone())
    }

    /// What `kairos_access::commands` need.
    pub fn access<'a>(
        &'a self,
        secret: &'a KeySecret,
        directory: &'a kairos_runtime::AggregateStore<kairos_access::Directory>,
    ) -> kairos_access::commands::Ctx<'a> {
        kairos_access::commands::Ctx {
            directory,
            secret,
            clock: &self.clock,
            max_keys: self.settings.auth.max_keys_per_member as usize,
        }
    }

    /// The API: the platform's routes and every module's, each module started once.
    pub async fn api(&self) -> anyhow::Result<Api> {
        let checkpoints = CheckpointWatch::start(self.pool.clone()).await?;
        let host = Host {
            bus: self.bus.clone(),
            commands: Bus::connect(&self.settings.nats, "kairos-commands").await?,
            pool: self.pool.clone(),
            clock: self.clock.clone(),
            http: Arc::new(self.settings.http.clone()),
            auth: Arc::new(self.settings.auth.clone()),
        };
        let mut routes = Vec::new();
        let mut authenticator = None;
        let mut banner = Vec::new();
        for m in self.modules.iter() {
            let mut started = m
                .configured
                .start(&host)
                .await
                .with_context(|| format!("starting module {}", m.name))?;
            if let Some(a) = started.authenticator.take() {
                anyhow::ensure!(
                    authenticator.is_none(),
                    "two modules authenticate keys; exactly one may"
                );
                authenticator = Some(a);
            }
            banner.extend(started.banner.take());
            routes.push((m.configured.routes(), started));
        }
        let authenticator = authenticator
            .context("no module authenticates API keys: register the access module")?;
        let refusals = kairos_api::Refusals::new(host.bus.clone(), host.clock.clone());
        let state = AppState {
            refusals: refusals.clone(),
            bus: host.bus,
            pool: host.pool,
            checkpoints,
            http: host.http,
            auth: host.auth,
            authenticator,
            registry: self.registry.clone(),
            replayer: Some(self.replayer()),
            clock: host.clock,
            local: self.local.clone(),
        };
        let router = kairos_api::router(state.clone(), routes);
        // The dashboard's pages sit beside the API's routes and read through them.
        let router = if self.settings.dashboard.enabled {
            kairos_dashboard::router(kairos_dashboard::Dashboard {
                api: router.clone(),
                state,
                settings: self.settings.dashboard.clone(),
            })
            .merge(router)
        } else {
            router
        };
        // Outermost, so the API's limits and audit and the dashboard see the same client.
        let trusted = kairos_api::TrustedProxies::parse(&self.settings.http.trusted_proxies)
            .map_err(anyhow::Error::msg)?;
        let router = router.layer(axum::middleware::from_fn(move |req, next| {
            kairos_api::client_address(trusted.clone(), req, next)
        }));
        Ok(Api {
            router,
            banner,
            refusals,
        })
    }

    /// Starts `POST /v1/projections/{name}/replay` rebuilds on background tasks, one per
    /// projection at a time.
    fn replayer(&self) -> Replayer {
        let running: Arc<Mutex<HashSet<String>>> = Arc::default();
        let k = self.clone();
        Arc::new(move |name: &str| {
            let Some(name) = k.registry.names().into_iter().find(|p| *p == name) else {
                return Err(ReplayRefused::Unknown(k.registry.unknown(name).0));
            };
            let mut set = running
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !set.insert(name.to_owned()) {
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
                    .remove(name);
            });
            Ok(())
        })
    }

    /// First start: when no admin exists and `auth.bootstrap_admin_key` is set, that key becomes
    /// the first admin's. Whether an admin exists is decided on the identity events themselves
    /// (the access subject), not on the access projection, which may still be catching up.
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
        let directory = self.directory();
        let ctx = self.access(&secret, &directory);
        let joined =
            kairos_access::commands::bootstrap(ctx, key, &self.settings.auth.bootstrap_admin_email)
                .await?;
        if joined.is_none() && !kairos_access::commands::bootstrap_key_known(ctx, key) {
            tracing::warn!(
                "the bootstrap admin key is ignored: an admin exists already, and this key is not \
                 theirs (it will be refused). Use an admin's key, or `kairos admin add-member \
                 --role admin`; the bootstrap key only makes the first admin"
            );
        }
        Ok(joined.map(|j| {
            tracing::info!(member = %j.member_id, email = %j.email, "bootstrap admin created");
            j.member_id
        }))
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
    fn the_shipped_modules_declare_nothing_twice_and_a_doubled_one_is_refused() {
        assert_eq!(super::registry().conflicts(), Vec::<String>::new());
        let doubled =
            kairos_api::Registry::new(vec![&kairos_budgets::MODULE, &kairos_budgets::MODULE]);
        let found = doubled.conflicts();
        assert!(
            found.iter().any(|c| c.starts_with("name \"budgets\""))
                && found.iter().any(|c| c.contains("kairos.budget.set.v1")),
            "{found:?}"
        );
        let settings = crate::configuration::Settings::from_toml("").unwrap();
        let err = super::configure(&settings, &doubled, &Default::default())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("module registry"), "{err}");
    }

    #[test]
    fn redact_hides_passwords_only() {
        assert_eq!(
            super::redact("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(super::redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}

/// What the start-up banner says when Kairos' own facts go unsigned (`nats.signing_key` unset).
pub fn unsigned_warning(nats: &kairos_bus::BusConfig) -> Option<&'static str> {
    nats.signer().is_none().then_some(
        "  nats.signing_key is unset: Kairos' own facts (identity events, budget settings, \
         reservations, alerts, its user actions, …) go unsigned, so one forged straight onto NATS is folded like a real one \
         (set KAIROS_NATS_SIGNING_KEY; docs/security.md#signed-facts)",
    )
}

#[cfg(test)]
mod banner_tests {
    #[test]
    fn the_banner_says_when_facts_go_unsigned() {
        let mut nats = kairos_bus::BusConfig::new("nats://127.0.0.1:4222", "S", "p");
        let warning = super::unsigned_warning(&nats).expect("no key: a warning");
        assert!(warning.contains("nats.signing_key is unset"), "{warning}");
        nats.signing_key = Some("k".repeat(32));
        assert_eq!(super::unsigned_warning(&nats), None);
    }
}
