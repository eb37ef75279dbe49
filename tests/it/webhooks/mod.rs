//! Webhooks out, over real sockets: a receiver process (`receiver.py`) verifies every
//! delivery with the reference Standard Webhooks library from PyPI (pinned in
//! scripts/python-tools.txt), and answers 500, slowly, or not at all when told. Time
//! moves by the app's manual clock (backoff, rotation overlap), never by sleeping.

use std::process::Stdio;
use std::time::Duration;

use application::clock::Clock;
use application::webhooks::WebhookDeliveries;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

mod pages;

use crate::api_contract::python_tool;
use crate::support::app::TestApp;
use crate::support::db::TestDb;

/// The receiver process and where it listens.
pub(crate) struct Receiver {
    child: Child,
    port: u16,
    client: reqwest::Client,
}

impl Receiver {
    pub(crate) async fn start(port: u16) -> Receiver {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/webhooks/receiver.py");
        let mut child = Command::new(python_tool("python"))
            .arg(script)
            .arg(port.to_string())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the receiver");
        let stdout = child.stdout.take().expect("stdout");
        let line = tokio::time::timeout(Duration::from_secs(20), BufReader::new(stdout).lines().next_line())
            .await
            .expect("receiver starts")
            .expect("read")
            .expect("a line");
        let port = line.strip_prefix("PORT ").and_then(|p| p.parse().ok()).expect("PORT line");
        Receiver { child, port, client: reqwest::Client::new() }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    pub(crate) async fn control(&self, body: Value) {
        let response = self.client.post(format!("http://127.0.0.1:{}/_control", self.port)).json(&body).send().await.expect("control");
        assert_eq!(response.status(), 200);
    }

    pub(crate) async fn log(&self) -> Vec<Value> {
        let response = self.client.get(format!("http://127.0.0.1:{}/_log", self.port)).send().await.expect("log");
        response.json().await.expect("json")
    }

    /// `kill -9`: the port refuses connections until [`Receiver::start`] on it again.
    async fn stop(mut self) -> u16 {
        self.child.kill().await.expect("kill the receiver");
        self.port
    }
}

/// Polls `check` until it holds (the sender works in the background); no fixed sleeps.
pub(crate) async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn spawn(db: TestDb, open: bool) -> TestApp {
    TestApp::spawn_with(db, |s| {
        s.webhooks.allow_http = open;
        s.webhooks.allow_private_addresses = open;
        s.webhooks.request_timeout_ms = 500;
        s.webhooks.poll_interval_ms = 20;
        s.webhooks.disable_after_hours = 1;
    })
    .await
}

/// A team with an admin key.
async fn team(app: &TestApp, name: &str) -> (String, String) {
    let team = app.create_team(name, "pro").await;
    let key = app.issue_key(&team, "admin").await;
    (team, key)
}

async fn create_endpoint(app: &TestApp, key: &str, url: &str, types: &[&str]) -> reqwest::Response {
    app.as_key(key, Method::POST, "/api/webhook-endpoints")
        .json(&json!({ "url": url, "event_types": types, "credits_low_threshold": 50 }))
        .send()
        .await
        .expect("request")
}

/// Creates an endpoint; returns its id and secret.
async fn endpoint(app: &TestApp, key: &str, url: &str, types: &[&str]) -> (String, String) {
    let response = create_endpoint(app, key, url, types).await;
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
    let body: Value = response.json().await.expect("json");
    (body["id"].as_str().expect("id").to_string(), body["secret"].as_str().expect("secret").to_string())
}

/// Makes the deliveries of what was recorded (the projector) and wakes the sender.
async fn deliver(app: &TestApp) {
    app.state.projector.catch_up().await.expect("projector");
    app.state.webhook_sender.wake();
}

async fn grant(app: &TestApp, team: &str, amount: i64, key: &str) {
    assert_eq!(app.grant(team, amount, key).await.status(), 200);
}

async fn deliveries(app: &TestApp, key: &str, endpoint: &str) -> Vec<Value> {
    let response = app.as_key(key, Method::GET, &format!("/api/webhook-endpoints/{endpoint}/deliveries")).send().await.expect("request");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    body["items"].as_array().expect("items").clone()
}

async fn delivery(app: &TestApp, key: &str, endpoint: &str, id: &str) -> Value {
    let path = format!("/api/webhook-endpoints/{endpoint}/deliveries/{id}");
    let response = app.as_key(key, Method::GET, &path).send().await.expect("request");
    assert_eq!(response.status(), 200);
    response.json().await.expect("json")
}

async fn tell_time(app: &TestApp, receiver: &Receiver) {
    receiver.control(json!({ "now": app.clock.now().timestamp() })).await;
}

async fn signed_deliveries_verify_with_the_reference_library(db: TestDb) {
    let app = spawn(db, true).await;
    let receiver = Receiver::start(0).await;
    let (team, key) = team(&app, "Hooked").await;
    let (endpoint_id, secret) = endpoint(&app, &key, &receiver.url(), &["credits.granted", "subscription.expired"]).await;
    assert!(secret.starts_with("whsec_"), "{secret}");
    receiver.control(json!({ "secrets": [secret.clone()] })).await;
    tell_time(&app, &receiver).await;

    grant(&app, &team, 500, "grant-1").await;
    deliver(&app).await;
    let log = eventually("the first delivery", async || Some(receiver.log().await).filter(|l| !l.is_empty())).await;
    let first = &log[0];
    assert_eq!(first["verified"], json!([0]), "{first}");
    assert_eq!(first["timestamp"], app.clock.now().timestamp().to_string());
    assert_eq!(first["body"]["type"], "credits.granted");
    assert_eq!(first["body"]["data"]["amount_credits"], 500);
    assert_eq!(first["body"]["data"]["team_id"], team);
    let listed = deliveries(&app, &key, &endpoint_id).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], first["id"], "the webhook-id is the delivery's id");
    let detail = eventually("the delivery recorded", async || {
        Some(delivery(&app, &key, &endpoint_id, first["id"].as_str().unwrap()).await).filter(|d| d["state"] == "delivered")
    })
    .await;
    assert_eq!(detail["attempts"], 1);
    assert_eq!(detail["attempt_log"][0]["status_code"], 200);

    // Rotation: during the overlap both secrets sign; after it only the new one.
    let response = app.as_key(&key, Method::POST, &format!("/api/webhook-endpoints/{endpoint_id}/rotate-secret")).send().await.expect("rotate");
    assert_eq!(response.status(), 200);
    let rotated: Value = response.json().await.expect("json");
    let new_secret = rotated["secret"].as_str().expect("secret").to_string();
    assert_ne!(new_secret, secret);
    receiver.control(json!({ "secrets": [secret.clone(), new_secret.clone()] })).await;
    grant(&app, &team, 10, "grant-2").await;
    deliver(&app).await;
    let log = eventually("the delivery in the overlap", async || Some(receiver.log().await).filter(|l| l.len() == 2)).await;
    assert_eq!(log[1]["verified"], json!([0, 1]), "both secrets verify in the overlap: {}", log[1]);

    app.clock.advance(chrono::Duration::hours(25));
    tell_time(&app, &receiver).await;
    grant(&app, &team, 20, "grant-3").await;
    deliver(&app).await;
    let log = eventually("the delivery after the overlap", async || Some(receiver.log().await).filter(|l| l.len() == 3)).await;
    assert_eq!(log[2]["verified"], json!([1]), "only the new secret after the overlap: {}", log[2]);

    // A test event, and a redelivery with the same id.
    let response = app.as_key(&key, Method::POST, &format!("/api/webhook-endpoints/{endpoint_id}/test")).send().await.expect("test");
    assert_eq!(response.status(), 202);
    let log = eventually("the test event", async || Some(receiver.log().await).filter(|l| l.len() == 4)).await;
    assert_eq!(log[3]["body"]["type"], "webhook.test");
    assert_eq!(log[3]["verified"], json!([1]));
    let path = format!("/api/webhook-endpoints/{endpoint_id}/deliveries/{}/redeliver", first["id"].as_str().unwrap());
    assert_eq!(app.as_key(&key, Method::POST, &path).send().await.expect("redeliver").status(), 202);
    let log = eventually("the redelivery", async || Some(receiver.log().await).filter(|l| l.len() == 5)).await;
    assert_eq!(log[4]["id"], first["id"]);
    assert_eq!(log[4]["verified"], json!([1]));
    let metrics = app.get("/metrics").await.text().await.expect("metrics");
    for name in ["kiln_webhook_attempts_total{outcome=\"delivered\"}", "kiln_webhook_attempt_seconds_bucket"] {
        assert!(metrics.contains(name), "/metrics has {name}");
    }
    app.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn signed_deliveries_verify_with_the_reference_library_postgres() {
    signed_deliveries_verify_with_the_reference_library(TestDb::postgres().await).await;
}

