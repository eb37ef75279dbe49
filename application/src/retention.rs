//! The image-retention sweeper: deletes generated images older than the retention period
//! and records `ImagesExpired` on their jobs, after which the API answers 410 for them.
//! Runs periodically inside `kiln serve` and once as `kiln storage sweep`; the images
//! index is a port ([`ExpiredImages`]), the objects go through the `ObjectStore` port.
//!
//! Work comes from the `images` index of live images (`created_at < now − retention`),
//! in batches of whole jobs (several batches in flight, disjoint by a cursor, so
//! the deletes of one batch overlap the commit of another). Each batch deletes the
//! objects (`DeleteObjects`, 1,000 keys a request, a few requests at once) while it loads
//! all its job streams in one query and lets each `GenerationJob` decide `ExpireImages`
//! (which writes nothing); once every object is gone it records the events in one
//! append — whose inline projection deletes the jobs' rows
//! from the index (set-based, `projections::images`), taking them out of the next query. So the
//! order makes it resumable and idempotent:
//! - a crash before the append leaves the rows to the next sweep, which deletes the same
//!   keys again (a no-op: deleting a missing object succeeds) and records the event;
//! - a crash after it loses nothing: those objects are gone and their jobs say so;
//! - `ImagesExpired` is recorded once per job: the aggregate refuses a second one.
//!
//! Only `generated-images/` keys from the index are ever deleted: model assets and the
//! reference catalog are not in it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::jobs::{GenerationJob, JobCommand};
use serde_json::json;
use tokio::sync::watch;

use crate::aggregate_store::{AggregateStore, CommandError};
use crate::clock::Clock;
use crate::event_store::{EventStoreError, StreamAppend};
use crate::storage::{ObjectStore, StorageError};

/// Image rows taken per batch (a batch is extended to finish its last job). Large
/// batches amortise the round trips of find, load and commit.
pub const BATCH_IMAGES_MAX: i64 = 4_000;
/// Batches in flight at once in one sweep: while one commits, others delete. Each holds
/// at most one pooled connection at a time (load, then commit), the finder one more.
pub const BATCHES_IN_FLIGHT_MAX: usize = 3;
/// Job ids per stream-loading query.
const LOAD_IDS_PER_QUERY_MAX: usize = 1_000;
/// Only keys under this prefix are deleted.
const IMAGE_PREFIX: &str = "generated-images/";
/// The `actor` in the metadata of the events the sweep records.
const ACTOR: &str = "retention-sweeper";

/// One job's images due for deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiredJob {
    pub job_id: String,
    pub created_at: DateTime<Utc>,
    pub keys: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub batches: usize,
    /// Jobs whose `ImagesExpired` this sweep recorded.
    pub jobs: usize,
    /// Objects deleted (or found already gone).
    pub images: usize,
    /// Time spent in each stage, summed over batches (batches overlap, so these add up to
    /// more than the sweep's wall time): finding batches in the index, deleting objects,
    /// and recording `ImagesExpired` (load, decide, append).
    pub finding: Duration,
    pub deleting: Duration,
    pub recording: Duration,
}

/// Images made before this instant are expired at `now`.
pub fn cutoff(now: DateTime<Utc>, retention_days: u32) -> DateTime<Utc> {
    now - chrono::Duration::days(i64::from(retention_days))
}

/// The index of live generated images (`images`), as the sweep reads it.
#[async_trait]
pub trait ExpiredImages: Send + Sync {
    /// Up to about `limit` images made before `cutoff`, oldest first, grouped by job,
    /// for jobs after `after` (`(created_at, job_id)` of the last job of the previous
    /// batch) when given; a job is never split across batches (its `ImagesExpired`
    /// covers all its images).
    async fn find(
        &self,
        cutoff: DateTime<Utc>,
        after: Option<&(DateTime<Utc>, String)>,
        limit: i64,
    ) -> Result<Vec<ExpiredJob>, EventStoreError>;
}

/// Why a sweep stopped.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error(transparent)]
    Store(#[from] EventStoreError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("recording ImagesExpired failed: {0}")]
    Command(String),
    #[error("a sweep batch stopped: {0}")]
    Batch(String),
}

impl<E: std::error::Error> From<CommandError<E>> for RetentionError {
    fn from(error: CommandError<E>) -> Self {
        match error {
            CommandError::Store(error) => RetentionError::Store(error),
            other => RetentionError::Command(other.to_string()),
        }
    }
}

/// The image-retention use case.
#[derive(Clone)]
pub struct RetentionService {
    images: Arc<dyn ExpiredImages>,
    objects: Arc<dyn ObjectStore>,
    aggregates: AggregateStore,
    clock: Arc<dyn Clock>,
    /// Batches in flight at once ([`BATCHES_IN_FLIGHT_MAX`] unless set).
    batches_in_flight: usize,
}

