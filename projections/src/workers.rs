//! Inline read model of the WorkerDrain streams (`worker_drains`): which workers an
//! operator drained, since when, by whom and why. A worker reads its row with each
//! heartbeat (`JobIndex::report`); the workers page shows it.

use application::event_store::StoredEvent;
use async_trait::async_trait;
use domain::workers::{WorkerDrain, WorkerDrainEvent};
use infrastructure::event_store::{InlineProjection, ProjectionError, Tx};
use infrastructure::tx_execute;

use crate::decode;

pub struct WorkerDrains;

pub const NAME: &str = "worker_drains";
pub const TABLES: &[&str] = &["worker_drains"];

#[async_trait]
impl InlineProjection for WorkerDrains {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn apply(&self, tx: &mut Tx<'_>, events: &[StoredEvent]) -> Result<(), ProjectionError> {
        for stored in events.iter().filter(|e| e.aggregate_type == <WorkerDrain as cqrs_es::Aggregate>::TYPE) {
            let (draining, act, at) = match decode::<WorkerDrain>(stored)? {
                WorkerDrainEvent::WorkerDrainOrdered { act, occurred_at, .. } => (true, act, occurred_at),
                WorkerDrainEvent::WorkerDrainCancelled { act, occurred_at, .. } => (false, act, occurred_at),
            };
            tx_execute!(
                &mut *tx,
                "INSERT INTO worker_drains (worker_id, draining, changed_at, changed_by, reason) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (worker_id) DO UPDATE SET draining = excluded.draining, changed_at = excluded.changed_at, \
                 changed_by = excluded.changed_by, reason = excluded.reason",
                stored.aggregate_id.as_str(),
                draining,
                at,
                act.operator,
                act.reason
            )?;
        }
        Ok(())
    }
}
