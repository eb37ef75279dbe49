//! Database connections: PostgreSQL (production) or SQLite (embedded default), chosen by
//! the URL scheme, and the embedded migrations for each.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

pub static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/postgres");
pub static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/sqlite");

/// How long a writer waits for SQLite's write lock held by another process.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("unsupported database URL (expected postgres://… or sqlite:…)")]
    UnsupportedUrl,
    #[error("cannot connect to the database")]
    Connect(#[source] sqlx::Error),
    #[error("cannot apply migrations")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("database query failed")]
    Query(#[from] sqlx::Error),
    #[error("migrations not applied: {0:?}")]
    MigrationsPending(Vec<i64>),
    /// Read-only commands never create a store: a typo in the URL must not report on an
    /// empty database it just made.
    #[error("no database at {0}; create it (PostgreSQL: createdb) and run `kiln migrate`")]
    Missing(String),
    #[error("the database at {location} is not migrated ({pending} migrations pending; run `kiln migrate`)")]
    NotMigrated { location: String, pending: usize },
}

impl DbError {
    /// The store is absent or not migrated (as opposed to unreachable or failing).
    pub fn is_store_missing(&self) -> bool {
        matches!(self, DbError::Missing(_) | DbError::NotMigrated { .. })
    }
}

/// True when `error` says the database cannot be reached right now — the pool timed out
/// or is closed, the connection broke, the server is shutting down or starting up, or
/// (SQLite) another process holds the write lock past the busy timeout — as opposed to
/// an error in the statement or the data. Callers answer these with "try again later".
/// Seeing one also has the pools re-check connections before lending them for a while
/// ([`crate::db_health`]).
pub fn is_unreachable(error: &sqlx::Error) -> bool {
    let unreachable = is_unreachable_kind(error);
    if unreachable {
        crate::db_health::connection_trouble_seen();
    }
    unreachable
}

fn is_unreachable_kind(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => true,
        sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // PostgreSQL: class 08 (connection exception), 57P01-57P03 (admin or crash
            // shutdown, cannot connect now), 53300 (too many connections).
            // SQLite: 5 (SQLITE_BUSY), 6 (SQLITE_LOCKED) and their extended codes.
            // 25006 (read-only transaction): a server demoted by a failover, reached
            // over a connection opened before it; the pool drops such connections.
            code.starts_with("08")
                || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300" | "25006")
                || (db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() && {
                    let primary = code.parse::<i64>().unwrap_or(0) & 0xff;
                    primary == 5 || primary == 6
                })
        }
        _ => false,
    }
}

/// [`is_unreachable`] for an error or any of its causes (a `sqlx::Error` boxed inside
/// another error, as inline projections return them).
pub fn is_unreachable_cause(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if error.downcast_ref::<sqlx::Error>().is_some_and(is_unreachable) {
            return true;
        }
        if let Some(application::event_store::EventStoreError::Unavailable(_)) = error.downcast_ref() {
            return true;
        }
        cause = error.source();
    }
    false
}

