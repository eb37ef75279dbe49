//! Rebuild on PostgreSQL: shadow tables in a scratch schema first on the rebuild
//! connection's `search_path`; swap by moving them into the live schema.

use application::event_store::{EventStore, LogPosition, StoredEvent};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use infrastructure::event_store::{InlineProjection, SqlEventStore, Tx};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{Connection, Executor, PgConnection, PgPool};

use super::{
    apply_events, bounded_by_checkpoint, bulk, fold, per_batch_pass, Outcome, Progress, RebuildError, RebuildOptions, Shadow, TableDiff,
    ENSURE_CHECKPOINT, SAVE_CHECKPOINT,
};
use crate::catalog::{Kind, ProjectionInfo};

pub(super) async fn run(
    store: &SqlEventStore,
    pool: &PgPool,
    info: &ProjectionInfo,
    options: &RebuildOptions,
    progress: &dyn Progress,
) -> Result<Outcome, RebuildError> {
    // A connection of its own: its search_path is changed for the whole rebuild.
    let mut conn = PgConnection::connect_with(&pool.connect_options()).await?;
    let live: String = sqlx::query_scalar("SELECT current_schema()").fetch_one(&mut conn).await?;
    let shadow = format!("kiln_rebuild_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let outcome = async {
        create_tables(&mut conn, &live, &shadow, info.tables).await?;
        conn.execute(format!("SET search_path TO \"{shadow}\", \"{live}\"").as_str()).await?;
        let fold = if options.bulk { fold::for_projection(info.name) } else { None };
        let (position, applied) = match fold {
            Some(fold) => {
                let until = if bounded_by_checkpoint(info, options) {
                    Some(crate::projector::load_checkpoint(store.database(), info.name).await?)
                } else {
                    None
                };
                let started = std::time::Instant::now();
                let pass = bulk::pass(pool, &mut conn, fold, until, progress).await?;
                let folded_ms = started.elapsed().as_millis() as u64;
                // The loaded tables are vacuumed once; then each index is built by one
                // backend, side by side (and the tables analyzed side by side): the
                // server's cores.
                let keys = key_statements(&mut conn, &live, &shadow, info.tables).await?;
                let setup = [KEY_BUILD_MEMORY, KEY_BUILD_ALONE, KEY_BUILD_OWN_SCAN];
                in_parallel(pool, &setup, table_statements("VACUUM", &shadow, info.tables)).await?;
                in_parallel(pool, &setup, keys.indexes).await?;
                in_parallel(pool, &setup, keys.constraints).await?;
                in_parallel(pool, &setup, table_statements("ANALYZE", &shadow, info.tables)).await?;
                let keyed_ms = started.elapsed().as_millis() as u64 - folded_ms;
                tracing::info!(projection = info.name, events = pass.1, folded_ms, keyed_ms, "rebuild: bulk pass done");
                pass
            }
            None => {
                let keys = key_statements(&mut conn, &live, &shadow, info.tables).await?;
                for statement in keys.indexes.iter().chain(&keys.constraints) {
                    conn.execute(statement.as_str()).await?;
                }
                let mut tables = PgShadow { conn: &mut conn, shadow: &shadow, tables: info.tables };
                per_batch_pass(&mut tables, store, info, options, progress).await?
            }
        };
        // The swap takes exclusive locks on the live tables one by one while readers may
        // hold one and want the next: PostgreSQL then aborts one side as a deadlock (or
        // the lock wait times out). The swap's transaction rolls back whole, so it is
        // simply tried again, a bounded number of times.
        let (mut attempt, started) = (0, std::time::Instant::now());
        let outcome = loop {
            attempt += 1;
            match finish(store, &mut conn, &live, &shadow, info, options, progress, position, applied).await {
                Err(error) if attempt < SWAP_ATTEMPTS_MAX && is_lock_conflict(&error) => {
                    tokio::time::sleep(std::time::Duration::from_millis(50 * u64::from(attempt))).await;
                }
                result => break result,
            }
        };
        tracing::info!(projection = info.name, elapsed_ms = started.elapsed().as_millis() as u64, "rebuild: tail and swap (or diff) done");
        outcome
    }
    .await;
    // The scratch schema is empty after a swap; after a verify or a failure it holds the
    // shadow tables. Either way it goes.
    let _ = conn.execute(format!("DROP SCHEMA IF EXISTS \"{shadow}\" CASCADE").as_str()).await;
    let _ = conn.close().await;
    outcome
}

/// Shadow tables in the scratch schema, written by the projection's own code.
struct PgShadow<'a> {
    conn: &'a mut PgConnection,
    shadow: &'a str,
    tables: &'a [&'a str],
}

