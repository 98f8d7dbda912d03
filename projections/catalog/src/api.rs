//! The catalog module: its `[catalog]` section, its start-up change and its routes.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use kairos_api::extract::{JsonBody, ReadAt, if_match};
use kairos_api::{
    ApiError, AppState, Caller, Configured, ErrorBody, EventRule, Guard, Host, Module,
    ModuleConfig, ModuleError, Permission, Publish, Recorded, Routes, Started,
};
use kairos_events::types::{CATALOG_CHANGED, CatalogChanged, ModelSpec};
use kairos_runtime::{AggregateStore, AnyProjection, Decision};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::migrate::Migrator;
use utoipa_axum::routes;

use crate::{Catalog, CatalogState, NAME, change_event, store};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The catalog module, registered by the binary.
pub struct CatalogModule;

/// The value the binary registers.
pub static MODULE: CatalogModule = CatalogModule;

/// The `[catalog]` section of `kairos.toml`: its `[[catalog.model]]` tables.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CatalogSettings {
    #[serde(default)]
    pub model: Vec<ModelSpec>,
}

impl Module for CatalogModule {
    fn name(&self) -> &'static str {
        NAME
    }

    fn migrations(&self) -> &'static Migrator {
        &MIGRATOR
    }

    fn config_section(&self) -> Option<&'static str> {
        Some("catalog")
    }

    fn events(&self) -> &'static [EventRule] {
        &[EventRule {
            ty: CATALOG_CHANGED,
            publish: Publish::KairosOnly,
        }]
    }

    fn configure(&self, config: &ModuleConfig) -> Result<Box<dyn Configured>, ModuleError> {
        let settings: CatalogSettings = config.get()?;
        let catalog = CatalogChanged {
            models: settings.model,
            actor: None,
        };
        catalog
            .check()
            .map_err(|(field, why)| config.invalid(&field, why))?;
        if let Some(i) = fallback_preset(config)
            && !catalog.models.is_empty()
            && !catalog.models.iter().any(|m| m.local)
        {
            return Err(config.invalid(
                "model",
                format!(
                    "has no local model, but budgets.preset[{i}] falls back to a local one \
                     (on_exceeded = \"fallback_to_local\", the default): add a model with \
                     local = true, or set that budget to \"block\""
                ),
            ));
        }
        Ok(Box::new(CatalogConfigured {
            models: catalog.models,
        }))
    }
}

/// The first `[[budgets.preset]]` that falls back to a local model (the default policy).
fn fallback_preset(config: &ModuleConfig) -> Option<usize> {
    let budgets = serde_json::to_value(config.peer("budgets")?).ok()?;
    budgets.get("preset")?.as_array()?.iter().position(|p| {
        p.get("on_exceeded")
            .and_then(Value::as_str)
            .is_none_or(|s| s == "fallback_to_local")
    })
}

/// The catalog module configured.
struct CatalogConfigured {
    /// The `kairos.toml` catalog (empty: none configured).
    models: Vec<ModelSpec>,
}

/// The catalog aggregate, shared by this module's handlers.
#[derive(Clone)]
pub struct Catalogs(pub Arc<AggregateStore<CatalogState>>);

impl Configured for CatalogConfigured {
    fn projection(&self) -> Arc<dyn AnyProjection> {
        Arc::new(Catalog)
    }

    fn routes(&self) -> Routes {
        use Guard::Key;
        use Permission::{ManageCatalog, ReadProjections};
        Routes::new()
            .route(routes!(get_catalog), Key(ReadProjections), "catalog.read")
            .route(routes!(put_catalog), Key(ManageCatalog), "catalog.change")
            .route(
                routes!(list_versions),
                Key(ReadProjections),
                "catalog.versions",
            )
    }

