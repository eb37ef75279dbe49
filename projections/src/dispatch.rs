//! Inline read model of the Dispatch stream (`dispatch_control`): whether dispatch is
//! paused for everyone, since when, by whom and why. The dispatch turn reads it.

use application::event_store::StoredEvent;
use async_trait::async_trait;
use domain::dispatch::{Dispatch, DispatchEvent};
use infrastructure::event_store::{InlineProjection, ProjectionError, Tx};
use infrastructure::tx_execute;

use crate::decode;

pub struct DispatchControl;

pub const NAME: &str = "dispatch_control";
pub const TABLES: &[&str] = &["dispatch_control"];

#[async_trait]
impl InlineProjection for DispatchControl {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn apply(&self, tx: &mut Tx<'_>, events: &[StoredEvent]) -> Result<(), ProjectionError> {
        for stored in events.iter().filter(|e| e.aggregate_type == <Dispatch as cqrs_es::Aggregate>::TYPE) {
            let (paused, act, at) = match decode::<Dispatch>(stored)? {
                DispatchEvent::AllDispatchPaused { act, occurred_at } => (true, act, occurred_at),
                DispatchEvent::AllDispatchResumed { act, occurred_at } => (false, act, occurred_at),
            };
            tx_execute!(
                &mut *tx,
                "INSERT INTO dispatch_control (id, paused, changed_at, changed_by, reason) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (id) DO UPDATE SET paused = excluded.paused, changed_at = excluded.changed_at, \
                 changed_by = excluded.changed_by, reason = excluded.reason",
                stored.aggregate_id.as_str(),
                paused,
                at,
                act.operator,
                act.reason
            )?;
        }
        Ok(())
    }
}
