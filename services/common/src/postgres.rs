//! PostgreSQL: [`connect`] (creating the database on first run) and [`migrate`], which
//! applies this crate's migrations (the outbox and processed-events tables) together with
//! a service's own `sqlx::migrate!()` migrations in the same `_sqlx_migrations` table.
//!
//! Common migrations use versions in 1970 (`19700101000001`, ...), below any timestamp or
//! sequence number a service would pick; both migrators run with `ignore_missing` so
//! neither complains about the other's applied versions.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

use crate::config::ConfigError;
use crate::error::Error;

/// This crate's own migrations (outbox, processed events).
pub static COMMON_MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Pool settings for [`connect_with`].
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// Upper bound of open connections.
    pub max_connections: u32,
    /// How long a query waits for a free connection before failing (→ `Unavailable`).
    pub acquire_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

/// Connects with [`PoolSettings::default`], creating the database if it does not exist.
pub async fn connect(url: &str) -> Result<PgPool, Error> {
    connect_with(url, PoolSettings::default()).await
}

/// Connects a pool to `url`. When the database named in the URL does not exist, it is
/// created through the `postgres` maintenance database, so a first run needs no setup.
///
/// TLS is libpq's: `?sslmode=require` encrypts, `verify-ca` also checks the server's
/// certificate against `sslrootcert` (a PEM file; the webpki roots when unset), and
/// `verify-full` checks the host name too. Settings that cannot work are refused before
/// connecting ([`check_tls_settings`]).
pub async fn connect_with(url: &str, settings: PoolSettings) -> Result<PgPool, Error> {
    check_tls_settings(url)?;
    let options = PgConnectOptions::from_str(url)?;
    let pool_options = || {
        PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
    };
    match pool_options().connect_with(options.clone()).await {
        Ok(pool) => Ok(pool),
        Err(error) if is_missing_database(&error) => {
            let database = options.get_database().unwrap_or_default().to_owned();
            create_database(&options, &database).await?;
            Ok(pool_options().connect_with(options).await?)
        }
        Err(error) => Err(error.into()),
    }
}

/// The `sslmode` values libpq (and sqlx) know.
const SSL_MODES: &[&str] = &[
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];

/// Refuses, naming `DATABASE_URL`, a URL whose TLS settings cannot work: an unknown
/// `sslmode`, an `sslrootcert` that cannot be read, or a root certificate with
/// `sslmode=disable` (asking to verify a server that is not asked for TLS).
pub fn check_tls_settings(url: &str) -> Result<(), ConfigError> {
    let invalid = |reason: String| ConfigError::invalid("DATABASE_URL", url, reason);
    let parsed = url::Url::parse(url).map_err(|e| invalid(e.to_string()))?;
    let param = |name: &str| {
        parsed
            .query_pairs()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
    };
    let mode = param("sslmode");
    if let Some(mode) = &mode
        && !SSL_MODES.contains(&mode.as_str())
    {
        return Err(invalid(format!(
            "unknown sslmode {mode:?} (use {})",
            SSL_MODES.join(", ")
        )));
    }
    if let Some(root) = param("sslrootcert") {
        if mode.as_deref() == Some("disable") {
            return Err(invalid(
                "sslrootcert is set but sslmode=disable turns TLS off".into(),
            ));
        }
        if let Err(error) = std::fs::File::open(&root) {
            return Err(invalid(format!(
                "cannot read sslrootcert {root:?}: {error}"
            )));
        }
    }
    Ok(())
}

fn is_missing_database(error: &sqlx::Error) -> bool {
    // 3D000 invalid_catalog_name: "database ... does not exist"
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("3D000"))
}

/// Creates `database` unless it exists, tolerating a concurrent creator.
pub async fn create_database(options: &PgConnectOptions, database: &str) -> Result<(), Error> {
    if database.is_empty() {
        return Err(Error::Other("the database URL names no database".into()));
    }
    let mut admin = PgConnection::connect_with(&options.clone().database("postgres")).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(database)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        let statement = format!("CREATE DATABASE {}", quote_identifier(database));
        match sqlx::query(&statement).execute(&mut admin).await {
            Ok(_) => tracing::info!(database, "created database"),
            // 42P04 duplicate_database / 23505 unique_violation: another process won the race.
            Err(sqlx::Error::Database(db))
                if matches!(db.code().as_deref(), Some("42P04") | Some("23505")) => {}
            Err(error) => return Err(error.into()),
        }
    }
    admin.close().await?;
    Ok(())
}

