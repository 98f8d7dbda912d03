//! Migrations: the runtime's own (`migrations/`), then each projection module's
//! (`projections/<name>/migrations/`), each set with its own history table in the `kairos`
//! schema, so modules number their migrations independently.

use std::borrow::Cow;

use sqlx::PgPool;
use sqlx::migrate::{Migrate, MigrateError, Migrator};

/// The runtime's own migrations.
pub static RUNTIME_MIGRATIONS: Migrator = sqlx::migrate!("../../migrations");

/// The history table of the runtime's migrations.
const RUNTIME_TABLE: &str = "kairos._migrations";

/// The last version of the single migration history an earlier layout kept in
/// `public._sqlx_migrations`: a database at that version has exactly the schema the current
/// migrations build, and is adopted without running them.
const LEGACY_LAST_VERSION: i64 = 9;

/// The modules whose tables that layout built: only their histories are adopted (a module
/// added since runs its migrations).
const LEGACY_MODULES: &[&str] = &["budgets", "audit", "access"];

/// Why migrating failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// The cause is in the message, not also in `source()`: a chain printed whole (`{:#}`) would
    /// say it twice.
    #[error("migrations of {set}: {cause}")]
    Migrate { set: String, cause: MigrateError },
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(
        "this database was migrated by an older Kairos only to version {0} (of {LEGACY_LAST_VERSION}); \
         run that release's `kairos migrate` first, or use a new database and `kairos replay --all`"
    )]
    LegacyIncomplete(i64),
}

/// `migrator`'s migrations with their history in `table` (no I/O).
fn with_table(migrator: &Migrator, table: String) -> Migrator {
    let mut m = Migrator::with_migrations(migrator.iter().cloned().collect());
    m.dangerous_set_table_name(table);
    m.create_schema("kairos");
    m
}

/// The history table of module `name`'s migrations.
pub fn module_table(name: &str) -> String {
    format!("kairos._migrations_{name}")
}

/// Applies the runtime's migrations, then each module's in order (`(name, migrations)`).
pub async fn migrate(pool: &PgPool, modules: &[(&str, &Migrator)]) -> Result<(), MigrationError> {
    adopt_legacy(pool, modules).await?;
    let run = |set: &str, m: Migrator| {
        let set = set.to_owned();
        async move {
            m.run(pool)
                .await
                .map_err(|cause| MigrationError::Migrate { set, cause })
        }
    };
    run(
        "the runtime",
        with_table(&RUNTIME_MIGRATIONS, RUNTIME_TABLE.into()),
    )
    .await?;
    for (name, migrations) in modules {
        run(name, with_table(migrations, module_table(name))).await?;
    }
    Ok(())
}

/// A database an earlier layout migrated (one history in `public._sqlx_migrations`, up to
/// [`LEGACY_LAST_VERSION`]) gets the current histories recorded as applied, once.
async fn adopt_legacy(pool: &PgPool, modules: &[(&str, &Migrator)]) -> Result<(), MigrationError> {
    let legacy: bool = sqlx::query_scalar(
        "SELECT to_regclass('public._sqlx_migrations') IS NOT NULL
            AND to_regclass('kairos._migrations') IS NULL",
    )
    .fetch_one(pool)
    .await?;
    if !legacy {
        return Ok(());
    }
    let version: i64 = sqlx::query_scalar(
        "SELECT coalesce(max(version), 0) FROM public._sqlx_migrations WHERE success",
    )
    .fetch_one(pool)
    .await?;
    if version < LEGACY_LAST_VERSION {
        return Err(MigrationError::LegacyIncomplete(version));
    }
    let mut tx = pool.begin().await?;
    let sets = std::iter::once((RUNTIME_TABLE.to_owned(), &RUNTIME_MIGRATIONS)).chain(
        modules
            .iter()
            .filter(|(n, _)| LEGACY_MODULES.contains(n))
            .map(|(n, m)| (module_table(n), *m)),
    );
    for (table, migrations) in sets {
        let err = |cause| MigrationError::Migrate {
            set: table.clone(),
            cause,
        };
        tx.ensure_migrations_table(&table).await.map_err(err)?;
        // Only what that layout had: every set's first migration. Later ones run as usual.
        for m in migrations.iter().filter(|m| m.version == 1) {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO {table} (version, description, success, checksum, execution_time)
                 VALUES ($1, $2, true, $3, 0) ON CONFLICT DO NOTHING"
            )))
            .bind(m.version)
            .bind(Cow::as_ref(&m.description))
            .bind(Cow::as_ref(&m.checksum))
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    tracing::info!(
        version,
        "adopted a database migrated by an earlier layout (public._sqlx_migrations)"
    );
    Ok(())
}
