//! Reads from a replica (`database.read_url`, e.g. HAProxy's read port in front of
//! Patroni's replicas), with read-your-writes: a write's response carries a
//! [`ConsistencyToken`] (a WAL position at or after its commit), and a read presenting it
//! is served by the replica only once the replica has replayed that far — waiting at most
//! `database.read_wait_ms` — else by the primary. Without a token a read goes to the
//! replica (it may be a moment behind); without a replica configured, everything reads
//! the primary and no token is made.
//!
//! A replica that does not answer (unreachable, no replica healthy behind the proxy) is
//! left alone for a few seconds: reads go to the primary meanwhile. It is found out by a
//! read with a token, or by a probe every second (reads without a token go straight to
//! the replica and would otherwise fail until it is back).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::db::{Database, DbError};

/// How often a read with a token looks again whether the replica has caught up.
const CATCH_UP_POLL: Duration = Duration::from_millis(5);
/// After a replica fails, reads go to the primary this long.
const REPLICA_REST: Duration = Duration::from_secs(5);
/// How often the replica is asked whether it answers (`SELECT 1`), so that reads without a
/// token, which go straight to it, stop going there soon after it fails.
const REPLICA_PROBE: Duration = Duration::from_secs(1);

/// A position in the primary's write-ahead log (`pg_lsn`, e.g. `16/B374D848`), as a
/// write's response hands it out and a read presents it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConsistencyToken(u64);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a consistency token is a WAL position such as 16/B374D848")]
pub struct InvalidToken;

impl ConsistencyToken {
    pub fn parse(text: &str) -> Result<Self, InvalidToken> {
        let (high, low) = text.trim().split_once('/').ok_or(InvalidToken)?;
        let part = |hex: &str| if hex.is_empty() || hex.len() > 8 { Err(InvalidToken) } else { u32::from_str_radix(hex, 16).map_err(|_| InvalidToken) };
        Ok(Self((u64::from(part(high)?) << 32) | u64::from(part(low)?)))
    }
}

impl std::fmt::Display for ConsistencyToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// Where reads go: the primary, or a replica when one is configured.
#[derive(Clone, Debug)]
pub struct ReadSide {
    primary: Database,
    replica: Option<Replica>,
}

#[derive(Clone, Debug)]
struct Replica {
    db: Database,
    wait_max: Duration,
    /// Milliseconds since `epoch` until which the replica is left alone (0: never failed).
    resting_until_ms: Arc<AtomicU64>,
    epoch: Instant,
}

/// Which server a read went to, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    Replica,
    Primary,
}

impl ReadFrom {
    pub fn as_str(self) -> &'static str {
        match self {
            ReadFrom::Replica => "replica",
            ReadFrom::Primary => "primary",
        }
    }
}

impl ReadSide {
    /// Every read from `primary`.
    pub fn primary_only(primary: Database) -> Self {
        Self { primary, replica: None }
    }

