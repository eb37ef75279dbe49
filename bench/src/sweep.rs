//! `kiln-bench sweep`: the image-retention sweep over the S3 protocol, against the bare
//! cost of the same deletes, in one run, on one scratch database and one S3 server.
//!
//! - **Seed**: `--images` images, 4 per completed image-generation job, all past
//!   retention (one job a second up to a day before the cutoff), in PostgreSQL
//!   ([`crate::sweep_seed`]: the first jobs through the event store, the rest bulk-written
//!   as the same rows and checked against them), plus a few fresh jobs that must stay.
//!   The S3 server is s3s + s3s-fs on a loopback socket ([`crate::s3`]), its objects
//!   files on tmpfs (`/dev/shm` unless `--s3-dir`): a disk would time the disk.
//! - **Floor**: the same keys as objects in a second bucket, deleted directly with
//!   aws-sdk-s3: `DeleteObjects` of 1,000 keys (S3's limit), quiet, as many requests in
//!   flight as the sweep can have at most. What the protocol itself costs on this
//!   server, with no database and no bookkeeping.
//! - **Kiln**: one `RetentionService::sweep`, wired as the `kiln` binary wires it
//!   (`AppState` over the S3 store): it finds the due images in the index, deletes their
//!   objects, and records `ImagesExpired` on each job (which takes them out of the index).
//!   Afterwards the run checks one `ImagesExpired` per expired job, no expired image left
//!   in the index or the bucket, and every fresh image still there.
//!
//! The floor runs first: its objects are written, deleted, and gone before Kiln's are
//! swept, so tmpfs holds one copy at a time.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use application::clock::SystemClock;
use application::retention::{cutoff, SweepReport};
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, RequestChecksumCalculation};
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use futures::{StreamExt, TryStreamExt};
use infrastructure::config::{S3Settings, Settings};
use infrastructure::db::Database;
use infrastructure::storage::s3::{DELETE_BATCH_KEYS_MAX, DELETE_REQUESTS_IN_FLIGHT_MAX};
use infrastructure::storage::S3ObjectStore;
use kiln::app::AppState;
use secrecy::ExposeSecret;

use crate::cpu::CpuSample;
use crate::s3::S3Loopback;
use crate::sweep_seed::{Seed, IMAGES_PER_JOB, JOBS_THROUGH_STORE};

const KILN_BUCKET: &str = "kiln-bench";
const FLOOR_BUCKET: &str = "kiln-bench-floor";
/// Jobs made within retention: their images must survive the sweep.
const FRESH_JOBS: usize = 100;
/// The target (issue 32): a million images in under this.
const TARGET_IMAGES: usize = 1_000_000;
const TARGET: Duration = Duration::from_secs(15);

#[derive(clap::Args, Debug, Clone)]
pub struct SweepArgs {
    /// Images past retention (4 per job; rounded up to whole jobs, at least 2,004).
    #[arg(long, default_value_t = 100_000)]
    pub images: usize,
    /// Where the S3 server keeps its objects (a directory is made in it and removed).
    /// Default: /dev/shm (tmpfs), else the temporary directory.
    #[arg(long)]
    pub s3_dir: Option<PathBuf>,
    /// `DeleteObjects` requests the floor keeps in flight (default: the most the sweep
    /// can have in flight: batches in flight × requests in flight per batch).
    #[arg(long)]
    pub floor_in_flight: Option<usize>,
    /// Sweep batches in flight (default: the sweep's own, `retention::BATCHES_IN_FLIGHT_MAX`).
    #[arg(long)]
    pub batches_in_flight: Option<usize>,
    /// Images per sweep batch (default: the sweep's own, `retention::BATCH_IMAGES_MAX`).
    #[arg(long)]
    pub batch_images: Option<i64>,
    /// Skip one side (e.g. while profiling the other).
    #[arg(long, value_parser = ["floor", "kiln"])]
    pub skip: Vec<String>,
    #[arg(long, env = "KILN_BENCH_DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub database_url: String,
}

