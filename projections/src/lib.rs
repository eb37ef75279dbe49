//! Kiln's read models and the projector that keeps the async ones current.
//!
//! - what a credit event means for every read model, once: [`credit_fold`];
//! - inline (in the append transaction): [`balances`], [`api_keys`], [`operators`], [`dispatch`], [`price_book`] (appends only;
//!   not in the rebuild catalog), [`reference_models`] (operators' catalog changes; not
//!   rebuilt either: the seed is not events), [`workers`] (worker drains), [`jobs`], the webhook endpoints ([`webhooks`]);
//! - async (projector, from checkpoints): [`history`], the webhook deliveries
//!   ([`webhooks`]: a work queue, not rebuilt); the public job events ([`public_events`]);
//! - operations: [`catalog`] (names, tables, status), [`rebuild`] (shadow rebuild, swap,
//!   verify), [`audit`] (replay, invariants and hash chain, from events alone).

pub mod api_keys;
pub mod audit;
pub mod balances;
pub mod catalog;
pub mod credit_fold;
pub mod dispatch;
pub mod history;
pub mod images;
pub mod jobs;
pub mod operators;
pub mod price_book;
pub mod projector;
pub mod public_events;
pub mod rebuild;
pub mod reference_models;
pub mod webhooks;
pub mod workers;

use std::sync::Arc;

use application::aggregate_store::decode_event;
use application::event_store::StoredEvent;
use infrastructure::event_store::{InlineProjection, ProjectionError};

/// The projections every append runs in its transaction.
pub fn inline_projections() -> Vec<Arc<dyn InlineProjection>> {
    vec![Arc::new(balances::TeamBalances), Arc::new(api_keys::ApiKeys), Arc::new(operators::Operators), Arc::new(dispatch::DispatchControl), Arc::new(price_book::PriceVersions), Arc::new(reference_models::ReferenceModels), Arc::new(workers::WorkerDrains), Arc::new(jobs::Jobs), Arc::new(webhooks::WebhookEndpoints)]
}

/// The projections the projector runs behind the log, in this order (the webhook
/// deliveries read the credit history's balances).
pub fn async_projections() -> Vec<Arc<dyn InlineProjection>> {
    vec![Arc::new(history::CreditHistory), Arc::new(webhooks::WebhookDeliveriesProjection)]
}

fn decode<A: cqrs_es::Aggregate>(stored: &StoredEvent) -> Result<A::Event, ProjectionError> {
    decode_event::<A>(stored).map_err(|e| Box::new(e) as ProjectionError)
}
