//! The `kiln` binary's library half: CLI, application start-up and HTTP wiring. Kept as
//! a library so the integration tests start the real application in-process.

pub mod app;
pub mod audit_runs;
pub mod cli;
pub mod http;
pub mod multipart;
pub mod operator_cli;
pub mod ops;
pub mod queries;
pub mod storage_cli;
pub mod state;
pub mod sweeper;
pub mod team_cli;
pub mod web;