impl SweepArgs {
    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!((1..=10_000_000).contains(&self.images), "--images must be 1..=10000000");
        anyhow::ensure!(self.floor_in_flight.is_none_or(|n| (1..=256).contains(&n)), "--floor-in-flight must be 1..=256");
        anyhow::ensure!(self.batches_in_flight.is_none_or(|n| (1..=64).contains(&n)), "--batches-in-flight must be 1..=64");
        anyhow::ensure!(self.batch_images.is_none_or(|n| (1..=100_000).contains(&n)), "--batch-images must be 1..=100000");
        Ok(())
    }

    fn floor_in_flight(&self) -> usize {
        self.floor_in_flight.unwrap_or(self.batches_in_flight() * DELETE_REQUESTS_IN_FLIGHT_MAX)
    }

    fn batches_in_flight(&self) -> usize {
        self.batches_in_flight.unwrap_or(application::retention::BATCHES_IN_FLIGHT_MAX)
    }
}

pub async fn run(args: SweepArgs) -> anyhow::Result<()> {
    args.validate()?;
    let s3_dir = args.s3_dir.clone().unwrap_or_else(|| {
        let shm = PathBuf::from("/dev/shm");
        if shm.is_dir() {
            shm
        } else {
            std::env::temp_dir()
        }
    });
    // Removed when dropped, whatever the outcome.
    let s3_root = tempfile::Builder::new().prefix("kiln-bench-s3-").tempdir_in(&s3_dir).context("S3 server directory")?;
    let admin_url = args.database_url.clone();
    crate::scratch::measure_and_print(&admin_url, |url, _storage| async move { measure(&args, &url, s3_root.path()).await }).await
}

async fn measure(args: &SweepArgs, url: &str, s3_root: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let server = S3Loopback::start(s3_root).await?;
    let mut settings = Settings::default();
    settings.database.url = url.to_string();
    settings.storage.backend = "s3".into();
    settings.storage.s3 = server.settings(KILN_BUCKET);
    let retention_days = settings.storage.retention_days;
    let acquire_timeout = Duration::from_millis(settings.database.acquire_timeout_ms.max(1));
    let db = Database::connect_and_migrate_with(url, settings.database.connections_max, acquire_timeout).await?;
    let Database::Postgres(pool) = &db else { anyhow::bail!("the benchmark runs on PostgreSQL") };
    let state = AppState::new(db.clone(), &settings, Arc::new(SystemClock))?;
    for bucket in [KILN_BUCKET, FLOOR_BUCKET] {
        S3ObjectStore::new(&server.settings(bucket)).init_bucket(retention_days).await.with_context(|| format!("bucket {bucket}"))?;
    }
    let postgres_version: String = sqlx::query_scalar("SHOW server_version").fetch_one(pool).await?;

    let now = chrono::Utc::now();
    let jobs = args.images.div_ceil(IMAGES_PER_JOB).max(JOBS_THROUGH_STORE + 1);
    let expired = Seed::new(jobs, cutoff(now, retention_days) - chrono::Duration::days(1));
    let fresh = Seed::new(FRESH_JOBS, now - chrono::Duration::days(1));
    let seeding = Instant::now();
    expired.write_rows(pool, &state.aggregates).await?;
    fresh.write_rows(pool, &state.aggregates).await?;
    let rows_seeded = seeding.elapsed();
    eprintln!("seeded {} images of {jobs} jobs (+ {} fresh) in PostgreSQL in {rows_seeded:.2?}", expired.images(), fresh.images());

    let mut lines = vec![format!(
        "{} images of {jobs} jobs past retention (+ {} fresh images that stay), S3: s3s-fs on 127.0.0.1, objects under {}, \
         PostgreSQL {postgres_version}, {} CPUs",
        expired.images(),
        fresh.images(),
        s3_root.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )];
    lines.push(format!(
        "sweep: batches of {} images, {} in flight",
        args.batch_images.unwrap_or(application::retention::BATCH_IMAGES_MAX),
        args.batches_in_flight()
    ));
    let mut floor_elapsed = None;
    if !args.skip.iter().any(|s| s == "floor") {
        let writing = Instant::now();
        expired.write_objects(&server.bucket_dir(FLOOR_BUCKET)).await?;
        eprintln!("floor: wrote {} objects in {:.2?}; deleting", expired.images(), writing.elapsed());
        let (elapsed, line) = floor(&server.settings(FLOOR_BUCKET), &expired, args.floor_in_flight()).await?;
        anyhow::ensure!(server.count_files_under(FLOOR_BUCKET, "generated-images") == 0, "the floor left objects behind");
        floor_elapsed = Some(elapsed);
        lines.push(line);
    }
    if !args.skip.iter().any(|s| s == "kiln") {
        let writing = Instant::now();
        expired.write_objects(&server.bucket_dir(KILN_BUCKET)).await?;
        fresh.write_objects(&server.bucket_dir(KILN_BUCKET)).await?;
        eprintln!("kiln: wrote {} objects in {:.2?}; sweeping", expired.images() + fresh.images(), writing.elapsed());
        let before = CpuSample::take(&[]);
        let started = Instant::now();
        let retention = state.retention.clone().with_batches_in_flight(args.batches_in_flight());
        let batch_images = args.batch_images.unwrap_or(application::retention::BATCH_IMAGES_MAX);
        let report = retention.sweep_in_batches(retention_days, None, batch_images).await.context("sweep")?;
        let elapsed = started.elapsed();
        let cpu = CpuSample::take(&[]).zip(before).map(|(after, before)| after.report_since(&before, report.images, "image"));
        check_swept(&server, pool, &report, &expired, &fresh).await?;
        lines.push(kiln_line(&report, elapsed, cpu));
        if let Some(floor) = floor_elapsed {
            lines.push(format!("kiln / floor time: {:.2}×", elapsed.as_secs_f64() / floor.as_secs_f64().max(f64::EPSILON)));
        }
        lines.push(if expired.images() >= TARGET_IMAGES {
            let projected = elapsed.mul_f64(TARGET_IMAGES as f64 / expired.images() as f64);
            let met = if projected < TARGET { "met" } else { "MISSED" };
            format!("target: {TARGET_IMAGES} images in < {} s: {:.2} s per {TARGET_IMAGES}, {met}", TARGET.as_secs(), projected.as_secs_f64())
        } else {
            format!("target: {TARGET_IMAGES} images in < {} s (run with --images {TARGET_IMAGES} to check it)", TARGET.as_secs())
        });
    }
    lines.push(format!("seeding (not measured): rows {rows_seeded:.2?}"));
    Ok(lines)
}

