//! The PostgreSQL side of the event store.

use std::sync::Arc;

use application::event_store::{EventStoreError, LogPosition, Snapshot, StoredEvent, StreamAppend};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};

use super::chain;
use super::inline::{run_inline, InlineProjection, Tx};
use super::{conflict, is_sequence_taken, unavailable};

#[derive(sqlx::FromRow)]
struct EventRow {
    position: i64,
    commit_order: i64,
    aggregate_type: String,
    aggregate_id: String,
    sequence: i64,
    event_type: String,
    event_version: String,
    payload: Json<Value>,
    metadata: Json<Value>,
    recorded_at: DateTime<Utc>,
}

impl From<EventRow> for StoredEvent {
    fn from(row: EventRow) -> Self {
        StoredEvent {
            log_position: LogPosition { commit_order: row.commit_order, position: row.position },
            aggregate_type: row.aggregate_type,
            aggregate_id: row.aggregate_id,
            sequence: row.sequence,
            event_type: row.event_type,
            event_version: row.event_version,
            payload: row.payload.0,
            metadata: row.metadata.0,
            recorded_at: row.recorded_at,
        }
    }
}

const SELECT_EVENTS: &str = "SELECT position, transaction_id::text::bigint AS commit_order, aggregate_type, \
     aggregate_id, sequence, event_type, event_version, payload, metadata, recorded_at FROM events";

pub(super) async fn append(
    pool: &PgPool,
    inline: &[Arc<dyn InlineProjection>],
    appends: &[StreamAppend],
) -> Result<Vec<StoredEvent>, EventStoreError> {
    let mut tx = pool.begin().await.map_err(unavailable)?;
    let mut stored = Vec::with_capacity(appends.iter().map(|a| a.events.len()).sum());
    for append in appends.iter().filter(|a| !a.events.is_empty()) {
        let sealed;
        let append = if chain::is_chained(&append.aggregate_type) {
            let prev = prev_hash(&mut tx, append).await.map_err(unavailable)?;
            sealed = chain::seal(append, &prev);
            &sealed
        } else {
            append
        };
        let rows = insert_stream(&mut tx, append).await.map_err(|error| {
            if is_sequence_taken(&error) {
                conflict(append)
            } else {
                unavailable(error)
            }
        })?;
        stored.extend(rows);
        if let Some(snapshot) = &append.snapshot {
            upsert_snapshot(&mut tx, append, snapshot.sequence, &snapshot.state).await.map_err(unavailable)?;
        }
    }
    run_inline(inline, &mut Tx::Postgres(&mut tx), &stored).await?;
    tx.commit().await.map_err(unavailable)?;
    Ok(stored)
}

/// The stored hash of the event the append follows: one primary-key lookup.
async fn prev_hash(conn: &mut PgConnection, append: &StreamAppend) -> Result<String, sqlx::Error> {
    if append.expected_sequence == 0 {
        return Ok(chain::GENESIS_HASH.to_string());
    }
    let hash: Option<Option<String>> = sqlx::query_scalar(
        "SELECT metadata->>'hash' FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3",
    )
    .bind(&append.aggregate_type)
    .bind(&append.aggregate_id)
    .bind(append.expected_sequence)
    .fetch_optional(conn)
    .await?;
    // A missing predecessor makes the insert conflict or leaves a gap `audit verify` names.
    Ok(hash.flatten().unwrap_or_default())
}

