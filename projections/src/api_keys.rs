//! Inline read model of API keys (`api_keys`), looked up by hash on every request.

use application::event_store::StoredEvent;
use async_trait::async_trait;
use domain::keys::{ApiKey, ApiKeyEvent};
use infrastructure::event_store::{InlineProjection, ProjectionError, Tx};
use infrastructure::tx_execute;

use crate::decode;

pub struct ApiKeys;

pub const NAME: &str = "api_keys";
pub const TABLES: &[&str] = &["api_keys"];

#[async_trait]
impl InlineProjection for ApiKeys {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn apply(&self, tx: &mut Tx<'_>, events: &[StoredEvent]) -> Result<(), ProjectionError> {
        for stored in events.iter().filter(|e| e.aggregate_type == <ApiKey as cqrs_es::Aggregate>::TYPE) {
            match decode::<ApiKey>(stored)? {
                ApiKeyEvent::ApiKeyIssued { key_id, team_id, role, name, key_hash, occurred_at } => {
                    tx_execute!(
                        tx,
                        "INSERT INTO api_keys (key_id, team_id, role, name, key_hash, created_at) \
                         VALUES ($1, $2, $3, $4, $5, $6)",
                        key_id.to_string(),
                        team_id.to_string(),
                        role.as_str(),
                        name,
                        key_hash,
                        occurred_at
                    )?;
                }
                ApiKeyEvent::ApiKeyRevoked { key_id, occurred_at, .. } => {
                    tx_execute!(
                        tx,
                        "UPDATE api_keys SET revoked_at = $2 WHERE key_id = $1 AND revoked_at IS NULL",
                        key_id.to_string(),
                        occurred_at
                    )?;
                }
            }
        }
        Ok(())
    }
}