#[async_trait]
impl Shadow for PgShadow<'_> {
    async fn apply_batch(&mut self, projection: &dyn InlineProjection, events: &[StoredEvent]) -> Result<(), RebuildError> {
        let mut tx = self.conn.begin().await?;
        apply_events(projection, &mut Tx::Postgres(&mut tx), events).await?;
        tx.commit().await?;
        Ok(())
    }

    // Fresh tables have no statistics: without them the planner joins each
    // `UPDATE … FROM (VALUES …)` by scanning the whole table, and the pass turns
    // quadratic. Analyzing as the tables double in size keeps the index plans.
    async fn batch_done(&mut self, batches: u64) -> Result<(), RebuildError> {
        if batches.is_power_of_two() {
            analyze(self.conn, self.shadow, self.tables).await?;
        }
        Ok(())
    }
}

async fn analyze(conn: &mut PgConnection, shadow: &str, tables: &[&str]) -> Result<(), RebuildError> {
    for statement in table_statements("ANALYZE", shadow, tables) {
        conn.execute(statement.as_str()).await?;
    }
    Ok(())
}

/// `command` (`VACUUM`, `ANALYZE`) for each shadow table, one statement each.
///
/// The freshly loaded tables are vacuumed before their indexes are built: one pass sets
/// every row's hint bits (and the visibility map), which the first builds would otherwise
/// each set on the same pages at once. Measured on 2 cores, a million-row `credit_ledger`:
/// the vacuum 0.17 s, then four builds side by side 1.2 s instead of 1.5 s.
fn table_statements(command: &str, shadow: &str, tables: &[&str]) -> Vec<String> {
    tables.iter().map(|table| format!("{command} \"{shadow}\".\"{table}\"")).collect()
}

/// Memory for one index build (its sort runs in memory, not in temporary files).
const KEY_BUILD_MEMORY: &str = "SET maintenance_work_mem = '256MB'";

/// Each index built by its own backend only: the builders already run side by side, and
/// a build's parallel workers would compete with the other builder for the same cores
/// (measured on 2 cores: a build with workers took as long as one without).
const KEY_BUILD_ALONE: &str = "SET max_parallel_maintenance_workers = 0";

/// Each builder reads the table at its own pace. With synchronized scans (the default) the
/// second builder's heap scan joins the first's: both then walk the same pages at once,
/// contend for them (and for setting their hint bits, the first read after the load), and
/// two builds side by side took longer than the same builds one after the other (measured
/// on 2 cores, four indexes of a million-row `credit_ledger`: 2.5–2.6 s side by side with
/// synchronized scans, 2.0 s one after the other, 1.5 s side by side without).
const KEY_BUILD_OWN_SCAN: &str = "SET synchronize_seqscans = off";

/// Connections that build indexes (or analyze) side by side after a bulk load.
const KEY_BUILDERS: usize = 2;

/// Runs `statements` (each independent of the others) on [`KEY_BUILDERS`] connections of
/// their own at once, each taking the next statement when it is done, after `setup`.
async fn in_parallel(pool: &PgPool, setup: &[&str], statements: Vec<String>) -> Result<(), RebuildError> {
    let queue = std::sync::Mutex::new(statements.into_iter());
    let builder = || async {
        let mut conn = PgConnection::connect_with(&pool.connect_options()).await?;
        for statement in setup {
            conn.execute(*statement).await?;
        }
        loop {
            // The guard is dropped before the statement runs.
            let next = queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner).next();
            let Some(statement) = next else { break };
            conn.execute(statement.as_str()).await?;
        }
        conn.close().await?;
        Ok::<(), RebuildError>(())
    };
    futures::future::try_join_all((0..KEY_BUILDERS).map(|_| builder())).await?;
    Ok(())
}

/// Swap attempts before a rebuild gives up on lock conflicts.
const SWAP_ATTEMPTS_MAX: u32 = 5;

/// A deadlock (40P01) or lock timeout (55P03) that aborted the swap's transaction.
fn is_lock_conflict(error: &RebuildError) -> bool {
    let RebuildError::Database(sqlx::Error::Database(db)) = error else { return false };
    matches!(db.code().as_deref(), Some("40P01") | Some("55P03"))
}

/// The shadow of each table: same columns, defaults and CHECKs (`LIKE`); keys and indexes
/// come with [`key_statements`] (after a bulk load: building an index once is cheaper than
/// maintaining it row by row).
async fn create_tables(conn: &mut PgConnection, live: &str, shadow: &str, tables: &[&str]) -> Result<(), RebuildError> {
    conn.execute(format!("CREATE SCHEMA \"{shadow}\"").as_str()).await?;
    for table in tables {
        conn.execute(
            format!(
                "CREATE TABLE \"{shadow}\".\"{table}\" (LIKE \"{live}\".\"{table}\" \
                 INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED INCLUDING IDENTITY)"
            )
            .as_str(),
        )
        .await?;
    }
    Ok(())
}

