//! Rebuild on SQLite: shadow tables are `TEMP` tables of the rebuild's own connection
//! (searched before `main`), created from the live `CREATE TABLE` text; the swap replaces
//! the live rows inside one `BEGIN IMMEDIATE` transaction (SQLite's single writer lock
//! keeps every append out meanwhile).

use application::event_store::{LogPosition, StoredEvent};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use infrastructure::event_store::{InlineProjection, SqlEventStore, Tx};
use sqlx::{Connection, Executor, SqliteConnection, SqlitePool};

use super::{apply_events, per_batch_pass, Outcome, Progress, RebuildError, RebuildOptions, Shadow, TableDiff, ENSURE_CHECKPOINT, SAVE_CHECKPOINT};
use crate::catalog::{Kind, ProjectionInfo};

pub(super) async fn run(
    store: &SqlEventStore,
    write: &SqlitePool,
    info: &ProjectionInfo,
    options: &RebuildOptions,
    progress: &dyn Progress,
) -> Result<Outcome, RebuildError> {
    // Its own connection: TEMP tables belong to one connection, and the app's single
    // write connection stays free for appends during the bulk pass.
    let mut conn = SqliteConnection::connect_with(&write.connect_options()).await?;
    let outcome = async {
        create_shadow(&mut conn, info.tables).await?;
        let (position, applied) = per_batch_pass(&mut SqliteShadow { conn: &mut conn }, store, info, options, progress).await?;
        finish(&mut conn, info, options, progress, position, applied).await
    }
    .await;
    let _ = conn.close().await;
    outcome
}

/// The connection's `TEMP` tables, written by the projection's own code.
struct SqliteShadow<'a> {
    conn: &'a mut SqliteConnection,
}

#[async_trait]
impl Shadow for SqliteShadow<'_> {
    async fn apply_batch(&mut self, projection: &dyn InlineProjection, events: &[StoredEvent]) -> Result<(), RebuildError> {
        let mut tx = self.conn.begin().await?;
        apply_events(projection, &mut Tx::Sqlite(&mut tx), events).await?;
        tx.commit().await?;
        Ok(())
    }
}

async fn create_shadow(conn: &mut SqliteConnection, tables: &[&str]) -> Result<(), RebuildError> {
    for table in tables {
        let sql: Option<String> = sqlx::query_scalar("SELECT sql FROM main.sqlite_master WHERE type = 'table' AND name = $1")
            .bind(table)
            .fetch_optional(&mut *conn)
            .await?;
        let sql = sql.ok_or_else(|| RebuildError::Shadow { table: table.to_string(), reason: "no such live table".into() })?;
        if !sql.starts_with("CREATE TABLE") {
            return Err(RebuildError::Shadow { table: table.to_string(), reason: format!("unexpected definition: {sql}") });
        }
        conn.execute(sql.replacen("CREATE TABLE", "CREATE TEMP TABLE", 1).as_str()).await?;
    }
    Ok(())
}

type Row = (i64, String, String, i64, String, String, String, String, DateTime<Utc>);

async fn read_tail(conn: &mut SqliteConnection, after: i64, until: i64, limit: i64) -> Result<Vec<StoredEvent>, RebuildError> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT position, aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, recorded_at \
         FROM main.events WHERE position > $1 AND position <= $2 ORDER BY position LIMIT $3",
    )
    .bind(after)
    .bind(until)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|(position, aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, recorded_at)| {
            let parse = |text: &str| {
                serde_json::from_str(text).map_err(|e| RebuildError::Projection {
                    projection: "rebuild".into(),
                    position: LogPosition { commit_order: position, position },
                    reason: format!("event {aggregate_type} {aggregate_id} #{sequence} is not JSON: {e}"),
                })
            };
            Ok(StoredEvent {
                log_position: LogPosition { commit_order: position, position },
                payload: parse(&payload)?,
                metadata: parse(&metadata)?,
                aggregate_type,
                aggregate_id,
                sequence,
                event_type,
                event_version,
                recorded_at,
            })
        })
        .collect()
}

