//! `kiln-bench webhooks`: deliveries per second through Kiln's webhook sender (claim,
//! resolve and check the address, sign with Standard Webhooks, POST, record the attempt)
//! to a local axum receiver that answers 204, on a scratch PostgreSQL database.
//! Deliveries are queued directly (test events), so this times the sender alone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use application::webhooks::{EndpointInput, NewDelivery, WebhookDeliveries};
use domain::TeamId;
use infrastructure::config::Settings;
use infrastructure::db::Database;

use crate::scratch::ScratchDb;

#[derive(clap::Args, Debug, Clone)]
pub struct WebhooksArgs {
    #[arg(long, env = "KILN_BENCH_DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub admin_url: String,
    /// Deliveries queued and sent.
    #[arg(long, default_value_t = 2_000)]
    pub deliveries: u64,
    /// Deliveries a sender claims and sends at once (`webhooks.batch`).
    #[arg(long, default_value_t = 32)]
    pub batch: u32,
    /// Sender processes' worth of senders (tasks sharing the claims).
    #[arg(long, default_value_t = 2)]
    pub senders: usize,
}

pub async fn run(args: WebhooksArgs) -> anyhow::Result<()> {
    anyhow::ensure!((1..=1_000_000).contains(&args.deliveries), "--deliveries must be 1..=1000000");
    anyhow::ensure!((1..=16).contains(&args.senders), "--senders must be 1..=16");
    let scratch = ScratchDb::create(&args.admin_url).await?;
    let result = measure(&args, &scratch.url).await;
    scratch.drop_database().await?;
    result
}

async fn measure(args: &WebhooksArgs, url: &str) -> anyhow::Result<()> {
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let receiver = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::Relaxed);
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move { axum::serve(listener, receiver).await });

    let storage = tempfile_dir()?;
    let mut settings = Settings::default();
    settings.database.url = url.to_string();
    settings.storage.local_root = storage.display().to_string();
    settings.webhooks.allow_http = true;
    settings.webhooks.allow_private_addresses = true;
    settings.webhooks.batch = args.batch;
    let db = Database::connect_and_migrate(url, 32).await?;
    let state = kiln::state::AppState::new(db.clone(), &settings, Arc::new(application::clock::SystemClock))?;
    let team = TeamId::new(uuid::Uuid::now_v7());
    let input = EndpointInput {
        url: Some(format!("http://127.0.0.1:{port}/hook")),
        event_types: Some(vec!["job.completed".into()]),
        credits_low_threshold: None,
    };
    let (endpoint_id, _) = state.webhooks.create(team, input, &serde_json::json!({ "actor": "bench" })).await?;
    let deliveries = infrastructure::webhooks::SqlWebhookDeliveries(db.clone());
    let now = application::clock::Clock::now(&application::clock::SystemClock);
    for i in 0..args.deliveries {
        let delivery_id = format!("msg_bench{i:012}");
        let payload = format!("{{\"type\":\"webhook.test\",\"timestamp\":\"{now}\",\"data\":{{\"n\":{i}}}}}");
        let delivery = NewDelivery { delivery_id, endpoint_id, team_id: team, event_type: "webhook.test".into(), payload, now };
        deliveries.enqueue(delivery).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.senders {
        let sender = state.webhook_sender.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                match sender.turn().await {
                    Ok(0) => return Ok::<(), anyhow::Error>(()),
                    Ok(_) => {}
                    Err(error) => return Err(anyhow::anyhow!("{error}")),
                }
            }
        }));
    }
    for task in tasks {
        task.await.context("sender task")??;
    }
    let elapsed = started.elapsed();
    let (delivered,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM webhook_deliveries WHERE state = 'delivered'")
        .fetch_one(match &db {
            Database::Postgres(pool) => pool,
            Database::Sqlite { .. } => anyhow::bail!("the benchmark runs on PostgreSQL"),
        })
        .await?;
    anyhow::ensure!(delivered as u64 == args.deliveries, "{delivered} of {} delivered", args.deliveries);
    anyhow::ensure!(received.load(Ordering::Relaxed) == args.deliveries, "the receiver got {} requests", received.load(Ordering::Relaxed));
    println!(
        "{} deliveries, {} senders × batch {}: {:.2} s, {:.0} deliveries/s (each signed, sent over loopback HTTP, attempt recorded; exactly once each)",
        args.deliveries,
        args.senders,
        args.batch,
        elapsed.as_secs_f64(),
        args.deliveries as f64 / elapsed.as_secs_f64()
    );
    db.close().await;
    let _ = std::fs::remove_dir_all(&storage);
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("kiln-bench-webhooks-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
