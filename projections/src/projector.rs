//! The projector: runs async projections over the global log from their stored
//! checkpoints. Each batch of events and the checkpoint that follows it are written in
//! one transaction, so every event is applied exactly once per projection, whatever
//! crashes in between.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use application::event_store::{EventStore, EventStoreError, LogPosition, StoredEvent};
use infrastructure::db::Database;
use infrastructure::event_store::{InlineProjection, SqlEventStore, Tx};
use tokio::sync::watch;

/// Events read and applied per transaction.
pub const BATCH_SIZE_DEFAULT: i64 = 1_000;
/// How often the log is polled for events written by other processes (a local commit
/// wakes the projector at once). Short: what other processes wrote meanwhile is applied
/// in one batch, and a long pause makes a large batch that holds up everyone's commits
/// while it runs; a poll that finds nothing costs one read.
pub const POLL_INTERVAL_DEFAULT: Duration = Duration::from_millis(50);
/// How long the projector goes on from the checkpoints it remembers before it looks at
/// the stored ones again (see `Projector::known`).
const KNOWN_FORGOTTEN_AFTER: Duration = Duration::from_secs(1);

/// An async projection has the same shape as an inline one: events in, SQL in a
/// transaction. What differs is when it runs.
pub type AsyncProjection = dyn InlineProjection;

#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    #[error(transparent)]
    Store(#[from] EventStoreError),
    #[error("projection {projection} failed at {position:?}: {reason}")]
    Projection { projection: String, position: LogPosition, reason: String },
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("projections did not reach {head:?} in time")]
    Behind { head: LogPosition },
}

#[derive(Clone)]
pub struct Projector {
    store: SqlEventStore,
    projections: Vec<Arc<AsyncProjection>>,
    batch_size: i64,
    /// Where each projection's checkpoint stood when this projector last wrote or locked
    /// it: the log is first read from there, without a transaction, so a step that finds
    /// nothing new costs one read (it is woken by every local commit, and most find
    /// nothing yet: the log is only read below the oldest transaction still open). The
    /// stored checkpoint, locked, still decides what is applied.
    known: Arc<Mutex<HashMap<&'static str, LogPosition>>>,
}

impl Projector {
    pub fn new(store: SqlEventStore, projections: Vec<Arc<AsyncProjection>>) -> Self {
        Self { store, projections, batch_size: BATCH_SIZE_DEFAULT, known: Arc::default() }
    }

    pub fn projections(&self) -> &[Arc<AsyncProjection>] {
        &self.projections
    }

    /// Applies every event available now to every projection; returns how many events
    /// were applied in all.
    pub async fn catch_up(&self) -> Result<u64, ProjectorError> {
        let mut applied = 0;
        for projection in &self.projections {
            loop {
                let done = self.step(projection.as_ref()).await?;
                applied += done;
                // A short batch read everything visible then: another step now would
                // only find the log empty.
                if done < self.batch_size as u64 {
                    break;
                }
            }
        }
        Ok(applied)
    }

