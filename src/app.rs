//! Start-up: from settings to a bound, running server (zero2prod's `Application`), with
//! the projector, the sweepers, the webhook sender and a worker running beside it. The only module that
//! knows every door: it wires the REST API's and the dashboard's routers onto one port.
//! The state they share lives in [`crate::state`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use application::clock::{Clock, SystemClock};
use infrastructure::config::{JobSettings, Settings};
use infrastructure::db::Database;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::http;

pub use crate::state::{worker_id, AppState, Services};

pub struct Application {
    listener: TcpListener,
    state: AppState,
    expiry_interval: std::time::Duration,
    jobs: JobSettings,
    /// Image retention: days kept, and how often the sweeper runs.
    retention: (u32, std::time::Duration),
}

impl Application {
    /// Connects to the database (applying migrations and seeding the price list) and
    /// binds the listener.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        Self::build_with_clock(settings, Arc::new(SystemClock)).await
    }

    pub async fn build_with_clock(mut settings: Settings, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        // Before anything records a metric.
        crate::http::metrics::recorder();
        let acquire_timeout = std::time::Duration::from_millis(settings.database.acquire_timeout_ms.max(1));
        let db = Database::connect_and_migrate_with(&settings.database.url, settings.database.connections_max, acquire_timeout).await?;
        infrastructure::pricing::seed_default(&db).await?;
        let address = format!("{}:{}", settings.http.host, settings.http.port);
        let listener = TcpListener::bind(&address).await.with_context(|| format!("cannot listen on {address}"))?;
        // Port 0 picks a free port; signed URLs must name the one picked.
        settings.http.port = listener.local_addr().context("bound listener has an address")?.port();
        let state = AppState::new(db, &settings, clock)?;
        if settings.jobs.seed_catalog_on_start {
            seed_catalog_if_empty(&state).await?;
        }
        let expiry_interval = std::time::Duration::from_secs(settings.credits.expiry_sweep_interval_secs.max(1));
        let retention = (settings.storage.retention_days, std::time::Duration::from_secs(settings.storage.sweep_interval_secs.max(1)));
        Ok(Self { listener, state, expiry_interval, jobs: settings.jobs.clone(), retention })
    }

    pub fn local_addr(&self) -> SocketAddr {
        // A bound listener always has a local address.
        self.listener.local_addr().expect("bound listener has an address")
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then drains in-flight requests, stops the
    /// projector and closes the pool.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let addr = self.local_addr();
        let db = self.state.db.clone();
        let (stop, stopped) = watch::channel(false);
        let projector = tokio::spawn(self.state.projector.clone().run(stopped.clone()));
        let sweeper = tokio::spawn(crate::sweeper::run(self.state.clone(), self.expiry_interval, stopped.clone()));
        let (retention_days, retention_interval) = self.retention;
        let retention = tokio::spawn(self.state.retention.clone().run(retention_days, retention_interval, stopped.clone()));
        let webhooks = tokio::spawn(self.state.webhook_sender.clone().run(stopped.clone()));
        let worker = self
            .jobs
            .worker_in_serve
            .then(|| tokio::spawn(self.state.worker(&self.jobs, worker_id("serve")).run(stopped)));
        tracing::info!(%addr, backend = ?db.backend(), "kiln listening");
        // One router, one port: the REST API and the dashboard's pages.
        let router = http::router(self.state.clone(), crate::web::routes(self.state));
        let served = axum::serve(self.listener, router).with_graceful_shutdown(shutdown).await.context("http server");
        let _ = stop.send(true);
        let _ = projector.await;
        let _ = sweeper.await;
        let _ = retention.await;
        let _ = webhooks.await;
        if let Some(worker) = worker {
            let _ = worker.await;
        }
        db.close().await;
        tracing::info!("kiln stopped");
        served
    }
}

/// A fresh database gets the reference catalog, so `kiln serve` alone is a working system.
async fn seed_catalog_if_empty(state: &AppState) -> anyhow::Result<()> {
    let count = infrastructure::db_fetch_optional!(&state.db, (i64,), "SELECT COUNT(*) FROM reference_models")?;
    if count.map(|(n,)| n).unwrap_or(0) == 0 {
        let report = infrastructure::catalog::seed(&state.db, state.objects.as_ref(), state.jobs.now()).await?;
        tracing::info!(models = report.models, "reference catalog seeded");
    }
    Ok(())
}
