//! The scratch database a run works in: created through the admin URL with a random name,
//! dropped at the end, so a run never touches existing data and leaves nothing behind.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};

const DROP_CONNECT_ATTEMPTS_MAX: u32 = 10;
const DROP_CONNECT_RETRY_DELAY: Duration = Duration::from_secs(1);

pub struct ScratchDb {
    admin_url: String,
    pub name: String,
    /// The admin URL with the database swapped for the scratch one.
    pub url: String,
}

/// Runs `measure` on a fresh scratch database (its URL) with a storage directory named
/// after it, removes both whatever the outcome, and prints the lines it returns.
pub async fn measure_and_print<F, Fut>(admin_url: &str, measure: F) -> anyhow::Result<()>
where
    F: FnOnce(String, std::path::PathBuf) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Vec<String>>>,
{
    let scratch = ScratchDb::create(admin_url).await?;
    eprintln!("scratch database {}", scratch.name);
    let storage = std::env::temp_dir().join(&scratch.name);
    let outcome = measure(scratch.url.clone(), storage.clone()).await;
    let _ = std::fs::remove_dir_all(&storage);
    scratch.drop_database().await?;
    for line in outcome? {
        println!("{line}");
    }
    Ok(())
}

impl ScratchDb {
    /// Creates `kiln_bench_<random>` on the server `admin_url` points at.
    pub async fn create(admin_url: &str) -> anyhow::Result<Self> {
        ensure_loopback(admin_url)?;
        let name = format!("kiln_bench_{:016x}", rand::random::<u64>());
        let url = with_database(admin_url, &name)?;
        let mut admin = PgConnection::connect(admin_url).await.context("cannot connect with the admin URL")?;
        // The name is ours (hex digits only), so formatting it into DDL is safe.
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .with_context(|| format!("cannot create database {name}"))?;
        admin.close().await.ok();
        Ok(Self { admin_url: admin_url.to_string(), name, url })
    }

    /// Drops the database, ending any connection still open to it.
    pub async fn drop_database(self) -> anyhow::Result<()> {
        let mut admin = connect_with_retries(&self.admin_url).await?;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))
            .execute(&mut admin)
            .await
            .with_context(|| format!("cannot drop database {}", self.name))?;
        admin.close().await.ok();
        Ok(())
    }
}

/// Connects for the drop, retrying a few times: a run that failed because the server ran
/// out of connections (other clients share it) must still clean up after itself.
async fn connect_with_retries(url: &str) -> anyhow::Result<PgConnection> {
    let mut attempt = 1;
    loop {
        match PgConnection::connect(url).await {
            Ok(connection) => return Ok(connection),
            Err(error) if attempt >= DROP_CONNECT_ATTEMPTS_MAX => {
                return Err(error).context("cannot connect with the admin URL");
            }
            Err(_) => {
                tokio::time::sleep(DROP_CONNECT_RETRY_DELAY).await;
                attempt += 1;
            }
        }
    }
}

/// The benchmark creates and drops databases and loads the server flat out: it must only
/// ever do that to a server on this machine.
fn ensure_loopback(url: &str) -> anyhow::Result<()> {
    let options = PgConnectOptions::from_str(url).context("invalid --database-url")?;
    let host = options.get_host();
    let loopback = ["127.0.0.1", "localhost", "::1", "[::1]"].contains(&host);
    anyhow::ensure!(loopback, "--database-url must point at 127.0.0.1 (got host {host:?})");
    Ok(())
}

/// `postgres://user@host:port/anything?opts` → `postgres://user@host:port/{database}?opts`.
fn with_database(url: &str, database: &str) -> anyhow::Result<String> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let authority_start = base.find("://").context("database URL has no scheme")? + 3;
    let authority_end = base[authority_start..].find('/').map_or(base.len(), |i| authority_start + i);
    Ok(format!("{}/{database}{query}", &base[..authority_end]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swaps_the_database_and_keeps_the_rest() {
        let check = |url: &str, expected: &str| assert_eq!(with_database(url, "db").unwrap(), expected);
        check("postgres://postgres@127.0.0.1:5432/postgres", "postgres://postgres@127.0.0.1:5432/db");
        check("postgres://127.0.0.1", "postgres://127.0.0.1/db");
        check("postgres://u:p@127.0.0.1/x?sslmode=disable", "postgres://u:p@127.0.0.1/db?sslmode=disable");
    }

    #[test]
    fn refuses_remote_servers() {
        assert!(ensure_loopback("postgres://postgres@127.0.0.1:5432/postgres").is_ok());
        assert!(ensure_loopback("postgres://postgres@db.example.com/postgres").is_err());
    }
}
