//! The read side shared by both doors: the REST handlers (`http`) and the dashboard
//! (`web`). Every query of the read models lives here, scoped to the caller's team, and
//! returns view structs; neither door runs SQL of its own, so both show the same data.
//!
//! Pagination stays with the callers (cursor formats are a door's contract): list
//! queries take the position after which to read and how many rows to fetch.

pub mod catalog;
pub mod credits;
pub mod jobs;
pub mod keys;
pub mod models;
pub mod webhooks;

/// A read-model query failed (the database, not the caller, is at fault).
#[derive(Debug, thiserror::Error)]
#[error("read model query failed: {0}")]
pub struct QueryError(#[from] sqlx::Error);
