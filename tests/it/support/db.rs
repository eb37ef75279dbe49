//! Fresh databases for tests.
//!
//! PostgreSQL: each test gets its own database, created from a template that has every
//! migration applied (built once per migration set, under an advisory lock so parallel
//! test processes agree), and dropped when the test ends. The server is the one named by
//! `KILN_TEST_POSTGRES_URL`, else the local one at 127.0.0.1:5432.
//! SQLite: a file in a fresh temporary directory.

use std::hash::{Hash, Hasher};

use infrastructure::db::{Database, POSTGRES_MIGRATIONS};
use sqlx::{Connection, Executor, PgConnection};

pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub fn admin_url() -> String {
    std::env::var("KILN_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_string())
}

/// `admin` (a server's URL) with its database name replaced.
fn url_for(admin: &str, database: &str) -> String {
    let admin = admin.to_string();
    let (base, query) = match admin.split_once('?') {
        Some((base, query)) => (base.to_string(), format!("?{query}")),
        None => (admin.clone(), String::new()),
    };
    let server = base.rsplit_once('/').map(|(server, _)| server).unwrap_or(&base);
    format!("{server}/{database}{query}")
}

/// The template's name changes whenever a migration changes.
fn template_name() -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for migration in POSTGRES_MIGRATIONS.iter() {
        migration.version.hash(&mut hasher);
        migration.checksum.hash(&mut hasher);
    }
    format!("kiln_template_{:016x}", hasher.finish())
}

async fn ensure_template(admin: &mut PgConnection, admin_url: &str) -> String {
    let template = template_name();
    // Any constant works as the lock key as long as every test process uses the same.
    admin.execute("SELECT pg_advisory_lock(74203)").await.expect("advisory lock");
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(&template)
        .fetch_one(&mut *admin)
        .await
        .expect("query pg_database");
    if !exists {
        // Build under a scratch name and rename when complete, so a crash mid-build
        // never leaves a half-migrated template behind under the real name.
        let building = format!("{template}_building");
        admin.execute(format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)").as_str()).await.expect("drop scratch");
        admin.execute(format!("CREATE DATABASE {building}").as_str()).await.expect("create template");
        let db = Database::connect(&url_for(admin_url, &building), 2).await.expect("connect to template");
        db.migrate().await.expect("migrate template");
        db.close().await;
        // A closed connection's server process may still be exiting: a rename needs the
        // database to itself, so end any such session and try again.
        let rename = format!("ALTER DATABASE {building} RENAME TO {template}");
        let mut attempts = 0;
        while let Err(error) = admin.execute(rename.as_str()).await {
            attempts += 1;
            assert!(attempts < 100, "rename template: {error}");
            sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
                .bind(&building)
                .execute(&mut *admin)
                .await
                .expect("end sessions on the template");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    admin.execute("SELECT pg_advisory_unlock(74203)").await.expect("advisory unlock");
    template
}

/// A database that is dropped when this value is.
pub struct TestDb {
    pub db: Database,
    pub url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    Postgres { name: String, admin_url: String },
    Sqlite { _dir: tempfile::TempDir },
}

impl TestDb {
    /// The PostgreSQL database's name (`None` on SQLite).
    pub fn name(&self) -> Option<&str> {
        match &self.cleanup {
            Cleanup::Postgres { name, .. } => Some(name),
            Cleanup::Sqlite { .. } => None,
        }
    }

    pub async fn postgres() -> TestDb {
        Self::postgres_on(&admin_url()).await
    }

    /// A fresh database on the server `admin_url` names (another server than the
    /// suite's: a Patroni cluster's write port, a private instance).
    pub async fn postgres_on(admin_url: &str) -> TestDb {
        let mut admin = PgConnection::connect(admin_url)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {admin_url} is needed for this test: {e}"));
        let template = ensure_template(&mut admin, admin_url).await;
        let name = format!("kiln_test_{}", uuid::Uuid::new_v4().simple());
        admin
            .execute(format!("CREATE DATABASE {name} TEMPLATE {template}").as_str())
            .await
            .expect("create test database");
        admin.close().await.ok();
        let url = url_for(admin_url, &name);
        let db = Database::connect(&url, 16).await.expect("connect to test database");
        TestDb { db, url, cleanup: Cleanup::Postgres { name, admin_url: admin_url.to_string() } }
    }

    pub async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite:{}", dir.path().join("kiln.db").display());
        let db = Database::connect_and_migrate(&url, 8).await.expect("open sqlite");
        TestDb { db, url, cleanup: Cleanup::Sqlite { _dir: dir } }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Cleanup::Postgres { name, admin_url } = &self.cleanup else { return };
        let (name, admin_url) = (name.clone(), admin_url.clone());
        // Drop runs inside the test's runtime, which cannot be blocked on; a short-lived
        // runtime on its own thread does the async cleanup. FORCE ends the test's own
        // pooled connections.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async move {
                if let Ok(mut admin) = PgConnection::connect(&admin_url).await {
                    let _ = admin.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await;
                }
            });
        })
        .join();
    }
}
