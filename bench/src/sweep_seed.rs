//! The images `kiln-bench sweep` deletes: completed image-generation jobs of 4 images
//! each, one a second, all past retention, in PostgreSQL, with their objects as files in
//! the S3 server's directory.
//!
//! Seeding is not what is measured, so only the first jobs go through the event store and
//! its inline projections; the rest are bulk-inserted (`UNNEST`) as the same rows: the
//! events are the same `JobEvent` values serialized the same way, and the `jobs` and
//! `images` rows are checked column for column against the ones the projection wrote.
//! The sweep then reads events and index rows exactly as in production.

use std::path::{Path, PathBuf};

use anyhow::Context;
use application::aggregate_store::AggregateStore;
use application::event_store::{NewEvent, StreamAppend};
use chrono::{DateTime, Utc};
use domain::jobs::{JobEvent, JobInput, JobOutput};
use domain::{Credits, JobId, ModelId, TeamId};
use serde_json::json;
use sqlx::PgPool;

pub const IMAGES_PER_JOB: usize = 4;
/// Jobs seeded through the event store (the production path), whose rows the bulk-seeded
/// ones are checked against.
pub const JOBS_THROUGH_STORE: usize = 500;
/// Jobs per bulk-insert transaction.
const JOBS_PER_BULK_INSERT: usize = 5_000;
/// Threads writing object files.
const FILE_WRITERS: usize = 4;
/// The objects' bytes (one, as the images' `bytes` say).
const OBJECT_BYTES: &[u8] = b"x";

/// The seeded jobs: a team, a model, and each job's id and instant (job `n` at
/// `first_at + n` seconds). Keys are derived, so a million images cost 16 bytes a job here.
pub struct Seed {
    pub team: TeamId,
    model: ModelId,
    first_at: DateTime<Utc>,
    pub jobs: Vec<JobId>,
}

impl Seed {
    /// `jobs` jobs, the last one made at `last_at`.
    pub fn new(jobs: usize, last_at: DateTime<Utc>) -> Self {
        let first_at = last_at - chrono::Duration::seconds(jobs.saturating_sub(1) as i64);
        let jobs = (0..jobs).map(|_| JobId::new(uuid::Uuid::now_v7())).collect();
        Self { team: TeamId::new(uuid::Uuid::now_v7()), model: ModelId::new(uuid::Uuid::now_v7()), first_at, jobs }
    }

    pub fn images(&self) -> usize {
        self.jobs.len() * IMAGES_PER_JOB
    }

    /// The object keys of jobs `range`, in job order.
    pub fn keys(&self, range: std::ops::Range<usize>) -> Vec<String> {
        let team = self.team.to_string();
        let mut keys = Vec::with_capacity(range.len() * IMAGES_PER_JOB);
        for job in &self.jobs[range] {
            let job = job.to_string();
            keys.extend((0..IMAGES_PER_JOB as u32).map(|i| application::storage::image_key(&team, &job, i)));
        }
        keys
    }

    fn job(&self, n: usize) -> SeedJob {
        SeedJob::new(self.team, self.model, self.jobs[n], self.first_at + chrono::Duration::seconds(n as i64))
    }

    /// Writes every job's events and rows: the first [`JOBS_THROUGH_STORE`] through
    /// `aggregates` (the event store with its inline projections), the rest in bulk, and
    /// checks that a bulk-written job's rows equal a store-written one's.
    pub async fn write_rows(&self, pool: &PgPool, aggregates: &AggregateStore) -> anyhow::Result<()> {
        let through_store = JOBS_THROUGH_STORE.min(self.jobs.len());
        let first: Vec<SeedJob> = (0..through_store).map(|n| self.job(n)).collect();
        aggregates.commit(&first.iter().map(SeedJob::append).collect::<Vec<_>>()).await.context("seed through the event store")?;
        let mut seeded = through_store;
        let mut checked = false;
        while seeded < self.jobs.len() {
            let n = JOBS_PER_BULK_INSERT.min(self.jobs.len() - seeded);
            let chunk: Vec<SeedJob> = (seeded..seeded + n).map(|n| self.job(n)).collect();
            bulk_insert(pool, &self.team.to_string(), &chunk).await?;
            if !checked {
                let (through_store, bulk) = (rows_of(pool, &first[0].job_id).await?, rows_of(pool, &chunk[0].job_id).await?);
                anyhow::ensure!(bulk == through_store, "bulk-seeded rows differ from the projection's:\n{bulk:?}\n{through_store:?}");
                checked = true;
            }
            seeded += n;
        }
        // As autovacuum would after a large load: the planner needs statistics.
        sqlx::query("ANALYZE events, jobs, images").execute(pool).await?;
        Ok(())
    }

