//! `kairos.toml` plus `KAIROS_<SECTION>_<KEY>` environment overrides, validated once.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use kairos_api::{AuthSettings, HttpSettings};
use kairos_bus::BusConfig;
use kairos_runtime::RunnerConfig;
use serde::Deserialize;
use std::collections::BTreeMap;

/// The shipped `kairos.toml`: every default, in one readable place.
pub const DEFAULTS: &str = include_str!("../../../kairos.toml");

/// The platform's sections, each validated here; every other top-level section belongs to a
/// module (`[budgets]`, …), which reads and validates its own (`startup::configure`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Settings {
    pub http: HttpSettings,
    pub auth: AuthSettings,
    pub nats: BusConfig,
    pub database: DatabaseSettings,
    pub projections: RunnerConfig,
    pub log: LogSettings,
    pub demo: DemoSettings,
    #[serde(default)]
    pub dashboard: kairos_dashboard::DashboardSettings,
    /// The modules' sections, by key, as written.
    #[serde(flatten)]
    pub modules: BTreeMap<String, figment::value::Value>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: String,
    pub max_connections: u32,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub filter: String,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DemoSettings {
    pub events_per_second: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {0} does not exist")]
    Missing(String),
    #[error("configuration: {0}")]
    Invalid(String),
}

impl Settings {
    /// Defaults, then `path` (if given, it must exist), then `KAIROS_*` environment variables.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULTS));
        if let Some(path) = path {
            if !path.is_file() {
                return Err(ConfigError::Missing(path.display().to_string()));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        // The name for the bootstrap key, beside the generic KAIROS_AUTH_BOOTSTRAP_ADMIN_KEY.
        let bootstrap = Env::raw()
            .only(&["KAIROS_BOOTSTRAP_ADMIN_KEY"])
            .map(|_| "auth.bootstrap_admin_key".into());
        Self::from_figment(figment.merge(env_overrides()).merge(bootstrap))
    }

    /// Defaults and a TOML text, without the environment (tests, `kairos config check`).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::from_figment(Figment::from(Toml::string(DEFAULTS)).merge(Toml::string(text)))
    }

    fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let settings: Settings = figment.extract().map_err(|e| {
            let msgs: Vec<String> = e.into_iter().map(|e| e.to_string()).collect();
            ConfigError::Invalid(msgs.join("; "))
        })?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what types alone cannot; every message names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| ConfigError::Invalid(m);
        self.http.validate().map_err(invalid)?;
        self.auth.validate().map_err(invalid)?;
        self.nats.validate().map_err(|e| invalid(e.to_string()))?;
        self.projections.validate().map_err(invalid)?;
        self.dashboard.validate().map_err(invalid)?;
        let db = &self.database.url;
        if !(db.starts_with("postgres://") || db.starts_with("postgresql://")) {
            return Err(invalid(
                "database.url must start with postgres:// or postgresql://".into(),
            ));
        }
        if !(2..=1000).contains(&self.database.max_connections) {
            return Err(invalid(
                "database.max_connections must be between 2 and 1000".into(),
            ));
        }
        if !(1..=100_000).contains(&self.demo.events_per_second) {
            return Err(invalid(
                "demo.events_per_second must be between 1 and 100000".into(),
            ));
        }
        Ok(())
    }
}