/// The statements that give each shadow table the live table's keys, unique constraints
/// and indexes under their own names: first every index (independent of each other, so
/// they can be built side by side), then the constraints, which adopt their index
/// (`… PRIMARY KEY USING INDEX`, instant) — an exclusion or deferrable constraint builds
/// its own.
struct Keys {
    indexes: Vec<String>,
    constraints: Vec<String>,
}

async fn key_statements(conn: &mut PgConnection, live: &str, shadow: &str, tables: &[&str]) -> Result<Keys, RebuildError> {
    let mut keys = Keys { indexes: Vec::new(), constraints: Vec::new() };
    for table in tables {
        let on_shadow = |name: &str, definition: &str| -> Result<String, RebuildError> {
            let on_shadow = format!(" ON \"{shadow}\".\"{table}\" ");
            [format!(" ON {live}.{table} "), format!(" ON \"{live}\".\"{table}\" "), format!(" ON {table} ")]
                .iter()
                .find(|on| definition.contains(on.as_str()))
                .map(|on| definition.replacen(on.as_str(), &on_shadow, 1))
                .ok_or_else(|| RebuildError::Shadow { table: table.to_string(), reason: format!("cannot retarget index {name}: {definition}") })
        };
        let constraints: Vec<(String, String, String, bool, String, String)> = sqlx::query_as(
            "SELECT conname::text, contype::text, pg_get_constraintdef(oid), condeferrable, \
             (SELECT relname::text FROM pg_class WHERE oid = conindid), pg_get_indexdef(conindid) \
             FROM pg_constraint WHERE conrelid = $1::regclass AND contype IN ('p', 'u', 'x')",
        )
        .bind(format!("\"{live}\".\"{table}\""))
        .fetch_all(&mut *conn)
        .await?;
        let alter = format!("ALTER TABLE \"{shadow}\".\"{table}\" ADD CONSTRAINT");
        for (name, kind, definition, deferrable, index_name, index) in &constraints {
            let adopts = match kind.as_str() {
                "p" => Some("PRIMARY KEY"),
                "u" => Some("UNIQUE"),
                _ => None,
            };
            match adopts {
                Some(adopts) if !deferrable => {
                    keys.indexes.push(on_shadow(index_name, index)?);
                    keys.constraints.push(format!("{alter} \"{name}\" {adopts} USING INDEX \"{index_name}\""));
                }
                _ => keys.constraints.push(format!("{alter} \"{name}\" {definition}")),
            }
        }
        let indexes: Vec<(String, String)> =
            sqlx::query_as("SELECT indexname::text, indexdef FROM pg_indexes WHERE schemaname = $1 AND tablename = $2")
                .bind(live)
                .bind(table)
                .fetch_all(&mut *conn)
                .await?;
        for (name, definition) in indexes.iter().filter(|(name, _)| !constraints.iter().any(|c| c.4 == *name)) {
            keys.indexes.push(on_shadow(name, definition)?);
        }
    }
    Ok(keys)
}

type Row = (i64, i64, String, String, i64, String, String, Json<Value>, Json<Value>, DateTime<Utc>);

/// The events of `read_tail`, in commit order over the commit-order index (the converted
/// column is named `commit_order`, so `ORDER BY transaction_id` is the column's own order:
/// see `infrastructure::event_store::LOG_HEAD_SQL`).
pub const TAIL_SQL: &str = "SELECT position, transaction_id::text::bigint AS commit_order, aggregate_type, aggregate_id, sequence, \
     event_type, event_version, payload, metadata, recorded_at FROM events \
     WHERE (transaction_id, position) > ($1::text::xid8, $2) AND (transaction_id, position) <= ($3::text::xid8, $4) \
     ORDER BY transaction_id, position LIMIT $5";

/// Events after `after` (and at most `until`) as committed now: no gap-safety filter.
/// Only called when nothing can commit below the result any more (events locked, or
/// bounded by a checkpoint that was itself read gap-safely).
async fn read_tail(conn: &mut PgConnection, after: LogPosition, until: Option<LogPosition>, limit: i64) -> Result<Vec<StoredEvent>, sqlx::Error> {
    let until = until.unwrap_or(LogPosition { commit_order: i64::MAX, position: i64::MAX });
    let rows: Vec<Row> = sqlx::query_as(TAIL_SQL)
        .bind(after.commit_order.to_string())
        .bind(after.position)
        .bind(until.commit_order.to_string())
        .bind(until.position)
        .bind(limit)
        .fetch_all(conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(position, commit_order, aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, recorded_at)| {
            StoredEvent {
                log_position: LogPosition { commit_order, position },
                aggregate_type,
                aggregate_id,
                sequence,
                event_type,
                event_version,
                payload: payload.0,
                metadata: metadata.0,
                recorded_at,
            }
        })
        .collect())
}

