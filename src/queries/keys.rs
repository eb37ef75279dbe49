//! API keys as authentication sees them: unrevoked keys by hash (REST `Bearer`) or by
//! id (the dashboard's session re-checks its key on every request).

use domain::keys::Role;
use domain::{ApiKeyId, TeamId};
use infrastructure::{db::Database, db_fetch_optional};

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
