//! The sqlx event store: one implementation of the `application::EventStore` port over
//! PostgreSQL and SQLite, plus cqrs-es's `PersistedEventRepository` on top of it.
//!
//! Appends to several streams happen in one transaction, together with the inline
//! projections registered on the store: either every event and every read-model change
//! is committed, or none is.

pub mod chain;
mod cqrs_repository;
mod inline;
mod postgres;
mod sqlite;

use std::sync::Arc;

use application::event_store::{
    EventStore, EventStoreError, LogPosition, Snapshot, StoredEvent, StreamAppend, StreamEvent,
};
use async_trait::async_trait;
use tokio::sync::watch;

use crate::db::Database;

pub use cqrs_repository::CqrsRepository;
pub use inline::{unnest_sql, values_sql, InlineProjection, ProjectionError, Tx, ROWS_PER_STATEMENT_MAX};
pub use postgres::{APPEND_BEGIN, PREDECESSOR_HASHES_SQL};

/// Time of one append (one transaction, any number of streams), by outcome.
pub const APPEND_SECONDS: &str = "kiln_event_store_append_seconds";

/// Upper bound on one `read_log` page, whatever the caller asks for.
pub const READ_LOG_LIMIT_MAX: i64 = 10_000;

/// The log's last event on PostgreSQL (commit order, position), from the end of the
/// commit-order index. The converted column is named `commit_order`: unnamed it would be
/// called `transaction_id`, and `ORDER BY transaction_id` would then sort by the converted
/// value — a scan and sort of the whole log for every call.
pub const LOG_HEAD_SQL: &str = "SELECT transaction_id::text::bigint AS commit_order, position FROM events \
     ORDER BY transaction_id DESC, position DESC LIMIT 1";

/// [`LOG_HEAD_SQL`] among the events that are safe to read: below the oldest transaction
/// still running (`pg_snapshot_xmin`), so nothing can still commit before them.
pub const READABLE_LOG_HEAD_SQL: &str = "SELECT transaction_id::text::bigint AS commit_order, position FROM events \
     WHERE transaction_id < pg_snapshot_xmin(pg_current_snapshot()) \
     ORDER BY transaction_id DESC, position DESC LIMIT 1";

#[derive(Clone)]
pub struct SqlEventStore {
    db: Database,
    inline: Arc<[Arc<dyn InlineProjection>]>,
    /// Counts commits made through this handle (and its clones), so in-process log
    /// followers wake at once instead of waiting for their next poll.
    commits: Arc<watch::Sender<u64>>,
    /// Chained streams' last hashes seen by this process (appends skip their look-up).
    tips: Arc<chain::ChainTips>,
}

impl SqlEventStore {
    pub fn new(db: Database) -> Self {
        Self::with_inline_projections(db, Vec::new())
    }

