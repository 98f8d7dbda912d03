//! A projection module written outside the shipped crates and registered beside them the way the
//! binary registers its own: its migrations run into their own history, its route sits in the
//! permission table behind its guard and honours `?min_seq=`, its projection is replayed by name,
//! the event type it emits is refused to producers, and its configuration section is read,
//! checked and named in errors. `docs/projections.md` walks through it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Extension, State};
use futures_util::future::BoxFuture;
use kairos::configuration::Settings;
use kairos_api::extract::ReadAt;
use kairos_api::{
    ApiError, AppState, Configured, EventRule, Guard, Host, Module, ModuleConfig, ModuleError,
    Permission, Publish, Registry, Routes, Started,
};
use kairos_events::types::{LLM_CALL_COMPLETED, LlmCallCompleted};
use kairos_events::{Clock, Event};
use kairos_runtime::{
    AnyProjection, ApplyError, Projection, Rejection, ReplayOptions, StoredEvent,
};
use kairos_tests::{
    TestApp, client, fixture_clock, llm_call, send, spawn_app_registered, test_settings_with,
};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::migrate::Migrator;
use sqlx::{PgConnection, PgPool};
use utoipa_axum::routes;

// ---------------------------------------------------------------------------------------------
// The module: what a crate under projections/ would hold in its lib.rs and api.rs.
// ---------------------------------------------------------------------------------------------

/// Name, schema and configuration section alike, as the shipped modules do.
const NAME: &str = "model_counts";

/// What the projection announces once a model has been called `min_calls` times.
const POPULAR: &str = "com.example.model.popular.v1";

/// Relative to the crate root (`tests/Cargo.toml`), like every `sqlx::migrate!` path.
static MIGRATOR: Migrator = sqlx::migrate!("tests/registry_migrations");

struct ModelCountsModule;

static MODEL_COUNTS: ModelCountsModule = ModelCountsModule;

impl Module for ModelCountsModule {
    fn name(&self) -> &'static str {
        NAME
    }

    fn migrations(&self) -> &'static Migrator {
        &MIGRATOR
    }

    fn config_section(&self) -> Option<&'static str> {
        Some(NAME)
    }

    fn events(&self) -> &'static [EventRule] {
        &[EventRule {
            ty: POPULAR,
            publish: Publish::KairosOnly,
        }]
    }

    fn configure(&self, config: &ModuleConfig) -> Result<Box<dyn Configured>, ModuleError> {
        let ModelCountsSettings { min_calls } = config.get()?;
        if min_calls < 1 {
            return Err(config.invalid(
                "min_calls",
                format!("must be at least 1 (it is {min_calls})"),
            ));
        }
        Ok(Box::new(ModelCountsConfigured {
            projection: ModelCounts { min_calls },
        }))
    }
}

/// The `[model_counts]` section of `kairos.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelCountsSettings {
    /// Calls a model needs before it is listed (and announced).
    #[serde(default = "one")]
    min_calls: i64,
}

fn one() -> i64 {
    1
}

/// The fold: calls per model into `counts`, and one `POPULAR` event per model the first time
/// its count reaches `min_calls`.
#[derive(Debug, Clone, Copy)]
struct ModelCounts {
    min_calls: i64,
}

impl Projection for ModelCounts {
    /// The model called.
    type Item = String;
    /// Nothing: no snapshots, so a batch is one `apply`.
    type Carry = ();

