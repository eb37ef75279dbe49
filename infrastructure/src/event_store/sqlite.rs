//! The SQLite side of the event store. Writes are serialized (one writer connection,
//! `BEGIN IMMEDIATE`), so the position order is the commit order.

use std::collections::HashMap;
use std::sync::Arc;

use application::event_store::{EventStoreError, LogPosition, Snapshot, StoredEvent, StreamAppend, StreamEvent};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{SqliteConnection, SqlitePool};

use super::chain;
use super::inline::{run_inline, InlineProjection, Tx};
use super::{conflict, is_sequence_taken, stored_event, store_error};

/// Payloads are read as text and parsed here, so a corrupt one is reported with the
/// stream and sequence it belongs to.
#[derive(sqlx::FromRow)]
struct EventRow {
    position: i64,
    aggregate_type: String,
    aggregate_id: String,
    sequence: i64,
    event_type: String,
    event_version: String,
    payload: String,
    metadata: String,
    recorded_at: DateTime<Utc>,
}

impl TryFrom<EventRow> for StoredEvent {
    type Error = EventStoreError;

    fn try_from(row: EventRow) -> Result<Self, Self::Error> {
        let corrupt = |what: &str, error: serde_json::Error| EventStoreError::Corrupt {
            aggregate_type: row.aggregate_type.clone(),
            aggregate_id: row.aggregate_id.clone(),
            sequence: row.sequence,
            reason: format!("{what} is not JSON: {error}"),
        };
        let payload = serde_json::from_str(&row.payload).map_err(|e| corrupt("payload", e))?;
        let metadata = serde_json::from_str(&row.metadata).map_err(|e| corrupt("metadata", e))?;
        Ok(StoredEvent {
            log_position: LogPosition { commit_order: row.position, position: row.position },
            aggregate_type: row.aggregate_type,
            aggregate_id: row.aggregate_id,
            sequence: row.sequence,
            event_type: row.event_type,
            event_version: row.event_version,
            payload,
            metadata,
            recorded_at: row.recorded_at,
        })
    }
}

const SELECT_EVENTS: &str = "SELECT position, aggregate_type, aggregate_id, sequence, event_type, \
     event_version, payload, metadata, recorded_at FROM events";

fn rows_to_events(rows: Vec<EventRow>) -> Result<Vec<StoredEvent>, EventStoreError> {
    rows.into_iter().map(StoredEvent::try_from).collect()
}

pub(super) async fn append(
    write: &SqlitePool,
    inline: &[Arc<dyn InlineProjection>],
    appends: &[StreamAppend],
    known_hashes: &HashMap<String, String>,
) -> Result<Vec<StoredEvent>, EventStoreError> {
    // IMMEDIATE takes the write lock up front: a deferred transaction that read first
    // could fail to upgrade (SQLITE_BUSY_SNAPSHOT) when another process wrote meanwhile.
    let mut tx = write.begin_with("BEGIN IMMEDIATE").await.map_err(store_error)?;
    let mut stored = Vec::with_capacity(appends.iter().map(|a| a.events.len()).sum());
    for append in appends.iter().filter(|a| !a.events.is_empty()) {
        let sealed;
        let append = if chain::is_chained(&append.aggregate_type) {
            let prev = match known_hashes.get(&append.aggregate_id) {
                Some(hash) => hash.clone(),
                None => prev_hash(&mut tx, append).await.map_err(store_error)?,
            };
            sealed = chain::seal(append, &prev);
            &sealed
        } else {
            append
        };
        for (offset, event) in append.events.iter().enumerate() {
            let sequence = append.expected_sequence + 1 + offset as i64;
            let (position, recorded_at) = insert_event(&mut tx, append, sequence, event).await.map_err(|error| {
                if is_sequence_taken(&error) {
                    conflict(append)
                } else {
                    store_error(error)
                }
            })?;
            stored.push(stored_event(append, event, sequence, LogPosition { commit_order: position, position }, recorded_at));
        }
        if let Some(snapshot) = &append.snapshot {
            upsert_snapshot(&mut tx, &append.aggregate_type, &append.aggregate_id, snapshot.sequence, &snapshot.state).await.map_err(store_error)?;
        }
    }
    run_inline(inline, &mut Tx::Sqlite(&mut tx), &stored).await?;
    tx.commit().await.map_err(store_error)?;
    Ok(stored)
}

