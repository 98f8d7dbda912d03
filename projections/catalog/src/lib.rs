//! The model catalog: which models there are, their providers, context windows, quality tiers,
//! tags and price history.
//!
//! It starts in `kairos.toml` (`[[catalog.model]]`) and changes at run time through
//! `PUT /v1/catalog`; either way a change is a `kairos.catalog.changed.v1` carrying the whole
//! catalog, on one subject (`<prefix>.events.catalog._global`), and its stream sequence is the
//! catalog's version. The router decides against the [`CatalogState`] folded from that subject;
//! the budgets and analytics projections fold the same events to price calls that came without
//! a cost. This crate's projection keeps every version (`catalog.versions`) for reads.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use kairos_bus::Bus;
use kairos_events::types::{CATALOG_CHANGED, CatalogChanged, ModelSpec};
use kairos_events::{Emit, Event};
use kairos_runtime::{Aggregate, AggregateStore, ApplyError, Projection, Rejection, StoredEvent};
use sha2::{Digest, Sha256};
use sqlx::PgConnection;

mod api;

pub use api::{CatalogModule, CatalogSettings, MODULE, catalog_from_body};

/// The name of the projection: consumer, checkpoint and dead-letter subject.
pub const NAME: &str = "catalog";

/// The subject every catalog change is appended to.
pub fn subject(prefix: &str) -> String {
    format!("{prefix}.events.catalog._global")
}

/// A catalog change as a projection folds it: read, and checked as every door checks it (an
/// event that fails was refused at the door; one that reached the stream another way is
/// dead-lettered by every projection alike).
pub fn decode_change(stored: &StoredEvent) -> Result<Option<CatalogChanged>, Rejection> {
    if stored.event.event_type().as_str() != CATALOG_CHANGED {
        return Ok(None);
    }
    let change: CatalogChanged = stored.event.data_as()?;
    change.check().map_err(|(field, why)| Rejection {
        code: "invalid_catalog",
        reason: format!("{field} {why}"),
    })?;
    Ok(Some(change))
}

/// The catalog as the events on its subject leave it: what the router decides against and
/// what a change is decided against.
#[derive(Debug, Clone, Default)]
pub struct CatalogState {
    /// The stream sequence of the change in force (0: none yet).
    pub version: u64,
    pub changed_at: Option<DateTime<Utc>>,
    pub models: Arc<Vec<ModelSpec>>,
    /// Ids of the changes folded: a change published again past JetStream's duplicate window
    /// (the same `kairos.toml` catalog after a restart) is passed over, as projections pass
    /// over a repeated event identity.
    ids: HashSet<String>,
}

impl CatalogState {
    /// The model called `name`.
    pub fn model(&self, name: &str) -> Option<&ModelSpec> {
        self.models.iter().find(|m| m.name == name)
    }

    /// Whether a change with this id was folded.
    pub fn has(&self, id: &str) -> bool {
        self.ids.contains(id)
    }
}

impl Aggregate for CatalogState {
    fn fold(&mut self, event: &StoredEvent) {
        if !self.ids.insert(event.event.id().to_owned()) {
            return;
        }
        if let Ok(Some(change)) = decode_change(event) {
            self.version = event.seq.0;
            self.changed_at = Some(event.occurred_at());
            self.models = Arc::new(change.models);
        }
    }
}

/// The catalog aggregate of `bus`' stream (nothing read until a catch-up).
pub fn store(bus: &Bus) -> Arc<AggregateStore<CatalogState>> {
    AggregateStore::new(bus.clone(), subject(&bus.config().subject_prefix))
}

/// The `kairos.catalog.changed.v1` of `models` from `source`. From the configuration its id is
/// derived from the content, so the same `kairos.toml` catalog takes effect once however often
/// Kairos restarts, and a catalog changed through the API is not reverted by a restart.
pub fn change_event(
    models: &[ModelSpec],
    source: &str,
    origin: Option<serde_json::Value>,
    at: DateTime<Utc>,
) -> Result<Event, kairos_events::EventError> {
    let mut data = serde_json::json!({ "models": models });
    let mut emit = match origin {
        Some(fields) => {
            if let (Some(d), Some(f)) = (data.as_object_mut(), fields.as_object()) {
                d.extend(f.clone());
            }
            Emit::new(CATALOG_CHANGED, source, data)
        }
        None => {
            let digest = Sha256::digest(data.to_string().as_bytes());
            let id: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
            Emit::new(CATALOG_CHANGED, source, data).id(format!("config-{id}"))
        }
    };
    emit = emit.time(at);
    emit.build()
}

/// The projection keeping every catalog version.
#[derive(Debug, Clone, Default)]
pub struct Catalog;

/// One catalog version.
#[derive(Debug)]
pub struct Version {
    seq: u64,
    at: DateTime<Utc>,
    actor: Option<String>,
    models: Vec<ModelSpec>,
}

impl Projection for Catalog {
    type Item = Version;
    type Carry = ();

    fn name(&self) -> &'static str {
        NAME
    }

    fn schema(&self) -> &'static str {
        NAME
    }

    fn categories(&self) -> Option<&'static [&'static str]> {
        Some(&["catalog"])
    }

    fn decode(&self, stored: &StoredEvent) -> Result<Option<Version>, Rejection> {
        Ok(decode_change(stored)?.map(|c| Version {
            seq: stored.seq.0,
            at: stored.occurred_at(),
            actor: c.actor,
            models: c.models,
        }))
    }

    fn snapshot_query(&self) -> Option<&'static str> {
        Some(
            "SELECT coalesce(json_agg(json_build_object('seq', seq, 'models', models) ORDER BY seq), '[]')
             FROM versions",
        )
    }

    async fn apply(
        &self,
        tx: &mut PgConnection,
        items: Vec<Version>,
        _carry: &mut (),
    ) -> Result<Vec<Event>, ApplyError> {
        for v in items {
            let models =
                serde_json::to_value(&v.models).map_err(|e| ApplyError::Data(e.to_string()))?;
            sqlx::query(
                "INSERT INTO versions (seq, changed_at, actor, models) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (seq) DO NOTHING",
            )
            .bind(i64::try_from(v.seq).unwrap_or(i64::MAX))
            .bind(v.at)
            .bind(v.actor)
            .bind(models)
            .execute(&mut *tx)
            .await?;
        }
        Ok(Vec::new())
    }
}