#[tokio::test]
async fn signed_deliveries_verify_with_the_reference_library_sqlite() {
    signed_deliveries_verify_with_the_reference_library(TestDb::sqlite().await).await;
}

/// Attempts recorded for the delivery so far.
async fn attempts(app: &TestApp, key: &str, endpoint: &str, id: &str) -> Vec<Value> {
    delivery(app, key, endpoint, id).await["attempt_log"].as_array().expect("attempt_log").clone()
}

async fn a_receiver_that_fails_gets_the_delivery_later_with_the_same_id(db: TestDb) {
    let app = spawn(db, true).await;
    let receiver = Receiver::start(0).await;
    let (team, key) = team(&app, "Flaky").await;
    let (endpoint_id, secret) = endpoint(&app, &key, &receiver.url(), &["credits.granted"]).await;
    receiver.control(json!({ "secrets": [secret.clone()], "status": 500 })).await;
    tell_time(&app, &receiver).await;
    grant(&app, &team, 100, "g").await;
    deliver(&app).await;
    let id = eventually("a delivery", async || deliveries(&app, &key, &endpoint_id).await.first().cloned()).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let wait_attempts = async |n: usize| {
        eventually("an attempt recorded", async || Some(attempts(&app, &key, &endpoint_id, &id).await).filter(|a| a.len() == n)).await
    };
    // 1: the receiver answers 500.
    let log = wait_attempts(1).await;
    assert_eq!(log[0]["status_code"], 500);
    assert_eq!(delivery(&app, &key, &endpoint_id, &id).await["state"], "pending");
    // Not due yet: waking the sender sends nothing.
    app.state.webhook_sender.turn().await.expect("turn");
    assert_eq!(attempts(&app, &key, &endpoint_id, &id).await.len(), 1);

    // 2: the receiver is too slow (beyond the request time).
    receiver.control(json!({ "status": 200, "delay_ms": 1500 })).await;
    app.clock.advance(chrono::Duration::minutes(10));
    tell_time(&app, &receiver).await;
    app.state.webhook_sender.wake();
    let log = wait_attempts(2).await;
    assert_eq!(log[1]["status_code"], Value::Null);
    assert!(log[1]["excerpt"].as_str().unwrap().contains("timed out"), "{}", log[1]);

    // 3: the receiver is down.
    let port = receiver.stop().await;
    app.clock.advance(chrono::Duration::minutes(10));
    app.state.webhook_sender.wake();
    let log = wait_attempts(3).await;
    assert!(log[2]["excerpt"].as_str().unwrap().contains("connection failed"), "{}", log[2]);

    // Back: the delivery arrives, with the id it had from the start.
    let receiver = Receiver::start(port).await;
    receiver.control(json!({ "secrets": [secret] })).await;
    app.clock.advance(chrono::Duration::minutes(30));
    tell_time(&app, &receiver).await;
    app.state.webhook_sender.wake();
    let log = wait_attempts(4).await;
    assert_eq!(log[3]["status_code"], 200);
    let received = receiver.log().await;
    assert_eq!(received.len(), 1);
    assert_eq!(received[0]["id"], id.as_str());
    assert_eq!(received[0]["verified"], json!([0]));
    assert_eq!(delivery(&app, &key, &endpoint_id, &id).await["state"], "delivered");
    app.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_receiver_that_fails_gets_the_delivery_later_with_the_same_id_postgres() {
    a_receiver_that_fails_gets_the_delivery_later_with_the_same_id(TestDb::postgres().await).await;
}

#[tokio::test]
async fn an_endpoint_failing_for_too_long_is_disabled_and_gets_nothing() {
    let app = spawn(TestDb::postgres().await, true).await;
    let receiver = Receiver::start(0).await;
    let (team, key) = team(&app, "Down").await;
    let (endpoint_id, _) = endpoint(&app, &key, &receiver.url(), &["credits.granted"]).await;
    receiver.control(json!({ "status": 503 })).await;
    grant(&app, &team, 100, "g1").await;
    deliver(&app).await;
    let id = eventually("a failed attempt", async || {
        let listed = deliveries(&app, &key, &endpoint_id).await;
        listed.first().filter(|d| d["attempts"] == 1).map(|d| d["id"].as_str().unwrap().to_string())
    })
    .await;
    app.clock.advance(chrono::Duration::hours(2));
    app.state.webhook_sender.wake();
    let view = eventually("the endpoint disabled", async || {
        let response = app.as_key(&key, Method::GET, &format!("/api/webhook-endpoints/{endpoint_id}")).send().await.expect("get");
        let view: Value = response.json().await.expect("json");
        Some(view).filter(|v| v["enabled"] == false)
    })
    .await;
    assert_eq!(view["disabled_reason"], "failing");
    assert!(view["failing_since"].is_string());
    // Disabled: a new event makes no delivery, a pending one is not sent.
    let before = receiver.log().await.len();
    grant(&app, &team, 100, "g2").await;
    deliver(&app).await;
    app.clock.advance(chrono::Duration::hours(2));
    app.state.webhook_sender.turn().await.expect("turn");
    assert_eq!(deliveries(&app, &key, &endpoint_id).await.len(), 1, "no delivery for a disabled endpoint");
    assert_eq!(receiver.log().await.len(), before);
    assert_eq!(attempts(&app, &key, &endpoint_id, &id).await.len(), 2);
    app.shutdown().await.expect("clean shutdown");
}

/// A sender that dies holding a claim (between claiming and recording) loses nothing:
/// the claim lapses and another sender delivers, with the same id.
async fn a_lapsed_claim_is_delivered_by_another_sender(db: TestDb) {
    let app = spawn(db, true).await;
    let receiver = Receiver::start(0).await;
    let (team, key) = team(&app, "Crash").await;
    let (endpoint_id, secret) = endpoint(&app, &key, &receiver.url(), &["credits.granted"]).await;
    receiver.control(json!({ "secrets": [secret] })).await;
    tell_time(&app, &receiver).await;
    // The app's own sender must not win the race: a far-future claim by a dead sender.
    let deliveries_port = infrastructure::webhooks::SqlWebhookDeliveries(app.state.db.clone());
    grant(&app, &team, 100, "g").await;
    app.state.projector.catch_up().await.expect("projector");
    let claimed = deliveries_port.claim("dead-sender", app.clock.now(), chrono::Duration::minutes(2), 10).await.expect("claim");
    // The app's sender may have claimed it first; either way one holder, one delivery.
    let held_by_dead = claimed.len() == 1;
    if held_by_dead {
        app.state.webhook_sender.turn().await.expect("turn");
        assert!(receiver.log().await.is_empty(), "a held claim is not sent by another sender");
        app.clock.advance(chrono::Duration::minutes(3));
        tell_time(&app, &receiver).await;
        app.state.webhook_sender.wake();
    }
    let log = eventually("the delivery", async || Some(receiver.log().await).filter(|l| !l.is_empty())).await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["verified"], json!([0]));
    let listed = deliveries(&app, &key, &endpoint_id).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], log[0]["id"]);
    app.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_lapsed_claim_is_delivered_by_another_sender_postgres() {
    a_lapsed_claim_is_delivered_by_another_sender(TestDb::postgres().await).await;
}

