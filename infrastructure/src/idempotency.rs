//! `idempotency_keys` (`migrations/*/0070_idempotency_keys.sql`): each Idempotency-Key,
//! per team, bound to the fingerprint of the request it first came with, and whether
//! that request is still running. Durable, so the rule holds across processes. Same SQL
//! on PostgreSQL and SQLite.

use chrono::{DateTime, Duration, Utc};

use crate::db::Database;
use crate::{db_execute, db_fetch_optional};

/// How long a key stays bound to its request (Stripe keeps keys for 24 hours).
pub const RETENTION_HOURS: i64 = 24;
/// A claim older than this whose request never finished (its process died) may be
/// taken over by a repeat.
pub const IN_FLIGHT_LEASE_SECS: i64 = 300;
/// Claims looked at per attempt before giving up (a row deleted or taken over between
/// the insert and the read is tried again).
const CLAIM_ATTEMPTS_MAX: u32 = 4;

/// One request carrying an Idempotency-Key.
#[derive(Debug, Clone)]
pub struct KeyedRequest<'a> {
    /// The team id, or `operator`.
    pub scope: &'a str,
    pub key: &'a str,
    /// Hex SHA-256 of method, path and canonical body.
    pub fingerprint: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub now: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// First use of the key (or a take-over of a dead claim): run the request, then
    /// [`finish`] it.
    Claimed,
    /// The same request ran before and finished: run it again (its result is
    /// idempotent); nothing to finish.
    Repeat,
    /// The same request is still running elsewhere.
    InFlight,
    /// The key was first used for another request.
    Mismatch { method: String, path: String },
}

type Row = (String, String, String, String, DateTime<Utc>);

/// Binds the request's key to its fingerprint, or says why it cannot run now.
pub async fn claim(db: &Database, request: &KeyedRequest<'_>) -> Result<Claim, sqlx::Error> {
    let KeyedRequest { scope, key, fingerprint, method, path, now } = *request;
    let forgotten_before = now - Duration::hours(RETENTION_HOURS);
    for _ in 0..CLAIM_ATTEMPTS_MAX {
        // A key's first use claims it in this one statement (most keyed requests).
        let inserted = db_execute!(
            db,
            "INSERT INTO idempotency_keys (scope, key, fingerprint, method, path, state, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, 'in_flight', $6, $6) ON CONFLICT (scope, key) DO NOTHING",
            scope,
            key,
            fingerprint,
            method,
            path,
            now
        )?;
        if inserted == 1 {
            return Ok(Claim::Claimed);
        }
        // Bound already: a binding past retention is forgotten, and the key claimed anew
        // on the next turn.
        let forgotten =
            db_execute!(db, "DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2 AND created_at < $3", scope, key, forgotten_before)?;
        if forgotten == 1 {
            continue;
        }
        let row = db_fetch_optional!(
            db,
            Row,
            "SELECT fingerprint, method, path, state, updated_at FROM idempotency_keys WHERE scope = $1 AND key = $2",
            scope,
            key
        )?;
        let Some((bound, first_method, first_path, state, updated_at)) = row else { continue };
        if bound != fingerprint {
            return Ok(Claim::Mismatch { method: first_method, path: first_path });
        }
        if state == "done" {
            return Ok(Claim::Repeat);
        }
        if updated_at > now - Duration::seconds(IN_FLIGHT_LEASE_SECS) {
            return Ok(Claim::InFlight);
        }
        let taken = db_execute!(
            db,
            "UPDATE idempotency_keys SET updated_at = $3 WHERE scope = $1 AND key = $2 AND state = 'in_flight' AND updated_at = $4",
            scope,
            key,
            now,
            updated_at
        )?;
        if taken == 1 {
            return Ok(Claim::Claimed);
        }
    }
    Ok(Claim::InFlight)
}

/// How a claimed request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// It ran (whatever its answer): the key stays bound to it.
    Done,
    /// It was refused before doing anything (a 4xx): the key is free again.
    Release,
}

pub async fn finish(db: &Database, scope: &str, key: &str, how: Finish, now: DateTime<Utc>) -> Result<(), sqlx::Error> {
    match how {
        Finish::Done => {
            db_execute!(db, "UPDATE idempotency_keys SET state = 'done', updated_at = $3 WHERE scope = $1 AND key = $2", scope, key, now)?
        }
        Finish::Release => {
            db_execute!(db, "DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2 AND state = 'in_flight'", scope, key)?
        }
    };
    Ok(())
}

/// [`finish`], tried again (jittered backoff, for up to [`FINISH_RETRY_FOR`]) while the
/// database cannot be reached: a claim left in flight makes every repeat of its request
/// wait for [`IN_FLIGHT_LEASE_SECS`] (409), so a client retrying after a 503 would be
/// turned away long after the database is back.
pub async fn finish_when_reachable(db: &Database, scope: &str, key: &str, how: Finish, now: DateTime<Utc>) -> Result<(), sqlx::Error> {
    use backon::{ExponentialBuilder, Retryable};
    let backoff = ExponentialBuilder::default()
        .with_min_delay(std::time::Duration::from_millis(50))
        .with_max_delay(std::time::Duration::from_secs(2))
        .with_jitter()
        .with_total_delay(Some(FINISH_RETRY_FOR))
        .without_max_times();
    (|| finish(db, scope, key, how, now)).retry(backoff).when(crate::db::is_unreachable).await
}

/// Claims this process could not finish because the database was away (or whose claim
/// may have committed with its answer lost), with how each is to be finished. They are
/// finished in the background once the database is back; a repeat of the request that
/// reaches this process first, and finds its claim still in flight, finishes it at once
/// instead of being turned away with 409 (`take`). Finishing is always safe to do twice.
#[derive(Debug, Clone, Default)]
pub struct Unfinished(std::sync::Arc<std::sync::Mutex<std::collections::HashMap<(String, String), Finish>>>);

impl Unfinished {
    pub fn add(&self, scope: &str, key: &str, how: Finish) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert((scope.to_string(), key.to_string()), how);
    }

    /// How the claim of `(scope, key)` is to be finished, if this process holds it
    /// unfinished; it is no longer held afterwards.
    pub fn take(&self, scope: &str, key: &str) -> Option<Finish> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&(scope.to_string(), key.to_string()))
    }
}

/// How long [`finish_when_reachable`] keeps trying.
pub const FINISH_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// Deletes the bindings past the retention window; returns how many.
pub async fn forget_expired(db: &Database, now: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    db_execute!(db, "DELETE FROM idempotency_keys WHERE created_at < $1", now - Duration::hours(RETENTION_HOURS))
}