    /// Catches up until every projection has passed the log's head as of this call
    /// (events committed before it), waiting for transactions that hold the reader back,
    /// for at most `timeout`. Returns the events applied.
    pub async fn catch_up_to_head(&self, timeout: Duration) -> Result<u64, ProjectorError> {
        let Some(head) = self.store.head().await? else {
            return Ok(0);
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let mut applied = 0;
        loop {
            applied += self.catch_up().await?;
            let mut behind = false;
            for projection in &self.projections {
                behind |= load_checkpoint(self.store.database(), projection.name()).await? < head;
            }
            if !behind {
                return Ok(applied);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ProjectorError::Behind { head });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// One batch for one projection: lock its checkpoint, read the log after it, apply,
    /// move the checkpoint, commit. The lock makes concurrent projectors (two `kiln`
    /// processes, or a catch-up beside the background loop) take turns instead of
    /// applying the same events twice. When the log has nothing after the checkpoint this
    /// projector last saw, no transaction is opened.
    async fn step(&self, projection: &AsyncProjection) -> Result<u64, ProjectorError> {
        let name = projection.name();
        let known = self.known.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(name).copied();
        let ahead = match known {
            Some(from) => {
                let events = self.store.read_log(from, self.batch_size).await?;
                if events.is_empty() {
                    return Ok(0);
                }
                Some((from, events))
            }
            None => None,
        };
        let (applied, at) = match self.store.database() {
            Database::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let done = self.step_in(&mut Tx::Postgres(&mut tx), projection, ahead).await?;
                tx.commit().await?;
                done
            }
            Database::Sqlite { write, .. } => {
                // IMMEDIATE takes SQLite's write lock: the checkpoint is ours until commit.
                let mut tx = write.begin_with("BEGIN IMMEDIATE").await?;
                let done = self.step_in(&mut Tx::Sqlite(&mut tx), projection, ahead).await?;
                tx.commit().await?;
                done
            }
        };
        self.known.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(name, at);
        Ok(applied)
    }

    /// `ahead`: events read (outside the transaction) after a position; used if the
    /// locked checkpoint is that position, read again from the checkpoint otherwise.
    /// Returns the events applied and where the checkpoint now stands.
    async fn step_in(
        &self,
        tx: &mut Tx<'_>,
        projection: &AsyncProjection,
        ahead: Option<(LogPosition, Vec<StoredEvent>)>,
    ) -> Result<(u64, LogPosition), ProjectorError> {
        let name = projection.name();
        let checkpoint = lock_checkpoint(tx, name).await?;
        let events = match ahead {
            Some((from, events)) if from == checkpoint => events,
            _ => self.store.read_log(checkpoint, self.batch_size).await?,
        };
        let Some(last) = events.last().map(|e| e.log_position) else {
            return Ok((0, checkpoint));
        };
        projection.apply(tx, &events).await.map_err(|error| ProjectorError::Projection {
            projection: name.to_string(),
            position: last,
            reason: error.to_string(),
        })?;
        infrastructure::tx_execute!(&mut *tx, SAVE_CHECKPOINT, name, last.commit_order, last.position)?;
        Ok((events.len() as u64, last))
    }

    /// Runs until `stop` flips to true: catches up, then waits for a local commit or the
    /// poll interval. Errors are logged and retried after the interval.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut commits = self.store.subscribe_commits();
        let mut remembered_since = tokio::time::Instant::now();
        loop {
            if let Err(error) = self.catch_up().await {
                tracing::error!(%error, "projector step failed; retrying");
            }
            tokio::select! {
                _ = stop.changed() => {}
                _ = commits.changed() => {}
                _ = tokio::time::sleep(POLL_INTERVAL_DEFAULT) => {
                    // Quiet: now and then look at the stored checkpoints again (another
                    // process, a rebuild's swap, may have moved them while no event came).
                    if remembered_since.elapsed() >= KNOWN_FORGOTTEN_AFTER {
                        self.known.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clear();
                        remembered_since = tokio::time::Instant::now();
                    }
                }
            }
            if *stop.borrow() {
                return;
            }
        }
    }
}

pub async fn load_checkpoint(db: &Database, name: &str) -> Result<LogPosition, sqlx::Error> {
    let sql = "SELECT commit_order, position FROM projection_checkpoints WHERE name = $1";
    let row: Option<(i64, i64)> = match db {
        Database::Postgres(pool) => sqlx::query_as(sql).bind(name).fetch_optional(pool).await?,
        Database::Sqlite { read, .. } => sqlx::query_as(sql).bind(name).fetch_optional(read).await?,
    };
    Ok(row.map(|(commit_order, position)| LogPosition { commit_order, position }).unwrap_or(LogPosition::START))
}

/// Moves a projection's checkpoint (`$1` its name); the projector and the rebuild's swap.
pub(crate) const SAVE_CHECKPOINT: &str = "UPDATE projection_checkpoints SET commit_order = $2, position = $3, \
     updated_at = CURRENT_TIMESTAMP WHERE name = $1";
/// Makes a projection's checkpoint row at the log's start unless it exists.
pub(crate) const ENSURE_CHECKPOINT: &str =
    "INSERT INTO projection_checkpoints (name, commit_order, position) VALUES ($1, 0, 0) ON CONFLICT (name) DO NOTHING";

/// Reads a projection's checkpoint inside `tx`, locking it (PostgreSQL row lock; on
/// SQLite the transaction already holds the write lock). Its row is made on first use.
async fn lock_checkpoint(tx: &mut Tx<'_>, name: &str) -> Result<LogPosition, sqlx::Error> {
    let sql = match tx {
        Tx::Postgres(_) => "SELECT commit_order, position FROM projection_checkpoints WHERE name = $1 FOR UPDATE",
        Tx::Sqlite(_) => "SELECT commit_order, position FROM projection_checkpoints WHERE name = $1",
    };
    let mut row = infrastructure::tx_fetch_optional!(&mut *tx, (i64, i64), sql, name)?;
    if row.is_none() {
        // Two projectors starting at once both insert; one row remains, which the second
        // read locks (waiting for the other's transaction).
        infrastructure::tx_execute!(&mut *tx, ENSURE_CHECKPOINT, name)?;
        row = infrastructure::tx_fetch_optional!(&mut *tx, (i64, i64), sql, name)?;
    }
    Ok(row.map(|(commit_order, position)| LogPosition { commit_order, position }).unwrap_or(LogPosition::START))
}