    /// Reads from the PostgreSQL replica at `read_url` where a read allows it. The
    /// replica's pool lends read-only connections (it is one), and gives up on a
    /// connection after `acquire_timeout`.
    pub fn with_replica(primary: Database, read_url: &str, max_connections: u32, acquire_timeout: Duration, wait_max: Duration) -> Result<Self, DbError> {
        if !matches!(primary, Database::Postgres(_)) {
            return Err(DbError::UnsupportedUrl);
        }
        let db = Database::connect_replica(read_url, max_connections, acquire_timeout)?;
        let replica = Replica { db, wait_max, resting_until_ms: Arc::new(AtomicU64::new(0)), epoch: Instant::now() };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(probe(replica.db.clone(), Arc::downgrade(&replica.resting_until_ms), replica.epoch, acquire_timeout));
        }
        Ok(Self { primary, replica: Some(replica) })
    }

    pub fn has_replica(&self) -> bool {
        self.replica.is_some()
    }

    /// The token of everything committed on the primary so far (`pg_current_wal_lsn()`),
    /// for a write's response; `None` without a replica (nothing to wait for).
    pub async fn token(&self) -> Option<ConsistencyToken> {
        let (Some(_), Database::Postgres(pool)) = (&self.replica, &self.primary) else { return None };
        let lsn: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text").fetch_one(pool).await.ok()?;
        ConsistencyToken::parse(&lsn).ok()
    }

    /// The database a read presenting `token` (if any) goes to, and which it is.
    pub async fn for_read(&self, token: Option<ConsistencyToken>) -> (&Database, ReadFrom) {
        let Some(replica) = self.replica.as_ref().filter(|r| !r.resting()) else { return (&self.primary, ReadFrom::Primary) };
        let Some(token) = token else { return (&replica.db, ReadFrom::Replica) };
        let deadline = Instant::now() + replica.wait_max;
        loop {
            match replica.replayed(token).await {
                Ok(true) => return (&replica.db, ReadFrom::Replica),
                Ok(false) if Instant::now() < deadline => tokio::time::sleep(CATCH_UP_POLL).await,
                Ok(false) => return (&self.primary, ReadFrom::Primary),
                Err(error) => {
                    tracing::warn!(%error, "the read replica cannot be reached; reading the primary");
                    replica.rest();
                    return (&self.primary, ReadFrom::Primary);
                }
            }
        }
    }

}

/// Asks the replica every [`REPLICA_PROBE`] whether it answers; while it does not, it is
/// left alone (reads go to the primary). Ends once the [`ReadSide`] is gone.
async fn probe(db: Database, resting_until_ms: std::sync::Weak<AtomicU64>, epoch: Instant, timeout: Duration) {
    let Database::Postgres(pool) = db else { return };
    loop {
        tokio::time::sleep(REPLICA_PROBE).await;
        let Some(resting_until_ms) = resting_until_ms.upgrade() else { return };
        let answer = tokio::time::timeout(timeout, sqlx::query("SELECT 1").execute(&pool)).await;
        if !matches!(answer, Ok(Ok(_))) {
            tracing::warn!("the read replica does not answer; reading the primary");
            resting_until_ms.store(epoch.elapsed().as_millis() as u64 + REPLICA_REST.as_millis() as u64, Ordering::Relaxed);
        }
    }
}

impl Replica {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn resting(&self) -> bool {
        self.resting_until_ms.load(Ordering::Relaxed) > self.now_ms()
    }

    fn rest(&self) {
        self.resting_until_ms.store(self.now_ms() + REPLICA_REST.as_millis() as u64, Ordering::Relaxed);
    }

    /// Whether the replica has replayed the primary's WAL up to `token`. A server that is
    /// not in recovery (a primary behind the read port) has everything it committed.
    async fn replayed(&self, token: ConsistencyToken) -> Result<bool, sqlx::Error> {
        let Database::Postgres(pool) = &self.db else { return Ok(false) };
        sqlx::query_scalar(
            "SELECT CASE WHEN pg_is_in_recovery() THEN COALESCE(pg_last_wal_replay_lsn() >= $1::pg_lsn, false) ELSE true END",
        )
        .bind(token.to_string())
        .fetch_one(pool)
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_wal_positions() {
        for (text, shown) in [("16/B374D848", "16/B374D848"), ("0/0", "0/0"), ("ffffffff/1", "FFFFFFFF/1"), (" 0/3000060 ", "0/3000060")] {
            assert_eq!(ConsistencyToken::parse(text).map(|t| t.to_string()), Ok(shown.to_string()), "{text}");
        }
        for bad in ["", "16", "/1", "1/", "g/1", "123456789/0", "1/2/3", "-1/0"] {
            assert_eq!(ConsistencyToken::parse(bad), Err(InvalidToken), "{bad}");
        }
        assert!(ConsistencyToken::parse("1/0").unwrap() > ConsistencyToken::parse("0/FFFFFFFF").unwrap());
    }
}