    fn start<'a>(&'a self, host: &'a Host) -> BoxFuture<'a, Result<Started, ModuleError>> {
        Box::pin(async move {
            let catalog = store(&host.commands);
            let published = publish_configured(&catalog, &self.models, host.clock.now())
                .await
                .map_err(|e| ModuleError(format!("publishing the configured catalog: {e}")))?;
            let (version, models) = catalog.read(|c| (c.version, c.models.len()));
            tokio::spawn(catalog.clone().follow());
            Ok(Started::default()
                .with_extension(Catalogs(catalog))
                .with_banner(format!(
                    "model catalog: version {version}, {models} models{}",
                    if published { " (from kairos.toml)" } else { "" }
                )))
        })
    }
}

/// Appends the `kairos.toml` catalog unless it is empty, already in force, or was appended
/// before (then a later change through the API stands); whether it appended. A catalog that
/// may not follow the one in force ([`CatalogChanged::may_follow`]) is an error.
pub async fn publish_configured(
    catalog: &AggregateStore<CatalogState>,
    models: &[ModelSpec],
    at: chrono::DateTime<chrono::Utc>,
) -> Result<bool, String> {
    if models.is_empty() {
        catalog.catch_up().await.map_err(|e| e.to_string())?;
        return Ok(false);
    }
    let event = change_event(models, "kairos/config", None, at).map_err(|e| e.to_string())?;
    let done = catalog
        .execute(|current: &CatalogState| {
            if current.has(event.id()) || *current.models == models {
                return Ok(Decision::nothing(()));
            }
            let change = CatalogChanged {
                models: models.to_vec(),
                actor: None,
            };
            change.may_follow(&current.models).map_err(|(field, why)| {
                format!(
                    "catalog.{field} {why} (the catalog in force is version {})",
                    current.version
                )
            })?;
            Ok::<_, String>(Decision::append(event.clone(), ()))
        })
        .await
        .map_err(|e| e.to_string())?;
    Ok(done.seq.is_some())
}

/// A catalog as a request body gives it (`models`), checked as every door checks one: `400`
/// naming `models` when it does not read, or the member at fault when it is invalid.
pub fn catalog_from_body(models: Value) -> Result<CatalogChanged, ApiError> {
    let change = CatalogChanged {
        models: serde_json::from_value(models)
            .map_err(|e| ApiError::bad("invalid_body", "models", e.to_string()))?,
        actor: None,
    };
    change.check().map_err(refused)?;
    Ok(change)
}

/// The `400 invalid_catalog` of a check's finding.
fn refused((field, why): (String, String)) -> ApiError {
    ApiError::bad("invalid_catalog", &field, format!("{field} {why}"))
}

/// The catalog in force, as `GET /v1/catalog` answers it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct CatalogView {
    /// The stream sequence of the change in force (0: no catalog yet): send it as `If-Match`
    /// to change the catalog only if nobody changed it since.
    pub version: u64,
    pub changed_at: Option<chrono::DateTime<chrono::Utc>>,
    #[schema(value_type = Vec<Object>)]
    pub models: Vec<ModelSpec>,
}

/// `GET /v1/catalog`
#[utoipa::path(get, path = "/v1/catalog", tag = "catalog",
    responses(
        (status = 200, description = "The catalog in force and its version", body = CatalogView),
        (status = 503, description = "The stream is unavailable", body = ErrorBody),
    ))]
async fn get_catalog(
    Extension(catalog): Extension<Catalogs>,
) -> Result<Json<CatalogView>, ApiError> {
    catalog
        .0
        .catch_up()
        .await
        .map_err(|e| ApiError::StreamUnavailable(e.to_string()))?;
    Ok(Json(catalog.0.read(|c| CatalogView {
        version: c.version,
        changed_at: c.changed_at,
        models: c.models.to_vec(),
    })))
}

/// What `PUT /v1/catalog` takes: the whole catalog.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CatalogBody {
    /// Every model, as `[[catalog.model]]` in kairos.toml; a price entry dated in the past
    /// re-prices the calls Kairos priced from then on.
    #[schema(value_type = Vec<Object>)]
    models: Value,
}