/// The stored hash of the event the append follows: one lookup on the stream's unique key.
async fn prev_hash(conn: &mut SqliteConnection, append: &StreamAppend) -> Result<String, sqlx::Error> {
    if append.expected_sequence == 0 {
        return Ok(chain::GENESIS_HASH.to_string());
    }
    let hash: Option<Option<String>> = sqlx::query_scalar(
        "SELECT json_extract(metadata, '$.hash') FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3",
    )
    .bind(&append.aggregate_type)
    .bind(&append.aggregate_id)
    .bind(append.expected_sequence)
    .fetch_optional(conn)
    .await?;
    Ok(hash.flatten().unwrap_or_default())
}

async fn insert_event(
    conn: &mut SqliteConnection,
    append: &StreamAppend,
    sequence: i64,
    event: &application::event_store::NewEvent,
) -> Result<(i64, DateTime<Utc>), sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING position, recorded_at",
    )
    .bind(&append.aggregate_type)
    .bind(&append.aggregate_id)
    .bind(sequence)
    .bind(&event.event_type)
    .bind(&event.event_version)
    .bind(event.payload.to_string())
    .bind(event.metadata.to_string())
    .fetch_one(conn)
    .await
}

/// Stores a stream's snapshot unless one at the same or a later sequence is stored.
pub(super) async fn upsert_snapshot(
    conn: &mut SqliteConnection,
    aggregate_type: &str,
    aggregate_id: &str,
    last_sequence: i64,
    state: &Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload) \
         VALUES ($1, $2, $3, 1, $4) \
         ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE \
         SET last_sequence = excluded.last_sequence, \
             current_snapshot = snapshots.current_snapshot + 1, \
             payload = excluded.payload \
         WHERE snapshots.last_sequence < excluded.last_sequence",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .bind(last_sequence)
    .bind(state.to_string())
    .execute(conn)
    .await?;
    Ok(())
}

pub(super) async fn load_stream(
    read: &SqlitePool,
    aggregate_type: &str,
    aggregate_id: &str,
    after_sequence: i64,
) -> Result<Vec<StoredEvent>, EventStoreError> {
    let rows: Vec<EventRow> = sqlx::query_as(&format!(
        "{SELECT_EVENTS} WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3 ORDER BY sequence"
    ))
    .bind(aggregate_type)
    .bind(aggregate_id)
    .bind(after_sequence)
    .fetch_all(read)
    .await
    .map_err(store_error)?;
    rows_to_events(rows)
}

/// The ids go in as one JSON array (`json_each`): no limit on bound parameters.
pub(super) async fn load_streams(read: &SqlitePool, aggregate_type: &str, aggregate_ids: &[String]) -> Result<Vec<StreamEvent>, EventStoreError> {
    let ids = serde_json::to_string(aggregate_ids).map_err(|e| EventStoreError::InvalidAppend(format!("stream ids: {e}")))?;
    let rows: Vec<(String, i64, String, String)> = sqlx::query_as(
        "SELECT aggregate_id, sequence, event_type, payload FROM events \
         WHERE aggregate_type = $1 AND aggregate_id IN (SELECT value FROM json_each($2)) ORDER BY aggregate_id, sequence",
    )
    .bind(aggregate_type)
    .bind(ids)
    .fetch_all(read)
    .await
    .map_err(store_error)?;
    Ok(rows.into_iter().map(|(aggregate_id, sequence, event_type, payload)| StreamEvent { aggregate_id, sequence, event_type, payload }).collect())
}

pub(super) async fn load_snapshot(
    read: &SqlitePool,
    aggregate_type: &str,
    aggregate_id: &str,
) -> Result<Option<Snapshot>, EventStoreError> {
    let row: Option<(i64, String)> = sqlx::query_as(
        "SELECT last_sequence, payload FROM snapshots WHERE aggregate_type = $1 AND aggregate_id = $2",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .fetch_optional(read)
    .await
    .map_err(store_error)?;
    // A snapshot is only a cache: one that does not parse is ignored and the stream is
    // replayed from its events.
    Ok(row.and_then(|(sequence, text)| {
        serde_json::from_str(&text).ok().map(|state| Snapshot { sequence, state })
    }))
}

pub(super) async fn read_log(read: &SqlitePool, after: LogPosition, limit: i64) -> Result<Vec<StoredEvent>, EventStoreError> {
    let rows: Vec<EventRow> = sqlx::query_as(&format!("{SELECT_EVENTS} WHERE position > $1 ORDER BY position LIMIT $2"))
        .bind(after.position)
        .bind(limit)
        .fetch_all(read)
        .await
        .map_err(store_error)?;
    rows_to_events(rows)
}