/// A connection pool to one of the two supported databases.
#[derive(Clone, Debug)]
pub enum Database {
    Postgres(PgPool),
    /// SQLite allows one writer at a time. Writes go through a one-connection pool so
    /// writers in this process queue in order instead of failing with SQLITE_BUSY;
    /// other processes are waited for by the busy timeout.
    Sqlite { read: SqlitePool, write: SqlitePool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Database {
    /// Connects without running migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, DbError> {
        Self::connect_with(url, max_connections, ACQUIRE_TIMEOUT).await
    }

    /// Connects without running migrations; waiting for a pooled connection gives up
    /// after `acquire_timeout`.
    pub async fn connect_with(url: &str, max_connections: u32, acquire_timeout: Duration) -> Result<Self, DbError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url).map_err(DbError::Connect)?;
            // One direct connection first: a server that is down or refuses us is reported
            // at once with its real cause, not as a pool timeout.
            PgConnection::connect_with(&options).await.map_err(DbError::Connect)?.close().await.ok();
            let pool = PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(acquire_timeout)
                // Instead of sqlx's ping before every lending: none for a connection
                // that just answered, and a check that the server still takes writes
                // where it matters (see `db_health`).
                .test_before_acquire(false)
                .before_acquire(crate::db_health::lend_if_healthy)
                .after_connect(crate::db_health::refuse_read_only)
                .connect_with(options)
                .await
                .map_err(DbError::Connect)?;
            Ok(Database::Postgres(pool))
        } else if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(DbError::Connect)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
                // Waiting for another process's write lock is waiting for the database
                // too: no longer than for a connection (then the caller answers 503).
                .busy_timeout(SQLITE_BUSY_TIMEOUT.min(acquire_timeout));
            let write = SqlitePoolOptions::new()
                .max_connections(1)
                .acquire_timeout(acquire_timeout)
                .connect_with(options.clone())
                .await
                .map_err(DbError::Connect)?;
            let read = SqlitePoolOptions::new()
                .max_connections(max_connections.max(1))
                .acquire_timeout(acquire_timeout)
                .connect_with(options.read_only(true))
                .await
                .map_err(DbError::Connect)?;
            Ok(Database::Sqlite { read, write })
        } else {
            Err(DbError::UnsupportedUrl)
        }
    }

    /// Connects to a PostgreSQL read replica (`database.read_url`): a pool that lends
    /// connections to a read-only server (the writable pool's checks would refuse them),
    /// pinged before lending one idle a while (`db_health::lend_if_alive`). Lazy: no
    /// connection is made until a read asks for one, so a replica that is down does not
    /// stop Kiln starting.
    pub fn connect_replica(url: &str, max_connections: u32, acquire_timeout: Duration) -> Result<Self, DbError> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(DbError::UnsupportedUrl);
        }
        let options = PgConnectOptions::from_str(url).map_err(DbError::Connect)?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(acquire_timeout)
            .test_before_acquire(false)
            .before_acquire(crate::db_health::lend_if_alive)
            .connect_lazy_with(options);
        Ok(Database::Postgres(pool))
    }

    /// Connects to a store that exists and is fully migrated, creating and migrating
    /// nothing: for read-only commands (audit, projections). A SQLite file that does not
    /// exist, a PostgreSQL database that does not exist, or any pending migration is an
    /// error ([`DbError::is_store_missing`]).
    pub async fn open_existing(url: &str, max_connections: u32) -> Result<Self, DbError> {
        let location = redacted(url);
        let db = if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url).map_err(DbError::Connect)?;
            let file = options.get_filename();
            if file.as_os_str().is_empty() || file == std::path::Path::new(":memory:") || !file.exists() {
                return Err(DbError::Missing(location));
            }
            // Checked over a read-only connection first: the pool's set-up (WAL mode)
            // writes to the file, which an unmigrated file must not see.
            let mut probe = sqlx::SqliteConnection::connect_with(&options.read_only(true).create_if_missing(false))
                .await
                .map_err(DbError::Connect)?;
            let pending = sqlite_pending_migrations(&mut probe).await;
            probe.close().await.ok();
            let pending = pending?;
            if pending > 0 {
                return Err(DbError::NotMigrated { location, pending });
            }
            Self::connect(url, max_connections).await?
        } else {
            match Self::connect(url, max_connections).await {
                // 3D000 invalid_catalog_name: the server is up, the database is not there.
                Err(DbError::Connect(sqlx::Error::Database(e))) if e.code().as_deref() == Some("3D000") => {
                    return Err(DbError::Missing(location));
                }
                other => other?,
            }
        };
        if let Err(e) = db.check_migrated(&location).await {
            db.close().await;
            return Err(e);
        }
        Ok(db)
    }

    /// [`DbError::NotMigrated`] unless every embedded migration is applied.
    async fn check_migrated(&self, location: &str) -> Result<(), DbError> {
        let table_exists = match self {
            Database::Postgres(pool) => {
                sqlx::query_scalar::<_, bool>("SELECT to_regclass('_sqlx_migrations') IS NOT NULL").fetch_one(pool).await?
            }
            Database::Sqlite { read, .. } => {
                sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'")
                    .fetch_one(read)
                    .await?
                    > 0
            }
        };
        let pending = if table_exists {
            match self.readiness().await {
                Ok(()) => 0,
                Err(DbError::MigrationsPending(missing)) => missing.len(),
                Err(e) => return Err(e),
            }
        } else {
            self.migrator().iter().filter(|m| !m.migration_type.is_down_migration()).count()
        };
        if pending > 0 {
            return Err(DbError::NotMigrated { location: location.to_string(), pending });
        }
        Ok(())
    }

    /// Connects and applies every pending migration.
    pub async fn connect_and_migrate(url: &str, max_connections: u32) -> Result<Self, DbError> {
        let db = Self::connect(url, max_connections).await?;
        db.migrate().await?;
        Ok(db)
    }

    /// [`Database::connect_with`] and every pending migration.
    pub async fn connect_and_migrate_with(url: &str, max_connections: u32, acquire_timeout: Duration) -> Result<Self, DbError> {
        let db = Self::connect_with(url, max_connections, acquire_timeout).await?;
        db.migrate().await?;
        Ok(db)
    }

    pub fn backend(&self) -> Backend {
        match self {
            Database::Postgres(_) => Backend::Postgres,
            Database::Sqlite { .. } => Backend::Sqlite,
        }
    }

    pub fn migrator(&self) -> &'static Migrator {
        match self {
            Database::Postgres(_) => &POSTGRES_MIGRATIONS,
            Database::Sqlite { .. } => &SQLITE_MIGRATIONS,
        }
    }

    pub async fn migrate(&self) -> Result<(), DbError> {
        match self {
            Database::Postgres(pool) => POSTGRES_MIGRATIONS.run(pool).await,
            Database::Sqlite { write, .. } => SQLITE_MIGRATIONS.run(write).await,
        }
        .map_err(DbError::Migrate)
    }

    /// Ready means: reachable, and every embedded migration applied successfully.
    pub async fn readiness(&self) -> Result<(), DbError> {
        let applied: Vec<i64> = match self {
            Database::Postgres(pool) => {
                sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
                    .fetch_all(pool)
                    .await?
            }
            Database::Sqlite { read, .. } => {
                sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
                    .fetch_all(read)
                    .await?
            }
        };
        let missing: Vec<i64> = self
            .migrator()
            .iter()
            .filter(|m| !m.migration_type.is_down_migration() && !applied.contains(&m.version))
            .map(|m| m.version)
            .collect();
        if !missing.is_empty() {
            return Err(DbError::MigrationsPending(missing));
        }
        Ok(())
    }

    pub async fn close(&self) {
        match self {
            Database::Postgres(pool) => pool.close().await,
            Database::Sqlite { read, write } => {
                read.close().await;
                write.close().await;
            }
        }
    }
}