impl RetentionService {
    pub fn new(images: Arc<dyn ExpiredImages>, objects: Arc<dyn ObjectStore>, aggregates: AggregateStore, clock: Arc<dyn Clock>) -> Self {
        Self { images, objects, aggregates, clock, batches_in_flight: BATCHES_IN_FLIGHT_MAX }
    }

    /// The same service keeping `batches` batches in flight (at least one), for
    /// measuring.
    pub fn with_batches_in_flight(mut self, batches: usize) -> Self {
        self.batches_in_flight = batches.max(1);
        self
    }

    /// Up to about `limit` expired images, oldest first, grouped by job (only keys
    /// under the generated-images prefix).
    pub async fn find_expired(&self, cutoff: DateTime<Utc>, limit: i64) -> Result<Vec<ExpiredJob>, RetentionError> {
        self.find_expired_after(cutoff, None, limit).await
    }

    async fn find_expired_after(
        &self,
        cutoff: DateTime<Utc>,
        after: Option<&(DateTime<Utc>, String)>,
        limit: i64,
    ) -> Result<Vec<ExpiredJob>, RetentionError> {
        let mut jobs = self.images.find(cutoff, after, limit).await?;
        for job in &mut jobs {
            job.keys.retain(|key| key.starts_with(IMAGE_PREFIX));
        }
        Ok(jobs)
    }

    /// Deletes the objects of `jobs` (missing ones are fine).
    pub async fn delete_objects(&self, jobs: &[ExpiredJob]) -> Result<usize, RetentionError> {
        let keys: Vec<String> = jobs.iter().flat_map(|job| job.keys.iter().cloned()).collect();
        self.objects.delete_many(&keys).await?;
        Ok(keys.len())
    }

    /// Records `ImagesExpired` on each job, all in one append; returns how many jobs got
    /// the event (jobs already expired get none). The streams are loaded in one query and
    /// each job decides by its own rule; the append's sequence checks catch any writer in
    /// between, and then each job is retried alone (load, decide, append).
    pub async fn record_expired(&self, jobs: &[ExpiredJob], now: DateTime<Utc>) -> Result<usize, RetentionError> {
        let appends = self.decide_expired(jobs, now).await?;
        self.commit_expired(jobs, appends, now).await
    }

    /// Loads the jobs' streams and lets each decide `ExpireImages`: the appends to
    /// commit (none for a job already expired). Nothing is written.
    async fn decide_expired(&self, jobs: &[ExpiredJob], now: DateTime<Utc>) -> Result<Vec<StreamAppend>, RetentionError> {
        let metadata = json!({"actor": ACTOR});
        let aggregates = &self.aggregates;
        let ids: Vec<String> = jobs.iter().map(|job| job.job_id.clone()).collect();
        let mut appends = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(LOAD_IDS_PER_QUERY_MAX) {
            for mut job in aggregates.load_many::<GenerationJob>(chunk).await? {
                if job.sequence == 0 {
                    continue; // no such job
                }
                // The sweep adds one event per job: no reason to write a snapshot (a cache).
                job.snapshot_sequence = job.sequence;
                match aggregates.decide_in_place(&mut job, JobCommand::ExpireImages { now }, &(), &metadata).await {
                    Ok((events, append)) if !events.is_empty() => appends.push(append),
                    Ok(_) => {}
                    Err(CommandError::Rejected(error)) => tracing::warn!(job_id = %job.id, %error, "job refused ImagesExpired"),
                    Err(error) => return Err(error.into()),
                }
            }
        }
        Ok(appends)
    }

    /// Commits `appends` (decided for `jobs`) in one append; on a concurrency conflict,
    /// each job is done again alone (load, decide, append). Returns how many jobs got
    /// `ImagesExpired`.
    async fn commit_expired(&self, jobs: &[ExpiredJob], appends: Vec<StreamAppend>, now: DateTime<Utc>) -> Result<usize, RetentionError> {
        let aggregates = &self.aggregates;
        let recorded = appends.len();
        match aggregates.commit(&appends).await {
            Ok(_) => Ok(recorded),
            Err(EventStoreError::Conflict { .. }) => {
                let metadata = json!({"actor": ACTOR});
                let mut recorded = 0;
                for job in jobs {
                    let decided = aggregates.execute::<GenerationJob>(&job.job_id, JobCommand::ExpireImages { now }, &(), &metadata).await;
                    match decided {
                        Ok(decided) => recorded += usize::from(!decided.events.is_empty()),
                        Err(CommandError::Rejected(error)) => tracing::warn!(job_id = %job.job_id, %error, "job refused ImagesExpired"),
                        Err(error) => return Err(error.into()),
                    }
                }
                Ok(recorded)
            }
            Err(error) => Err(error.into()),
        }
    }

