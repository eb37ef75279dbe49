//! Inline projection of the CatalogEntry streams (operators' catalog changes) into
//! `reference_models`, the catalog the doors read: an added model is a new row, an edit
//! sets what it changed, retiring clears `active` (no longer listed nor accepted for new
//! custom models), restoring sets it; each records who changed the row last and why.
//! (The seed models are rows written by `kiln seed`, not events: like `price_book`,
//! this projection is not in the rebuild catalog, which would drop them.)

use application::event_store::StoredEvent;
use async_trait::async_trait;
use domain::catalog::{CatalogEntry, CatalogEvent};
use infrastructure::event_store::{InlineProjection, ProjectionError, Tx};
use infrastructure::tx_execute;

use crate::decode;

pub struct ReferenceModels;

pub const NAME: &str = "reference_models";

#[async_trait]
impl InlineProjection for ReferenceModels {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn apply(&self, tx: &mut Tx<'_>, events: &[StoredEvent]) -> Result<(), ProjectionError> {
        for stored in events.iter().filter(|e| e.aggregate_type == <CatalogEntry as cqrs_es::Aggregate>::TYPE) {
            let event = decode::<CatalogEntry>(stored)?;
            let act = event.act().clone();
            match event {
                CatalogEvent::ReferenceModelAdded { reference_id, name, description, category, characteristics, complexity_factor_milli, preview, occurred_at, .. } => {
                    let preview_keys = serde_json::to_string(&preview.map(|p| p.key).into_iter().collect::<Vec<_>>())?;
                    tx_execute!(
                        &mut *tx,
                        "INSERT INTO reference_models (id, name, description, category, characteristics, complexity_factor_milli, popularity, \
                         active, preview_keys, created_at, changed_at, changed_by, change_reason) \
                         VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $8, $9, $9, $10, $11)",
                        reference_id,
                        name,
                        description.unwrap_or_default(),
                        category.as_str(),
                        serde_json::to_string(&characteristics)?,
                        complexity_factor_milli,
                        true,
                        preview_keys,
                        occurred_at,
                        act.operator,
                        act.reason
                    )?;
                }
                CatalogEvent::ReferenceModelEdited { reference_id, name, description, characteristics, preview, occurred_at, .. } => {
                    let characteristics = characteristics.map(|c| serde_json::to_string(&c)).transpose()?;
                    let preview_keys = preview.map(|p| serde_json::to_string(&[p.key])).transpose()?;
                    tx_execute!(
                        &mut *tx,
                        "UPDATE reference_models SET name = COALESCE($2, name), description = COALESCE($3, description), \
                         characteristics = COALESCE($4, characteristics), preview_keys = COALESCE($5, preview_keys), \
                         changed_at = $6, changed_by = $7, change_reason = $8 WHERE id = $1",
                        reference_id,
                        name,
                        description,
                        characteristics,
                        preview_keys,
                        occurred_at,
                        act.operator,
                        act.reason
                    )?;
                }
                CatalogEvent::ReferenceModelRetired { reference_id, occurred_at, .. } | CatalogEvent::ReferenceModelRestored { reference_id, occurred_at, .. } => {
                    let active = stored.event_type == "ReferenceModelRestored";
                    tx_execute!(
                        &mut *tx,
                        "UPDATE reference_models SET active = $2, changed_at = $3, changed_by = $4, change_reason = $5 WHERE id = $1",
                        reference_id,
                        active,
                        occurred_at,
                        act.operator,
                        act.reason
                    )?;
                }
            }
        }
        Ok(())
    }
}
