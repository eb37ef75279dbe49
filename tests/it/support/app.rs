//! Starts the real application in-process on a random port (zero2prod's `spawn_app`).

use std::net::SocketAddr;

use infrastructure::config::Settings;
use kiln::app::{AppState, Application};
use tokio::sync::oneshot;

use super::db::TestDb;

pub struct TestApp {
    pub address: SocketAddr,
    pub client: reqwest::Client,
    pub state: AppState,
    /// Keeps the test database alive as long as the app.
    #[allow(dead_code)]
    pub db: TestDb,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    pub async fn spawn(db: TestDb) -> TestApp {
        let mut settings = Settings::default();
        settings.database.url = db.url.clone();
        settings.http.port = 0;
        let app = Application::build(settings).await.expect("application builds");
        let address = app.local_addr();
        let state = app.state().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        TestApp { address, client: reqwest::Client::new(), state, db, stop: Some(stop), server: Some(server) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.address, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("request")
    }

    /// Asks the server to stop and waits until it has.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.server.take() {
            Some(server) => server.await.expect("server task"),
            None => Ok(()),
        }
    }
}