/// One statement per stream, so a taken sequence names its stream.
async fn insert_stream(conn: &mut PgConnection, append: &StreamAppend) -> Result<Vec<StoredEvent>, sqlx::Error> {
    let count = append.events.len();
    let sequences: Vec<i64> = (1..=count as i64).map(|n| append.expected_sequence + n).collect();
    let types: Vec<&str> = append.events.iter().map(|e| e.event_type.as_str()).collect();
    let versions: Vec<&str> = append.events.iter().map(|e| e.event_version.as_str()).collect();
    let payloads: Vec<Json<&Value>> = append.events.iter().map(|e| Json(&e.payload)).collect();
    let metadata: Vec<Json<&Value>> = append.events.iter().map(|e| Json(&e.metadata)).collect();
    let mut rows: Vec<(i64, i64, i64, DateTime<Utc>)> = sqlx::query_as(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         SELECT $1, $2, u.sequence, u.event_type, u.event_version, u.payload, u.metadata \
         FROM UNNEST($3::bigint[], $4::text[], $5::text[], $6::jsonb[], $7::jsonb[]) \
              AS u(sequence, event_type, event_version, payload, metadata) \
         RETURNING sequence, position, transaction_id::text::bigint, recorded_at",
    )
    .bind(&append.aggregate_type)
    .bind(&append.aggregate_id)
    .bind(&sequences)
    .bind(&types)
    .bind(&versions)
    .bind(&payloads)
    .bind(&metadata)
    .fetch_all(&mut *conn)
    .await?;
    rows.sort_unstable_by_key(|row| row.0);
    Ok(rows
        .into_iter()
        .zip(&append.events)
        .map(|((sequence, position, commit_order, recorded_at), event)| StoredEvent {
            log_position: LogPosition { commit_order, position },
            aggregate_type: append.aggregate_type.clone(),
            aggregate_id: append.aggregate_id.clone(),
            sequence,
            event_type: event.event_type.clone(),
            event_version: event.event_version.clone(),
            payload: event.payload.clone(),
            metadata: event.metadata.clone(),
            recorded_at,
        })
        .collect())
}

async fn upsert_snapshot(
    conn: &mut PgConnection,
    append: &StreamAppend,
    last_sequence: i64,
    state: &Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload) \
         VALUES ($1, $2, $3, 1, $4) \
         ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE \
         SET last_sequence = EXCLUDED.last_sequence, \
             current_snapshot = snapshots.current_snapshot + 1, \
             payload = EXCLUDED.payload \
         WHERE snapshots.last_sequence < EXCLUDED.last_sequence",
    )
    .bind(&append.aggregate_type)
    .bind(&append.aggregate_id)
    .bind(last_sequence)
    .bind(Json(state))
    .execute(conn)
    .await?;
    Ok(())
}

pub(super) async fn load_stream(
    pool: &PgPool,
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
    .fetch_all(pool)
    .await
    .map_err(unavailable)?;
    Ok(rows.into_iter().map(StoredEvent::from).collect())
}

pub(super) async fn load_snapshot(
    pool: &PgPool,
    aggregate_type: &str,
    aggregate_id: &str,
) -> Result<Option<Snapshot>, EventStoreError> {
    let row: Option<(i64, Json<Value>)> = sqlx::query_as(
        "SELECT last_sequence, payload FROM snapshots WHERE aggregate_type = $1 AND aggregate_id = $2",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .fetch_optional(pool)
    .await
    .map_err(unavailable)?;
    Ok(row.map(|(sequence, state)| Snapshot { sequence, state: state.0 }))
}

/// Reads only events of transactions older than every transaction still in progress
/// (`pg_snapshot_xmin`): those can no longer be joined by an event ordered before them.
pub(super) async fn read_log(pool: &PgPool, after: LogPosition, limit: i64) -> Result<Vec<StoredEvent>, EventStoreError> {
    let rows: Vec<EventRow> = sqlx::query_as(&format!(
        "{SELECT_EVENTS} \
         WHERE (transaction_id, position) > ($1::text::xid8, $2) \
           AND transaction_id < pg_snapshot_xmin(pg_current_snapshot()) \
         ORDER BY transaction_id, position \
         LIMIT $3"
    ))
    .bind(after.commit_order.to_string())
    .bind(after.position)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(unavailable)?;
    Ok(rows.into_iter().map(StoredEvent::from).collect())
}
