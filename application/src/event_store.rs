//! The event store port: what the use cases need from an append-only log.
//!
//! Streams are identified by `(aggregate_type, aggregate_id)` and numbered by a
//! per-stream `sequence` starting at 1. Every stored event also has a global
//! [`LogPosition`] that orders the whole log in commit order, which is what the
//! async projections follow.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where a reader of the global log stands. Ordered by `(commit_order, position)`.
///
/// On PostgreSQL `commit_order` is the appending transaction's id (`xid8`): a reader
/// only sees events of transactions older than every transaction still running, so an
/// event that commits late can never fall behind a stored checkpoint. On SQLite writes
/// are serialized, so `commit_order` is the position itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct LogPosition {
    pub commit_order: i64,
    pub position: i64,
}

impl LogPosition {
    /// Before the first event.
    pub const START: LogPosition = LogPosition { commit_order: 0, position: 0 };
}

/// An event about to be appended to one stream.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event_type: String,
    pub event_version: String,
    pub payload: Value,
    pub metadata: Value,
}

/// Events to append to one stream, on the condition that the stream is exactly at
/// `expected_sequence` (0 for a new stream). The new events get the sequences
/// `expected_sequence + 1 ..`.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamAppend {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub expected_sequence: i64,
    pub events: Vec<NewEvent>,
    /// Replace the stream's snapshot with this one. Its `sequence` must be one of the
    /// sequences this append writes.
    pub snapshot: Option<Snapshot>,
}

/// One event of a stream as [`EventStore::load_streams`] reads it for replaying: only what
/// an aggregate needs, the payload as the JSON text it is stored as, so it is decoded
/// straight into the aggregate's event (no `serde_json::Value` in between, no
/// conversion of the log columns a replay does not read).
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEvent {
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub payload: String,
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub log_position: LogPosition,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: Value,
    pub metadata: Value,
    pub recorded_at: DateTime<Utc>,
}

/// The latest snapshot of a stream: its state after event `sequence`.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub sequence: i64,
    pub state: Value,
}

/// What a caller is told to wait before retrying while the database is unavailable
/// (`Retry-After`, both doors).
pub const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 5;

#[derive(Debug, thiserror::Error)]
pub enum EventStoreError {
    /// Another writer appended to the stream first (optimistic concurrency).
    #[error("concurrency conflict on {aggregate_type} {aggregate_id}: expected sequence {expected_sequence}")]
    Conflict {
        aggregate_type: String,
        aggregate_id: String,
        expected_sequence: i64,
    },
    /// A stored event could not be turned back into a domain event.
    #[error("corrupt event {aggregate_type} {aggregate_id} #{sequence}: {reason}")]
    Corrupt {
        aggregate_type: String,
        aggregate_id: String,
        sequence: i64,
        reason: String,
    },
    /// An inline projection refused the events; the whole append was rolled back.
    #[error("inline projection {projection} failed: {reason}")]
    Projection { projection: String, reason: String },
    #[error("invalid append: {0}")]
    InvalidAppend(String),
    #[error("event store unavailable: {0}")]
    Unavailable(String),
    /// The database refused a statement (not a lost connection): retrying will not help.
    #[error("event store database error: {0}")]
    Database(String),
}

impl EventStoreError {
    /// The store could not be reached or could not take the write now (a lost or
    /// refused connection, a server shutting down or read-only after a failover): worth
    /// trying again later. An append that failed this way may or may not have committed.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, EventStoreError::Unavailable(_))
    }
}

/// The append-only log. Implementations: `infrastructure::event_store` (PostgreSQL, SQLite).
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends to one or more streams in a single transaction: all or nothing. Runs the
    /// store's inline projections inside that transaction. Returns the stored events in
    /// append order. Appends without events are left out. Borrowed: a caller that may
    /// commit the same appends again (without a conflicting member, say) keeps them and
    /// copies nothing.
    async fn append(&self, appends: &[StreamAppend]) -> Result<Vec<StoredEvent>, EventStoreError>;

    /// The events of one stream with `sequence > after_sequence`, in order.
    async fn load_stream(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        after_sequence: i64,
    ) -> Result<Vec<StoredEvent>, EventStoreError>;

    /// Every event of the streams `aggregate_ids` of `aggregate_type` (those that exist),
    /// grouped by stream (in no particular order of streams), each stream's in sequence
    /// order. One query for many short streams, where a load per stream would cost a round
    /// trip each; snapshots are not consulted. Only the columns a replay reads.
    async fn load_streams(&self, aggregate_type: &str, aggregate_ids: &[String]) -> Result<Vec<StreamEvent>, EventStoreError>;

    async fn load_snapshot(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<Option<Snapshot>, EventStoreError>;

    /// A stream's snapshot (if one is stored) and its events after the snapshot's
    /// sequence (all of them without one): what loading an aggregate reads. Back-ends
    /// that can answer in one round trip (and one database snapshot) override this.
    async fn load_latest(&self, aggregate_type: &str, aggregate_id: &str) -> Result<(Option<Snapshot>, Vec<StoredEvent>), EventStoreError> {
        load_latest_in_two_reads(self, aggregate_type, aggregate_id).await
    }

    /// Of the given streams `(aggregate type, aggregate id, expected sequence)`, those that
    /// already hold an event after the expected sequence, i.e. whose append would conflict.
    /// Read outside any transaction: a stream can still be taken between this check and an
    /// append (the append's own check decides), but a batch of appends can leave out the
    /// streams known to be stale instead of failing as a whole.
    async fn stale_streams(&self, streams: &[(String, String, i64)]) -> Result<Vec<(String, String)>, EventStoreError>;

    /// Stores `snapshot` of a stream outside any append, unless a snapshot at the same or
    /// a later sequence is already stored. The caller must have committed the events up
    /// to `snapshot.sequence`. A snapshot is a cache: losing one only costs a longer load.
    async fn save_snapshot(&self, aggregate_type: &str, aggregate_id: &str, snapshot: Snapshot) -> Result<(), EventStoreError>;

    /// Up to `limit` events of the whole log after `after`, in commit order. Never
    /// returns an event that could be followed by a not-yet-visible event ordered
    /// before it, so a reader that checkpoints the last position it saw misses nothing.
    async fn read_log(&self, after: LogPosition, limit: i64) -> Result<Vec<StoredEvent>, EventStoreError>;

    /// The position of the last committed event in commit order (`None` if the log is
    /// empty). A reader that has reached it has seen everything committed before the call.
    async fn head(&self) -> Result<Option<LogPosition>, EventStoreError>;
}

/// [`EventStore::load_latest`] as a snapshot look-up followed by a stream read.
pub async fn load_latest_in_two_reads<S: EventStore + ?Sized>(
    store: &S,
    aggregate_type: &str,
    aggregate_id: &str,
) -> Result<(Option<Snapshot>, Vec<StoredEvent>), EventStoreError> {
    let snapshot = store.load_snapshot(aggregate_type, aggregate_id).await?;
    let after = snapshot.as_ref().map_or(0, |s| s.sequence);
    let events = store.load_stream(aggregate_type, aggregate_id, after).await?;
    Ok((snapshot, events))
}
