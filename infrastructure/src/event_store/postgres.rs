//! The PostgreSQL side of the event store.

use std::collections::HashMap;
use std::sync::Arc;

use application::event_store::{EventStoreError, LogPosition, Snapshot, StoredEvent, StreamAppend, StreamEvent};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};

use super::chain;
use super::inline::{run_inline, InlineProjection, Tx};
use super::{conflict, stored_event, store_error};

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

/// Opens an append's transaction, in one round trip (a simple query).
///
/// The append's statements (the events, the inline projections) are prepared once per
/// connection, take their rows as arrays and each reads or writes a handful of rows by
/// key. Left to itself PostgreSQL plans them afresh at every execution: a custom plan
/// knows the arrays' lengths, so it always looks cheaper than the generic one. That
/// planning was 41% of these statements' time (`pg_stat_statements` over `kiln-bench
/// latency --only credits`). Here each is planned once per connection, generically. A
/// generic plan cannot see an array's length, though, and one made while a table was
/// small (a fresh database) could scan that table whole or hash it, and keep doing so as
/// it grows; so these plans may only look rows up through indexes, in nested loops (a
/// statement with no index for its keys would still scan: the settings only price the
/// other ways out). A test checks the credit path's plans.
pub const APPEND_BEGIN: &str = "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL enable_seqscan = off; \
     SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off";

pub(super) async fn append(
    pool: &PgPool,
    inline: &[Arc<dyn InlineProjection>],
    appends: &[StreamAppend],
    known_hashes: &HashMap<String, String>,
) -> Result<Vec<StoredEvent>, EventStoreError> {
    let mut tx = pool.begin_with(APPEND_BEGIN).await.map_err(store_error)?;
    let appends: Vec<&StreamAppend> = appends.iter().filter(|a| !a.events.is_empty()).collect();
    let prev = prev_hashes(&mut tx, &appends, known_hashes).await.map_err(store_error)?;
    let sealed: Vec<StreamAppend> = appends
        .iter()
        .filter(|a| chain::is_chained(&a.aggregate_type))
        .map(|a| chain::seal(a, prev.get(a.aggregate_id.as_str()).map_or("", String::as_str)))
        .collect();
    let mut sealed = sealed.iter();
    let appends: Vec<&StreamAppend> = appends
        .into_iter()
        .map(|a| if chain::is_chained(&a.aggregate_type) { sealed.next().unwrap_or(a) } else { a })
        .collect();
    let stored = insert_streams(&mut tx, &appends).await?;
    for append in &appends {
        if let Some(snapshot) = &append.snapshot {
            upsert_snapshot(&mut tx, &append.aggregate_type, &append.aggregate_id, snapshot.sequence, &snapshot.state).await.map_err(store_error)?;
        }
    }
    run_inline(inline, &mut Tx::Postgres(&mut tx), &stored).await?;
    tx.commit().await.map_err(store_error)?;
    Ok(stored)
}

/// The stored hashes of given events: `$1` the aggregate type, `$2` the stream ids, `$3`
/// the sequences.
pub const PREDECESSOR_HASHES_SQL: &str = "SELECT e.aggregate_id, e.metadata->>'hash' \
     FROM UNNEST($2::text[], $3::bigint[]) AS u(aggregate_id, sequence) \
     JOIN events e ON e.aggregate_type = $1 AND e.aggregate_id = u.aggregate_id AND e.sequence = u.sequence";

/// The stored hash of the event each chained append follows (by stream id):
/// [`chain::GENESIS_HASH`] for new streams, `known` where the process remembers it, the
/// rest in one query over the primary key.
async fn prev_hashes(
    conn: &mut PgConnection,
    appends: &[&StreamAppend],
    known: &HashMap<String, String>,
) -> Result<HashMap<String, String>, sqlx::Error> {
    let chained: Vec<&&StreamAppend> = appends.iter().filter(|a| chain::is_chained(&a.aggregate_type)).collect();
    let mut hashes: HashMap<String, String> = chained
        .iter()
        .filter_map(|a| match (a.expected_sequence, known.get(&a.aggregate_id)) {
            (0, _) => Some((a.aggregate_id.clone(), chain::GENESIS_HASH.to_string())),
            (_, Some(hash)) => Some((a.aggregate_id.clone(), hash.clone())),
            _ => None,
        })
        .collect();
    let (ids, sequences): (Vec<&str>, Vec<i64>) = chained
        .iter()
        .filter(|a| !hashes.contains_key(&a.aggregate_id))
        .map(|a| (a.aggregate_id.as_str(), a.expected_sequence))
        .unzip();
    if ids.is_empty() {
        return Ok(hashes);
    }
    let rows: Vec<(String, Option<String>)> = sqlx::query_as(PREDECESSOR_HASHES_SQL)
    .bind(chain::CHAINED_AGGREGATE_TYPE)
    .bind(&ids)
    .bind(&sequences)
    .fetch_all(conn)
    .await?;
    // A missing predecessor (or hash) seals with "": the insert then conflicts, or
    // `audit verify` names the gap.
    hashes.extend(rows.into_iter().map(|(id, hash)| (id, hash.unwrap_or_default())));
    Ok(hashes)
}