    fn name(&self) -> &'static str {
        NAME
    }

    fn schema(&self) -> &'static str {
        NAME
    }

    fn categories(&self) -> Option<&'static [&'static str]> {
        Some(&["llm"])
    }

    fn decode(&self, stored: &StoredEvent) -> Result<Option<String>, Rejection> {
        match stored.event.event_type().as_str() {
            LLM_CALL_COMPLETED => Ok(Some(stored.event.data_as::<LlmCallCompleted>()?.model)),
            _ => Ok(None),
        }
    }

    async fn apply(
        &self,
        tx: &mut PgConnection,
        items: Vec<String>,
        _carry: &mut (),
    ) -> Result<Vec<Event>, ApplyError> {
        let mut added: BTreeMap<String, i64> = BTreeMap::new();
        for model in items {
            *added.entry(model).or_default() += 1;
        }
        let models: Vec<&str> = added.keys().map(String::as_str).collect();
        let calls: Vec<i64> = added.values().copied().collect();
        // Unqualified: the runtime puts the live schema, or the generation a replay builds,
        // first on the search path.
        let totals: Vec<(String, i64)> = sqlx::query_as(
            "INSERT INTO counts (model, calls) SELECT * FROM unnest($1::text[], $2::int8[])
             ON CONFLICT (model) DO UPDATE SET calls = counts.calls + excluded.calls
             RETURNING model, calls",
        )
        .bind(&models)
        .bind(&calls)
        .fetch_all(&mut *tx)
        .await?;
        let mut popular: Vec<&str> = totals
            .iter()
            .filter(|(model, total)| {
                let before = total - added.get(model).copied().unwrap_or_default();
                before < self.min_calls && *total >= self.min_calls
            })
            .map(|(model, _)| model.as_str())
            .collect();
        popular.sort_unstable();
        popular
            .into_iter()
            .map(|model| {
                // The id derives from what caused the event, so publishing it again (after a
                // crash before the outbox row was deleted) is a duplicate: JetStream drops it
                // inside its window, the projections reading it skip it by identity after.
                Event::from_value(json!({
                    "specversion": "1.0", "id": format!("{NAME}/{model}"),
                    "source": format!("kairos/{NAME}"), "type": POPULAR,
                    "data": {"model": model, "min_calls": self.min_calls},
                }))
                .map_err(|e| ApplyError::Data(e.to_string()))
            })
            .collect()
    }
}

struct ModelCountsConfigured {
    projection: ModelCounts,
}

/// `min_calls`, for the handler.
#[derive(Debug, Clone, Copy)]
struct MinCalls(i64);

impl Configured for ModelCountsConfigured {
    fn projection(&self) -> Arc<dyn AnyProjection> {
        Arc::new(self.projection)
    }

    fn routes(&self) -> Routes {
        Routes::new().route(
            routes!(list_counts),
            Guard::Key(Permission::ReadProjections),
            "model_counts.read",
        )
    }

    fn start<'a>(&'a self, _host: &'a Host) -> BoxFuture<'a, Result<Started, ModuleError>> {
        let min = self.projection.min_calls;
        Box::pin(async move {
            Ok(Started::default()
                .with_extension(MinCalls(min))
                .with_banner(format!("model counts: models with {min} calls or more")))
        })
    }
}

/// `GET /v1/model-counts?min_seq=`: the models called at least `min_calls` times, by name.
/// Calls per model, for the models with at least `min_calls`.
#[utoipa::path(get, path = "/v1/model-counts", tag = "model_counts",
    params(("min_seq" = Option<u64>, Query, description = "Wait until the projection applied this sequence")),
    responses((status = 200, description = "Calls per model", body = Object)))]
async fn list_counts(
    State(st): State<AppState>,
    Extension(MinCalls(min)): Extension<MinCalls>,
    read: ReadAt,
) -> Result<Json<Value>, ApiError> {
    if read.as_of.is_some() {
        return Err(ApiError::bad(
            "invalid_query",
            "as_of",
            "model counts keep no history; omit as_of",
        ));
    }
    read.wait(&st, NAME).await?;
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT model, calls FROM model_counts.counts WHERE calls >= $1 ORDER BY model",
    )
    .bind(min)
    .fetch_all(&st.pool)
    .await?;
    let counts: Vec<Value> = rows
        .into_iter()
        .map(|(model, calls)| json!({"model": model, "calls": calls}))
        .collect();
    Ok(Json(json!({ "counts": counts })))
}

// ---------------------------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------------------------

