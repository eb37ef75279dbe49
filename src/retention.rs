//! The image-retention sweeper: deletes generated images older than the retention period
//! and records `ImagesExpired` on their jobs, after which the API answers 410 for them.
//! Runs periodically inside `kiln serve` and once as `kiln storage sweep`.
//!
//! Work comes from the `images` index (`created_at < now − retention AND expired_at IS
//! NULL`), in batches of whole jobs (two batches in flight, disjoint by a cursor). Each
//! batch first deletes the objects (`DeleteObjects`, 1,000 keys a request), then records
//! `ImagesExpired` on every job of the batch in one append — whose inline projection sets `images.expired_at`, taking the rows out of the
//! next query. So the order makes it resumable and idempotent:
//! - a crash before the append leaves the rows to the next sweep, which deletes the same
//!   keys again (a no-op: deleting a missing object succeeds) and records the event;
//! - a crash after it loses nothing: those objects are gone and their jobs say so;
//! - `ImagesExpired` is recorded once per job: the aggregate refuses a second one.
//!
//! Only `generated-images/` keys from the index are ever deleted: model assets and the
//! reference catalog are not in it.

use std::time::{Duration, Instant};

use application::aggregate_store::CommandError;
use application::event_store::EventStoreError;
use chrono::{DateTime, Utc};
use domain::jobs::{GenerationJob, JobCommand};
use futures::{StreamExt, TryStreamExt};
use infrastructure::db_fetch_all;
use serde_json::json;
use tokio::sync::watch;

use crate::app::AppState;

/// Image rows taken per batch (a batch is extended to finish its last job).
pub const BATCH_IMAGES_MAX: i64 = 1_000;
/// Job streams loaded at once while recording a batch. With the batches in flight, the
/// sweeper holds at most 2 × (4 + 1) pooled connections, leaving the rest to the server.
const LOAD_CONCURRENCY: usize = 4;
/// Batches in flight at once in one sweep (deleting and recording overlap).
const BATCHES_IN_FLIGHT_MAX: usize = 2;
/// Only keys under this prefix are deleted.
const IMAGE_PREFIX: &str = "generated-images/";

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
}

/// Images made before this instant are expired at `now`.
pub fn cutoff(now: DateTime<Utc>, retention_days: u32) -> DateTime<Utc> {
    now - chrono::Duration::days(i64::from(retention_days))
}

/// Up to about `limit` expired images, oldest first, grouped by job; a job is never split
/// across batches (its `ImagesExpired` covers all its images).
pub async fn find_expired(state: &AppState, cutoff: DateTime<Utc>, limit: i64) -> anyhow::Result<Vec<ExpiredJob>> {
    find_expired_after(state, cutoff, None, limit).await
}

/// Like [`find_expired`], for jobs after `after` (`(created_at, job_id)` of the last job
/// of the previous batch), so batches in flight together never overlap. (`created_at >=`
/// alone bounds the range on `images_created_idx`; the `OR` then skips the cursor's
/// timestamp up to its job.)
async fn find_expired_after(
    state: &AppState,
    cutoff: DateTime<Utc>,
    after: Option<&(DateTime<Utc>, String)>,
    limit: i64,
) -> anyhow::Result<Vec<ExpiredJob>> {
    let rows: Vec<(String, DateTime<Utc>, String)> = match after {
        None => db_fetch_all!(
            &state.db,
            (String, DateTime<Utc>, String),
            "SELECT job_id, created_at, key FROM images WHERE expired_at IS NULL AND created_at < $1 \
             ORDER BY created_at, job_id, position LIMIT $2",
            cutoff,
            limit
        )?,
        Some((created_at, job_id)) => db_fetch_all!(
            &state.db,
            (String, DateTime<Utc>, String),
            "SELECT job_id, created_at, key FROM images WHERE expired_at IS NULL AND created_at < $1 \
             AND created_at >= $2 AND (created_at > $2 OR job_id > $3) \
             ORDER BY created_at, job_id, position LIMIT $4",
            cutoff,
            created_at,
            job_id,
            limit
        )?,
    };
    let full = rows.len() as i64 >= limit;
    let mut jobs: Vec<ExpiredJob> = Vec::new();
    for (job_id, created_at, key) in rows {
        match jobs.last_mut() {
            Some(last) if last.job_id == job_id => last.keys.push(key),
            _ => jobs.push(ExpiredJob { job_id, created_at, keys: vec![key] }),
        }
    }
    if full {
        // The limit may have cut the last job short: take all of it.
        if let Some(last) = jobs.last_mut() {
            let rows: Vec<(String,)> = db_fetch_all!(
                &state.db,
                (String,),
                "SELECT key FROM images WHERE job_id = $1 AND expired_at IS NULL ORDER BY position",
                &last.job_id
            )?;
            last.keys = rows.into_iter().map(|(key,)| key).collect();
        }
    }
    for job in &mut jobs {
        job.keys.retain(|key| key.starts_with(IMAGE_PREFIX));
    }
    Ok(jobs)
}

