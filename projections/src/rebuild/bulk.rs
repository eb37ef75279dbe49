//! The bulk pass of a rebuild on PostgreSQL for a projection with a [`Fold`]: three
//! stages that overlap, each bounded:
//!
//! 1. a reader task walks one server-side cursor over the TeamCredits events up to the
//!    readable end of the log (every transaction below `pg_snapshot_xmin` has ended, so
//!    nothing can still commit below it: gap-safe like `read_log`), in stream order, only
//!    the columns the fold needs, [`CHUNK_EVENTS`] at a time, at most [`CHUNKS_AHEAD`]
//!    chunks ahead;
//! 2. the fold decodes each payload straight from the row's bytes into the domain event
//!    (no `serde_json::Value` in between) and folds it in memory;
//! 3. a writer copies the rows that are final in with binary `COPY … FROM STDIN` on the
//!    rebuild's connection, one statement per table and [`READY_ROWS`] rows, while the
//!    fold goes on.
//!
//! Each insert commits on its own (no long transaction holding back `pg_snapshot_xmin`,
//! which every gap-safe reader waits on); `synchronous_commit` is off meanwhile, since a
//! crash loses only shadow rows that are dropped anyway.

use std::time::{Duration, Instant};

use application::event_store::LogPosition;
use cqrs_es::DomainEvent;
use domain::TeamCreditsEvent;
use sqlx::postgres::PgRow;
use sqlx::{Connection, Executor, PgConnection, PgPool, Row};
use tokio::sync::mpsc;

use super::columns::Insert;
use super::fold::Fold;
use super::{Progress, RebuildError};

/// Events per cursor fetch.
const CHUNK_EVENTS: i64 = 5_000;
/// Chunks read ahead of the fold.
const CHUNKS_AHEAD: usize = 4;
/// Rows of one table gathered before they are written.
const READY_ROWS: usize = 20_000;
/// Inserts queued ahead of the writer.
const INSERTS_AHEAD: usize = 4;

/// The last event of the log that is safe to read: below the oldest running transaction.
async fn readable_end(pool: &PgPool) -> Result<Option<LogPosition>, sqlx::Error> {
    let end: Option<(i64, i64)> = sqlx::query_as(infrastructure::event_store::READABLE_LOG_HEAD_SQL).fetch_optional(pool).await?;
    Ok(end.map(|(commit_order, position)| LogPosition { commit_order, position }))
}

/// Folds every TeamCredits event up to the readable end (and at most `until`) into the
/// shadow tables; returns the position reached and the events folded.
pub(super) async fn pass(
    pool: &PgPool,
    conn: &mut PgConnection,
    mut fold: Box<dyn Fold>,
    until: Option<LogPosition>,
    progress: &dyn Progress,
) -> Result<(LogPosition, u64), RebuildError> {
    let Some(mut end) = readable_end(pool).await? else { return Ok((LogPosition::START, 0)) };
    if let Some(until) = until {
        end = end.min(until);
    }
    if end <= LogPosition::START {
        return Ok((LogPosition::START, 0));
    }
    conn.execute("SET synchronous_commit = off").await?;
    let (chunks_tx, mut chunks) = mpsc::channel(CHUNKS_AHEAD);
    let reader = tokio::spawn(read(pool.clone(), end, chunks_tx));
    let (inserts_tx, mut inserts) = mpsc::channel::<Insert>(INSERTS_AHEAD);
    let (mut fold_busy, mut write_busy) = (Duration::ZERO, Duration::ZERO);
    let folding = async {
        let folded = fold_chunks(fold.as_mut(), &mut chunks, &inserts_tx, progress, &mut fold_busy).await;
        // On every path: the writer ends when the last sender is gone.
        drop(inserts_tx);
        folded
    };
    let writing = async {
        while let Some(insert) = inserts.recv().await {
            let started = Instant::now();
            insert.execute(&mut *conn).await?;
            write_busy += started.elapsed();
        }
        Ok::<(), RebuildError>(())
    };
    let (folded, written) = tokio::join!(folding, writing);
    // After an early stop the reader may wait on a full channel: closing it ends the reader.
    drop(chunks);
    let read = reader.await.map_err(|e| RebuildError::Shadow { table: "events".into(), reason: format!("log reader: {e}") })?;
    written?;
    let folded = match folded {
        Ok(folded) => folded,
        Err(FoldFailed::Refused(refused)) => return Err(refused.located(pool).await),
        Err(FoldFailed::Other(error)) => return Err(error),
    };
    read?;
    tracing::info!(events = folded, fold_busy_ms = fold_busy.as_millis() as u64, write_busy_ms = write_busy.as_millis() as u64, "rebuild: bulk pass");
    conn.execute("RESET synchronous_commit").await?;
    Ok((end, folded))
}

