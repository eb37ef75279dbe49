//! Starts the real application in-process on a random port (zero2prod's `spawn_app`).

use std::net::SocketAddr;
use std::sync::Arc;

use application::clock::ManualClock;
use chrono::{DateTime, Utc};
use infrastructure::config::Settings;
use serde_json::Value;
use kiln::app::{AppState, Application};
use tokio::sync::oneshot;

use super::db::TestDb;

pub const OPERATOR_KEY: &str = "test-operator-key";

/// Where test clocks start: a fixed instant, so tests never depend on the wall clock.
pub fn epoch() -> DateTime<Utc> {
    DateTime::from_timestamp(1_790_000_000, 0).expect("valid instant")
}

pub struct TestApp {
    pub address: SocketAddr,
    pub clock: Arc<ManualClock>,
    pub client: reqwest::Client,
    pub state: AppState,
    /// Keeps the test database alive as long as the app.
    #[allow(dead_code)]
    pub db: TestDb,
    /// The settings the app was built with (storage root, worker knobs, …).
    pub settings: Settings,
    /// Holds the local object store's root until the app is dropped.
    _storage: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    pub async fn spawn(db: TestDb) -> TestApp {
        Self::spawn_with(db, |_| {}).await
    }

    /// Like [`TestApp::spawn`], with `customize` adjusting the settings last. Test
    /// defaults: a fresh storage directory, fast worker polling.
    pub async fn spawn_with(db: TestDb, customize: impl FnOnce(&mut Settings)) -> TestApp {
        let storage = tempfile::tempdir().expect("storage dir");
        let mut settings = Settings::default();
        settings.database.url = db.url.clone();
        settings.http.port = 0;
        settings.auth.operator_key = Some(OPERATOR_KEY.to_string().into());
        settings.storage.local_root = storage.path().display().to_string();
        settings.jobs.poll_interval_ms = 10;
        settings.jobs.heartbeat_interval_ms = 200;
        // Tests that need the catalog seed it (`seed_catalog`); the rest start faster.
        settings.jobs.seed_catalog_on_start = false;
        customize(&mut settings);
        let clock = Arc::new(ManualClock::new(epoch()));
        let app = Application::build_with_clock(settings.clone(), clock.clone()).await.expect("application builds");
        let address = app.local_addr();
        let state = app.state().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        TestApp { address, clock, client: reqwest::Client::new(), state, db, settings, _storage: storage, stop: Some(stop), server: Some(server) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.address, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("request")
    }

    /// A request with the operator key.
    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(path)).bearer_auth(OPERATOR_KEY)
    }

    /// A request with a team's API key.
    pub fn as_key(&self, key: &str, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(path)).bearer_auth(key)
    }

    /// Opens a team with `plan` and returns its id.
    pub async fn create_team(&self, name: &str, plan: &str) -> String {
        let response = self
            .admin(reqwest::Method::POST, "/api/admin/teams")
            .json(&serde_json::json!({"name": name, "plan": plan}))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 201, "{:?}", response.text().await);
        let body: Value = response.json().await.expect("json");
        body["team_id"].as_str().expect("team_id").to_string()
    }

    /// Issues an API key with `role` for `team` and returns the key.
    pub async fn issue_key(&self, team: &str, role: &str) -> String {
        let response = self
            .admin(reqwest::Method::POST, &format!("/api/admin/teams/{team}/api-keys"))
            .json(&serde_json::json!({"role": role, "name": format!("{role} key")}))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.expect("json");
        body["api_key"].as_str().expect("api_key").to_string()
    }

    /// Grants credits with an idempotency key; returns the response body.
    pub async fn grant(&self, team: &str, amount: i64, key: &str) -> reqwest::Response {
        self.admin(reqwest::Method::POST, &format!("/api/admin/teams/{team}/grants"))
            .header("Idempotency-Key", key)
            .json(&serde_json::json!({"amount": amount}))
            .send()
            .await
            .expect("request")
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

/// Seeds the reference catalog (and its preview images) into the app's database and store.
pub async fn seed_catalog(app: &TestApp) {
    infrastructure::catalog::seed(&app.state.db, app.state.objects.as_ref(), epoch()).await.expect("seed catalog");
}