#[tokio::test]
async fn a_lapsed_claim_is_delivered_by_another_sender_sqlite() {
    a_lapsed_claim_is_delivered_by_another_sender(TestDb::sqlite().await).await;
}

#[tokio::test]
async fn urls_and_addresses_kiln_may_not_call_are_refused() {
    let app = spawn(TestDb::postgres().await, false).await;
    let (team, key) = team(&app, "Strict").await;
    for (url, part) in [
        ("http://hooks.example.com/", "https"),
        ("https://127.0.0.1/", "loopback"),
        ("https://10.0.0.8/", "private"),
        ("https://192.168.0.1/", "private"),
        ("https://169.254.169.254/latest/meta-data/", "metadata"),
        ("https://169.254.10.10/", "link-local"),
        ("https://[::1]/", "loopback"),
        ("https://[fe80::1]/", "link-local"),
        ("https://[fd00:ec2::254]/", "metadata"),
        ("https://user:pw@example.com/", "password"),
    ] {
        let response = create_endpoint(&app, &key, url, &["credits.granted"]).await;
        assert_eq!(response.status(), 422, "{url}");
        let problem: Value = response.json().await.expect("json");
        assert_eq!(problem["type"], "/problems/invalid-request", "{url}");
        assert!(problem["detail"].as_str().unwrap_or_default().contains(part), "{url}: {problem}");
    }
    // A name is checked by address at each attempt: `localhost` resolves to loopback.
    let receiver = Receiver::start(0).await;
    let url = format!("https://localhost:{}/hook", receiver.port);
    let (endpoint_id, _) = endpoint(&app, &key, &url, &["credits.granted"]).await;
    grant(&app, &team, 100, "g").await;
    deliver(&app).await;
    let id = eventually("a delivery", async || deliveries(&app, &key, &endpoint_id).await.first().cloned()).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let log = eventually("a refused attempt", async || Some(attempts(&app, &key, &endpoint_id, &id).await).filter(|a| !a.is_empty())).await;
    assert!(log[0]["excerpt"].as_str().unwrap().contains("loopback"), "{}", log[0]);
    assert!(receiver.log().await.is_empty(), "nothing was sent");
    app.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn another_team_cannot_see_or_change_an_endpoint() {
    let app = spawn(TestDb::postgres().await, true).await;
    let (_, key) = team(&app, "Owner").await;
    let (_, other) = team(&app, "Other").await;
    let (endpoint_id, _) = endpoint(&app, &key, "http://127.0.0.1:9/hook", &["job.completed"]).await;
    let base = format!("/api/webhook-endpoints/{endpoint_id}");
    for (method, path, body) in [
        (Method::GET, base.clone(), None),
        (Method::PATCH, base.clone(), Some(json!({ "enabled": false }))),
        (Method::DELETE, base.clone(), None),
        (Method::POST, format!("{base}/rotate-secret"), None),
        (Method::POST, format!("{base}/test"), None),
        (Method::GET, format!("{base}/deliveries"), None),
    ] {
        let mut request = app.as_key(&other, method.clone(), &path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        assert_eq!(response.status(), 404, "{method} {path}");
    }
    let listed: Value = app.as_key(&other, Method::GET, "/api/webhook-endpoints").send().await.expect("list").json().await.expect("json");
    assert_eq!(listed["items"], json!([]));
    let mine: Value = app.as_key(&key, Method::GET, &base).send().await.expect("get").json().await.expect("json");
    assert_eq!(mine["enabled"], true, "the owner's endpoint is untouched");
    assert!(mine.get("secret").is_none(), "the secret is shown only when made");
    app.shutdown().await.expect("clean shutdown");
}

/// The endpoint list pages by cursor, oldest first, on both stores; a cursor of another
/// list is refused.
async fn endpoints_page_by_cursor(db: TestDb) {
    let app = spawn(db, true).await;
    let (_, key) = team(&app, "Pager").await;
    let mut made = Vec::new();
    for n in 0..5 {
        made.push(endpoint(&app, &key, &format!("http://127.0.0.1:9/hook-{n}"), &["job.completed"]).await.0);
    }
    let mut seen = Vec::new();
    let mut path = "/api/webhook-endpoints?limit=2".to_string();
    for pages in 1.. {
        let page: Value = app.as_key(&key, Method::GET, &path).send().await.expect("list").json().await.expect("json");
        let items = page["items"].as_array().expect("items");
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|e| e["id"].as_str().expect("id").to_string()));
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/api/webhook-endpoints?limit=2&cursor={cursor}"),
            None => {
                assert_eq!(pages, 3, "five endpoints in pages of two");
                break;
            }
        }
    }
    assert_eq!(seen, made, "every endpoint once, oldest first");
    let deliveries: Value = app.as_key(&key, Method::GET, &format!("/api/webhook-endpoints/{}/deliveries?limit=1", made[0])).send().await.expect("list").json().await.expect("json");
    assert!(deliveries["next_cursor"].is_null());
    let foreign = kiln::http::cursor::encode("webhook-deliveries", "2026-01-01T00:00:00Z|x");
    let refused = app.as_key(&key, Method::GET, &format!("/api/webhook-endpoints?cursor={foreign}")).send().await.expect("list");
    assert_eq!(refused.status(), 422);
    app.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn endpoints_page_by_cursor_postgres() {
    endpoints_page_by_cursor(TestDb::postgres().await).await;
}