    /// Runs `projections` inside every append transaction, in this order.
    pub fn with_inline_projections(db: Database, projections: Vec<Arc<dyn InlineProjection>>) -> Self {
        Self { db, inline: projections.into(), commits: Arc::new(watch::channel(0).0), tips: Arc::default() }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Changes after every commit made through this store in this process.
    pub fn subscribe_commits(&self) -> watch::Receiver<u64> {
        self.commits.subscribe()
    }
}

fn validate(appends: &[StreamAppend]) -> Result<(), EventStoreError> {
    let mut streams = std::collections::HashSet::with_capacity(appends.len());
    // Appends without events write nothing (the store leaves them out).
    for append in appends.iter().filter(|a| !a.events.is_empty()) {
        if append.expected_sequence < 0 {
            return Err(EventStoreError::InvalidAppend(format!(
                "negative expected sequence for {} {}",
                append.aggregate_type, append.aggregate_id
            )));
        }
        let last_sequence = append.expected_sequence + append.events.len() as i64;
        if let Some(snapshot) = &append.snapshot {
            if snapshot.sequence <= append.expected_sequence || snapshot.sequence > last_sequence {
                return Err(EventStoreError::InvalidAppend(format!(
                    "snapshot of {} {} at sequence {} is outside the appended range",
                    append.aggregate_type, append.aggregate_id, snapshot.sequence
                )));
            }
        }
        if !streams.insert((append.aggregate_type.as_str(), append.aggregate_id.as_str())) {
            return Err(EventStoreError::InvalidAppend(format!(
                "stream {} {} appears twice in one append",
                append.aggregate_type, append.aggregate_id
            )));
        }
    }
    Ok(())
}

fn conflict(append: &StreamAppend) -> EventStoreError {
    EventStoreError::Conflict {
        aggregate_type: append.aggregate_type.clone(),
        aggregate_id: append.aggregate_id.clone(),
        expected_sequence: append.expected_sequence,
    }
}

/// The stored form of `event`, appended to `append`'s stream at `sequence`.
fn stored_event(
    append: &StreamAppend,
    event: &application::event_store::NewEvent,
    sequence: i64,
    log_position: LogPosition,
    recorded_at: chrono::DateTime<chrono::Utc>,
) -> StoredEvent {
    StoredEvent {
        log_position,
        aggregate_type: append.aggregate_type.clone(),
        aggregate_id: append.aggregate_id.clone(),
        sequence,
        event_type: event.event_type.clone(),
        event_version: event.event_version.clone(),
        payload: event.payload.clone(),
        metadata: event.metadata.clone(),
        recorded_at,
    }
}

/// A database error as the port names it: unavailable (worth trying again) or refused.
pub(crate) fn store_error(error: sqlx::Error) -> EventStoreError {
    if crate::db::is_unreachable(&error) {
        EventStoreError::Unavailable(error.to_string())
    } else {
        EventStoreError::Database(error.to_string())
    }
}

/// True when `error` is the unique key of a stream's sequence being taken.
fn is_sequence_taken(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}

#[async_trait]
impl EventStore for SqlEventStore {
    async fn append(&self, appends: &[StreamAppend]) -> Result<Vec<StoredEvent>, EventStoreError> {
        validate(appends)?;
        if appends.iter().all(|a| a.events.is_empty()) {
            return Ok(Vec::new());
        }
        let known = self.tips.known(appends);
        let started = std::time::Instant::now();
        let stored = match &self.db {
            Database::Postgres(pool) => postgres::append(pool, &self.inline, appends, &known).await,
            Database::Sqlite { write, .. } => sqlite::append(write, &self.inline, appends, &known).await,
        };
        let outcome = if stored.is_ok() { "committed" } else { "failed" };
        metrics::histogram!(APPEND_SECONDS, "outcome" => outcome).record(started.elapsed().as_secs_f64());
        let stored = stored?;
        self.tips.record(&stored);
        self.commits.send_modify(|count| *count = count.wrapping_add(1));
        Ok(stored)
    }

    async fn load_stream(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        after_sequence: i64,
    ) -> Result<Vec<StoredEvent>, EventStoreError> {
        let events = match &self.db {
            Database::Postgres(pool) => postgres::load_stream(pool, aggregate_type, aggregate_id, after_sequence).await,
            Database::Sqlite { read, .. } => sqlite::load_stream(read, aggregate_type, aggregate_id, after_sequence).await,
        }?;
        self.tips.record(&events);
        Ok(events)
    }

    /// (No chain tips are remembered from these: they carry no metadata. Chained streams,
    /// the teams', are loaded one at a time.)
    async fn load_streams(&self, aggregate_type: &str, aggregate_ids: &[String]) -> Result<Vec<StreamEvent>, EventStoreError> {
        if aggregate_ids.is_empty() {
            return Ok(Vec::new());
        }
        match &self.db {
            Database::Postgres(pool) => postgres::load_streams(pool, aggregate_type, aggregate_ids).await,
            Database::Sqlite { read, .. } => sqlite::load_streams(read, aggregate_type, aggregate_ids).await,
        }
    }

    async fn load_snapshot(&self, aggregate_type: &str, aggregate_id: &str) -> Result<Option<Snapshot>, EventStoreError> {
        match &self.db {
            Database::Postgres(pool) => postgres::load_snapshot(pool, aggregate_type, aggregate_id).await,
            Database::Sqlite { read, .. } => sqlite::load_snapshot(read, aggregate_type, aggregate_id).await,
        }
    }

