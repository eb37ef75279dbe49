//! Benchmark of the image-retention sweep (ignored by default; measured, never asserted
//! against a time). Seeds `KILN_SWEEP_BENCH_IMAGES` images (default 20,000; the target
//! is 1,000,000 in < 60 s), 4 per completed generation job, into PostgreSQL, with their
//! objects in the loopback s3s-fs server (written straight to its directory), then
//! advances the clock 91 days and times one `RetentionService::sweep`.
//!
//! Seeding is not what is measured, so only the first jobs go through the event store and
//! its inline projections; the rest are bulk-inserted (`UNNEST`) as the same rows: the
//! events are the same `JobEvent` values serialized the same way, and the `jobs` and
//! `images` rows are checked column for column against the ones the projection wrote.
//! The sweep then reads events and index rows exactly as in production.
//!
//! `KILN_SWEEP_BENCH_IMAGES=1000000 cargo nextest run --cargo-profile release --test it storage_bench --run-ignored only --no-capture`

use std::path::{Path, PathBuf};
use std::time::Instant;

use application::event_store::{NewEvent, StreamAppend};
use chrono::{DateTime, Utc};
use domain::jobs::{JobEvent, JobInput, JobOutput};
use domain::{Credits, JobId, ModelId, TeamId};
use infrastructure::db::Database;
use infrastructure::storage::S3ObjectStore;
use serde_json::json;
use sqlx::PgPool;

use crate::storage::{S3Server, BUCKET};
use crate::support::app::{epoch, TestApp};
use crate::support::db::TestDb;

const IMAGES_PER_JOB: usize = 4;
/// Jobs seeded through the event store (the production path), whose rows the bulk-seeded
/// ones are checked against.
const JOBS_THROUGH_STORE: usize = 500;
/// Jobs per bulk-insert transaction.
const JOBS_PER_BULK_INSERT: usize = 5_000;
/// Threads writing object files.
const FILE_WRITERS: usize = 4;

/// A completed image-generation job with its outputs.
struct SeedJob {
    job_id: String,
    at: DateTime<Utc>,
    input: JobInput,
    outputs: Vec<JobOutput>,
    events: [JobEvent; 2],
}

impl SeedJob {
    fn new(team: TeamId, model: ModelId, n: usize) -> SeedJob {
        // A job a second, like steady traffic (the sweep walks the index in time order).
        let at = epoch() + chrono::Duration::seconds(n as i64);
        let job = JobId::new(uuid::Uuid::now_v7());
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
                bytes: 1,
                sha256: "00".repeat(32),
            })
            .collect();
        let queued = JobEvent::JobQueued {
            job_id: job,
            team_id: team,
            input: input.clone(),
            cost: Credits::try_from(1).expect("positive"),
            price_version: 1,
            occurred_at: at,
        };
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

fn new_event(event: &JobEvent) -> NewEvent {
    NewEvent {
        event_type: event.name().to_string(),
        event_version: "1".into(),
        payload: serde_json::to_value(event).expect("event serializes"),
        metadata: json!({"actor": "sweep-benchmark"}),
    }
}

/// The events and the `jobs` and `images` rows of `jobs`, in one transaction, as the
/// event store and the `jobs` projection would write them for `JobQueued` +
/// `JobCompleted` (queued and completed at the same instant, never dispatched).
async fn bulk_insert(pool: &PgPool, team: &str, jobs: &[SeedJob]) {
    let mut events: (Vec<&str>, Vec<i64>, Vec<&str>, Vec<String>) = Default::default();
    let mut rows: (Vec<&str>, Vec<String>, Vec<String>, Vec<String>, Vec<String>, Vec<DateTime<Utc>>) = Default::default();
    let mut images: (Vec<&str>, Vec<&str>, Vec<String>, Vec<i32>, Vec<i64>, Vec<DateTime<Utc>>) = Default::default();
    for job in jobs {
        for (sequence, event) in job.events.iter().enumerate() {
            events.0.push(&job.job_id);
            events.1.push(sequence as i64 + 1);
            events.2.push(event.name());
            events.3.push(serde_json::to_string(event).expect("event serializes"));
        }
        rows.0.push(&job.job_id);
        rows.1.push(job.input.operation().as_str().to_string());
        rows.2.push(job.input.model_id().to_string());
        rows.3.push(serde_json::to_string(&job.input).expect("input serializes"));
        rows.4.push(serde_json::to_string(&job.outputs).expect("outputs serialize"));
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
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         SELECT 'GenerationJob', u.id, u.sequence, u.event_type, '1', u.payload::jsonb, $5::jsonb \
         FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[]) AS u(id, sequence, event_type, payload)",
    )
    .bind(&events.0)
    .bind(&events.1)
    .bind(&events.2)
    .bind(&events.3)
    .bind(json!({"actor": "sweep-benchmark"}).to_string())
    .execute(&mut *tx)
    .await
    .expect("events");
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
    .expect("jobs");
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
    .expect("images");
    tx.commit().await.expect("commit");
}

/// A job's `jobs` row and its `images` rows as JSON, with the job id and its instant
/// replaced, so two seeded jobs compare equal when written the same way.
async fn rows_of(pool: &PgPool, job_id: &str) -> (String, String) {
    let job: (String,) = sqlx::query_as(
        "SELECT replace(replace(to_jsonb(j)::text, job_id, 'JOB'), to_jsonb(queued_at)::text, '\"AT\"') FROM jobs j WHERE job_id = $1",
    )
    .bind(job_id)
    .fetch_one(pool)
    .await
    .expect("jobs row");
    let images: (String,) = sqlx::query_as(
        "SELECT replace(replace(jsonb_agg(to_jsonb(i) ORDER BY position)::text, job_id, 'JOB'), to_jsonb(created_at)::text, '\"AT\"') \
         FROM images i WHERE job_id = $1 GROUP BY job_id, created_at",
    )
    .bind(job_id)
    .fetch_one(pool)
    .await
    .expect("images rows");
    (job.0, images.0)
}