/// The shipped modules and this one, as `startup::registry()` would list it.
fn registry() -> Registry {
    Registry::new(vec![
        &kairos_budgets::MODULE,
        &kairos_audit::MODULE,
        &kairos_access::MODULE,
        &MODEL_COUNTS,
    ])
}

async fn spawn(pool: PgPool) -> TestApp {
    let settings = test_settings_with("[model_counts]\nmin_calls = 2");
    spawn_app_registered(pool, settings, true, fixture_clock(), registry()).await
}

/// `n` calls of each model; ids `<model>-<i>`.
fn calls(models: &[(&str, usize)]) -> Vec<Value> {
    let mut out = Vec::new();
    for (model, n) in models {
        for i in 0..*n {
            let mut e = llm_call(&format!("{model}-{i}"), "acme", "0.01");
            e["data"]["model"] = json!(model);
            out.push(e);
        }
    }
    out
}

/// Three gpt-4o calls (one of them sent twice), two claude-3 calls and one llama-3; the last
/// sequence.
async fn ingest_history(app: &TestApp) -> u64 {
    let mut events = calls(&[("gpt-4o", 3), ("claude-3", 2), ("llama-3", 1)]);
    events.push(events[0].clone());
    app.ingest(&events).await
}

/// The models announced popular so far, in order, once `expected` have landed (they are
/// published after the commit that records them) or after 10 s.
async fn announced(app: &TestApp, expected: usize) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let models: Vec<String> = app
            .events_in("ext")
            .await
            .iter()
            .filter(|e| e.event_type().as_str() == POPULAR)
            .map(|e| e.json()["data"]["model"].as_str().unwrap().to_owned())
            .collect();
        if models.len() >= expected || tokio::time::Instant::now() >= deadline {
            return models;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every row of `model_counts.counts`, by model.
async fn table(pool: &PgPool) -> Vec<(String, i64)> {
    sqlx::query_as("SELECT model, calls FROM model_counts.counts ORDER BY model")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = false)]
