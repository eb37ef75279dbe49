//! Benchmark of the image-retention sweep (ignored by default; measured, never asserted
//! against a time). Seeds `KILN_SWEEP_BENCH_IMAGES` images (default 20,000; the target
//! is 1,000,000 in < 60 s), 4 per completed generation job, into PostgreSQL through the
//! event store and its inline projections, with their objects in the loopback s3s-fs
//! server (written straight to its directory: seeding speed is not what is measured),
//! then advances the clock 91 days and times one `kiln::retention::sweep`.
//!
//! `KILN_SWEEP_BENCH_IMAGES=1000000 cargo nextest run --test it storage_bench --run-ignored only --no-capture`

use std::time::Instant;

use application::event_store::{NewEvent, StreamAppend};
use domain::jobs::{JobEvent, JobInput, JobOutput};
use domain::{Credits, JobId, ModelId, TeamId};
use infrastructure::storage::S3ObjectStore;
use serde_json::json;

use crate::storage::{S3Server, BUCKET};
use crate::support::app::{epoch, TestApp};
use crate::support::db::TestDb;

const IMAGES_PER_JOB: usize = 4;
const JOBS_PER_APPEND: usize = 500;

fn new_event(event: &JobEvent) -> NewEvent {
    NewEvent {
        event_type: event.name().to_string(),
        event_version: "1".into(),
        payload: serde_json::to_value(event).expect("event serializes"),
        metadata: json!({"actor": "sweep-benchmark"}),
    }
}

/// A completed image-generation job with its outputs, as one new stream.
fn completed_job(team: TeamId, model: ModelId, n: usize) -> (StreamAppend, Vec<String>) {
    // A job a second, like steady traffic (the sweep walks the index in time order).
    let at = epoch() + chrono::Duration::seconds(n as i64);
    let job = JobId::new(uuid::Uuid::now_v7());
    let keys: Vec<String> =
        (0..IMAGES_PER_JOB).map(|n| application::storage::image_key(&team.to_string(), &job.to_string(), n as u32)).collect();
    let input = JobInput::ImageGeneration {
        model_id: model,
        model_version: 1,
        prompt: "benchmark".into(),
        resolution: "512x512".into(),
        quality: "standard".into(),
        count: IMAGES_PER_JOB as u32,
    };
    let queued = JobEvent::JobQueued {
        job_id: job,
        team_id: team,
        input,
        cost: Credits::try_from(1).expect("positive"),
        price_version: 1,
        occurred_at: at,
    };
    let outputs = keys
        .iter()
        .map(|key| JobOutput { key: key.clone(), content_type: "image/png".into(), bytes: 1, sha256: "00".repeat(32) })
        .collect();
    let completed = JobEvent::JobCompleted { outputs, occurred_at: at };
    let append = StreamAppend {
        aggregate_type: "GenerationJob".into(),
        aggregate_id: job.to_string(),
        expected_sequence: 0,
        events: vec![new_event(&queued), new_event(&completed)],
        snapshot: None,
    };
    (append, keys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run explicitly with --run-ignored only"]
async fn retention_sweep_benchmark() {
    let images: usize = std::env::var("KILN_SWEEP_BENCH_IMAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let jobs = images.div_ceil(IMAGES_PER_JOB);
    let server = S3Server::start().await;
    S3ObjectStore::new(&server.settings()).init_bucket(90).await.expect("bucket");
    let s3 = server.settings();
    let app = TestApp::spawn_with(TestDb::postgres().await, |settings| {
        settings.storage.backend = "s3".into();
        settings.storage.s3 = s3;
        settings.jobs.worker_in_serve = false;
    })
    .await;
    let (team, model) = (TeamId::new(uuid::Uuid::now_v7()), ModelId::new(uuid::Uuid::now_v7()));
    let bucket_dir = server.root.path().join(BUCKET);
    let seeding = Instant::now();
    let mut seeded = 0;
    while seeded < jobs {
        let n = JOBS_PER_APPEND.min(jobs - seeded);
        let (appends, keys): (Vec<_>, Vec<_>) = (0..n).map(|i| completed_job(team, model, seeded + i)).unzip();
        app.state.aggregates.commit(appends).await.expect("seed append");
        for key in keys.into_iter().flatten() {
            let path = bucket_dir.join(&key);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
            std::fs::write(&path, b"x").expect("object");
        }
        seeded += n;
    }
    println!("seeded {} images of {jobs} jobs in {:?}", jobs * IMAGES_PER_JOB, seeding.elapsed());

    let span_days = (jobs as i64 + 86_399) / 86_400;
    app.clock.advance(chrono::Duration::days(91 + span_days));
    let started = Instant::now();
    let report = kiln::retention::sweep(&app.state, 90, None).await.expect("sweep");
    let elapsed = started.elapsed();
    println!(
        "retention sweep: {} images, {} jobs, {} batches in {:.2?} = {:.0} images/s",
        report.images,
        report.jobs,
        report.batches,
        elapsed,
        report.images as f64 / elapsed.as_secs_f64()
    );
    assert_eq!((report.images, report.jobs), (jobs * IMAGES_PER_JOB, jobs));
    assert!(server.keys_under("generated-images").is_empty(), "every object deleted");
    app.shutdown().await.expect("shutdown");
}