/// `PUT /v1/catalog`: replaces the catalog (a `kairos.catalog.changed.v1`), appended with the
/// subject's expected last sequence.
#[utoipa::path(put, path = "/v1/catalog", tag = "catalog",
    params(
        ("If-Match" = Option<String>, Header, description = "Change it only if its version is still this one: \"123\""),
    ),
    request_body(content = CatalogBody, content_type = "application/json"),
    responses(
        (status = 202, description = "Stored: the new version", body = CatalogStored),
        (status = 400, description = "The body or a header is malformed, or the catalog is invalid (the field is named)", body = ErrorBody),
        (status = 409, description = "If-Match names another version, or other writers kept changing it", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 415, description = "Not application/json", body = ErrorBody),
        (status = 503, description = "The stream is unavailable", body = ErrorBody),
    ))]
async fn put_catalog(
    State(st): State<AppState>,
    Extension(catalog): Extension<Catalogs>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    JsonBody(b): JsonBody<CatalogBody>,
) -> Result<Response, ApiError> {
    let expected = if_match(&headers, "the catalog's")?;
    let change = catalog_from_body(b.models)?;
    let mut origin = json!({});
    caller.origin().stamp(&mut origin);
    let event = change_event(&change.models, "kairos/api", Some(origin), st.clock.now())
        .map_err(ApiError::InvalidEvent)?;
    let done = catalog
        .0
        .execute(|current: &CatalogState| match expected {
            Some(v) if v != current.version => Err(ApiError::Conflict(format!(
                "the catalog is at version {}, not {v}: read it again",
                current.version
            ))),
            _ => {
                change.may_follow(&current.models).map_err(refused)?;
                Ok(Decision::append(event.clone(), ()))
            }
        })
        .await?;
    let seq = done.seq.map_or(0, |s| s.0);
    let mut response = (
        StatusCode::ACCEPTED,
        Json(CatalogStored {
            version: seq,
            seq,
            event_id: event.id().to_owned(),
            models: change.models.len(),
        }),
    )
        .into_response();
    // The change carries the actor: it is this write's audit entry.
    response.extensions_mut().insert(Recorded);
    Ok(response)
}

/// `GET /v1/catalog/versions?min_seq=`: every version, newest first.
#[utoipa::path(get, path = "/v1/catalog/versions", tag = "catalog",
    params(
        ("min_seq" = Option<u64>, Query, description = "Wait until the catalog projection applied this stream sequence"),
    ),
    responses(
        (status = 200, description = "The versions, newest first (at most 1000)", body = CatalogVersions),
        (status = 400, description = "A parameter is malformed", body = ErrorBody),
        (status = 503, description = "Not applied within the wait, or a store is unavailable", body = ErrorBody),
    ))]
async fn list_versions(
    State(st): State<AppState>,
    read: ReadAt,
) -> Result<Json<CatalogVersions>, ApiError> {
    read.wait(&st, NAME).await?;
    let rows: Vec<(i64, chrono::DateTime<chrono::Utc>, Option<String>, Value)> = sqlx::query_as(
        "SELECT seq, changed_at, actor, models FROM catalog.versions ORDER BY seq DESC LIMIT 1000",
    )
    .fetch_all(&st.pool)
    .await?;
    let versions = rows
        .into_iter()
        .map(|(version, changed_at, actor, models)| CatalogVersion {
            version,
            changed_at,
            actor,
            models,
        })
        .collect();
    Ok(Json(CatalogVersions { versions }))
}

/// A catalog change, stored.
#[derive(Serialize, utoipa::ToSchema)]
struct CatalogStored {
    /// The new version: its event's stream sequence.
    version: u64,
    /// The same sequence, for `?min_seq=`.
    seq: u64,
    event_id: String,
    /// How many models the new catalog has.
    models: usize,
}

#[derive(Serialize, utoipa::ToSchema)]
struct CatalogVersions {
    versions: Vec<CatalogVersion>,
}

/// One version of the catalog, as it was set.
#[derive(Serialize, utoipa::ToSchema)]
struct CatalogVersion {
    version: i64,
    changed_at: chrono::DateTime<chrono::Utc>,
    /// Who set it (`null`: kairos.toml at start-up).
    actor: Option<String>,
    /// Every model of that version, as `GET /v1/catalog` lists them.
    #[schema(value_type = Vec<Object>)]
    models: Value,
}