    /// Writes every job's objects as files under `bucket_dir` (`{bucket_dir}/{key}`).
    pub async fn write_objects(&self, bucket_dir: &Path) -> anyhow::Result<()> {
        const JOBS_PER_CHUNK: usize = 25_000;
        let mut start = 0;
        while start < self.jobs.len() {
            let end = (start + JOBS_PER_CHUNK).min(self.jobs.len());
            let (dir, keys) = (bucket_dir.to_path_buf(), self.keys(start..end));
            tokio::task::spawn_blocking(move || write_files(&dir, &keys)).await??;
            start = end;
        }
        Ok(())
    }
}

/// A completed image-generation job with its outputs.
struct SeedJob {
    job_id: String,
    at: DateTime<Utc>,
    input: JobInput,
    outputs: Vec<JobOutput>,
    events: [JobEvent; 2],
}

impl SeedJob {
    fn new(team: TeamId, model: ModelId, job: JobId, at: DateTime<Utc>) -> SeedJob {
        let input = JobInput::ImageGeneration {
            model_id: model,
            model_version: 1,
            prompt: "benchmark".into(),
            resolution: "512x512".into(),
            quality: "standard".into(),
            count: IMAGES_PER_JOB as u32,
        };
        let outputs: Vec<JobOutput> = (0..IMAGES_PER_JOB)
            .map(|i| JobOutput {
                key: application::storage::image_key(&team.to_string(), &job.to_string(), i as u32),
                content_type: "image/png".into(),
                bytes: OBJECT_BYTES.len() as u64,
                sha256: "00".repeat(32),
            })
            .collect();
        // `Credits::try_from(1)` cannot fail: 1 is a valid amount.
        let cost = Credits::try_from(1).expect("positive");
        let queued = JobEvent::JobQueued { job_id: job, team_id: team, input: input.clone(), cost, price_version: 1, occurred_at: at };
        let completed = JobEvent::JobCompleted { outputs: outputs.clone(), occurred_at: at };
        SeedJob { job_id: job.to_string(), at, input, outputs, events: [queued, completed] }
    }

    fn append(&self) -> StreamAppend {
        StreamAppend {
            aggregate_type: "GenerationJob".into(),
            aggregate_id: self.job_id.clone(),
            expected_sequence: 0,
            events: self.events.iter().map(new_event).collect(),
            snapshot: None,
        }
    }
}

fn metadata() -> serde_json::Value {
    json!({"actor": "sweep-benchmark"})
}

fn new_event(event: &JobEvent) -> NewEvent {
    NewEvent {
        event_type: event.name().to_string(),
        event_version: "1".into(),
        // A `JobEvent` is plain data: serializing it cannot fail.
        payload: serde_json::to_value(event).expect("event serializes"),
        metadata: metadata(),
    }
}

