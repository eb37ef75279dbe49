//! Inline read model of operators (`operators`), looked up by key hash on every admin
//! request and by id on every console page.

use application::event_store::StoredEvent;
use async_trait::async_trait;
use domain::operators::{Operator, OperatorEvent};
use infrastructure::event_store::{InlineProjection, ProjectionError, Tx};
use infrastructure::tx_execute;

use crate::decode;

pub struct Operators;

pub const NAME: &str = "operators";
pub const TABLES: &[&str] = &["operators"];

#[async_trait]
impl InlineProjection for Operators {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn apply(&self, tx: &mut Tx<'_>, events: &[StoredEvent]) -> Result<(), ProjectionError> {
        for stored in events.iter().filter(|e| e.aggregate_type == <Operator as cqrs_es::Aggregate>::TYPE) {
            match decode::<Operator>(stored)? {
                OperatorEvent::OperatorCreated { operator_id, name, role, key_hash, occurred_at } => {
                    tx_execute!(
                        tx,
                        "INSERT INTO operators (operator_id, name, role, key_hash, created_at) VALUES ($1, $2, $3, $4, $5)",
                        operator_id.to_string(),
                        name,
                        role.as_str(),
                        key_hash,
                        occurred_at
                    )?;
                }
                OperatorEvent::OperatorRevoked { operator_id, occurred_at } => {
                    tx_execute!(
                        tx,
                        "UPDATE operators SET revoked_at = $2 WHERE operator_id = $1 AND revoked_at IS NULL",
                        operator_id.to_string(),
                        occurred_at
                    )?;
                }
            }
        }
        Ok(())
    }
}
