//! Start-up: from settings to a bound, running server (zero2prod's `Application`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use application::aggregate_store::AggregateStore;
use infrastructure::config::Settings;
use infrastructure::db::Database;
use infrastructure::event_store::SqlEventStore;
use tokio::net::TcpListener;

use crate::http;

/// What request handlers share.
#[derive(Clone)]
pub struct AppState {
    pub db: Database,
    pub store: SqlEventStore,
    pub aggregates: AggregateStore,
}

pub struct Application {
    listener: TcpListener,
    state: AppState,
}

impl Application {
    /// Connects to the database (applying migrations) and binds the listener.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let db = Database::connect_and_migrate(&settings.database.url, settings.database.connections_max)
            .await?;
        let store = SqlEventStore::new(db.clone());
        let aggregates = AggregateStore::new(Arc::new(store.clone()), settings.event_store.snapshot_every);
        let address = format!("{}:{}", settings.http.host, settings.http.port);
        let listener = TcpListener::bind(&address).await.with_context(|| format!("cannot listen on {address}"))?;
        Ok(Self { listener, state: AppState { db, store, aggregates } })
    }

    pub fn local_addr(&self) -> SocketAddr {
        // A bound listener always has a local address.
        self.listener.local_addr().expect("bound listener has an address")
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then drains in-flight requests and closes the pool.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let addr = self.local_addr();
        let db = self.state.db.clone();
        tracing::info!(%addr, backend = ?db.backend(), "kiln listening");
        let router = http::router(self.state);
        axum::serve(self.listener, router).with_graceful_shutdown(shutdown).await.context("http server")?;
        db.close().await;
        tracing::info!("kiln stopped");
        Ok(())
    }
}
