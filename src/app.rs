//! Start-up: from settings to a bound, running server (zero2prod's `Application`), with
//! the projector running beside it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use application::aggregate_store::AggregateStore;
use application::clock::{Clock, SystemClock};
use application::credits::CreditsService;
use infrastructure::config::Settings;
use infrastructure::db::Database;
use infrastructure::event_store::SqlEventStore;
use projections::projector::Projector;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::http;

/// What request handlers share.
#[derive(Clone)]
pub struct AppState {
    pub db: Database,
    pub store: SqlEventStore,
    pub aggregates: AggregateStore,
    pub credits: CreditsService,
    pub projector: Projector,
    /// SHA-256 of the operator key; `None` closes the admin API.
    pub operator_key_sha256: Option<[u8; 32]>,
}

impl AppState {
    /// Wires the store, its inline projections and the services over `db`.
    pub fn new(db: Database, settings: &Settings, clock: Arc<dyn Clock>) -> Self {
        let store = SqlEventStore::with_inline_projections(db.clone(), projections::inline_projections());
        let aggregates = AggregateStore::new(Arc::new(store.clone()), settings.event_store.snapshot_every);
        let credits = CreditsService::new(aggregates.clone(), clock);
        let projector = Projector::new(store.clone(), projections::async_projections());
        let operator_key_sha256 = settings
            .auth
            .operator_key
            .as_ref()
            .map(|key| Sha256::digest(key.expose_secret().as_bytes()).into());
        Self { db, store, aggregates, credits, projector, operator_key_sha256 }
    }
}

pub struct Application {
    listener: TcpListener,
    state: AppState,
    expiry_interval: std::time::Duration,
}

impl Application {
    /// Connects to the database (applying migrations and seeding the price list) and
    /// binds the listener.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        Self::build_with_clock(settings, Arc::new(SystemClock)).await
    }

    pub async fn build_with_clock(settings: Settings, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let db = Database::connect_and_migrate(&settings.database.url, settings.database.connections_max).await?;
        infrastructure::pricing::seed_default(&db).await?;
        let address = format!("{}:{}", settings.http.host, settings.http.port);
        let listener = TcpListener::bind(&address).await.with_context(|| format!("cannot listen on {address}"))?;
        let state = AppState::new(db, &settings, clock);
        let expiry_interval = std::time::Duration::from_secs(settings.credits.expiry_sweep_interval_secs.max(1));
        Ok(Self { listener, state, expiry_interval })
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
        let sweeper = tokio::spawn(crate::sweeper::run(self.state.clone(), self.expiry_interval, stopped));
        tracing::info!(%addr, backend = ?db.backend(), "kiln listening");
        let router = http::router(self.state);
        let served = axum::serve(self.listener, router).with_graceful_shutdown(shutdown).await.context("http server");
        let _ = stop.send(true);
        let _ = projector.await;
        let _ = sweeper.await;
        db.close().await;
        tracing::info!("kiln stopped");
        served
    }
}
