//! Health of pooled PostgreSQL connections: a connection that broke, or that reaches a
//! server which can no longer take writes (a primary demoted by a failover, reached over a
//! connection opened before it, or a new connection routed to it before the proxy in
//! front noticed), is dropped before use instead of failing the statement it was lent for.
//!
//! Writable pools check each new connection once (`after_connect`), and each pooled
//! connection before it is lent (`before_acquire`): nothing for a connection back in the
//! pool for less than [`ALIVE_BYPASS`] (it just answered a statement: under load that is
//! every lending, and a ping there was a second round trip per statement), a ping for one
//! idle longer, and `SHOW transaction_read_only` (also one round trip) for connections
//! idle a while or while connection trouble was seen lately — so the check that matters
//! after a failover costs nothing extra the rest of the time. A connection that broke
//! within the bypass window fails the statement it is lent for, as one in use would; that
//! failure is connection trouble ([`crate::db::is_unreachable`]), after which every
//! connection is checked again before it is lent. (HikariCP skips its check the same way:
//! `aliveBypassWindowMs`, 500 ms.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use sqlx::pool::PoolConnectionMetadata;
use sqlx::postgres::PgConnection;
use sqlx::Connection;

/// A pooled connection back in the pool for less than this is lent unchecked.
pub const ALIVE_BYPASS: Duration = Duration::from_millis(500);
/// A pooled connection idle this long is checked for writability before it is lent.
const IDLE_RECHECK_AFTER: Duration = Duration::from_secs(5);
/// After connection trouble is seen, every connection is checked for this long.
const TROUBLE_RECHECK_FOR: Duration = Duration::from_secs(60);

/// Milliseconds since [`epoch`] until which every lent connection is checked (0: none).
static RECHECK_UNTIL_MS: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

/// Records that a connection failed the way a restart or failover makes them fail: the
/// pools check each connection's writability before lending it, for a while.
pub fn connection_trouble_seen() {
    RECHECK_UNTIL_MS.fetch_max(now_ms() + TROUBLE_RECHECK_FOR.as_millis() as u64, Ordering::Relaxed);
}

fn rechecking() -> bool {
    RECHECK_UNTIL_MS.load(Ordering::Relaxed) > now_ms()
}

/// Whether the server behind `conn` takes writes now (a hot standby answers `on`; so does
/// a server whose transactions default to read-only).
async fn writable(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    let read_only: String = sqlx::query_scalar("SHOW transaction_read_only").fetch_one(conn).await?;
    Ok(read_only == "off")
}

/// `after_connect` of a writable pool: a new connection to a read-only server fails, so
/// the pool tries again (until its acquire timeout: the caller then answers 503).
pub fn refuse_read_only<'c>(conn: &'c mut PgConnection, _: PoolConnectionMetadata) -> BoxFuture<'c, Result<(), sqlx::Error>> {
    Box::pin(async move {
        if writable(conn).await? {
            return Ok(());
        }
        connection_trouble_seen();
        Err(sqlx::Error::Protocol("the server is read-only (a standby, or a primary being demoted)".into()))
    })
}

/// What is asked of a pooled connection before it is lent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LendCheck {
    /// Nothing: it answered a statement moments ago.
    None,
    /// A ping: it still answers.
    Ping,
    /// `SHOW transaction_read_only`: it still answers, and the server takes writes.
    Writable,
}

/// The check for a connection idle for `idle_for`, with or without trouble seen lately;
/// `writes`: the pool is a writable one (a replica's pool never asks for writability).
fn lend_check(idle_for: Duration, rechecking: bool, writes: bool) -> LendCheck {
    let stale = rechecking || idle_for >= IDLE_RECHECK_AFTER;
    if writes && stale {
        LendCheck::Writable
    } else if stale || idle_for >= ALIVE_BYPASS {
        LendCheck::Ping
    } else {
        LendCheck::None
    }
}

/// `before_acquire` of a replica's pool: a ping for a connection idle longer than
/// [`ALIVE_BYPASS`], or for every one while connection trouble was seen lately.
pub fn lend_if_alive<'c>(conn: &'c mut PgConnection, meta: PoolConnectionMetadata) -> BoxFuture<'c, Result<bool, sqlx::Error>> {
    Box::pin(async move {
        if lend_check(meta.idle_for, rechecking(), false) != LendCheck::None {
            conn.ping().await?;
        }
        Ok(true)
    })
}

/// `before_acquire` of a writable pool: `Ok(false)` or an error drops the connection
/// (the pool then lends or opens another).
pub fn lend_if_healthy<'c>(conn: &'c mut PgConnection, meta: PoolConnectionMetadata) -> BoxFuture<'c, Result<bool, sqlx::Error>> {
    Box::pin(async move {
        match lend_check(meta.idle_for, rechecking(), true) {
            LendCheck::None => return Ok(true),
            LendCheck::Ping => {
                conn.ping().await?;
                return Ok(true);
            }
            LendCheck::Writable => {}
        }
        let writable = writable(conn).await?;
        if !writable {
            connection_trouble_seen();
            tracing::warn!("a pooled connection reaches a read-only server; dropped");
        }
        Ok(writable)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_that_just_answered_is_lent_unchecked_unless_trouble_was_seen() {
        let just = Duration::from_millis(3);
        assert_eq!(lend_check(just, false, true), LendCheck::None);
        assert_eq!(lend_check(just, false, false), LendCheck::None);
        assert_eq!(lend_check(just, true, true), LendCheck::Writable);
        assert_eq!(lend_check(just, true, false), LendCheck::Ping);
    }

    #[test]
    fn idle_connections_are_pinged_then_checked_for_writes() {
        assert_eq!(lend_check(ALIVE_BYPASS - Duration::from_millis(1), false, true), LendCheck::None);
        assert_eq!(lend_check(ALIVE_BYPASS, false, true), LendCheck::Ping);
        assert_eq!(lend_check(IDLE_RECHECK_AFTER - Duration::from_millis(1), false, true), LendCheck::Ping);
        assert_eq!(lend_check(IDLE_RECHECK_AFTER, false, true), LendCheck::Writable);
        assert_eq!(lend_check(IDLE_RECHECK_AFTER, false, false), LendCheck::Ping);
    }
}
