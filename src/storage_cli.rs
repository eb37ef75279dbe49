//! `kiln storage init` and `kiln storage sweep`.

use std::sync::Arc;

use application::clock::SystemClock;
use clap::Subcommand;
use infrastructure::config::Settings;
use infrastructure::db::Database;
use infrastructure::storage::S3ObjectStore;

use crate::state::AppState;

#[derive(Debug, Subcommand)]
pub enum StorageCommand {
    /// Create the S3 bucket if missing and apply the lifecycle rule expiring
    /// `generated-images/` after `storage.retention_days`.
    Init,
    /// Delete images older than `storage.retention_days` and record `ImagesExpired` on
    /// their jobs, then exit (`kiln serve` also does this every `storage.sweep_interval_secs`).
    Sweep,
}

pub async fn run(settings: Settings, command: StorageCommand) -> anyhow::Result<()> {
    match command {
        StorageCommand::Init => init(&settings).await,
        StorageCommand::Sweep => sweep(&settings).await,
    }
}

async fn init(settings: &Settings) -> anyhow::Result<()> {
    let storage = &settings.storage;
    if storage.backend != "s3" {
        println!(
            "storage backend {:?}: nothing to create; the retention sweeper deletes images after {} days",
            storage.backend, storage.retention_days
        );
        return Ok(());
    }
    let store = S3ObjectStore::new(&storage.s3);
    let done = store.init_bucket(storage.retention_days).await?;
    println!(
        "bucket {}: {}; lifecycle rule ({} expire after {} days): {}",
        store.bucket(),
        if done.bucket_created { "created" } else { "exists" },
        infrastructure::storage::s3::EXPIRING_PREFIX,
        storage.retention_days,
        if done.lifecycle_applied { "applied" } else { "not supported by this server (the sweeper alone deletes)" }
    );
    Ok(())
}

async fn sweep(settings: &Settings) -> anyhow::Result<()> {
    let db = Database::connect_and_migrate(&settings.database.url, settings.database.connections_max).await?;
    let state = AppState::new(db.clone(), settings, Arc::new(SystemClock))?;
    let report = state.retention.sweep(settings.storage.retention_days, None).await;
    db.close().await;
    let report = report?;
    println!("retention sweep: {} images deleted, {} jobs marked expired, {} batches", report.images, report.jobs, report.batches);
    Ok(())
}
