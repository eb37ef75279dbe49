//! Rebuilding a projection from the whole log into shadow tables, then swapping them in
//! atomically (or, with `verify`, diffing them against the live tables) while the server
//! keeps serving and appending.
//!
//! How the projection's own code writes to shadow tables: the shadow tables carry the
//! **live names in a namespace the rebuild's connection searches first**, so the
//! projection's SQL (unqualified table names) runs unchanged against them:
//! - PostgreSQL: a scratch schema `kiln_rebuild_…` put before the live schema in the
//!   rebuild connection's `search_path`. Tables are created `LIKE` the live ones, then
//!   their constraints and indexes are recreated **under the live names** (index names are
//!   per schema). The swap drops the live table and moves the shadow one into the live
//!   schema (`SET SCHEMA`), so the names, indexes and constraints are exactly the
//!   originals. Renaming keeps indexes; moving schemas keeps them too.
//! - SQLite: `TEMP` tables (per connection, searched before `main`) created from the live
//!   `CREATE TABLE` text in `sqlite_master`. A temp table cannot change database, so the
//!   swap replaces the live rows (`DELETE` + `INSERT … SELECT`) inside one write
//!   transaction — atomic all the same.
//!
//! Phases: (1) bulk pass over the log, no lock on anything live: on PostgreSQL, for a
//! projection with an in-memory [`fold`] (`team_balances`, `credit_history`), one cursor
//! over the TeamCredits events up to the readable head, folded in memory and written with
//! binary `COPY` (keys and indexes built after the load, see `bulk.rs`);
//! otherwise batches of `read_log` (gap-safe), each applied by the projection's own code
//! in a transaction of its own ([`per_batch_pass`], one loop for both databases);
//! (2) the final transaction: stop the log from moving
//! for this projection (inline: PostgreSQL `LOCK TABLE events IN SHARE ROW EXCLUSIVE
//! MODE` / SQLite's write lock, so no append can commit; async: the checkpoint row's lock,
//! so the projector waits), apply the tail, then swap — and for the async projection set
//! its checkpoint to the rebuild's end position — or diff and roll back.

mod bulk;
mod columns;
mod fold;
mod postgres;
mod sqlite;

pub use postgres::TAIL_SQL;

use std::time::Instant;

use async_trait::async_trait;
use application::event_store::{EventStore, EventStoreError, LogPosition, StoredEvent};
use infrastructure::db::Database;
use infrastructure::event_store::{InlineProjection, SqlEventStore, Tx};
use serde::Serialize;

use crate::catalog::{Kind, ProjectionInfo};
use crate::projector::{ENSURE_CHECKPOINT, SAVE_CHECKPOINT};

pub const BATCH_SIZE_DEFAULT: i64 = 5_000;
pub const DIFFERENCES_MAX_DEFAULT: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error(transparent)]
    Store(#[from] EventStoreError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("projection {projection} failed at {position:?}: {reason}")]
    Projection { projection: String, position: LogPosition, reason: String },
    #[error("cannot prepare shadow table {table}: {reason}")]
    Shadow { table: String, reason: String },
}

/// Told what the rebuild does, e.g. to drive a progress bar. Every method has a no-op
/// default.
pub trait Progress: Send + Sync {
    fn begin(&self, _projection: &str, _events_total: u64) {}
    fn advance(&self, _events: u64) {}
    fn end(&self) {}
}

pub struct NoProgress;
impl Progress for NoProgress {}

#[derive(Debug, Clone)]
pub struct RebuildOptions {
    /// Diff against the live tables instead of swapping.
    pub verify: bool,
    pub batch_size: i64,
    pub differences_max: usize,
    /// Use the in-memory fold and bulk load where the projection and database have one
    /// (PostgreSQL: `team_balances`, `credit_history`); `false` applies the projection's
    /// own code batch by batch everywhere (the reference the fold is checked against).
    pub bulk: bool,
}

