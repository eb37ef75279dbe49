//! Kiln's integration tests: one binary (linked once), a module per area.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod support;

mod api_contract;
mod audit;
mod catalog;
mod cli;
mod contract;
mod credit_fold;
mod event_store;
mod flow;
mod jobs;
mod jobs_dispatch;
mod lost_connection;
mod observe;
mod outage;
mod operators;
mod rebuild;
mod credits;
mod serve;
mod storage;
mod structure;
mod stripe;
mod fal;
mod faults;
mod ha;
mod web;
mod webhooks;