    /// One found batch: delete its objects and, meanwhile, load and decide its jobs; then,
    /// once every object is gone, record. (Deciding first writes nothing, so a crash
    /// at any point still leaves no `ImagesExpired` whose objects may remain.) Returns
    /// what it did and how long each stage took.
    async fn process_batch(self, jobs: Vec<ExpiredJob>, now: DateTime<Utc>) -> Result<SweepReport, RetentionError> {
        let started = Instant::now();
        let deleting = async {
            let images = self.delete_objects(&jobs).await?;
            Ok::<_, RetentionError>((images, started.elapsed()))
        };
        let deciding = async {
            let appends = self.decide_expired(&jobs, now).await?;
            Ok::<_, RetentionError>((appends, started.elapsed()))
        };
        let ((images, deleted_after), (appends, decided_after)) = tokio::try_join!(deleting, deciding)?;
        let committing = Instant::now();
        let recorded = self.commit_expired(&jobs, appends, now).await?;
        let recording = decided_after + committing.elapsed();
        Ok(SweepReport { batches: 1, jobs: recorded, images, deleting: deleted_after, recording, ..SweepReport::default() })
    }

    /// Sweeps everything due now (or until `stop` flips). Batches are found in order with a
    /// cursor, so each pass ends and batches in flight together are disjoint; a batch not
    /// finished (error, crash) is found again by the next pass. Progress is logged per batch.
    pub async fn sweep(&self, retention_days: u32, stop: Option<&watch::Receiver<bool>>) -> Result<SweepReport, RetentionError> {
        self.sweep_in_batches(retention_days, stop, BATCH_IMAGES_MAX).await
    }

    /// [`sweep`] with batches of about `batch_images_max` images (tests use tiny ones to run
    /// many batches in flight).
    pub async fn sweep_in_batches(
        &self,
        retention_days: u32,
        stop: Option<&watch::Receiver<bool>>,
        batch_images_max: i64,
    ) -> Result<SweepReport, RetentionError> {
        let batch_images_max = batch_images_max.max(1);
        let started = Instant::now();
        let now = self.clock.now();
        let cutoff = cutoff(now, retention_days);
        let mut report = SweepReport::default();
        let mut after: Option<(DateTime<Utc>, String)> = None;
        let mut exhausted = false;
        // Batches run as tasks, so they progress while the next batch is being found; the
        // set aborts what is still running if the sweep returns early with an error (each
        // batch is idempotent, so an aborted one is simply found again).
        let mut in_flight = tokio::task::JoinSet::new();
        loop {
            while !exhausted && in_flight.len() < self.batches_in_flight {
                if stop.is_some_and(|stop| *stop.borrow()) {
                    exhausted = true;
                    break;
                }
                let finding = Instant::now();
                let jobs = self.find_expired_after(cutoff, after.as_ref(), batch_images_max).await?;
                report.finding += finding.elapsed();
                let Some(last) = jobs.last() else {
                    exhausted = true;
                    break;
                };
                after = Some((last.created_at, last.job_id.clone()));
                in_flight.spawn(self.clone().process_batch(jobs, now));
            }
            let Some(done) = in_flight.join_next().await else { break };
            let batch = done.map_err(|e| RetentionError::Batch(e.to_string()))??;
            report.batches += batch.batches;
            report.jobs += batch.jobs;
            report.images += batch.images;
            report.deleting += batch.deleting;
            report.recording += batch.recording;
            tracing::info!(batch = report.batches, jobs = report.jobs, images = report.images, "retention sweep progress");
        }
        if report.batches > 0 {
            let secs = started.elapsed().as_secs_f64();
            tracing::info!(
                jobs = report.jobs,
                images = report.images,
                elapsed_ms = started.elapsed().as_millis() as u64,
                images_per_sec = (report.images as f64 / secs.max(1e-9)) as u64,
                finding_ms = report.finding.as_millis() as u64,
                deleting_ms = report.deleting.as_millis() as u64,
                recording_ms = report.recording.as_millis() as u64,
                "retention sweep done"
            );
        }
        Ok(report)
    }

    /// Runs a sweep every `interval` until `stop` flips to true.
    pub async fn run(self, retention_days: u32, interval: Duration, mut stop: watch::Receiver<bool>) {
        loop {
            if let Err(error) = self.sweep(retention_days, Some(&stop)).await {
                tracing::error!(error = %format!("{error:#}"), "retention sweep failed");
            }
            tokio::select! {
                _ = stop.changed() => {}
                _ = tokio::time::sleep(interval) => {}
            }
            if *stop.borrow() {
                return;
            }
        }
    }
}
