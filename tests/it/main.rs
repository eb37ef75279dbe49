//! Kiln's integration tests: one binary (linked once), a module per area.

mod support;

mod catalog;
mod event_store;
mod jobs;
mod credits;
mod serve;
mod stripe;
