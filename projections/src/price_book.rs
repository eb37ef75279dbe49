//! Inline projection of the PriceBook stream into `credit_pricing_config`: each version
//! an operator added, with when it takes effect, who added it and why. (Version 1 is
//! seeded by the store, not an event; this projection is not rebuilt: it only appends
//! versions, which a rebuild would have to keep beside the seed.)

use application::event_store::StoredEvent;
use async_trait::async_trait;
use domain::price_book::{PriceBook, PriceBookEvent};
use infrastructure::event_store::{InlineProjection, ProjectionError, Tx};
use infrastructure::tx_execute;

use crate::decode;

pub struct PriceVersions;

pub const NAME: &str = "price_versions";

#[async_trait]
impl InlineProjection for PriceVersions {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn apply(&self, tx: &mut Tx<'_>, events: &[StoredEvent]) -> Result<(), ProjectionError> {
        for stored in events.iter().filter(|e| e.aggregate_type == <PriceBook as cqrs_es::Aggregate>::TYPE) {
            let PriceBookEvent::PriceVersionAdded { config, effective_at, act, occurred_at } = decode::<PriceBook>(stored)?;
            tx_execute!(
                &mut *tx,
                "INSERT INTO credit_pricing_config (version, config, effective_at, added_by, reason, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
                config.version,
                serde_json::to_string(&config)?,
                effective_at,
                act.operator,
                act.reason,
                occurred_at
            )?;
        }
        Ok(())
    }
}