/// Quotes an SQL identifier (`my"db` → `"my""db"`).
pub fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Applies the common migrations, then the service's (`&sqlx::migrate!()`). Safe to run
/// on every start-up and from several replicas at once (sqlx takes an advisory lock).
pub async fn migrate(pool: &PgPool, service_migrations: &Migrator) -> Result<(), Error> {
    if let Some(clash) = service_migrations
        .iter()
        .find(|m| COMMON_MIGRATOR.version_exists(m.version))
    {
        return Err(Error::Other(format!(
            "service migration {} ({}) uses a version reserved for messenger-common's migrations",
            clash.version, clash.description
        )));
    }
    tolerant(&COMMON_MIGRATOR).run(pool).await?;
    tolerant(service_migrations).run(pool).await?;
    Ok(())
}

/// Brings the database to the schema this binary expects at start-up: applies the
/// migrations (`migrate_on_start`, the default), or — when a migrations Job ran `<binary>
/// migrate` before this version's pods started (`MIGRATE_ON_START=false`) — only checks
/// that every migration this binary knows is applied, so a pod never serves on a schema
/// it was not built for.
pub async fn prepare_schema(
    pool: &PgPool,
    service_migrations: &Migrator,
    migrate_on_start: bool,
) -> Result<(), Error> {
    if migrate_on_start {
        return migrate(pool, service_migrations).await;
    }
    let applied: Vec<i64> =
        match sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await
        {
            Ok(versions) => versions,
            // 42P01 undefined_table: nothing was ever migrated.
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P01") => Vec::new(),
            Err(error) => return Err(error.into()),
        };
    let missing = COMMON_MIGRATOR
        .iter()
        .chain(service_migrations.iter())
        .find(|m| !applied.contains(&m.version));
    match missing {
        None => Ok(()),
        Some(m) => Err(Error::Other(format!(
            "migration {} ({}) is not applied and MIGRATE_ON_START=false: run this binary with the `migrate` argument first (the operator's migrations Job does)",
            m.version, m.description
        ))),
    }
}

/// Applies only the common migrations, for a service without migrations of its own.
pub async fn migrate_common(pool: &PgPool) -> Result<(), Error> {
    tolerant(&COMMON_MIGRATOR).run(pool).await?;
    Ok(())
}

/// A copy of `migrator` that ignores applied versions it does not know (the other
/// migrator's).
fn tolerant(migrator: &Migrator) -> Migrator {
    Migrator {
        migrations: migrator.migrations.clone(),
        ignore_missing: true,
        locking: migrator.locking,
        no_tx: migrator.no_tx,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_settings_that_cannot_work_are_refused_naming_database_url() {
        let ca = std::env::temp_dir().join(format!("pg-ca-{}.pem", uuid::Uuid::new_v4()));
        std::fs::write(&ca, "not checked here").unwrap();
        let ca = ca.display();
        let accepted = [
            "postgres://app:pw@db/app".to_owned(),
            "postgres://app:pw@db/app?sslmode=require".to_owned(),
            format!("postgres://app:pw@db/app?sslmode=verify-full&sslrootcert={ca}"),
            format!("postgres://app:pw@db/app?sslrootcert={ca}&sslmode=verify-ca"),
        ];
        for url in &accepted {
            assert_eq!(check_tls_settings(url), Ok(()), "{url}");
        }
        let disabled = format!("postgres://app:pw@db/app?sslmode=disable&sslrootcert={ca}");
        let refused = [
            (
                "postgres://app:pw@db/app?sslmode=required",
                "unknown sslmode",
            ),
            (
                "postgres://app:pw@db/app?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
                "cannot read sslrootcert",
            ),
            (disabled.as_str(), "sslmode=disable"),
        ];
        for (url, reason) in refused {
            let error = check_tls_settings(url).expect_err(url);
            assert_eq!(error.variable(), "DATABASE_URL");
            let message = error.to_string();
            assert!(message.contains(reason), "{message}");
            assert!(
                !message.contains(":pw@"),
                "the password is masked: {message}"
            );
        }
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_identifier("app"), "\"app\"");
        assert_eq!(quote_identifier("we\"ird"), "\"we\"\"ird\"");
    }

    #[test]
    fn common_migrations_use_reserved_1970_versions() {
        assert!(COMMON_MIGRATOR.iter().count() >= 2);
        for migration in COMMON_MIGRATOR.iter() {
            assert!(
                (19_700_101_000_000..19_700_102_000_000).contains(&migration.version),
                "{} is outside the reserved range",
                migration.version
            );
        }
    }
}