/// Deletes every key of `seed` from `settings.bucket` with a bare aws-sdk-s3 client, `in_flight`
/// requests at a time; returns the time taken and the result line.
async fn floor(settings: &S3Settings, seed: &Seed, in_flight: usize) -> anyhow::Result<(Duration, String)> {
    let client = bare_client(settings)?;
    let bucket = settings.bucket.as_str();
    let jobs_per_request = DELETE_BATCH_KEYS_MAX / IMAGES_PER_JOB;
    let before = CpuSample::take(&[]);
    let started = Instant::now();
    let requests = (0..seed.jobs.len()).step_by(jobs_per_request).map(|start| {
        let keys = seed.keys(start..(start + jobs_per_request).min(seed.jobs.len()));
        delete_objects(&client, bucket, keys)
    });
    let deleted = futures::stream::iter(requests).buffer_unordered(in_flight).try_fold(0, |n, k| async move { Ok(n + k) }).await?;
    let elapsed = started.elapsed();
    anyhow::ensure!(deleted == seed.images(), "the floor deleted {deleted} of {} keys", seed.images());
    let cpu = CpuSample::take(&[]).zip(before).map(|(after, before)| after.report_since(&before, deleted, "image"));
    let line = format!(
        "{:<34} {:>8} images in {:>7.2} s = {:>7.0} images/s  ({DELETE_BATCH_KEYS_MAX} keys a request, {in_flight} in flight)\n    {}",
        "floor: aws-sdk-s3 DeleteObjects",
        deleted,
        elapsed.as_secs_f64(),
        deleted as f64 / elapsed.as_secs_f64().max(f64::EPSILON),
        cpu.unwrap_or_default()
    );
    Ok((elapsed, line))
}