async fn a_registered_module_serves_its_counts_behind_its_guard(pool: PgPool) {
    let app = spawn(pool).await;
    let seq = ingest_history(&app).await;

    // llama-3 has fewer than min_calls; the copy of gpt-4o-0 is counted once.
    let (status, body) = app.get(&format!("/v1/model-counts?min_seq={seq}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"counts": [{"model": "claude-3", "calls": 2}, {"model": "gpt-4o", "calls": 3}]})
    );

    // A viewer's role has read_projections; no key, or a bad parameter, is refused.
    let (_, viewer) = app.join("vera@example.com", "viewer", None).await;
    let url = format!("{}/v1/model-counts?min_seq={seq}", app.url);
    let viewer = client(&viewer);
    assert_eq!(send(viewer.get(&url)).await, (200, body));
    let (status, r) = send(reqwest::Client::new().get(&url)).await;
    assert_eq!(
        (status, r["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    app.assert_bad_queries(&[
        ("/v1/model-counts?min_seq=soon", "min_seq"),
        ("/v1/model-counts?as_of=2026-11-01T00:00:00Z", "as_of"),
    ])
    .await;

    // The permission table is built from the modules' routes: this one's is listed with what
    // it requires, and a viewer, a developer and an admin may call it.
    let table = kairos_api::permission_table(&kairos::startup::endpoints(&app.kairos.modules));
    assert!(
        table
            .lines()
            .any(|l| l == "| `GET /v1/model-counts` | `read_projections` | ✓ | ✓ | ✓ |"),
        "{table}"
    );
    assert!(app.kairos.projection_names().contains(&NAME));
    app.cleanup().await;
}

#[sqlx::test(migrations = false)]
async fn a_registered_module_migrates_announces_and_replays(pool: PgPool) {
    let app = spawn(pool.clone()).await;
    let seq = ingest_history(&app).await;
    app.wait_for(NAME, seq).await;

    // Its migrations ran, recorded in a history of its own.
    assert_eq!(
        kairos_runtime::module_table(NAME),
        "kairos._migrations_model_counts"
    );
    let history: Vec<(i64, String, bool)> = sqlx::query_as(
        "SELECT version, description, success FROM kairos._migrations_model_counts ORDER BY version",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(history, [(1, "counts".to_owned(), true)]);

    // The event type it emits reached the stream once per model, and no producer may send one.
    assert_eq!(announced(&app, 2).await, ["claude-3", "gpt-4o"]);
    let forged = json!({"specversion": "1.0", "id": "forged", "source": "test/gateway",
                        "type": POPULAR, "data": {"model": "llama-3", "min_calls": 2}});
    let (status, r) = app.post_json("/v1/events", &forged).await;
    assert_eq!(
        (status, r["results"][0]["error"]["code"].as_str()),
        (400, Some("reserved_type")),
        "{r}"
    );

    // A replay rebuilds the tables from the stream, whatever the live ones hold.
    let live = table(&pool).await;
    assert_eq!(
        live,
        [
            ("claude-3".to_owned(), 2),
            ("gpt-4o".to_owned(), 3),
            ("llama-3".to_owned(), 1)
        ]
    );
    sqlx::query("UPDATE model_counts.counts SET calls = 99 WHERE model = 'gpt-4o'")
        .execute(&pool)
        .await
        .unwrap();
    // The stream holds more than the calls: the audit entries of the requests, the
    // announcements.
    let last = app.kairos.bus.last_seq().await.unwrap().0;
    app.wait_for(NAME, last).await;
    let report = app
        .kairos
        .replay(NAME, &ReplayOptions::default(), None, |_| {})
        .await
        .unwrap();
    assert!(report.switched);
    assert!(report.reached.0 >= last, "{report:?}");
    assert_eq!(table(&pool).await, live);

    // The live runner carries on from the rebuilt tables; the rebuild announced nothing.
    let seq = app.ingest(&calls(&[("llama-3", 2)])).await;
    let (status, body) = app.get(&format!("/v1/model-counts?min_seq={seq}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["counts"],
        json!([
            {"model": "claude-3", "calls": 2},
            {"model": "gpt-4o", "calls": 3},
            {"model": "llama-3", "calls": 2}
        ]),
        "llama-3-0 is a copy; llama-3-1 is new"
    );
    assert_eq!(announced(&app, 3).await, ["claude-3", "gpt-4o", "llama-3"]);
    app.cleanup().await;
}

/// The error `configure` gives for `toml` with `registry`.
fn config_error(toml: &str, registry: &Registry) -> String {
    let mut settings = Settings::from_toml(toml).expect("valid TOML and platform sections");
    // The built-in configuration's catalog section is the catalog module's, absent here.
    settings.modules.remove("catalog");
    kairos::startup::configure(&settings, registry, &Clock::system())
        .err()
        .expect("the configuration is refused")
        .to_string()
}

#[test]
fn its_configuration_section_is_checked_and_named_in_errors() {
    let with_module = registry();
    assert_eq!(
        config_error("[model_counts]\nmin_calls = 0", &with_module),
        "configuration: model_counts.min_calls must be at least 1 (it is 0)"
    );
    assert_eq!(
        config_error("[model_counts]\nmin_calls = \"two\"", &with_module),
        "configuration: model_counts.min_calls: invalid type: found string \"two\", expected i64"
    );
    assert_eq!(
        config_error(
            "[model_counts]\nmin_calls = 2\ncolour = \"red\"",
            &with_module
        ),
        "configuration: model_counts.colour: unknown field: found `colour`, expected ``min_calls``"
    );

    // Without the module its section is claimed by nobody, and its event type is a producer's.
    let shipped = kairos::startup::registry();
    let unclaimed = config_error("[model_counts]\nmin_calls = 2", &shipped);
    assert!(
        unclaimed.starts_with("configuration: unknown section [model_counts];"),
        "{unclaimed}"
    );
    assert_eq!(shipped.publish_rule(POPULAR), Publish::Producers);
    assert_eq!(with_module.publish_rule(POPULAR), Publish::KairosOnly);
}