/// The events and the `jobs` and `images` rows of `jobs`, in one transaction, as the
/// event store and the `jobs` projection would write them for `JobQueued` +
/// `JobCompleted` (queued and completed at the same instant, never dispatched).
async fn bulk_insert(pool: &PgPool, team: &str, jobs: &[SeedJob]) -> anyhow::Result<()> {
    let mut events: (Vec<&str>, Vec<i64>, Vec<&str>, Vec<String>) = Default::default();
    let mut rows: (Vec<&str>, Vec<String>, Vec<String>, Vec<String>, Vec<String>, Vec<DateTime<Utc>>) = Default::default();
    let mut images: (Vec<&str>, Vec<&str>, Vec<String>, Vec<i32>, Vec<i64>, Vec<DateTime<Utc>>) = Default::default();
    for job in jobs {
        for (sequence, event) in job.events.iter().enumerate() {
            events.0.push(&job.job_id);
            events.1.push(sequence as i64 + 1);
            events.2.push(event.name());
            events.3.push(serde_json::to_string(event)?);
        }
        rows.0.push(&job.job_id);
        rows.1.push(job.input.operation().as_str().to_string());
        rows.2.push(job.input.model_id().to_string());
        rows.3.push(serde_json::to_string(&job.input)?);
        rows.4.push(serde_json::to_string(&job.outputs)?);
        rows.5.push(job.at);
        for (position, output) in job.outputs.iter().enumerate() {
            images.0.push(&output.key);
            images.1.push(&job.job_id);
            images.2.push(job.input.model_id().to_string());
            images.3.push(position as i32);
            images.4.push(output.bytes as i64);
            images.5.push(job.at);
        }
    }
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         SELECT 'GenerationJob', u.id, u.sequence, u.event_type, '1', u.payload::jsonb, $5::jsonb \
         FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[]) AS u(id, sequence, event_type, payload)",
    )
    .bind(&events.0)
    .bind(&events.1)
    .bind(&events.2)
    .bind(&events.3)
    .bind(metadata().to_string())
    .execute(&mut *tx)
    .await
    .context("seed events")?;
    sqlx::query(
        "INSERT INTO jobs (job_id, team_id, kind, status, model_id, cost, price_version, input, outputs, queued_at, not_before, \
         finished_at, updated_at) \
         SELECT u.job_id, $1, u.kind, 'completed', u.model_id, 1, 1, u.input, u.outputs, u.at, u.at, u.at, u.at \
         FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[]) \
         AS u(job_id, kind, model_id, input, outputs, at)",
    )
    .bind(team)
    .bind(&rows.0)
    .bind(&rows.1)
    .bind(&rows.2)
    .bind(&rows.3)
    .bind(&rows.4)
    .bind(&rows.5)
    .execute(&mut *tx)
    .await
    .context("seed jobs rows")?;
    sqlx::query(
        "INSERT INTO images (key, team_id, job_id, model_id, position, bytes, created_at) \
         SELECT u.key, $1, u.job_id, u.model_id, u.position, u.bytes, u.at \
         FROM UNNEST($2::text[], $3::text[], $4::text[], $5::int[], $6::bigint[], $7::timestamptz[]) \
         AS u(key, job_id, model_id, position, bytes, at)",
    )
    .bind(team)
    .bind(&images.0)
    .bind(&images.1)
    .bind(&images.2)
    .bind(&images.3)
    .bind(&images.4)
    .bind(&images.5)
    .execute(&mut *tx)
    .await
    .context("seed images rows")?;
    tx.commit().await?;
    Ok(())
}

/// A job's `jobs` row and its `images` rows as JSON, with the job id and its instant
/// replaced, so two seeded jobs compare equal when written the same way.
async fn rows_of(pool: &PgPool, job_id: &str) -> anyhow::Result<(String, String)> {
    let job: (String,) = sqlx::query_as(
        "SELECT replace(replace(to_jsonb(j)::text, job_id, 'JOB'), to_jsonb(queued_at)::text, '\"AT\"') FROM jobs j WHERE job_id = $1",
    )
    .bind(job_id)
    .fetch_one(pool)
    .await
    .context("jobs row")?;
    let images: (String,) = sqlx::query_as(
        "SELECT replace(replace(jsonb_agg(to_jsonb(i) ORDER BY position)::text, job_id, 'JOB'), to_jsonb(created_at)::text, '\"AT\"') \
         FROM images i WHERE job_id = $1 GROUP BY job_id, created_at",
    )
    .bind(job_id)
    .fetch_one(pool)
    .await
    .context("images rows")?;
    Ok((job.0, images.0))
}

/// Writes an object file (`{bucket_dir}/{key}`) for each key, on a few threads.
fn write_files(bucket_dir: &Path, keys: &[String]) -> anyhow::Result<()> {
    let per_thread = keys.len().div_ceil(FILE_WRITERS).max(1);
    std::thread::scope(|scope| {
        let writers: Vec<_> = keys
            .chunks(per_thread)
            .map(|chunk| {
                scope.spawn(move || -> std::io::Result<()> {
                    for key in chunk {
                        let path: PathBuf = bucket_dir.join(key);
                        if let Some(parent) = path.parent() {
                            std::fs::create_dir_all(parent)?;
                        }
                        std::fs::write(&path, OBJECT_BYTES)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for writer in writers {
            writer.join().map_err(|_| anyhow::anyhow!("an object writer panicked"))??;
        }
        Ok(())
    })
}