async fn finish(
    conn: &mut SqliteConnection,
    info: &ProjectionInfo,
    options: &RebuildOptions,
    progress: &dyn Progress,
    mut position: LogPosition,
    mut applied: u64,
) -> Result<Outcome, RebuildError> {
    // The write lock: no append and no projector step commits until we are done.
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    let until = match (info.kind, options.verify) {
        (Kind::Async, true) => {
            sqlx::query(ENSURE_CHECKPOINT).bind(info.name).execute(&mut *tx).await?;
            sqlx::query_scalar("SELECT position FROM main.projection_checkpoints WHERE name = $1")
                .bind(info.name)
                .fetch_one(&mut *tx)
                .await?
        }
        _ => i64::MAX,
    };
    loop {
        let events = read_tail(&mut tx, position.position, until, options.batch_size).await?;
        let Some(last) = events.last().map(|e| e.log_position) else { break };
        apply_events(info.projection.as_ref(), &mut Tx::Sqlite(&mut tx), &events).await?;
        position = last;
        applied += events.len() as u64;
        progress.advance(events.len() as u64);
    }
    if options.verify {
        let differences = diff(&mut tx, info.tables, options.differences_max).await?;
        tx.rollback().await?;
        return Ok((applied, position, differences));
    }
    for table in info.tables {
        tx.execute(format!("DELETE FROM main.\"{table}\"").as_str()).await?;
        tx.execute(format!("INSERT INTO main.\"{table}\" SELECT * FROM temp.\"{table}\"").as_str()).await?;
    }
    if info.kind == Kind::Async {
        sqlx::query(ENSURE_CHECKPOINT).bind(info.name).execute(&mut *tx).await?;
        sqlx::query(SAVE_CHECKPOINT).bind(info.name).bind(position.commit_order).bind(position.position).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok((applied, position, Vec::new()))
}

async fn diff(conn: &mut SqliteConnection, tables: &[&str], first_max: usize) -> Result<Vec<TableDiff>, RebuildError> {
    let mut diffs = Vec::new();
    for table in tables {
        let columns: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info($1, 'main') ORDER BY cid")
            .bind(table)
            .fetch_all(&mut *conn)
            .await?;
        let object: Vec<String> = columns.iter().map(|c| format!("'{c}', \"{c}\"")).collect();
        let object = format!("json_object({})", object.join(", "));
        let (ours, theirs) = (format!("temp.\"{table}\""), format!("main.\"{table}\""));
        let mut sides = Vec::new();
        // Read-model rows have primary keys, so set difference (SQLite has no EXCEPT ALL)
        // loses nothing.
        for (from, minus, sign) in [(&ours, &theirs, "+"), (&theirs, &ours, "-")] {
            let rows = format!("SELECT * FROM {from} EXCEPT SELECT * FROM {minus}");
            let count: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM ({rows})")).fetch_one(&mut *conn).await?;
            let first: Vec<String> = sqlx::query_scalar(&format!("SELECT {object} FROM ({rows}) ORDER BY 1 LIMIT $1"))
                .bind(first_max as i64)
                .fetch_all(&mut *conn)
                .await?;
            sides.push((count, first.into_iter().map(|row| format!("{sign} {row}")).collect::<Vec<_>>()));
        }
        let (rebuilt, live_only) = (sides.remove(0), sides.remove(0));
        if rebuilt.0 + live_only.0 > 0 {
            let mut first: Vec<String> = rebuilt.1.into_iter().chain(live_only.1).collect();
            first.sort_by(|a, b| a[2..].cmp(&b[2..]));
            first.truncate(first_max);
            diffs.push(TableDiff { table: table.to_string(), only_in_rebuild: rebuilt.0, only_in_live: live_only.0, first });
        }
    }
    Ok(diffs)
}
