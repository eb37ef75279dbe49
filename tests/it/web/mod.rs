//! The dashboard in a real headless Chromium (WebDriver), against the real app on a
//! random port: what a person does, clicked and read from the rendered pages.
//! Jobs wait for a worker the test starts when it wants them to run, so every status a
//! page shows is deterministic.

mod a11y;
mod flows;
mod forms;
mod manage;
mod job_pages;
mod job_lists;
mod ops;
mod ops_catalog;
mod ops_workers;
mod submit;

use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::support::app::{seed_catalog, TestApp};
use crate::support::browser::Browser;
use crate::support::db::TestDb;

/// The app with no worker of its own (tests start one when jobs should run) and the
/// reference catalog seeded.
pub async fn app(db: TestDb) -> TestApp {
    let app = TestApp::spawn_with(db, |s| s.jobs.worker_in_serve = false).await;
    seed_catalog(&app).await;
    app
}

/// A team with a plan, credits and a member key: (team id, key).
pub async fn team(app: &TestApp, name: &str, plan: &str, credits: i64) -> (String, String) {
    let team = app.create_team(name, plan).await;
    let key = app.issue_key(&team, "member").await;
    if credits > 0 {
        assert_eq!(app.grant(&team, credits, &format!("seed-{team}")).await.status(), 200);
    }
    (team, key)
}

/// A job worker running until the returned sender says stop.
pub fn start_worker(app: &TestApp) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (stop, stopped) = watch::channel(false);
    let worker = app.state.worker(&app.settings.jobs, format!("web-test-{}", uuid::Uuid::new_v4().simple()));
    (stop, tokio::spawn(worker.run(stopped)))
}

pub async fn stop_worker((stop, handle): (watch::Sender<bool>, tokio::task::JoinHandle<()>)) {
    let _ = stop.send(true);
    let _ = handle.await;
}

pub async fn api(app: &TestApp, key: &str, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = app.as_key(key, method, path);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A ready model of the team, made through the API with a worker run for it.
pub async fn ready_model(app: &TestApp, key: &str) -> String {
    ready_model_named(app, key, "Ava").await
}

/// [`ready_model`] with its name.
pub async fn ready_model_named(app: &TestApp, key: &str, name: &str) -> String {
    let (_, page) = api(app, key, Method::GET, "/api/reference-models?limit=1", None).await;
    let reference = page["items"][0]["id"].as_str().expect("reference").to_string();
    let body = json!({"name": name, "description": "a runner at golden hour", "reference_model_id": reference});
    let (status, created) = api(app, key, Method::POST, "/api/models", Some(body)).await;
    assert_eq!(status, 202, "{created}");
    let model_id = created["model"]["model_id"].as_str().expect("model").to_string();
    let worker = start_worker(app);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, model) = api(app, key, Method::GET, &format!("/api/models/{model_id}"), None).await;
        if model["status"] == "ready" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "model never ready: {model}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    stop_worker(worker).await;
    model_id
}

/// Queues a generation through the API; returns the job id.
pub async fn queue_generation(app: &TestApp, key: &str, model_id: &str, prompt: &str) -> String {
    let body = json!({"model_id": model_id, "prompt": prompt, "resolution": "512x512", "count": 2});
    let (status, accepted) = api(app, key, Method::POST, "/api/generate", Some(body)).await;
    assert_eq!(status, 202, "{accepted}");
    accepted["job"]["job_id"].as_str().expect("job").to_string()
}

/// Signs the browser in with `key`; lands on the overview.
pub async fn sign_in(browser: &Browser, key: &str) {
    browser.goto("/sign-in").await;
    browser.fill("#api_key", key).await;
    browser.click("main button[type=submit]").await;
    browser.wait_text("h1", "Overview").await;
}

pub async fn browser(app: &TestApp) -> Browser {
    Browser::start(&format!("http://{}", app.address)).await
}

/// `path` fetched by the page's own script (with its session cookie): status and body.
pub async fn fetch_text(browser: &Browser, path: &str) -> (u16, String) {
    let script = "const done = arguments[1]; fetch(arguments[0], {credentials: 'same-origin'}) \
        .then(r => r.text().then(t => done([r.status, t])));";
    let answer = browser.client.execute_async(script, vec![json!(path)]).await.expect("fetch");
    (answer[0].as_u64().expect("status") as u16, answer[1].as_str().expect("body").to_string())
}

/// `path` fetched by the page's script, as bytes (for downloads).
pub async fn fetch_bytes(browser: &Browser, path: &str) -> (u16, Vec<u8>) {
    use base64::Engine;
    let script = "const done = arguments[1]; fetch(arguments[0], {credentials: 'same-origin'}).then(r => r.arrayBuffer().then(b => { \
        let s = ''; const u = new Uint8Array(b); for (let i = 0; i < u.length; i++) { s += String.fromCharCode(u[i]); } done([r.status, btoa(s)]); }));";
    let answer = browser.client.execute_async(script, vec![json!(path)]).await.expect("fetch");
    let bytes = base64::engine::general_purpose::STANDARD.decode(answer[1].as_str().expect("body")).expect("base64");
    (answer[0].as_u64().expect("status") as u16, bytes)
}
