//! The module registry: what a projection crate declares once, and what the binary composes.
//!
//! A projection crate exports one value implementing [`Module`]: its name and schema, its
//! migrations (`projections/<name>/migrations/`), its `kairos.toml` section, the event types it
//! owns and who may publish each, and — once configured — its projection and its routes, each
//! route with the permission it needs. The binary lists the modules it runs once
//! ([`Registry::new`]); the runtime applies their migrations in order, runs or replays their
//! projections by name, and the API merges their routes behind one authorisation middleware.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::routing::MethodRouter;
use figment::Figment;
use figment::value::Value as ConfigValue;
use futures_util::future::BoxFuture;
use kairos_bus::Bus;
use kairos_events::Clock;
use kairos_runtime::AnyProjection;
use serde::de::DeserializeOwned;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use utoipa_axum::router::UtoipaMethodRouter;

use crate::AppState;
use crate::auth::{Endpoint, Guard};
use crate::roles::{Authenticator, Permission};

/// A projection module. Implemented by a unit struct each projection crate exports as `MODULE`.
pub trait Module: Send + Sync + 'static {
    /// Consumer name, checkpoint key, dead-letter subject token, `kairos consume <name>`.
    fn name(&self) -> &'static str;

    /// The PostgreSQL schema its tables live in: by default its name. Its projection's
    /// [`kairos_runtime::Projection::schema`] is the same (start-up checks it).
    fn schema(&self) -> &'static str {
        self.name()
    }

    /// Its migrations, from `projections/<name>/migrations/` (`sqlx::migrate!("./migrations")`),
    /// applied by the runtime after the runtime's own, in registration order. Their history is
    /// kept in `kairos._migrations_<name>`, apart from every other module's.
    fn migrations(&self) -> &'static Migrator;

    /// Its `kairos.toml` section (`[<key>]`, with `KAIROS_<KEY>_<FIELD>` overrides), if it has one.
    fn config_section(&self) -> Option<&'static str> {
        None
    }

    /// The event types this module owns (folds or emits), and who may publish each through
    /// `POST /v1/events`. A type no module claims is open to producers.
    fn events(&self) -> &'static [EventRule] {
        &[]
    }

    /// Reads and checks its section (no I/O): start-up and `kairos check-config` call it, so a
    /// bad value stops Kairos with an error that names the key.
    fn configure(&self, config: &ModuleConfig) -> Result<Box<dyn Configured>, ModuleError>;
}

/// A module with its configuration read.
pub trait Configured: Send + Sync {
    /// The projection to run (`kairos consume`) or rebuild (`kairos replay`).
    fn projection(&self) -> Arc<dyn AnyProjection>;

    /// Its routes (no I/O: the permission table is printed from them without a database).
    fn routes(&self) -> Routes {
        Routes::new()
    }

    /// What a serving process does once before it answers (I/O allowed): state its handlers
    /// need, an authenticator, start-up events.
    fn start<'a>(&'a self, host: &'a Host) -> BoxFuture<'a, Result<Started, ModuleError>> {
        let _ = host;
        Box::pin(async { Ok(Started::default()) })
    }
}

type Layer = Box<dyn FnOnce(Router<AppState>) -> Router<AppState> + Send>;

/// What [`Configured::start`] hands the API.
#[derive(Default)]
pub struct Started {
    /// State for this module's handlers (`Extension<T>`).
    extensions: Vec<Layer>,
    /// Who a key belongs to (the access module's); exactly one module of a serving process
    /// provides it.
    pub authenticator: Option<Arc<dyn Authenticator>>,
    /// A line for the start-up banner (say, "budget presets: 4").
    pub banner: Option<String>,
}

impl Started {
    /// Makes `value` available to this module's handlers as `Extension<T>`.
    pub fn with_extension<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.extensions
            .push(Box::new(move |r| r.layer(axum::Extension(value))));
        self
    }

    /// Sets the start-up banner's line.
    pub fn with_banner(mut self, line: impl Into<String>) -> Self {
        self.banner = Some(line.into());
        self
    }
}

/// Who may publish an event type through `POST /v1/events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publish {
    /// Any key with `publish_events` (the default for types no module claims).
    Producers,
    /// A key with `publish_events` and this permission too.
    With(Permission),
    /// Only Kairos itself: its own endpoints and projections publish these.
    KairosOnly,
}

