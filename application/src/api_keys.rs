//! API keys: issue (the key is returned once; only its SHA-256 is recorded), revoke,
//! and the hashing used to authenticate requests.

use domain::keys::{ApiKey, ApiKeyCommand, ApiKeyError, ApiKeyRequest, Role};
use domain::{ApiKeyId, TeamId};
use rand::RngCore;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::aggregate_store::{AggregateStore, CommandError};
use crate::clock::Clock;

/// Every key starts with this, so leaked keys are easy to recognise and scan for.
pub const KEY_PREFIX: &str = "kiln_";
/// 32 random bytes: guessing is hopeless, so a fast hash (not a password hash) suffices
/// and lets a request find its key by hash with one index lookup.
const KEY_SECRET_BYTES: usize = 32;

pub type ApiKeyCommandError = CommandError<ApiKeyError>;

/// Lower-case hex SHA-256 of a presented key.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A new random key starting with `prefix` (team keys, operator keys).
pub fn new_secret(prefix: &str) -> String {
    let mut bytes = [0u8; KEY_SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

/// A freshly issued key: `secret` is shown to its owner once and never stored.
#[derive(Debug, Clone)]
pub struct IssuedKey {
    pub key_id: ApiKeyId,
    pub team_id: TeamId,
    pub role: Role,
    pub secret: String,
}

pub async fn issue(
    aggregates: &AggregateStore,
    clock: &dyn Clock,
    team_id: TeamId,
    role: Role,
    name: String,
    metadata: &Value,
) -> Result<IssuedKey, ApiKeyCommandError> {
    let secret = new_secret(KEY_PREFIX);
    let key_id = ApiKeyId::new(uuid::Uuid::now_v7());
    let command = ApiKeyCommand::Issue { team_id, role, name, key_hash: hash_key(&secret), now: clock.now() };
    aggregates
        .execute::<ApiKey>(&key_id.to_string(), ApiKeyRequest { key_id, command }, &(), metadata)
        .await?;
    Ok(IssuedKey { key_id, team_id, role, secret })
}

/// Revokes `key_id` if it belongs to `team_id`; a key of another team is "not found".
pub async fn revoke(
    aggregates: &AggregateStore,
    clock: &dyn Clock,
    team_id: TeamId,
    key_id: ApiKeyId,
    metadata: &Value,
) -> Result<(), ApiKeyCommandError> {
    let loaded = aggregates.load::<ApiKey>(&key_id.to_string()).await?;
    if loaded.aggregate.team_id != Some(team_id) {
        return Err(CommandError::Rejected(ApiKeyError::NotFound));
    }
    let request = ApiKeyRequest { key_id, command: ApiKeyCommand::Revoke { now: clock.now() } };
    aggregates.execute::<ApiKey>(&key_id.to_string(), request, &(), metadata).await?;
    Ok(())
}