#[tokio::test]
async fn endpoints_page_by_cursor_sqlite() {
    endpoints_page_by_cursor(TestDb::sqlite().await).await;
}

/// Jobs, models and credits notify through the log: a model created through the API
/// (the app's own worker runs it) makes `credits.low` (its reservation crosses the
/// threshold), `model.ready` and `job.completed` (the job stream's public event).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_models_and_credits_notify_from_the_log() {
    let app = spawn(TestDb::postgres().await, true).await;
    crate::support::app::seed_catalog(&app).await;
    let receiver = Receiver::start(0).await;
    let (team, key) = team(&app, "Busy").await;
    grant(&app, &team, 1000, "seed").await;
    let body = json!({ "url": receiver.url(), "event_types": ["job.completed", "model.ready", "credits.low"], "credits_low_threshold": 1000 });
    let response = app.as_key(&key, Method::POST, "/api/webhook-endpoints").json(&body).send().await.expect("create");
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.expect("json");
    receiver.control(json!({ "secrets": [created["secret"]] })).await;
    tell_time(&app, &receiver).await;

    let model_id = crate::jobs::ready_model(&app, &key).await;
    deliver(&app).await;
    let log = eventually("three notifications", async || Some(receiver.log().await).filter(|l| l.len() >= 3)).await;
    let of = |kind: &str| log.iter().find(|r| r["body"]["type"] == kind).unwrap_or_else(|| panic!("no {kind} in {log:?}")).clone();
    let completed = of("job.completed");
    assert_eq!(completed["body"]["data"]["type"], "completed", "the job event stream's event: {completed}");
    assert!(completed["body"]["data"]["job_id"].is_string());
    assert_eq!(of("model.ready")["body"]["data"]["model_id"], model_id.as_str());
    let low = of("credits.low");
    assert_eq!(low["body"]["data"]["threshold_credits"], 1000);
    assert!(low["body"]["data"]["available_credits"].as_i64().unwrap() < 1000);
    assert_eq!(log.len(), 3, "one delivery per event and endpoint: {log:?}");
    for record in &log {
        assert_eq!(record["verified"], json!([0]), "{record}");
    }
    app.shutdown().await.expect("clean shutdown");
}