    async fn load_latest(&self, aggregate_type: &str, aggregate_id: &str) -> Result<(Option<Snapshot>, Vec<StoredEvent>), EventStoreError> {
        match &self.db {
            Database::Postgres(pool) => {
                let (snapshot, events) = postgres::load_latest(pool, aggregate_type, aggregate_id).await?;
                self.tips.record(&events);
                Ok((snapshot, events))
            }
            // Local reads: two statements cost no extra round trip (`load_stream` records
            // the tip).
            Database::Sqlite { .. } => application::event_store::load_latest_in_two_reads(self, aggregate_type, aggregate_id).await,
        }
    }

    async fn stale_streams(&self, streams: &[(String, String, i64)]) -> Result<Vec<(String, String)>, EventStoreError> {
        if streams.is_empty() {
            return Ok(Vec::new());
        }
        match &self.db {
            Database::Postgres(pool) => {
                let types: Vec<&str> = streams.iter().map(|s| s.0.as_str()).collect();
                let ids: Vec<&str> = streams.iter().map(|s| s.1.as_str()).collect();
                let expected: Vec<i64> = streams.iter().map(|s| s.2).collect();
                sqlx::query_as(
                    // LATERAL … LIMIT 1: one primary-key probe per stream, whatever plan the
                    // prepared statement gets (a semi-join could scan all of `events`).
                    "SELECT u.t, u.i FROM UNNEST($1::text[], $2::text[], $3::bigint[]) AS u(t, i, s) CROSS JOIN LATERAL \
                     (SELECT 1 FROM events e WHERE e.aggregate_type = u.t AND e.aggregate_id = u.i AND e.sequence = u.s + 1 LIMIT 1) AS taken",
                )
                .bind(types)
                .bind(ids)
                .bind(expected)
                .fetch_all(pool)
                .await
                .map_err(store_error)
            }
            Database::Sqlite { read, .. } => {
                let mut conn = read.acquire().await.map_err(store_error)?;
                let mut stale = Vec::new();
                for (aggregate_type, aggregate_id, expected) in streams {
                    let taken: Option<i64> = sqlx::query_scalar(
                        "SELECT 1 FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3",
                    )
                    .bind(aggregate_type)
                    .bind(aggregate_id)
                    .bind(expected + 1)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(store_error)?;
                    if taken.is_some() {
                        stale.push((aggregate_type.clone(), aggregate_id.clone()));
                    }
                }
                Ok(stale)
            }
        }
    }

    async fn save_snapshot(&self, aggregate_type: &str, aggregate_id: &str, snapshot: Snapshot) -> Result<(), EventStoreError> {
        if snapshot.sequence < 1 {
            return Err(EventStoreError::InvalidAppend(format!(
                "snapshot of {aggregate_type} {aggregate_id} at sequence {}",
                snapshot.sequence
            )));
        }
        match &self.db {
            Database::Postgres(pool) => {
                let mut conn = pool.acquire().await.map_err(store_error)?;
                postgres::upsert_snapshot(&mut conn, aggregate_type, aggregate_id, snapshot.sequence, &snapshot.state).await
            }
            Database::Sqlite { write, .. } => {
                let mut conn = write.acquire().await.map_err(store_error)?;
                sqlite::upsert_snapshot(&mut conn, aggregate_type, aggregate_id, snapshot.sequence, &snapshot.state).await
            }
        }
        .map_err(store_error)
    }

    async fn read_log(&self, after: LogPosition, limit: i64) -> Result<Vec<StoredEvent>, EventStoreError> {
        let limit = limit.clamp(1, READ_LOG_LIMIT_MAX);
        match &self.db {
            Database::Postgres(pool) => postgres::read_log(pool, after, limit).await,
            Database::Sqlite { read, .. } => sqlite::read_log(read, after, limit).await,
        }
    }

    async fn head(&self) -> Result<Option<LogPosition>, EventStoreError> {
        let row: Option<(i64, i64)> = match &self.db {
            Database::Postgres(pool) => sqlx::query_as(LOG_HEAD_SQL).fetch_optional(pool).await,
            Database::Sqlite { read, .. } => {
                sqlx::query_as("SELECT position, position FROM events ORDER BY position DESC LIMIT 1").fetch_optional(read).await
            }
        }
        .map_err(store_error)?;
        Ok(row.map(|(commit_order, position)| LogPosition { commit_order, position }))
    }
}
