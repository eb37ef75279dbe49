//! Kiln's use cases and the ports (traits) they need from the outside world.

pub mod aggregate_store;
pub mod event_store;