/// `KAIROS_<SECTION>_<KEY>`: the first `_` after the prefix separates section from key, so
/// `KAIROS_NATS_SUBJECT_PREFIX` is `nats.subject_prefix`. A section whose name has a `_` of its
/// own (a module's, say `model_counts`) is separated by `__`: `KAIROS_MODEL_COUNTS__MIN_CALLS`.
fn env_overrides() -> Env {
    Env::prefixed("KAIROS_")
        .filter(|k| {
            let k = k.as_str().to_ascii_lowercase();
            k.contains('_') && !k.starts_with("bootstrap")
        })
        .map(|k| {
            let k = k.as_str();
            match k.split_once("__") {
                Some((section, key)) => format!("{section}.{key}").into(),
                None => k.replacen('_', ".", 1).into(),
            }
        })
        .lowercase(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The platform's checks, then every module's, as start-up runs them.
    fn check(text: &str) -> Result<Settings, ConfigError> {
        let s = Settings::from_toml(text)?;
        crate::startup::configure(
            &s,
            &crate::startup::registry(),
            &kairos_events::Clock::system(),
        )?;
        Ok(s)
    }

    #[test]
    fn the_shipped_file_is_valid() {
        let s = check("").unwrap();
        assert_eq!(s.nats.subject_prefix, "kairos");
        assert!(s.modules.contains_key("budgets"), "{:?}", s.modules.keys());
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("[http]\naddr = 5", "http.addr"),
            ("[http]\naddr = \"nowhere\"", "http.addr"),
            ("[http]\nbody_limit_bytes = -1", "body_limit_bytes"),
            ("[nats]\nsubject_prefix = \"a b\"", "nats.subject_prefix"),
            ("[nats]\nstream = \"a.b\"", "nats.stream"),
            ("[nats]\nreplicas = 2", "nats.replicas"),
            ("[nats]\nsigning_key = \"short\"", "nats.signing_key"),
            ("[audit]\ncheckpoint_every = 0", "audit.checkpoint_every"),
            (
                "[audit]\ncheckpoint_interval_secs = 0",
                "audit.checkpoint_interval_secs",
            ),
            (
                "[audit]\ncheckpoint_every = \"often\"",
                "audit.checkpoint_every",
            ),
            ("[audit]\nsurprise = 1", "surprise"),
            ("[database]\nurl = \"mysql://x\"", "database.url"),
            ("[budgets]\ntimezone = \"Mars/Olympus\"", "budgets.timezone"),
            ("[projections]\nbatch_size = 0", "projections.batch_size"),
            (
                "[projections]\nreplay_identities_in_memory = 200000000",
                "projections.replay_identities_in_memory",
            ),
            (
                "[projections]\nreplay_identities_in_memory = -1",
                "replay_identities_in_memory",
            ),
            ("[http]\nsurprise = 1", "surprise"),
            (
                "[http]\nheader_read_timeout_ms = 0",
                "http.header_read_timeout_ms",
            ),
            ("[http]\nidle_timeout_ms = 50", "http.idle_timeout_ms"),
            (
                "[http]\nheader_read_timeout_ms = 20000\nidle_timeout_ms = 10000",
                "http.header_read_timeout_ms",
            ),
            ("[http]\nmax_connections = 0", "http.max_connections"),
            (
                "[http]\ntrusted_proxies = [\"10.0.0.0/33\"]",
                "http.trusted_proxies",
            ),
            (
                "[http]\ntrusted_proxies = [\"proxy.internal\"]",
                "http.trusted_proxies",
            ),
            ("[http]\ntrusted_proxies = \"10.0.0.1\"", "trusted_proxies"),
            ("[http]\nmax_connections = -1", "max_connections"),
            (
                "[http]\nshutdown_grace_ms = 3600000",
                "http.shutdown_grace_ms",
            ),
            ("[log]\nformat = \"xml\"", "format"),
            (
                "[[budgets.preset]]\nproject = \"a.b\"\nmonthly_limit = \"1\"",
                "budgets.preset[0].project",
            ),
            (
                "[[budgets.preset]]\nproject = \"a\"\nmonthly_limit = \"-1\"",
                "budgets.preset[0].monthly_limit",
            ),
            (
                "[[budgets.preset]]\nproject = \"a\"\nmonthly_limit = \"1\"\non_exceeded = \"pray\"",
                "budgets.preset[0].on_exceeded",
            ),
            ("not toml at all [", "TOML"),
            (
                "[auth]\nbootstrap_admin_key = \"short\"",
                "auth.bootstrap_admin_key",
            ),
            (
                "[auth]\nbootstrap_admin_key = \"has spaces in it, which headers mangle\"",
                "auth.bootstrap_admin_key",
            ),
            ("[auth]\nkey_secret = \"tiny\"", "auth.key_secret"),
            (
                "[auth]\ninvitation_ttl_hours = 0",
                "auth.invitation_ttl_hours",
            ),
            (
                "[auth]\nbootstrap_admin_email = \"nobody\"",
                "auth.bootstrap_admin_email",
            ),
            ("[auth]\nopen_by_default = true", "open_by_default"),
            ("[surprise]\nx = 1", "[surprise]"),
            (
                "[auth]\nbootstrap_admin_key = \"passwordpasswordpasswordpassword12\"",
                "auth.bootstrap_admin_key looks guessable",
            ),
            (
                "[auth]\nbootstrap_admin_key = \"kairos_0123456789abcdef012\"",
                "32 to 512",
            ),
            ("[budgets]\nsurprise = 1", "surprise"),
            ("[budgets]\ntimezone = 5", "budgets.timezone"),
        ];
        for (text, key) in cases {
            let err = check(text).unwrap_err().to_string();
            assert!(
                err.contains(key),
                "{text:?} gave {err:?}, which does not name {key}"
            );
        }
    }

    #[test]
    fn a_random_bootstrap_key_is_accepted() {
        let key = "kairos_4f3c9a0e7b21d85c6e9f0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f";
        let s = check(&format!("[auth]\nbootstrap_admin_key = \"{key}\"")).unwrap();
        assert_eq!(s.auth.bootstrap_admin_key.as_deref(), Some(key));
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let err = Settings::load(Some(Path::new("/nonexistent/kairos.toml"))).unwrap_err();
        assert!(matches!(err, ConfigError::Missing(_)));
    }
}