impl Default for RebuildOptions {
    fn default() -> Self {
        Self { verify: false, batch_size: BATCH_SIZE_DEFAULT, differences_max: DIFFERENCES_MAX_DEFAULT, bulk: true }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TableDiff {
    pub table: String,
    /// Rows the rebuild has and the live table lacks (or has differently).
    pub only_in_rebuild: i64,
    /// Rows the live table has and the rebuild lacks.
    pub only_in_live: i64,
    /// The first differing rows, ordered: `+ {…}` rebuild only, `- {…}` live only.
    pub first: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RebuildReport {
    pub projection: String,
    pub kind: Kind,
    pub tables: Vec<String>,
    /// Events applied (bulk pass + tail).
    pub events: u64,
    pub elapsed_ms: u64,
    pub events_per_sec: u64,
    /// The log position the rebuilt tables are at.
    pub end: LogPosition,
    pub swapped: bool,
    pub verified: bool,
    /// Tables that differ (only with `verify`).
    pub differences: Vec<TableDiff>,
}

impl RebuildReport {
    pub fn matches(&self) -> bool {
        self.differences.is_empty()
    }
}

/// Rebuilds `info` from the log of `store` (swaps, or diffs with `options.verify`).
pub async fn rebuild(
    store: &SqlEventStore,
    info: &ProjectionInfo,
    options: &RebuildOptions,
    progress: &dyn Progress,
) -> Result<RebuildReport, RebuildError> {
    let started = Instant::now();
    let total = crate::catalog::events_after(store.database(), LogPosition::START).await?;
    progress.begin(info.name, total.max(0) as u64);
    let outcome = match store.database() {
        Database::Postgres(pool) => postgres::run(store, pool, info, options, progress).await,
        Database::Sqlite { write, .. } => sqlite::run(store, write, info, options, progress).await,
    };
    progress.end();
    let (events, end, differences) = outcome?;
    let elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(RebuildReport {
        projection: info.name.to_string(),
        kind: info.kind,
        tables: info.tables.iter().map(|t| t.to_string()).collect(),
        events,
        elapsed_ms,
        events_per_sec: events * 1000 / elapsed_ms.max(1),
        end,
        swapped: !options.verify,
        verified: options.verify,
        differences,
    })
}

/// What a backend's run returns: events applied, end position, differences.
type Outcome = (u64, LogPosition, Vec<TableDiff>);

/// Where the bulk pass may go: to the readable head, or for verifying an async
/// projection never past its live checkpoint (the live table is compared as of it).
fn bounded_by_checkpoint(info: &ProjectionInfo, options: &RebuildOptions) -> bool {
    info.kind == Kind::Async && options.verify
}

/// Phase 1's next batch after `position` (empty when caught up).
async fn next_batch(
    store: &SqlEventStore,
    info: &ProjectionInfo,
    options: &RebuildOptions,
    position: LogPosition,
) -> Result<Vec<StoredEvent>, RebuildError> {
    let mut events = store.read_log(position, options.batch_size).await?;
    if bounded_by_checkpoint(info, options) {
        let checkpoint = crate::projector::load_checkpoint(store.database(), info.name).await?;
        events.retain(|e| e.log_position <= checkpoint);
    }
    Ok(events)
}

/// What the per-batch pass needs from a database: shadow tables to apply a batch to.
#[async_trait]
trait Shadow: Send {
    /// Applies one batch with the projection's own code, in a transaction of its own.
    async fn apply_batch(&mut self, projection: &dyn InlineProjection, events: &[StoredEvent]) -> Result<(), RebuildError>;
    /// Called after each committed batch (`batches` so far).
    async fn batch_done(&mut self, _batches: u64) -> Result<(), RebuildError> {
        Ok(())
    }
}

/// Phase 1, batch by batch: returns the position reached and the events applied. The next
/// batch is read while this one is applied: reading and writing overlap.
async fn per_batch_pass(
    shadow: &mut dyn Shadow,
    store: &SqlEventStore,
    info: &ProjectionInfo,
    options: &RebuildOptions,
    progress: &dyn Progress,
) -> Result<(LogPosition, u64), RebuildError> {
    let (mut position, mut applied, mut batches) = (LogPosition::START, 0u64, 0u64);
    let mut events = next_batch(store, info, options, position).await?;
    while let Some(last) = events.last().map(|e| e.log_position) {
        let (done, next) = tokio::join!(shadow.apply_batch(info.projection.as_ref(), &events), next_batch(store, info, options, last));
        done?;
        position = last;
        applied += events.len() as u64;
        progress.advance(events.len() as u64);
        events = next?;
        batches += 1;
        shadow.batch_done(batches).await?;
    }
    Ok((position, applied))
}

async fn apply_events(projection: &dyn InlineProjection, tx: &mut Tx<'_>, events: &[StoredEvent]) -> Result<(), RebuildError> {
    let Some(last) = events.last() else { return Ok(()) };
    projection.apply(tx, events).await.map_err(|error| RebuildError::Projection {
        projection: projection.name().to_string(),
        position: last.log_position,
        reason: error.to_string(),
    })
}