/// Why the fold stage stopped.
enum FoldFailed {
    Refused(Refused),
    Other(RebuildError),
}

impl From<sqlx::Error> for FoldFailed {
    fn from(error: sqlx::Error) -> Self {
        Self::Other(error.into())
    }
}

/// An event the fold refused, named by its stream. The reader does not fetch every
/// event's log position (converting each transaction id costs PostgreSQL ≈ 10% of the
/// read); the refused one's is looked up when the error is reported.
struct Refused {
    team: String,
    sequence: i64,
    reason: String,
}

impl Refused {
    async fn located(self, pool: &PgPool) -> RebuildError {
        let found: Option<(i64, i64)> = sqlx::query_as(
            "SELECT transaction_id::text::bigint AS commit_order, position FROM events \
             WHERE aggregate_type = 'TeamCredits' AND aggregate_id = $1 AND sequence = $2",
        )
        .bind(&self.team)
        .bind(self.sequence)
        .fetch_optional(pool)
        .await
        .ok()
        .flatten();
        RebuildError::Projection {
            projection: "rebuild".into(),
            position: found.map_or(LogPosition::START, |(commit_order, position)| LogPosition { commit_order, position }),
            reason: format!("event TeamCredits {} #{}: {}", self.team, self.sequence, self.reason),
        }
    }
}

/// The fold stage: chunks in, inserts out; returns the events folded.
async fn fold_chunks(
    fold: &mut dyn Fold,
    chunks: &mut mpsc::Receiver<Result<Vec<PgRow>, sqlx::Error>>,
    inserts: &mpsc::Sender<Insert>,
    progress: &dyn Progress,
    busy: &mut Duration,
) -> Result<u64, FoldFailed> {
    let mut folded = 0u64;
    while let Some(rows) = chunks.recv().await {
        let rows = rows?;
        let started = Instant::now();
        for row in &rows {
            fold_row(fold, row)?;
        }
        *busy += started.elapsed();
        folded += rows.len() as u64;
        progress.advance(rows.len() as u64);
        for insert in fold.ready(READY_ROWS) {
            // The writer stopped: its error is the one reported.
            if inserts.send(insert).await.is_err() {
                return Ok(folded);
            }
        }
    }
    for insert in fold.finish() {
        if inserts.send(insert).await.is_err() {
            break;
        }
    }
    Ok(folded)
}

fn fold_row(fold: &mut dyn Fold, row: &PgRow) -> Result<(), FoldFailed> {
    let team: &str = row.try_get(0)?;
    let sequence: i64 = row.try_get(1)?;
    let event_type: &str = row.try_get(2)?;
    let payload: &str = row.try_get(3)?;
    let failed = |reason: String| FoldFailed::Refused(Refused { team: team.to_string(), sequence, reason });
    let event: TeamCreditsEvent = serde_json::from_str(payload).map_err(|e| failed(format!("payload of {event_type} does not decode: {e}")))?;
    if event.event_type() != event_type {
        return Err(failed(format!("recorded as {event_type} but the payload is {}", event.event_type())));
    }
    fold.fold(team, sequence, event).map_err(failed)
}

/// The reader: one cursor in a read-only snapshot (no transaction id, so it holds back no
/// gap-safe reader). The bound is formatted into the statement (two integers) because
/// `DECLARE` takes no parameters.
async fn read(pool: PgPool, end: LogPosition, chunks: mpsc::Sender<Result<Vec<PgRow>, sqlx::Error>>) -> Result<(), RebuildError> {
    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin().await?;
    tx.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
    // Stream order (the primary key's index) rather than commit order: the folds need
    // each team's events in sequence order only, and the key's index gives that order
    // whatever the planner's statistics (fresh tables have none: commit order was then
    // planned as a bitmap scan and an on-disk sort of the whole log). Everything up to
    // `end` is read either way; the tail goes on from `end` in commit order.
    let declare = format!(
        "DECLARE kiln_rebuild_log NO SCROLL CURSOR FOR \
         SELECT aggregate_id, sequence, event_type, payload::text \
         FROM events WHERE aggregate_type = 'TeamCredits' AND (transaction_id, position) <= ('{}'::xid8, {}) \
         ORDER BY aggregate_type, aggregate_id, sequence",
        end.commit_order, end.position
    );
    tx.execute(declare.as_str()).await?;
    let fetch = format!("FETCH FORWARD {CHUNK_EVENTS} FROM kiln_rebuild_log");
    loop {
        let rows = sqlx::query(&fetch).fetch_all(&mut *tx).await;
        let done = rows.as_ref().map_or(true, |rows| (rows.len() as i64) < CHUNK_EVENTS);
        if chunks.send(rows).await.is_err() || done {
            break;
        }
    }
    tx.rollback().await?;
    Ok(())
}
