//! Kiln's use cases and the ports (traits) they need from the outside world.

pub mod aggregate_store;
pub mod api_keys;
pub mod catalog;
pub mod clock;
pub mod credits;
pub mod event_store;
pub mod jobs;
pub mod models;
pub mod observe;
pub mod operator_actions;
pub mod operators;
pub mod payments;
pub mod provider;
pub mod retention;
pub mod storage;
pub mod webhooks;
