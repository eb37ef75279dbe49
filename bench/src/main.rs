//! `kiln-bench`: measures Kiln against simpler designs on the same PostgreSQL, in one run.
//!
//! Subcommands:
//! - `credits`: reserve+deduct throughput and latency through the real `CreditsService`,
//!   against the row-lock "seed" baseline (see [`credits`]).
//! - `jobs`: the job engine's full lifecycle with `kiln worker` processes (see [`jobs`]).
//! - `dispatch`: dispatch of jobs that reserve and deduct credits, Kiln against the seed's
//!   design on graphile-worker, and against raw no-op graphile-worker jobs (see [`dispatch`]).
//! - `http`: the read path under a bounded load, Kiln against a bare axum + sqlx server (see [`http`]).
//! - `render`: the local provider's renderer alone (see [`render`]).
//! - `latency`: open-loop latency at fixed arrival rates against the seed's targets (see [`latency`]).
//! - `log`: projection rebuild and `audit verify` of a large credit log against an ordered raw read (see [`log`]).
//! - `webhooks`: deliveries per second through the webhook sender to a local receiver (see [`webhooks`]).
//! - `sweep`: the image-retention sweep over the S3 protocol, against the bare `DeleteObjects` of the same keys (see [`sweep`]).
//!
//! Every run that needs a database works in a scratch database it creates and drops, and
//! stops by itself.

mod baseline;
mod cpu;
mod credits;
mod dispatch;
mod dispatch_check;
mod http;
mod jobs;
mod kiln;
mod latency;
mod load;
mod log;
mod render;
mod report;
mod s3;
mod scratch;
mod seed_design;
mod sweep;
mod sweep_seed;
mod webhooks;

use std::time::Duration;

use clap::{Parser, Subcommand};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "kiln-bench", about = "Kiln benchmarks against a baseline on the same PostgreSQL")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Reserve+deduct: baseline and Kiln, spread over many teams and on one hot team.
    Credits(CreditsArgs),
    /// Full job lifecycle with `kiln worker` processes; plan limits checked afterwards.
    Jobs(jobs::JobsArgs),
    /// Dispatch with credits: Kiln and the seed's design on graphile-worker (npm), plus raw no-op graphile-worker jobs; enqueue and drain timed apart.
    Dispatch(dispatch::DispatchArgs),
    /// The read path under 64 connections: Kiln's balance and history against a bare axum + sqlx point select.
    Http(http::HttpArgs),
    /// The local provider's PNG renderer alone, one thread (ms per image, digest of the bytes).
    Render(render::RenderArgs),
    /// Webhook deliveries per second to a local receiver (sign, send, record).
    Webhooks(webhooks::WebhooksArgs),
    /// Open-loop latency at fixed arrival rates: balance, history, submit, cancel and credit operations.
    Latency(latency::LatencyArgs),
    /// Projection rebuild and `audit verify` of a large credit log against an ordered raw read of it.
    Log(log::LogArgs),
    /// The image-retention sweep over the S3 protocol (loopback s3s-fs), against bare aws-sdk-s3 deletes of the same keys.
    Sweep(sweep::SweepArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct CreditsArgs {
    /// Concurrent client tasks, each running one operation at a time.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Teams opened for the spread scenarios (the hot scenarios use the first one).
    #[arg(long, default_value_t = 10_000)]
    pub teams: usize,
    /// Measured time per scenario.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Unmeasured load before each scenario's measurement (caches, writer tasks, plans).
    #[arg(long, default_value_t = 2)]
    pub warmup_secs: u64,
    /// Connections in the one pool both designs share.
    #[arg(long, default_value_t = 64)]
    pub connections: u32,
    /// Admin URL: the scratch database is created and dropped through it. Loopback only.
    #[arg(long, env = "KILN_BENCH_DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub database_url: String,
    /// Kiln's snapshot interval (`event_store.snapshot_every`); 100 is the binary's default.
    #[arg(long, default_value_t = 100)]
    pub snapshot_every: i64,
    /// Kiln's joint credit transactions open at once (`CreditsService::with_commits_in_flight`;
    /// 0: no joining, every team's batch commits alone).
    #[arg(long, default_value_t = application::credits::COMMITS_IN_FLIGHT)]
    pub commits_in_flight: usize,
    /// Run only these scenarios (repeatable), e.g. `--only kiln-hot` while profiling.
    #[arg(long, value_parser = ["baseline-spread", "kiln-spread", "baseline-hot", "kiln-hot"])]
    pub only: Vec<String>,
    /// Print the results as JSON on stdout (the table then goes to stderr).
    #[arg(long)]
    pub json: bool,
}

impl CreditsArgs {
    fn validate(&self) -> anyhow::Result<()> {
        // Unbounded inputs are a bug: keep every knob inside a range this harness was built for.
        anyhow::ensure!((1..=1_024).contains(&self.clients), "--clients must be 1..=1024");
        anyhow::ensure!((1..=1_000_000).contains(&self.teams), "--teams must be 1..=1000000");
        anyhow::ensure!((1..=3_600).contains(&self.duration_secs), "--duration-secs must be 1..=3600");
        anyhow::ensure!(self.warmup_secs <= 600, "--warmup-secs must be at most 600");
        anyhow::ensure!((1..=512).contains(&self.connections), "--connections must be 1..=512");
        anyhow::ensure!(self.snapshot_every >= 1, "--snapshot-every must be at least 1");
        anyhow::ensure!(self.commits_in_flight <= 64, "--commits-in-flight must be 0..=64");
        Ok(())
    }

    pub fn duration(&self) -> Duration {
        Duration::from_secs(self.duration_secs)
    }

    pub fn warmup(&self) -> Duration {
        Duration::from_secs(self.warmup_secs)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Credits(args) => {
            args.validate()?;
            credits::run(args).await
        }
        Command::Jobs(args) => jobs::run(args).await,
        Command::Dispatch(args) => dispatch::run(args).await,
        Command::Http(args) => http::run(args).await,
        Command::Render(args) => render::run(&args),
        Command::Webhooks(args) => webhooks::run(args).await,
        Command::Latency(args) => latency::run(args).await,
        Command::Log(args) => log::run(args).await,
        Command::Sweep(args) => sweep::run(args).await,
    }
}
