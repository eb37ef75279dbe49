//! The command line: `kiln serve`, `kiln migrate`, `kiln worker`, … .
//!
//! Exit codes: 0 success; 1 error; 2 usage (clap); 3 a check found something
//! (`audit verify`, `projections rebuild --verify`); 4 the store a read-only command
//! was pointed at does not exist or is not migrated ([`EXIT_STORE_MISSING`]).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use infrastructure::config::{LogFormat, Settings};
use infrastructure::telemetry::Output;
use infrastructure::db::Database;

use crate::app::Application;

#[derive(Debug, Parser)]
#[command(name = "kiln", version, about = "Event-sourced credit ledger and job engine for AI image generation")]
pub struct Cli {
    /// Configuration file (TOML); it must exist. Unset: ./kiln.toml when it exists.
    #[arg(long, global = true, env = "KILN_CONFIG")]
    pub config: Option<PathBuf>,

    /// Log lines as `pretty` text (for people) or `json` (for machines); overrides `log.format`.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormatArg>,

    /// Database URL (`sqlite:kiln.db`, `postgres://…`); overrides the configuration.
    #[arg(long, global = true)]
    pub database_url: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

/// The exit code of a read-only command whose store is missing or not migrated.
pub const EXIT_STORE_MISSING: u8 = 4;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormatArg {
    Pretty,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply migrations, then serve the HTTP API until SIGTERM or ctrl-c.
    Serve {
        /// Port to listen on; overrides the configuration (0 picks a free port).
        #[arg(long)]
        port: Option<u16>,
        /// Address to bind; overrides the configuration.
        #[arg(long)]
        host: Option<String>,
    },
    /// Apply pending database migrations and exit.
    Migrate,
    /// Run a job worker (no HTTP) until SIGTERM or ctrl-c. Several may run at once.
    Worker,
    /// Seed the reference-model catalog and its preview images (idempotent), then exit.
    Seed,
    /// Object storage: bucket set-up and the image-retention sweep.
    #[command(subcommand)]
    Storage(crate::storage_cli::StorageCommand),
    /// Read models: list, status (lag), rebuild into shadow tables and swap, or verify.
    #[command(subcommand)]
    Projections(crate::ops::ProjectionsCommand),
    /// The credit ledger from events alone: replay a team, verify every invariant and the
    /// hash chains, export entries.
    #[command(subcommand)]
    Audit(crate::ops::AuditCommand),
    /// Teams: open one (printing its API key, the way into the dashboard), grant credits.
    #[command(subcommand)]
    Team(crate::team_cli::TeamCommand),
    /// Operators (the console under /ops and /api/admin): create one (printing its key),
    /// revoke one, list them.
    #[command(subcommand)]
    Operator(crate::operator_cli::OperatorCommand),
}

pub fn settings(cli: &Cli) -> anyhow::Result<Settings> {
    let mut settings = Settings::load(cli.config.as_deref())?;
    if let Some(url) = &cli.database_url {
        settings.database.url = url.clone();
    }
    match cli.log_format {
        Some(LogFormatArg::Pretty) => settings.log.format = LogFormat::Pretty,
        Some(LogFormatArg::Json) => settings.log.format = LogFormat::Json,
        None => {}
    }
    if let Command::Serve { port, host } = &cli.command {
        if let Some(port) = port {
            settings.http.port = *port;
        }
        if let Some(host) = host {
            settings.http.host = host.clone();
        }
    }
    Ok(settings)
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = settings(&cli)?;
    let output = match &cli.command {
        Command::Projections(crate::ops::ProjectionsCommand::Rebuild { .. })
        | Command::Audit(crate::ops::AuditCommand::Verify { .. }) => Output::WithProgress,
        _ => Output::Plain,
    };
    infrastructure::telemetry::init(&settings.log, output);
    match cli.command {
        Command::Serve { .. } => {
            let app = Application::build(settings).await?;
            app.run_until_stopped(shutdown_signal()).await
        }
        Command::Worker => run_worker(settings).await,
        Command::Migrate => {
            let db = Database::connect(&settings.database.url, 2).await?;
            db.migrate().await?;
            tracing::info!(backend = ?db.backend(), "migrations applied");
            db.close().await;
            Ok(())
        }
        Command::Storage(command) => crate::storage_cli::run(settings, command).await,
        Command::Projections(command) => crate::ops::projections(settings, command).await,
        Command::Audit(command) => crate::ops::audit(settings, command).await,
        Command::Team(command) => crate::team_cli::run(settings, command).await,
        Command::Operator(command) => crate::operator_cli::run(settings, command).await,
        Command::Seed => {
            let db = Database::connect_and_migrate(&settings.database.url, 2).await?;
            let (objects, _) = infrastructure::storage::open(&settings)?;
            let report = infrastructure::catalog::seed(&db, objects.as_ref(), chrono::Utc::now()).await;
            db.close().await;
            let report = report?;
            println!(
                "reference models: {} ({} inserted, {} updated), previews rendered: {}",
                report.models, report.inserted, report.updated, report.previews_rendered
            );
            Ok(())
        }
    }
}

/// Resolves on ctrl-c (SIGINT) or SIGTERM. The handlers are installed when this is
/// called, not when the future is first polled, so a signal that arrives while the
/// server is still starting is not lost (and does not kill the process).
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            match (interrupt, terminate) {
                (Ok(mut interrupt), Ok(mut terminate)) => {
                    tokio::select! {
                        _ = interrupt.recv() => {},
                        _ = terminate.recv() => {},
                    }
                }
                _ => std::future::pending::<()>().await,
            }
            tracing::info!("shutdown requested");
        }
    }
    #[cfg(not(unix))]
    async move {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown requested");
    }
}

/// `kiln worker`: the job engine and the webhook sender, without the HTTP API.
async fn run_worker(settings: Settings) -> anyhow::Result<()> {
    let shutdown = shutdown_signal();
    let db = Database::connect_and_migrate(&settings.database.url, settings.database.connections_max).await?;
    let state = crate::state::AppState::new(db.clone(), &settings, std::sync::Arc::new(application::clock::SystemClock))?;
    let worker_id = crate::state::worker_id("worker");
    tracing::info!(%worker_id, backend = ?db.backend(), "kiln worker started");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let webhooks = tokio::spawn(state.webhook_sender.clone().run(stopped.clone()));
    let worker = tokio::spawn(state.worker(&settings.jobs, worker_id).run(stopped));
    shutdown.await;
    let _ = stop.send(true);
    let _ = worker.await;
    let _ = webhooks.await;
    db.close().await;
    tracing::info!("kiln worker stopped");
    Ok(())
}