/// An event type a module owns.
#[derive(Debug, Clone, Copy)]
pub struct EventRule {
    pub ty: &'static str,
    pub publish: Publish,
}

/// Why a module could not be configured or started.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ModuleError(pub String);

/// A module's view of the configuration: its own section and the shared clock.
pub struct ModuleConfig {
    key: Option<&'static str>,
    section: Option<ConfigValue>,
    /// Every module section of the configuration, by key, for checks that span sections.
    peers: Arc<BTreeMap<String, ConfigValue>>,
    pub clock: Clock,
}

impl ModuleConfig {
    pub fn new(key: Option<&'static str>, section: Option<ConfigValue>, clock: Clock) -> Self {
        Self {
            key,
            section,
            peers: Arc::default(),
            clock,
        }
    }

    /// The same, able to read the other modules' sections ([`ModuleConfig::peer`]).
    pub fn with_peers(mut self, peers: Arc<BTreeMap<String, ConfigValue>>) -> Self {
        self.peers = peers;
        self
    }

    /// Another module's section `key` as written (`None` if absent), for a check that spans
    /// sections: say, that a budget falling back to a local model has a local model to fall
    /// back to. A module reads its own settings with [`ModuleConfig::get`].
    pub fn peer(&self, key: &str) -> Option<&ConfigValue> {
        self.peers.get(key)
    }

    /// The section as `T` (defaults for what it leaves out come from `T`'s serde defaults).
    /// Errors name the key, as in `budgets.timezone: invalid type: …`.
    pub fn get<T: DeserializeOwned>(&self) -> Result<T, ModuleError> {
        let key = self.key.unwrap_or("module");
        let section = self
            .section
            .clone()
            .unwrap_or_else(|| ConfigValue::from(BTreeMap::<String, ConfigValue>::new()));
        Figment::from(figment::providers::Serialized::global(key, section))
            .extract_inner::<T>(key)
            .map_err(|e| {
                let msgs: Vec<String> = e
                    .into_iter()
                    .map(|e| {
                        // The path figment reports holds its profile and the section too.
                        let field: Vec<&str> = e
                            .path
                            .iter()
                            .map(String::as_str)
                            .filter(|p| *p != key && *p != "global")
                            .collect();
                        match field.is_empty() {
                            true => format!("{key}: {}", e.kind),
                            false => format!("{key}.{}: {}", field.join("."), e.kind),
                        }
                    })
                    .collect();
                ModuleError(format!("configuration: {}", msgs.join("; ")))
            })
    }

    /// An error about `field` of this section, named as `<section>.<field>`.
    pub fn invalid(&self, field: &str, message: impl std::fmt::Display) -> ModuleError {
        let key = self.key.unwrap_or("module");
        ModuleError(format!("configuration: {key}.{field} {message}"))
    }
}

/// What a serving module may use: the bus, the database, the clock, the API's settings.
#[derive(Clone)]
pub struct Host {
    pub bus: Bus,
    /// A NATS connection of its own for commands: their appends, acknowledgements and reads of
    /// their aggregates' subjects do not queue behind the ingest and the projections' deliveries
    /// on `bus`'s connection. The commands' aggregate stores (`kairos_runtime::AggregateStore`)
    /// take it.
    pub commands: Bus,
    pub pool: PgPool,
    pub clock: Clock,
    pub http: Arc<crate::HttpSettings>,
    pub auth: Arc<crate::AuthSettings>,
}

/// Routes, each declared once: its method, path, parameters, bodies and answers in the handler's
/// `#[utoipa::path]` (handed in with `utoipa_axum::routes!(handler)`), what it requires and the
/// action a write to it is audited as here. The same declaration routes the request, guards it
/// and documents it in `/openapi.json`.
///
/// ```ignore
/// Routes::new().route(routes!(get_budget), Guard::Key(Permission::ReadProjections), "budget.read")
/// ```
#[derive(Default)]
pub struct Routes {
    methods: BTreeMap<String, MethodRouter<AppState>>,
    endpoints: Vec<Endpoint>,
    paths: utoipa::openapi::path::Paths,
    schemas: Schemas,
}

/// Component schemas of the OpenAPI document, by name.
pub(crate) type Schemas = Vec<(
    String,
    utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
)>;

