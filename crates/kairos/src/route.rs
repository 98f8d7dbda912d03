//! `kairos route`: ask the router from a script, and simulate another catalog over history.

use std::path::Path;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use figment::Figment;
use figment::providers::{Format, Toml};
use kairos_events::ProjectId;
use kairos_events::types::{CatalogChanged, ModelSpec};
use kairos_router::simulate::{ProjectReport, load_history, simulate};

use crate::startup::Kairos;

/// The models of a catalog file: `[[catalog.model]]` tables, as in `kairos.toml`, or
/// `[[model]]` tables. Errors name the key.
pub fn read_catalog(path: &Path) -> anyhow::Result<Vec<ModelSpec>> {
    let figment = Figment::from(Toml::file_exact(path));
    let models: Vec<ModelSpec> = match figment.find_value("catalog.model") {
        Ok(_) => figment.extract_inner("catalog.model"),
        Err(_) => figment.extract_inner("model"),
    }
    .with_context(|| {
        format!(
            "{}: no readable [[catalog.model]] or [[model]] tables",
            path.display()
        )
    })?;
    let change = CatalogChanged {
        models,
        actor: None,
    };
    if let Err((field, why)) = change.check() {
        bail!("{}: catalog.{field} {why}", path.display());
    }
    Ok(change.models)
}

/// Replays `[from, to)` under the catalog of `path`: one report per project.
pub async fn simulate_file(
    k: &Kairos,
    path: &Path,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    project: Option<&str>,
) -> anyhow::Result<Vec<ProjectReport>> {
    if from >= to {
        bail!("--from must be before --to");
    }
    let models = read_catalog(path)?;
    let project = project.map(ProjectId::parse).transpose()?;
    let budgets: kairos_budgets::BudgetSettings = k.section("budgets")?;
    let tz: chrono_tz::Tz = budgets
        .timezone
        .parse()
        .map_err(|_| anyhow::anyhow!("budgets.timezone is not an IANA time zone"))?;
    let events = load_history(&k.bus, &k.pool, &tz, from, to)
        .await
        .map_err(|e| anyhow::anyhow!("reading the history: {e}"))?;
    Ok(simulate(&events, &models, &tz, from, to, project.as_ref()))
}