/// Phase 2, in one transaction: hold the log still for this projection, apply the tail,
/// then swap (or diff and roll back).
#[allow(clippy::too_many_arguments)]
async fn finish(
    store: &SqlEventStore,
    conn: &mut PgConnection,
    live: &str,
    shadow: &str,
    info: &ProjectionInfo,
    options: &RebuildOptions,
    progress: &dyn Progress,
    mut position: LogPosition,
    mut applied: u64,
) -> Result<Outcome, RebuildError> {
    let mut tx = conn.begin().await?;
    // Waiting for a long-running reader or writer is bounded; the rebuild fails instead.
    tx.execute("SET LOCAL lock_timeout = '30s'").await?;
    let until = match info.kind {
        Kind::Inline => {
            // Blocks every append (they take ROW EXCLUSIVE) and waits for those in flight;
            // readers go on. From here the log cannot change under us.
            tx.execute("LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE").await?;
            None
        }
        Kind::Async => {
            sqlx::query(ENSURE_CHECKPOINT).bind(info.name).execute(&mut *tx).await?;
            let (commit_order, at): (i64, i64) =
                sqlx::query_as("SELECT commit_order, position FROM projection_checkpoints WHERE name = $1 FOR UPDATE")
                    .bind(info.name)
                    .fetch_one(&mut *tx)
                    .await?;
            // Verifying compares with the live table as of its checkpoint; rebuilding goes
            // as far as the log is safely readable and moves the checkpoint there.
            options.verify.then_some(LogPosition { commit_order, position: at })
        }
    };
    loop {
        let events = if info.kind == Kind::Async && until.is_none() {
            store.read_log(position, options.batch_size).await?
        } else {
            read_tail(&mut tx, position, until, options.batch_size).await?
        };
        let Some(last) = events.last().map(|e| e.log_position) else { break };
        apply_events(info.projection.as_ref(), &mut Tx::Postgres(&mut tx), &events).await?;
        position = last;
        applied += events.len() as u64;
        progress.advance(events.len() as u64);
    }
    if options.verify {
        let differences = diff(&mut tx, live, shadow, info.tables, options.differences_max).await?;
        tx.rollback().await?;
        return Ok((applied, position, differences));
    }
    for table in info.tables {
        tx.execute(format!("DROP TABLE \"{live}\".\"{table}\"").as_str()).await?;
        tx.execute(format!("ALTER TABLE \"{shadow}\".\"{table}\" SET SCHEMA \"{live}\"").as_str()).await?;
    }
    if info.kind == Kind::Async {
        sqlx::query(SAVE_CHECKPOINT).bind(info.name).bind(position.commit_order).bind(position.position).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok((applied, position, Vec::new()))
}

/// Ordered full-row comparison of each shadow table with its live table (multiset
/// difference both ways), with the first differing rows as JSON.
async fn diff(conn: &mut PgConnection, live: &str, shadow: &str, tables: &[&str], first_max: usize) -> Result<Vec<TableDiff>, RebuildError> {
    let mut diffs = Vec::new();
    for table in tables {
        let (ours, theirs) = (format!("\"{shadow}\".\"{table}\""), format!("\"{live}\".\"{table}\""));
        let mut sides = Vec::new();
        for (from, minus, sign) in [(&ours, &theirs, "+"), (&theirs, &ours, "-")] {
            let rows = format!("SELECT * FROM {from} EXCEPT ALL SELECT * FROM {minus}");
            let count: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM ({rows}) d")).fetch_one(&mut *conn).await?;
            let first: Vec<String> = sqlx::query_scalar(&format!("SELECT to_jsonb(d)::text FROM ({rows}) d ORDER BY 1 LIMIT $1"))
                .bind(first_max as i64)
                .fetch_all(&mut *conn)
                .await?;
            sides.push((count, first.into_iter().map(|row| format!("{sign} {row}")).collect::<Vec<_>>()));
        }
        let (rebuilt, live_only) = (sides.remove(0), sides.remove(0));
        if rebuilt.0 + live_only.0 > 0 {
            let mut first: Vec<String> = rebuilt.1.into_iter().chain(live_only.1).collect();
            // Ordered by row content (the sign after), so a changed row's two versions sit together.
            first.sort_by(|a, b| a[2..].cmp(&b[2..]));
            first.truncate(first_max);
            diffs.push(TableDiff { table: table.to_string(), only_in_rebuild: rebuilt.0, only_in_live: live_only.0, first });
        }
    }
    Ok(diffs)
}
