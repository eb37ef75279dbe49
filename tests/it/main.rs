//! Kiln's integration tests: one binary (linked once), a module per area.

mod support;

mod event_store;
mod credits;
mod serve;