/// Every event of every stream in one statement. A sequence already taken (another
/// writer appended to that stream first) fails it on the primary key; that stream is
/// reported as the conflict and the transaction, dropped unfinished, rolls back.
///
/// A plain `INSERT`, not `ON CONFLICT DO NOTHING`: conflicts are rare (another process
/// wrote the stream), and the speculative insertion that `ON CONFLICT` needs for every
/// row made the statement about half as dear again (245 claims: 2.8–4.0 ms against
/// 4.8–8.2 ms by `\timing`, the same rows, rolled back).
async fn insert_streams(conn: &mut PgConnection, appends: &[&StreamAppend]) -> Result<Vec<StoredEvent>, EventStoreError> {
    let count = appends.iter().map(|a| a.events.len()).sum();
    let mut types: Vec<&str> = Vec::with_capacity(count);
    let mut ids: Vec<&str> = Vec::with_capacity(count);
    let mut sequences: Vec<i64> = Vec::with_capacity(count);
    let mut event_types: Vec<&str> = Vec::with_capacity(count);
    let mut versions: Vec<&str> = Vec::with_capacity(count);
    let mut payloads: Vec<Json<&Value>> = Vec::with_capacity(count);
    let mut metadata: Vec<Json<&Value>> = Vec::with_capacity(count);
    for append in appends {
        for (offset, event) in append.events.iter().enumerate() {
            types.push(&append.aggregate_type);
            ids.push(&append.aggregate_id);
            sequences.push(append.expected_sequence + 1 + offset as i64);
            event_types.push(&event.event_type);
            versions.push(&event.event_version);
            payloads.push(Json(&event.payload));
            metadata.push(Json(&event.metadata));
        }
    }
    let rows: Vec<(String, String, i64, i64, i64, DateTime<Utc>)> = sqlx::query_as(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::jsonb[], $7::jsonb[]) \
         RETURNING aggregate_type, aggregate_id, sequence, position, transaction_id::text::bigint, recorded_at",
    )
    .bind(&types)
    .bind(&ids)
    .bind(&sequences)
    .bind(&event_types)
    .bind(&versions)
    .bind(&payloads)
    .bind(&metadata)
    .fetch_all(&mut *conn)
    .await
    .map_err(|error| match taken_by_another(&error, appends) {
        Some(append) => conflict(append),
        None => store_error(error),
    })?;
    let mut written: HashMap<(&str, &str, i64), (i64, i64, DateTime<Utc>)> = HashMap::with_capacity(rows.len());
    for (aggregate_type, aggregate_id, sequence, position, commit_order, recorded_at) in &rows {
        written.insert((aggregate_type.as_str(), aggregate_id.as_str(), *sequence), (*position, *commit_order, *recorded_at));
    }
    let mut stored = Vec::with_capacity(count);
    for append in appends {
        for (offset, event) in append.events.iter().enumerate() {
            let sequence = append.expected_sequence + 1 + offset as i64;
            let Some(&(position, commit_order, recorded_at)) =
                written.get(&(append.aggregate_type.as_str(), append.aggregate_id.as_str(), sequence))
            else {
                return Err(conflict(append));
            };
            stored.push(stored_event(append, event, sequence, LogPosition { commit_order, position }, recorded_at));
        }
    }
    Ok(stored)
}

/// The append whose event another writer stored first, if `error` says a sequence was
/// taken: PostgreSQL names the key in the detail, `Key (aggregate_type, aggregate_id,
/// sequence)=(TeamCredits, 0194…, 7) already exists.` Should no append match it, the
/// first is named (its writer reloads and decides again, as after any conflict).
fn taken_by_another<'a>(error: &sqlx::Error, appends: &[&'a StreamAppend]) -> Option<&'a StreamAppend> {
    let sqlx::Error::Database(error) = error else { return None };
    if error.code().as_deref() != Some("23505") || error.constraint() != Some("events_pkey") {
        return None;
    }
    let detail = error.try_downcast_ref::<sqlx::postgres::PgDatabaseError>().and_then(|e| e.detail()).unwrap_or_default();
    let named = appends.iter().copied().find(|a| detail.contains(&format!("=({}, {}, ", a.aggregate_type, a.aggregate_id)));
    named.or_else(|| appends.first().copied())
}