/// An aws-sdk-s3 client configured as Kiln's S3 store configures its own (path style,
/// checksums only where S3 requires them, static credentials).
fn bare_client(settings: &S3Settings) -> anyhow::Result<aws_sdk_s3::Client> {
    let (Some(id), Some(secret), Some(endpoint)) = (&settings.access_key_id, &settings.secret_access_key, &settings.endpoint_url) else {
        anyhow::bail!("the floor needs the loopback server's endpoint and credentials");
    };
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(settings.region.clone()))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .credentials_provider(Credentials::new(id, secret.expose_secret(), None, None, "kiln-bench"))
        .build();
    Ok(aws_sdk_s3::Client::from_conf(config))
}

async fn delete_objects(client: &aws_sdk_s3::Client, bucket: &str, keys: Vec<String>) -> anyhow::Result<usize> {
    let count = keys.len();
    let objects = keys.into_iter().map(|key| ObjectIdentifier::builder().key(key).build()).collect::<Result<Vec<_>, _>>()?;
    let delete = Delete::builder().set_objects(Some(objects)).quiet(true).build()?;
    let output = client.delete_objects().bucket(bucket).delete(delete).send().await.context("DeleteObjects")?;
    anyhow::ensure!(output.errors().is_empty(), "DeleteObjects: {} keys failed, first {:?}", output.errors().len(), output.errors().first());
    Ok(count)
}

fn kiln_line(report: &SweepReport, elapsed: Duration, cpu: Option<String>) -> String {
    format!(
        "{:<34} {:>8} images in {:>7.2} s = {:>7.0} images/s  ({} jobs, {} batches; stages summed over batches: \
         find {:.2?}, delete {:.2?}, record {:.2?})\n    {}",
        "kiln: RetentionService::sweep",
        report.images,
        elapsed.as_secs_f64(),
        report.images as f64 / elapsed.as_secs_f64().max(f64::EPSILON),
        report.jobs,
        report.batches,
        report.finding,
        report.deleting,
        report.recording,
        cpu.unwrap_or_default()
    )
}

/// What the sweep must have done: every expired image deleted and recorded once per job,
/// every fresh one untouched.
async fn check_swept(server: &S3Loopback, pool: &sqlx::PgPool, report: &SweepReport, expired: &Seed, fresh: &Seed) -> anyhow::Result<()> {
    let (jobs, images) = (expired.jobs.len(), expired.images());
    anyhow::ensure!((report.images, report.jobs) == (images, jobs), "swept {report:?}, expected {images} images of {jobs} jobs");
    let (events, distinct, left, flagged): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM events WHERE event_type = 'ImagesExpired'), \
         (SELECT COUNT(DISTINCT aggregate_id) FROM events WHERE event_type = 'ImagesExpired'), \
         (SELECT COUNT(*) FROM images), (SELECT COUNT(*) FROM job_image_expiries)",
    )
    .fetch_one(pool)
    .await?;
    let expected = (jobs as i64, jobs as i64, fresh.images() as i64, jobs as i64);
    anyhow::ensure!(
        (events, distinct, left, flagged) == expected,
        "(ImagesExpired events, jobs with one, image rows left, jobs flagged) = {:?}, expected {expected:?}",
        (events, distinct, left, flagged)
    );
    let fresh_team = fresh.team.to_string();
    let fresh_left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM images WHERE team_id = $1").bind(&fresh_team).fetch_one(pool).await?;
    anyhow::ensure!(fresh_left == fresh.images() as i64, "fresh image rows left: {fresh_left} of {}", fresh.images());
    let objects_left = server.count_files_under(KILN_BUCKET, "generated-images");
    let fresh_objects = server.count_files_under(KILN_BUCKET, &format!("generated-images/{fresh_team}"));
    anyhow::ensure!(
        (objects_left, fresh_objects) == (fresh.images(), fresh.images()),
        "objects left: {objects_left}, of them fresh: {fresh_objects}; expected only the {} fresh ones",
        fresh.images()
    );
    Ok(())
}