/// Writes an object file (`{bucket_dir}/{key}`) for each key, on a few threads.
fn write_objects(bucket_dir: &Path, keys: Vec<String>) {
    let per_thread = keys.len().div_ceil(FILE_WRITERS).max(1);
    std::thread::scope(|scope| {
        for chunk in keys.chunks(per_thread) {
            scope.spawn(move || {
                for key in chunk {
                    let path: PathBuf = bucket_dir.join(key);
                    std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
                    std::fs::write(&path, b"x").expect("object");
                }
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run explicitly with --run-ignored only"]
async fn retention_sweep_benchmark() {
    let images: usize = std::env::var("KILN_SWEEP_BENCH_IMAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let jobs = images.div_ceil(IMAGES_PER_JOB).max(JOBS_THROUGH_STORE + 1);
    // The fake server's objects are files: on this VM's disk (ext4 mounted with
    // `discard`) one unlink takes ~0.2 ms, which would time the disk, not the sweeper.
    // So they live in RAM (tmpfs) unless KILN_SWEEP_BENCH_S3_DIR names another place.
    let s3_dir = std::env::var("KILN_SWEEP_BENCH_S3_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() });
    println!("S3 server objects under {}", s3_dir.display());
    let server = S3Server::start_with_root(tempfile::tempdir_in(&s3_dir).expect("s3 root")).await;
    S3ObjectStore::new(&server.settings()).init_bucket(90).await.expect("bucket");
    let s3 = server.settings();
    let app = TestApp::spawn_with(TestDb::postgres().await, |settings| {
        settings.storage.backend = "s3".into();
        settings.storage.s3 = s3;
        settings.jobs.worker_in_serve = false;
    })
    .await;
    let Database::Postgres(pool) = &app.state.db else { panic!("the benchmark runs on PostgreSQL") };
    let (team, model) = (TeamId::new(uuid::Uuid::now_v7()), ModelId::new(uuid::Uuid::now_v7()));
    let bucket_dir = server.root.path().join(BUCKET);
    let seeding = Instant::now();

    // The first jobs through the event store and its inline projections.
    let first: Vec<SeedJob> = (0..JOBS_THROUGH_STORE).map(|n| SeedJob::new(team, model, n)).collect();
    app.state.aggregates.commit(first.iter().map(SeedJob::append).collect()).await.expect("seed append");
    let keys = first.iter().flat_map(|job| job.outputs.iter().map(|o| o.key.clone())).collect();
    let mut writer = {
        let dir = bucket_dir.clone();
        tokio::task::spawn_blocking(move || write_objects(&dir, keys))
    };
    // The rest in bulk, object files written meanwhile.
    let mut seeded = JOBS_THROUGH_STORE;
    let mut checked = false;
    while seeded < jobs {
        let n = JOBS_PER_BULK_INSERT.min(jobs - seeded);
        let chunk: Vec<SeedJob> = (seeded..seeded + n).map(|n| SeedJob::new(team, model, n)).collect();
        bulk_insert(pool, &team.to_string(), &chunk).await;
        if !checked {
            let (through_store, bulk) = (rows_of(pool, &first[0].job_id).await, rows_of(pool, &chunk[0].job_id).await);
            assert_eq!(bulk, through_store, "bulk-seeded rows equal the projection's");
            checked = true;
        }
        let keys = chunk.iter().flat_map(|job| job.outputs.iter().map(|o| o.key.clone())).collect();
        writer.await.expect("object writer");
        let dir = bucket_dir.clone();
        writer = tokio::task::spawn_blocking(move || write_objects(&dir, keys));
        seeded += n;
    }
    writer.await.expect("object writer");
    // As autovacuum would after a large load: the planner needs statistics.
    sqlx::query("ANALYZE events, jobs, images").execute(pool).await.expect("analyze");
    println!("seeded {} images of {jobs} jobs in {:.2?}", jobs * IMAGES_PER_JOB, seeding.elapsed());

    let span_days = (jobs as i64 + 86_399) / 86_400;
    app.clock.advance(chrono::Duration::days(91 + span_days));
    let started = Instant::now();
    let report = app.state.retention.sweep(90, None).await.expect("sweep");
    let elapsed = started.elapsed();
    println!(
        "retention sweep: {} images, {} jobs, {} batches in {:.2?} = {:.0} images/s \
         (summed over batches: finding {:.2?}, deleting objects {:.2?}, recording {:.2?})",
        report.images,
        report.jobs,
        report.batches,
        elapsed,
        report.images as f64 / elapsed.as_secs_f64(),
        report.finding,
        report.deleting,
        report.recording
    );
    assert_eq!((report.images, report.jobs), (jobs * IMAGES_PER_JOB, jobs));
    let (events, unexpired, flagged): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM events WHERE event_type = 'ImagesExpired'), \
         (SELECT COUNT(*) FROM images), (SELECT COUNT(*) FROM jobs WHERE images_expired)",
    )
    .fetch_one(pool)
    .await
    .expect("counts");
    assert_eq!((events, unexpired, flagged), (jobs as i64, 0, jobs as i64), "ImagesExpired once per job, every image expired");
    assert!(server.keys_under("generated-images").is_empty(), "every object deleted");
    app.shutdown().await.expect("shutdown");
}
