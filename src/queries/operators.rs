//! Operators as authentication sees them: an unrevoked operator by key hash (`/api/admin`
//! `Bearer`, the console's sign-in) or by id (the console's session re-checks its
//! operator on every request), the configured operator key standing for the bootstrap
//! admin; and the list `kiln operator list` prints.

use application::api_keys::hash_key;
use application::operators::OperatorIdentity;
use chrono::{DateTime, Utc};
use domain::operators::OperatorRole;
use domain::OperatorId;
use infrastructure::{db::Database, db_fetch_all, db_fetch_optional};
use sha2::{Digest, Sha256};

use super::QueryError;

fn parse(row: Option<(String, String, String)>) -> Result<Option<OperatorIdentity>, QueryError> {
    let Some((id, name, role)) = row else { return Ok(None) };
    match (id.parse::<OperatorId>(), OperatorRole::parse(&role)) {
        (Ok(id), Some(role)) => Ok(Some(OperatorIdentity { id, name, role })),
        _ => Err(QueryError(sqlx::Error::Decode("operators row does not parse".into()))),
    }
}

/// Who presents `key`: the bootstrap admin for the configured operator key (`bootstrap`
/// holds its SHA-256; `None`: no bootstrap), else an unrevoked operator's key.
pub async fn authenticate(db: &Database, bootstrap: Option<&[u8; 32]>, key: &str) -> Result<Option<OperatorIdentity>, QueryError> {
    // Comparing digests, not keys: the comparison's timing says nothing about the key.
    let presented: [u8; 32] = Sha256::digest(key.as_bytes()).into();
    if bootstrap == Some(&presented) {
        return Ok(Some(OperatorIdentity::bootstrap()));
    }
    let row = db_fetch_optional!(
        db,
        (String, String, String),
        "SELECT operator_id, name, role FROM operators WHERE key_hash = $1 AND revoked_at IS NULL",
        hash_key(key)
    )?;
    parse(row)
}

/// The operator `id` if unrevoked (the bootstrap while a bootstrap key is configured).
pub async fn active(db: &Database, bootstrap_configured: bool, id: OperatorId) -> Result<Option<OperatorIdentity>, QueryError> {
    if id == OperatorId::BOOTSTRAP {
        return Ok(bootstrap_configured.then(OperatorIdentity::bootstrap));
    }
    let row = db_fetch_optional!(
        db,
        (String, String, String),
        "SELECT operator_id, name, role FROM operators WHERE operator_id = $1 AND revoked_at IS NULL",
        id.to_string()
    )?;
    parse(row)
}

/// An operator as listed.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct OperatorRow {
    pub operator_id: String,
    pub name: String,
    pub role: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Every operator, oldest first (operators are few: people, not machines).
pub async fn list(db: &Database) -> Result<Vec<OperatorRow>, QueryError> {
    Ok(db_fetch_all!(
        db,
        OperatorRow,
        "SELECT operator_id, name, role, created_at, revoked_at FROM operators ORDER BY created_at, operator_id LIMIT 1000"
    )?)
}