/// Embedded SQLite migrations not (successfully) applied to the database `conn` is on.
async fn sqlite_pending_migrations(conn: &mut sqlx::SqliteConnection) -> Result<usize, DbError> {
    let table: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'")
        .fetch_one(&mut *conn)
        .await?;
    let applied: Vec<i64> = if table > 0 {
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success").fetch_all(&mut *conn).await?
    } else {
        Vec::new()
    };
    Ok(SQLITE_MIGRATIONS
        .iter()
        .filter(|m| !m.migration_type.is_down_migration() && !applied.contains(&m.version))
        .count())
}

/// The URL without its password, for messages (`postgres://user:…@host/db`).
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:…{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Fetches all rows as `$row` with the same SQL text from the read side of either
/// database (PostgreSQL pool, or SQLite's read pool).
#[macro_export]
macro_rules! db_fetch_all {
    ($db:expr, $row:ty, $sql:expr $(, $arg:expr)* $(,)?) => {{
        match $db {
            $crate::db::Database::Postgres(pool) => {
                ::sqlx::query_as::<_, $row>($sql)$(.bind($arg))*.fetch_all(pool).await
            }
            $crate::db::Database::Sqlite { read, .. } => {
                ::sqlx::query_as::<_, $row>($sql)$(.bind($arg))*.fetch_all(read).await
            }
        }
    }};
}

/// Fetches at most one row as `$row` from the read side of either database.
#[macro_export]
macro_rules! db_fetch_optional {
    ($db:expr, $row:ty, $sql:expr $(, $arg:expr)* $(,)?) => {{
        match $db {
            $crate::db::Database::Postgres(pool) => {
                ::sqlx::query_as::<_, $row>($sql)$(.bind($arg))*.fetch_optional(pool).await
            }
            $crate::db::Database::Sqlite { read, .. } => {
                ::sqlx::query_as::<_, $row>($sql)$(.bind($arg))*.fetch_optional(read).await
            }
        }
    }};
}

/// Executes one statement on the write side of either database.
#[macro_export]
macro_rules! db_execute {
    ($db:expr, $sql:expr $(, $arg:expr)* $(,)?) => {{
        match $db {
            $crate::db::Database::Postgres(pool) => {
                ::sqlx::query($sql)$(.bind($arg))*.execute(pool).await.map(|r| r.rows_affected())
            }
            $crate::db::Database::Sqlite { write, .. } => {
                ::sqlx::query($sql)$(.bind($arg))*.execute(write).await.map(|r| r.rows_affected())
            }
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn passwords_are_left_out_of_messages() {
        for (url, shown) in [
            ("postgres://kiln:s3cret@db:5432/kiln", "postgres://kiln:…@db:5432/kiln"),
            ("postgres://postgres@127.0.0.1/kiln", "postgres://postgres@127.0.0.1/kiln"),
            ("sqlite:kiln.db", "sqlite:kiln.db"),
        ] {
            assert_eq!(redacted(url), shown);
        }
    }
}