fn sender_process(app: &TestApp) -> std::process::Command {
    let mut command = crate::jobs::worker_command(app, 0);
    command
        .env("KILN_WEBHOOKS__ALLOW_HTTP", "true")
        .env("KILN_WEBHOOKS__ALLOW_PRIVATE_ADDRESSES", "true")
        .env("KILN_WEBHOOKS__REQUEST_TIMEOUT_MS", "2000")
        .env("KILN_WEBHOOKS__POLL_INTERVAL_MS", "20");
    command
}

/// `kill -9` of the process that is sending a delivery loses nothing: its claim lapses
/// (twice the request time), another `kiln worker` sends it, with the same `webhook-id`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_killed_mid_delivery_loses_nothing() {
    // The app makes deliveries (projector); its own sender sleeps (woken by nothing here).
    let app = TestApp::spawn_with(TestDb::postgres().await, |s| {
        s.webhooks.allow_http = true;
        s.webhooks.allow_private_addresses = true;
        s.webhooks.poll_interval_ms = 3_600_000;
    })
    .await;
    let receiver = Receiver::start(0).await;
    let (team, key) = team(&app, "Killed").await;
    let (endpoint_id, secret) = endpoint(&app, &key, &receiver.url(), &["credits.granted"]).await;
    // The processes sign with the wall clock, which the receiver checks by default.
    receiver.control(json!({ "secrets": [secret], "delay_ms": 1500 })).await;
    grant(&app, &team, 100, "g").await;
    app.state.projector.catch_up().await.expect("projector");

    let mut a = sender_process(&app).spawn().expect("start sender A");
    let arrived = eventually("A's request at the receiver", async || {
        let response = receiver.client.get(format!("http://127.0.0.1:{}/_arrived", receiver.port)).send().await.ok()?;
        Some(response.json::<Vec<Value>>().await.ok()?).filter(|a| !a.is_empty())
    })
    .await;
    a.kill().expect("kill -9 sender A");
    let _ = a.wait();
    receiver.control(json!({ "delay_ms": 0 })).await;
    let mut b = sender_process(&app).spawn().expect("start sender B");
    let detail = eventually("the delivery made by B", async || {
        let listed = deliveries(&app, &key, &endpoint_id).await;
        let id = listed.first()?["id"].as_str()?.to_string();
        Some(delivery(&app, &key, &endpoint_id, &id).await).filter(|d| d["state"] == "delivered")
    })
    .await;
    let _ = std::process::Command::new("kill").args(["-TERM", &b.id().to_string()]).status();
    let _ = b.wait();
    assert_eq!(detail["attempts"], 1, "A recorded nothing; B's attempt is the first recorded: {detail}");
    assert_eq!(arrived[0], detail["id"]);
    let received = receiver.log().await;
    assert!(received.iter().all(|r| r["id"] == detail["id"]), "every request carried the same webhook-id: {received:?}");
    assert!(received.iter().any(|r| r["verified"] == json!([0])), "{received:?}");
    app.shutdown().await.expect("clean shutdown");
}