impl Routes {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one handler's route (`routes!(handler)`, one handler per call), requiring `guard`,
    /// audited as `action`.
    pub fn route(
        mut self,
        (schemas, paths, route): UtoipaMethodRouter<AppState>,
        guard: Guard,
        action: &'static str,
    ) -> Self {
        for (path, mut item) in paths.paths {
            // An endpoint names its path for the process' lifetime; routes are built once per
            // API, a few dozen short strings.
            let path: &'static str = Box::leak(path.into_boxed_str());
            for (method, op) in [
                ("GET", &mut item.get),
                ("PUT", &mut item.put),
                ("POST", &mut item.post),
                ("DELETE", &mut item.delete),
            ] {
                if let Some(op) = op.as_mut() {
                    crate::openapi::guard_operation(op, guard);
                    self.endpoints.push(Endpoint {
                        method,
                        path,
                        guard,
                        action,
                    });
                }
            }
            let merged = match self.methods.remove(path) {
                Some(existing) => existing.merge(route.clone()),
                None => route.clone(),
            };
            self.methods.insert(path.to_owned(), merged);
            match self.paths.paths.get_mut(path) {
                Some(existing) => existing.merge_operations(item),
                None => {
                    self.paths.paths.insert(path.to_owned(), item);
                }
            }
        }
        self.schemas.extend(schemas);
        self
    }

    /// Every endpoint declared.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// The router of these routes, with `started`'s state layered over them, and their part of
    /// the OpenAPI document (paths and component schemas).
    pub(crate) fn into_parts(
        self,
        started: Started,
    ) -> (Router<AppState>, utoipa::openapi::path::Paths, Schemas) {
        let router = self
            .methods
            .into_iter()
            .fold(Router::new(), |r, (path, route)| r.route(&path, route));
        let router = started.extensions.into_iter().fold(router, |r, ext| ext(r));
        (router, self.paths, self.schemas)
    }
}

/// The modules a binary runs, in the order their migrations apply.
#[derive(Clone)]
pub struct Registry {
    modules: Arc<Vec<&'static dyn Module>>,
}

impl Registry {
    /// The registry of `modules`. Names, schemas, sections and owned event types must be
    /// unique: [`Registry::conflicts`] names what is not, and start-up refuses it.
    pub fn new(modules: Vec<&'static dyn Module>) -> Self {
        Self {
            modules: Arc::new(modules),
        }
    }

    pub fn modules(&self) -> impl Iterator<Item = &'static dyn Module> + '_ {
        self.modules.iter().copied()
    }

    /// The module called `name`.
    pub fn get(&self, name: &str) -> Option<&'static dyn Module> {
        self.modules().find(|m| m.name() == name)
    }

    /// Every module's name, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.modules().map(|m| m.name()).collect()
    }

    /// An error naming the known modules, for an unknown `name`.
    pub fn unknown(&self, name: &str) -> ModuleError {
        ModuleError(format!(
            "unknown projection {name:?}; known: {}",
            self.names().join(", ")
        ))
    }

    /// The `kairos.toml` sections the modules claim.
    pub fn sections(&self) -> Vec<&'static str> {
        self.modules().filter_map(|m| m.config_section()).collect()
    }

    /// Who may publish `ty` through `POST /v1/events`.
    pub fn publish_rule(&self, ty: &str) -> Publish {
        self.modules()
            .flat_map(|m| m.events().iter())
            .find(|r| r.ty == ty)
            .map_or(Publish::Producers, |r| r.publish)
    }

    /// What is declared twice, if anything: names, schemas, sections, event types.
    pub fn conflicts(&self) -> Vec<String> {
        let mut seen: BTreeMap<(&str, &str), &str> = BTreeMap::new();
        let mut out = Vec::new();
        for m in self.modules() {
            let mut claims = vec![("name", m.name()), ("schema", m.schema())];
            claims.extend(m.config_section().map(|s| ("section", s)));
            claims.extend(m.events().iter().map(|e| ("event type", e.ty)));
            for (what, value) in claims {
                if let Some(first) = seen.insert((what, value), m.name()) {
                    out.push(format!(
                        "{what} {value:?} is declared by both {first} and {}",
                        m.name()
                    ));
                }
            }
        }
        out
    }
}
