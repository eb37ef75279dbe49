//! API keys as authentication sees them: unrevoked keys by hash (REST `Bearer`) or by
//! id (the dashboard's session re-checks its key on every request).

use chrono::{DateTime, Utc};
use domain::keys::Role;
use domain::{ApiKeyId, TeamId};
use infrastructure::{db::Database, db_execute, db_fetch_optional};

use super::QueryError;

/// An unrevoked key of a team.
#[derive(Debug, Clone, Copy)]
pub struct ActiveKey {
    pub team_id: TeamId,
    pub key_id: ApiKeyId,
    pub role: Role,
}

fn parse(row: Option<(String, String, String)>) -> Result<Option<ActiveKey>, QueryError> {
    let Some((team_id, key_id, role)) = row else { return Ok(None) };
    match (team_id.parse::<TeamId>(), key_id.parse::<ApiKeyId>(), Role::parse(&role)) {
        (Ok(team_id), Ok(key_id), Some(role)) => Ok(Some(ActiveKey { team_id, key_id, role })),
        _ => Err(QueryError(sqlx::Error::Decode("api_keys row does not parse".into()))),
    }
}

/// How long a key found by its hash is trusted without looking again: a busy client's
/// requests then cost no lookup each. A key revoked through this process is forgotten at
/// once ([`KeyCache::forget_all`]); through another process sharing the database, it
/// stops working within this time.
pub const KEY_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(1);
/// Keys remembered at most; the memory starts over when full.
const KEY_CACHE_ENTRIES_MAX: usize = 10_000;

/// Recently found unrevoked keys, by hash (see [`KEY_CACHE_TTL`]). Only hashes are held.
#[derive(Default)]
pub struct KeyCache {
    entries: std::sync::Mutex<std::collections::HashMap<String, (ActiveKey, std::time::Instant)>>,
}

impl KeyCache {
    /// The unrevoked key whose SHA-256 (hex) is `key_hash`, from memory when it was found
    /// less than [`KEY_CACHE_TTL`] ago.
    pub async fn by_hash(&self, db: &Database, key_hash: &str) -> Result<Option<ActiveKey>, QueryError> {
        Ok(self.lookup(db, key_hash).await?.0)
    }

    /// [`by_hash`](Self::by_hash) for a request the key authenticates: when the key was
    /// looked up in the database (at most once per [`KEY_CACHE_TTL`] per key and
    /// process), its last use is recorded as `now`, in the background, so the request
    /// does not wait for the write. The keys page shows it.
    pub async fn authenticate(&self, db: &Database, key_hash: &str, now: DateTime<Utc>) -> Result<Option<ActiveKey>, QueryError> {
        let (found, looked_up) = self.lookup(db, key_hash).await?;
        if let (Some(key), true) = (found, looked_up) {
            let db = db.clone();
            tokio::spawn(async move {
                if let Err(error) = record_use(&db, key, now).await {
                    tracing::warn!(%error, key_id = %key.key_id, "the key's last use was not recorded");
                }
            });
        }
        Ok(found)
    }

    /// The key, and whether it was read from the database (not from memory).
    async fn lookup(&self, db: &Database, key_hash: &str) -> Result<(Option<ActiveKey>, bool), QueryError> {
        if let Some(key) = self.fresh(key_hash) {
            return Ok((Some(key), false));
        }
        let found = by_hash(db, key_hash).await?;
        if let Some(key) = found {
            let mut entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if entries.len() >= KEY_CACHE_ENTRIES_MAX {
                entries.clear();
            }
            entries.insert(key_hash.to_string(), (key, std::time::Instant::now()));
        }
        Ok((found, true))
    }

    fn fresh(&self, key_hash: &str) -> Option<ActiveKey> {
        let entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        entries.get(key_hash).filter(|(_, at)| at.elapsed() < KEY_CACHE_TTL).map(|(key, _)| *key)
    }

    /// Forgets every key: called when this process revokes one.
    pub fn forget_all(&self) {
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clear();
    }
}

/// The unrevoked key whose SHA-256 (hex) is `key_hash`.
pub async fn by_hash(db: &Database, key_hash: &str) -> Result<Option<ActiveKey>, QueryError> {
    let row = db_fetch_optional!(
        db,
        (String, String, String),
        "SELECT team_id, key_id, role FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
        key_hash
    )?;
    parse(row)
}

/// `key_id` of `team`, if it is not revoked.
pub async fn active(db: &Database, team: TeamId, key_id: ApiKeyId) -> Result<Option<ActiveKey>, QueryError> {
    let row = db_fetch_optional!(
        db,
        (String, String, String),
        "SELECT team_id, key_id, role FROM api_keys WHERE key_id = $1 AND team_id = $2 AND revoked_at IS NULL",
        key_id.to_string(),
        team.to_string()
    )?;
    parse(row)
}

/// Records that `key` authenticated a request at `at` (a later time only ever replaces
/// an earlier one, whatever order concurrent writes land in).
pub async fn record_use(db: &Database, key: ActiveKey, at: DateTime<Utc>) -> Result<(), QueryError> {
    db_execute!(
        db,
        "INSERT INTO api_key_last_use (key_id, team_id, last_used_at) VALUES ($1, $2, $3) \
         ON CONFLICT (key_id) DO UPDATE SET last_used_at = excluded.last_used_at \
         WHERE api_key_last_use.last_used_at < excluded.last_used_at",
        key.key_id.to_string(),
        key.team_id.to_string(),
        at
    )?;
    Ok(())
}

/// One of a team's API keys as listed (never the key itself).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct KeyView {
    pub key_id: String,
    pub role: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// When the key last authenticated an API request (to within a second or so); absent
    /// if it never has.
    pub last_used_at: Option<DateTime<Utc>>,
}

/// Every key of `team`, revoked ones too, oldest first.
pub async fn of_team(db: &Database, team: TeamId) -> Result<Vec<KeyView>, QueryError> {
    Ok(infrastructure::db_fetch_all!(
        db,
        KeyView,
        "SELECT k.key_id, k.role, k.name, k.created_at, k.revoked_at, u.last_used_at \
         FROM api_keys k LEFT JOIN api_key_last_use u ON u.key_id = k.key_id \
         WHERE k.team_id = $1 ORDER BY k.created_at, k.key_id",
        team.to_string()
    )?)
}