/// Stores a stream's snapshot unless one at the same or a later sequence is stored.
pub(super) async fn upsert_snapshot(
    conn: &mut PgConnection,
    aggregate_type: &str,
    aggregate_id: &str,
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
    .bind(aggregate_type)
    .bind(aggregate_id)
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
    .map_err(store_error)?;
    Ok(rows.into_iter().map(StoredEvent::from).collect())
}

/// The streams' events, each stream looked up by its key: a `LATERAL` subquery per id,
/// kept from being merged into a join by `OFFSET 0`. (`aggregate_id = ANY($2)` left the
/// choice to the planner, which, on a log whose statistics lag behind its growth, read
/// every event of the type and filtered: 13 ms for the 250 jobs of a dispatch claim in
/// `kiln-bench dispatch`, against 4 ms by key, inside the dispatch turn.) The payload
/// comes as text (what `jsonb` sends anyway), for decoding straight into the event.
pub(super) async fn load_streams(pool: &PgPool, aggregate_type: &str, aggregate_ids: &[String]) -> Result<Vec<StreamEvent>, EventStoreError> {
    let rows: Vec<(String, i64, String, String)> = sqlx::query_as(
        "SELECT u.aggregate_id, e.sequence, e.event_type, e.payload::text \
         FROM (SELECT DISTINCT aggregate_id FROM UNNEST($2::text[]) AS a(aggregate_id)) AS u CROSS JOIN LATERAL \
         (SELECT sequence, event_type, payload FROM events WHERE aggregate_type = $1 AND aggregate_id = u.aggregate_id OFFSET 0) AS e \
         ORDER BY u.aggregate_id, e.sequence",
    )
    .bind(aggregate_type)
    .bind(aggregate_ids)
    .fetch_all(pool)
    .await
    .map_err(store_error)?;
    Ok(rows.into_iter().map(|(aggregate_id, sequence, event_type, payload)| StreamEvent { aggregate_id, sequence, event_type, payload }).collect())
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
    .map_err(store_error)?;
    Ok(row.map(|(sequence, state)| Snapshot { sequence, state: state.0 }))
}

/// A row of [`load_latest`]: the stream's snapshot (`is_snapshot`: its sequence, its
/// state in `payload`, the other columns empty) or one of its events.
#[derive(sqlx::FromRow)]
struct LatestRow {
    is_snapshot: bool,
    #[sqlx(flatten)]
    event: EventRow,
}

/// The snapshot and the events after it in one statement (one round trip, one database
/// snapshot): the snapshot's row sorts first, as its sequence is below every event read.
pub(super) async fn load_latest(
    pool: &PgPool,
    aggregate_type: &str,
    aggregate_id: &str,
) -> Result<(Option<Snapshot>, Vec<StoredEvent>), EventStoreError> {
    // The events are read by `SELECT_EVENTS` itself, and name the union's columns; the
    // snapshot's row lists its values in that order (a union matches columns by position).
    let rows: Vec<LatestRow> = sqlx::query_as(&format!(
        "WITH s AS (SELECT last_sequence, payload FROM snapshots WHERE aggregate_type = $1 AND aggregate_id = $2) \
         SELECT e.*, false AS is_snapshot FROM ({SELECT_EVENTS} \
            WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > COALESCE((SELECT last_sequence FROM s), 0)) e \
         UNION ALL \
         SELECT 0, 0, $1, $2, last_sequence, '', '', payload, 'null'::jsonb, now(), true FROM s \
         ORDER BY sequence"
    ))
    .bind(aggregate_type)
    .bind(aggregate_id)
    .fetch_all(pool)
    .await
    .map_err(store_error)?;
    let mut rows = rows.into_iter().peekable();
    let snapshot = rows
        .next_if(|row| row.is_snapshot)
        .map(|row| Snapshot { sequence: row.event.sequence, state: row.event.payload.0 });
    Ok((snapshot, rows.map(|row| StoredEvent::from(row.event)).collect()))
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
    .map_err(store_error)?;
    Ok(rows.into_iter().map(StoredEvent::from).collect())
}