/// Deletes the objects of `jobs` (missing ones are fine).
pub async fn delete_objects(state: &AppState, jobs: &[ExpiredJob]) -> anyhow::Result<usize> {
    let keys: Vec<String> = jobs.iter().flat_map(|job| job.keys.iter().cloned()).collect();
    state.objects.delete_many(&keys).await?;
    Ok(keys.len())
}

/// Records `ImagesExpired` on each job, all in one append; returns how many jobs got
/// the event (jobs already expired get none). If another writer touched one of the
/// streams meanwhile, falls back to one command per job.
pub async fn record_expired(state: &AppState, jobs: &[ExpiredJob], now: DateTime<Utc>) -> anyhow::Result<usize> {
    let metadata = json!({"actor": "retention-sweeper"});
    let aggregates = &state.aggregates;
    // Owned ids and store in each future: borrowed ones make the sweeper's future
    // not `Send` for every lifetime, which `tokio::spawn` needs.
    let ids: Vec<String> = jobs.iter().map(|job| job.job_id.clone()).collect();
    let store = aggregates.clone();
    let loaded: Vec<_> = futures::stream::iter(ids)
        .map(move |id| {
            let store = store.clone();
            async move { store.load::<GenerationJob>(&id).await }
        })
        .buffered(LOAD_CONCURRENCY)
        .try_collect()
        .await?;
    let mut appends = Vec::with_capacity(loaded.len());
    for mut job in loaded {
        match aggregates.decide_in_place(&mut job, JobCommand::ExpireImages { now }, &(), &metadata).await {
            Ok((events, append)) if !events.is_empty() => appends.push(append),
            Ok(_) => {}
            Err(CommandError::Rejected(error)) => tracing::warn!(job_id = %job.id, %error, "job refused ImagesExpired"),
            Err(error) => return Err(error.into()),
        }
    }
    let recorded = appends.len();
    match aggregates.commit(appends).await {
        Ok(_) => Ok(recorded),
        Err(EventStoreError::Conflict { .. }) => {
            let mut recorded = 0;
            for job in jobs {
                let decided =
                    aggregates.execute::<GenerationJob>(&job.job_id, JobCommand::ExpireImages { now }, &(), &metadata).await;
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

/// One found batch: delete its objects, then record. Returns `(jobs recorded, images)`.
async fn process_batch(state: AppState, jobs: Vec<ExpiredJob>, now: DateTime<Utc>) -> anyhow::Result<(usize, usize)> {
    let images = delete_objects(&state, &jobs).await?;
    let recorded = record_expired(&state, &jobs, now).await?;
    Ok((recorded, images))
}

/// Sweeps everything due now (or until `stop` flips). Batches are found in order with a
/// cursor, so each pass ends and batches in flight together are disjoint; a batch not
/// finished (error, crash) is found again by the next pass. Progress is logged per batch.
pub async fn sweep(state: &AppState, retention_days: u32, stop: Option<&watch::Receiver<bool>>) -> anyhow::Result<SweepReport> {
    let started = Instant::now();
    let now = state.jobs.now();
    let cutoff = cutoff(now, retention_days);
    let mut report = SweepReport::default();
    let mut after: Option<(DateTime<Utc>, String)> = None;
    let mut exhausted = false;
    let mut in_flight = futures::stream::FuturesUnordered::new();
    loop {
        while !exhausted && in_flight.len() < BATCHES_IN_FLIGHT_MAX {
            if stop.is_some_and(|stop| *stop.borrow()) {
                exhausted = true;
                break;
            }
            let jobs = find_expired_after(state, cutoff, after.as_ref(), BATCH_IMAGES_MAX).await?;
            let Some(last) = jobs.last() else {
                exhausted = true;
                break;
            };
            after = Some((last.created_at, last.job_id.clone()));
            in_flight.push(process_batch(state.clone(), jobs, now));
        }
        let Some(done) = in_flight.next().await else { break };
        let (recorded, images) = done?;
        report.batches += 1;
        report.jobs += recorded;
        report.images += images;
        tracing::info!(batch = report.batches, jobs = report.jobs, images = report.images, "retention sweep progress");
    }
    if report.batches > 0 {
        let secs = started.elapsed().as_secs_f64();
        tracing::info!(
            jobs = report.jobs,
            images = report.images,
            elapsed_ms = started.elapsed().as_millis() as u64,
            images_per_sec = (report.images as f64 / secs.max(1e-9)) as u64,
            "retention sweep done"
        );
    }
    Ok(report)
}

/// Runs a sweep every `interval` until `stop` flips to true.
pub async fn run(state: AppState, retention_days: u32, interval: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        if let Err(error) = sweep(&state, retention_days, Some(&stop)).await {
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
