//! The API contract through HTTP, on PostgreSQL and SQLite: the text rule (NUL and
//! control characters in bodies, paths and queries), problem+json for every error
//! (unknown route, 405 with Allow, 413, 415, 400, 409, 503 while the database is away),
//! Idempotency-Key bound to the request, opaque cursors, the job event stream's public
//! events and resumption, ledger operations, admin lookups of missing teams.

use std::time::Duration;

use base64::Engine;
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::app::{seed_catalog, TestApp};
use crate::support::db::TestDb;

async fn spawn(db: TestDb) -> TestApp {
    let app = TestApp::spawn(db).await;
    seed_catalog(&app).await;
    app
}

/// Status, content type and JSON body of a response.
async fn read(response: reqwest::Response) -> (u16, String, Value) {
    let status = response.status().as_u16();
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, content_type, body)
}

/// Asserts a problem+json answer of `status` and `type`; returns its body.
#[track_caller]
fn problem(answer: &(u16, String, Value), status: u16, problem_type: &str, what: &str) -> Value {
    let (got, content_type, body) = answer;
    assert_eq!((*got, body["type"].as_str()), (status, Some(problem_type)), "{what}: {body}");
    assert_eq!(content_type, "application/problem+json", "{what}");
    assert_eq!(body["status"], status, "{what}");
    body.clone()
}

/// A pro team with credits and a member key; returns (team, key).
async fn team(app: &TestApp) -> (String, String) {
    let team = app.create_team("Contract", "pro").await;
    let key = app.issue_key(&team, "member").await;
    assert_eq!(app.grant(&team, 100_000, &format!("seed-{team}")).await.status(), 200);
    (team, key)
}

async fn reference(app: &TestApp, key: &str) -> String {
    let (_, _, page) = read(app.as_key(key, Method::GET, "/api/reference-models?limit=1").send().await.expect("request")).await;
    page["items"][0]["id"].as_str().expect("reference").to_string()
}

/// Announces a body of `bytes` to `path` with `Expect: 100-continue` over a raw
/// connection and returns the answer (status, content type, JSON body) without sending it.
async fn announce_body(app: &TestApp, path: &str, bytes: usize) -> (u16, String, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(app.address).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: kiln\r\nContent-Type: application/json\r\nContent-Length: {bytes}\r\n\
         Expect: 100-continue\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await.expect("answered").expect("read");
    let text = String::from_utf8_lossy(&answer).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status");
    let content_type = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-type: ").map(str::to_string))
        .unwrap_or_default();
    (status, content_type, serde_json::from_str(body).unwrap_or(Value::String(body.to_string())))
}

async fn event_count(app: &TestApp) -> i64 {
    infrastructure::db_fetch_optional!(&app.state.db, (i64,), "SELECT COUNT(*) FROM events").expect("count").expect("row").0
}

// ---------------------------------------------------------------- the text rule

async fn control_characters_in_bodies_are_refused_naming_the_field(db: TestDb) {
    // No worker: the model's creation job stays queued, so the log only grows by requests.
    let app = TestApp::spawn_with(db, |s| s.jobs.worker_in_serve = false).await;
    seed_catalog(&app).await;
    let (team, key) = team(&app).await;
    let reference = reference(&app, &key).await;
    // A model to address (created cleanly, its job left to run).
    let (status, _, created) = read(
        app.as_key(&key, Method::POST, "/api/models")
            .json(&json!({"name": "Ava", "description": "a runner", "reference_model_id": reference}))
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(status, 202, "{created}");
    let model = created["model"]["model_id"].as_str().expect("model").to_string();
    let before = event_count(&app).await;
    let nul = "a\u{0}b";
    let esc = "a\u{1b}[31m";
    #[rustfmt::skip]
    let cases: Vec<(Method, String, bool, Value, &str)> = vec![
        (Method::POST, "/api/admin/teams".into(), true, json!({"name": nul}), "name"),
        (Method::POST, format!("/api/admin/teams/{team}/api-keys"), true, json!({"role": "member", "name": nul}), "name"),
        (Method::POST, format!("/api/admin/teams/{team}/adjustments"), true, json!({"amount": 5, "reason": esc}), "reason"),
        (Method::PUT, format!("/api/admin/teams/{team}/plan"), true, json!({"plan": nul}), "plan"),
        (Method::POST, "/api/models".into(), false, json!({"name": "x", "description": nul, "reference_model_id": reference}), "description"),
        (Method::POST, "/api/models".into(), false, json!({"name": "x", "description": "d", "reference_model_id": nul}), "reference_model_id"),
        (Method::PATCH, format!("/api/models/{model}"), false, json!({"name": nul}), "name"),
        (Method::POST, format!("/api/models/{model}/refine"), false, json!({"prompt": esc}), "prompt"),
        (Method::POST, "/api/generate".into(), false, json!({"model_id": model, "prompt": nul}), "prompt"),
        (Method::POST, "/api/generate".into(), false, json!({"model_id": nul, "prompt": "p"}), "model_id"),
        (Method::POST, "/api/generate/estimate".into(), false, json!({"model_id": model, "prompt": "p", "quality": nul}), "quality"),
        (Method::POST, "/api/credits/checkout".into(), false, json!({"price_id": nul}), "price_id"),
        (Method::POST, "/api/keys".into(), false, json!({"role": "member", "name": nul}), "name"),
        // Unknown fields are named too, keys with control characters included.
        (Method::POST, "/api/models".into(), false, json!({"name": "x", "metadata": {"label": nul}}), "metadata.label"),
        (Method::POST, "/api/generate".into(), false, json!({"tags": ["ok", nul]}), "tags[1]"),
        (Method::POST, "/api/generate".into(), false, json!({"a\u{0}": 1}), "\"a\\0\""),
        (Method::POST, "/api/generate".into(), false, json!({"prompt": "x".repeat(10_001)}), "prompt"),
    ];
    for (method, path, operator, body, field) in cases {
        let request = if operator { app.admin(method.clone(), &path) } else { app.as_key(&key, method.clone(), &path) };
        let answer = read(request.header("Idempotency-Key", "text-rule").json(&body).send().await.expect("request")).await;
        let problem = problem(&answer, 422, "/problems/invalid-request", &format!("{method} {path} {body}"));
        assert_eq!(problem["field"], field, "{method} {path}");
    }
    assert_eq!(event_count(&app).await, before, "nothing recorded");
    // Tab, newline and carriage return are text.
    let response = app.admin(Method::POST, "/api/admin/teams").json(&json!({"name": "Line one\r\n\tline two"})).send().await.expect("request");
    assert_eq!(response.status(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_control_characters_in_bodies_are_refused_naming_the_field() {
    control_characters_in_bodies_are_refused_naming_the_field(TestDb::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_control_characters_in_bodies_are_refused_naming_the_field() {
    control_characters_in_bodies_are_refused_naming_the_field(TestDb::sqlite().await).await;
}

async fn control_characters_in_paths_and_queries(db: TestDb) {
    let app = spawn(db).await;
    let (_, key) = team(&app).await;
    #[rustfmt::skip]
    let paths: Vec<(Method, &str, bool, u16, &str)> = vec![
        (Method::GET, "/api/jobs/%00", false, 404, "/problems/not-found"),
        (Method::DELETE, "/api/jobs/abc%00def", false, 404, "/problems/not-found"),
        (Method::GET, "/api/jobs/%00/events", false, 404, "/problems/not-found"),
        (Method::GET, "/api/generate/%00", false, 404, "/problems/not-found"),
        (Method::GET, "/api/generate/%01/images", false, 404, "/problems/not-found"),
        (Method::GET, "/api/models/%00", false, 404, "/problems/not-found"),
        (Method::GET, "/api/models/%00/versions", false, 404, "/problems/not-found"),
        (Method::GET, "/api/models/not-an-id/images", false, 404, "/problems/not-found"),
        (Method::GET, "/api/reference-models/%00", false, 404, "/problems/not-found"),
        (Method::GET, "/api/admin/teams/%00", true, 404, "/problems/not-found"),
        (Method::GET, "/api/admin/teams/%00/api-keys", true, 404, "/problems/not-found"),
        (Method::DELETE, "/api/keys/%00", false, 404, "/problems/not-found"),
        // A path that is not UTF-8 is malformed.
        (Method::GET, "/api/jobs/%FF%FE", false, 400, "/problems/malformed-path"),
        (Method::GET, "/api/models/%C3%28", false, 400, "/problems/malformed-path"),
    ];
    for (method, path, operator, status, problem_type) in paths {
        let request = if operator { app.admin(method.clone(), path) } else { app.as_key(&key, method.clone(), path) };
        let answer = read(request.send().await.expect("request")).await;
        problem(&answer, status, problem_type, &format!("{method} {path}"));
    }
    #[rustfmt::skip]
    let queries: Vec<(&str, &str)> = vec![
        ("/api/jobs?status=%00", "status"),
        ("/api/jobs?cursor=%00", "cursor"),
        ("/api/models?cursor=a%01", "cursor"),
        ("/api/credits/history?type=%00", "type"),
        ("/api/credits/history?cursor=%00", "cursor"),
        ("/api/reference-models?category=%00", "category"),
        ("/api/audit/ledger?as_of=%00", "as_of"),
    ];
    for (path, field) in queries {
        let answer = read(app.as_key(&key, Method::GET, path).send().await.expect("request")).await;
        assert_eq!(problem(&answer, 422, "/problems/invalid-request", path)["field"], field, "{path}");
    }
    // The one stored header: Idempotency-Key (a tab is legal in HTTP, not in a key).
    for bad in ["a\tb".to_string(), "k".repeat(256)] {
        let response = app.as_key(&key, Method::POST, "/api/generate").header("Idempotency-Key", bad.as_str()).json(&json!({})).send().await;
        let answer = read(response.expect("request")).await;
        assert_eq!(problem(&answer, 422, "/problems/invalid-request", &bad)["field"], "Idempotency-Key");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_control_characters_in_paths_and_queries() {
    control_characters_in_paths_and_queries(TestDb::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_control_characters_in_paths_and_queries() {
    control_characters_in_paths_and_queries(TestDb::sqlite().await).await;
}

/// A request's own faults come before state conflicts: an empty prompt (or a count out
/// of bounds) for a model still training is a 422 naming the field, not a 409
/// `model-not-ready`; with a good prompt the model's state is what is refused.
async fn own_faults_come_before_the_model_s_state(db: TestDb) {
    // No worker: the model stays `training`.
    let app = TestApp::spawn_with(db, |s| s.jobs.worker_in_serve = false).await;
    seed_catalog(&app).await;
    let (_, key) = team(&app).await;
    let reference = reference(&app, &key).await;
    let body = json!({"name": "Ava", "description": "a runner", "reference_model_id": reference});
    let (status, _, created) = read(app.as_key(&key, Method::POST, "/api/models").json(&body).send().await.expect("request")).await;
    assert_eq!(status, 202, "{created}");
    let model = created["model"]["model_id"].as_str().expect("model").to_string();
    let before = event_count(&app).await;
    let refine = format!("/api/models/{model}/refine");
    #[rustfmt::skip]
    let cases: Vec<(&str, Value, &str)> = vec![
        ("/api/generate", json!({"model_id": model, "prompt": ""}), "prompt"),
        ("/api/generate", json!({"model_id": model, "prompt": "  \n "}), "prompt"),
        ("/api/generate", json!({"model_id": model, "prompt": "a cat", "count": 0}), "count"),
        ("/api/generate/estimate", json!({"model_id": model, "prompt": ""}), "prompt"),
        (refine.as_str(), json!({"prompt": " "}), "prompt"),
    ];
    for (path, body, field) in cases {
        let answer = read(app.as_key(&key, Method::POST, path).json(&body).send().await.expect("request")).await;
        let problem = problem(&answer, 422, "/problems/invalid-request", &format!("{path} {body}"));
        assert_eq!(problem["field"], field, "{path} {body}");
    }
    // The request is fine: now the model's state answers.
    for (path, body) in [("/api/generate", json!({"model_id": model, "prompt": "a cat"})), (refine.as_str(), json!({"prompt": "warmer"}))] {
        let answer = read(app.as_key(&key, Method::POST, path).json(&body).send().await.expect("request")).await;
        problem(&answer, 409, "/problems/model-not-ready", path);
    }
    assert_eq!(event_count(&app).await, before, "nothing recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_own_faults_come_before_the_model_s_state() {
    own_faults_come_before_the_model_s_state(TestDb::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_own_faults_come_before_the_model_s_state() {
    own_faults_come_before_the_model_s_state(TestDb::sqlite().await).await;
}

// ---------------------------------------------------------------- every error a problem

async fn every_error_is_a_problem(db: TestDb) {
    let app = spawn(db).await;
    let (team, key) = team(&app).await;
    let answer = read(app.as_key(&key, Method::GET, "/api/nothing-here").send().await.expect("request")).await;
    problem(&answer, 404, "/problems/not-found", "unknown route");

    let response = app.as_key(&key, Method::DELETE, "/api/credits/balance").send().await.expect("request");
    let allow = response.headers().get("allow").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    assert!(allow.contains("GET"), "Allow: {allow}");
    let answer = read(response).await;
    assert_eq!(problem(&answer, 405, "/problems/method-not-allowed", "405")["allow"], allow.as_str());

    let answer = read(app.admin(Method::POST, "/api/admin/teams").body(r#"{"name":"x"}"#).send().await.expect("request")).await;
    problem(&answer, 415, "/problems/unsupported-media-type", "no content type");
    let answer = read(
        app.admin(Method::POST, "/api/admin/teams").header("content-type", "application/json").body("{\"name\":").send().await.expect("request"),
    )
    .await;
    problem(&answer, 400, "/problems/malformed-json", "malformed");
    let answer = read(app.admin(Method::POST, "/api/admin/teams").json(&json!({"name": 5})).send().await.expect("request")).await;
    assert_eq!(problem(&answer, 422, "/problems/invalid-request", "wrong type")["field"], "name");

    // Bodies over the limit: JSON, and both webhooks (Stripe's 3 MB included). Announced
    // ones are answered before any byte of the body is sent (`Expect: 100-continue`).
    for (path, bytes) in [("/api/admin/teams", 20_000_000), ("/api/webhooks/stripe", 3_000_000), ("/api/webhooks/fal", 3_000_000)] {
        let (status, content_type, body) = announce_body(&app, path, bytes).await;
        assert_eq!((status, content_type.as_str()), (413, "application/problem+json"), "{path}: {body}");
        assert_eq!(body["type"], "/problems/payload-too-large", "{path}");
    }
    let _ = team;

    // 401 and 403 are problems too.
    let answer = read(app.client.get(app.url("/api/credits/balance")).send().await.expect("request")).await;
    problem(&answer, 401, "/problems/unauthorized", "no key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_every_error_is_a_problem() {
    every_error_is_a_problem(TestDb::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_every_error_is_a_problem() {
    every_error_is_a_problem(TestDb::sqlite().await).await;
}

/// PostgreSQL goes away under a running app: every request is a 503 with Retry-After,
/// reads and writes alike, and the app serves again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unreachable_database_is_503_with_retry_after() {
    let db = TestDb::postgres().await;
    let url = db.url.clone();
    let app = TestApp::spawn_with(db, |s| s.database.acquire_timeout_ms = 300).await;
    let (_, key) = team(&app).await;
    let infrastructure::db::Database::Postgres(pool) = &app.state.db else { panic!("postgres") };
    // A port nothing listens on: connections are refused.
    let refused = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let options: sqlx::postgres::PgConnectOptions = url.parse().expect("url");
    pool.set_connect_options(options.clone().port(refused));
    // End the pool's open connections, and wait until the server has let them go.
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&crate::support::db::admin_url()).await.expect("admin");
    let name = url.rsplit('/').next().expect("name").to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left: i64 = sqlx::query_scalar(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&name)
        .fetch_one(&mut admin)
        .await
        .expect("terminate");
        if left == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "backends did not end");
        tokio::task::yield_now().await;
    }
    let read_answer = app.as_key(&key, Method::GET, "/api/credits/balance").send().await.expect("request");
    let retry_after = read_answer.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
    problem(&read(read_answer).await, 503, "/problems/database-unavailable", "read");
    assert_eq!(retry_after.as_deref(), Some("5"));
    let write = app.admin(Method::POST, "/api/admin/teams").json(&json!({"name": "while away"})).send().await.expect("request");
    assert!(write.headers().contains_key("retry-after"));
    problem(&read(write).await, 503, "/problems/database-unavailable", "write");
    let readyz = read(app.get("/readyz").await).await;
    assert_eq!(readyz.0, 503);
    // Back: the same requests succeed.
    pool.set_connect_options(options);
    let response = app.as_key(&key, Method::GET, "/api/credits/balance").send().await.expect("request");
    assert_eq!(response.status(), 200);
}

/// SQLite held by another process (its write lock taken past the wait): writes are a 503
/// with Retry-After, reads still answer, and writes succeed once the lock is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_locked_database_is_503_with_retry_after() {
    use sqlx::Connection;
    let db = TestDb::sqlite().await;
    let url = db.url.clone();
    let app = TestApp::spawn_with(db, |s| {
        s.database.acquire_timeout_ms = 300;
        s.jobs.worker_in_serve = false;
    })
    .await;
    let (_, key) = team(&app).await;
    let mut other = sqlx::SqliteConnection::connect(&url).await.expect("another connection");
    sqlx::query("BEGIN IMMEDIATE").execute(&mut other).await.expect("write lock");
    let write = app.admin(Method::POST, "/api/admin/teams").json(&json!({"name": "while locked"})).send().await.expect("request");
    assert_eq!(write.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("5"));
    problem(&read(write).await, 503, "/problems/database-unavailable", "locked write");
    let balance = app.as_key(&key, Method::GET, "/api/credits/balance").send().await.expect("request");
    assert_eq!(balance.status(), 200, "reads go on");
    sqlx::query("ROLLBACK").execute(&mut other).await.expect("release");
    let write = app.admin(Method::POST, "/api/admin/teams").json(&json!({"name": "after"})).send().await.expect("request");
    assert_eq!(write.status(), 201);
}

// ---------------------------------------------------------------- jobs: 409, events, ledger

/// A model-creation job that is cancelled; returns (job id, key). No worker runs, so the
/// job is still queued when cancelled.
async fn cancelled_job(app: &TestApp, key: &str) -> String {
    let reference = reference(app, key).await;
    let (status, _, created) = read(
        app.as_key(key, Method::POST, "/api/models")
            .json(&json!({"name": "To cancel", "description": "d", "reference_model_id": reference}))
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(status, 202, "{created}");
    let job = created["job"]["job_id"].as_str().expect("job").to_string();
    let response = app.as_key(key, Method::DELETE, &format!("/api/jobs/{job}")).send().await.expect("cancel");
    assert_eq!(response.status(), 200);
    job
}

async fn ended_jobs_events_and_ledger(db: TestDb) {
    let app = TestApp::spawn_with(db, |s| s.jobs.worker_in_serve = false).await;
    seed_catalog(&app).await;
    let (_, key) = team(&app).await;
    let job = cancelled_job(&app, &key).await;

    // Cancelling an ended job is a conflict.
    let answer = read(app.as_key(&key, Method::DELETE, &format!("/api/jobs/{job}")).send().await.expect("cancel")).await;
    problem(&answer, 409, "/problems/job-already-finished", "cancel twice");

    // The stream sends public events only, with resumable ids, and ends after the final one.
    let events = |last: Option<&str>| {
        let mut request = app.as_key(&key, Method::GET, &format!("/api/jobs/{job}/events"));
        if let Some(last) = last {
            request = request.header("Last-Event-ID", last);
        }
        async move {
            let response = request.send().await.expect("sse");
            assert_eq!(response.status(), 200);
            tokio::time::timeout(Duration::from_secs(10), response.text()).await.expect("the stream ends").expect("text")
        }
    };
    let text = events(None).await;
    let kinds: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
    assert_eq!(kinds, ["queued", "cancelled"], "{text}");
    for kind in &kinds {
        assert!(kiln::http::job_events::PUBLIC_JOB_EVENT_TYPES.contains(kind));
    }
    let ids: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("id: ")).collect();
    let data: Vec<Value> = text.lines().filter_map(|l| l.strip_prefix("data: ")).map(|d| serde_json::from_str(d).expect("json")).collect();
    assert_eq!(data[1]["type"], "cancelled");
    assert_eq!(data[1]["job_id"], job.as_str());
    assert!(data[0].get("input").is_none() && data[0]["cost_credits"].as_i64().is_some(), "{}", data[0]);
    // Resuming after the first event sends the rest; at or past the final one, nothing.
    let rest = events(Some(ids[0])).await;
    assert_eq!(rest.lines().filter_map(|l| l.strip_prefix("event: ")).collect::<Vec<_>>(), ["cancelled"]);
    for last in [ids[1], "999"] {
        let none = events(Some(last)).await;
        assert!(!none.contains("event:"), "{none}");
    }

    // The ledger names the operation of the reservation and of its refund.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let entries = loop {
        let (_, _, page) = read(app.as_key(&key, Method::GET, "/api/credits/history").send().await.expect("history")).await;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        if items.iter().any(|e| e["entry_type"] == "refunded") {
            break items;
        }
        assert!(tokio::time::Instant::now() < deadline, "refund never projected: {page}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for entry in entries.iter().filter(|e| e["reference"] == job.as_str()) {
        assert_eq!(entry["operation"], "model_creation", "{entry}");
    }
    // Rebuilt from the log, every read model (the history included) is the same.
    for report in crate::rebuild::verify_all(&app).await {
        assert!(report.matches(), "{} differs: {:#?}", report.projection, report.differences);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_ended_jobs_events_and_ledger() {
    ended_jobs_events_and_ledger(TestDb::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_ended_jobs_events_and_ledger() {
    ended_jobs_events_and_ledger(TestDb::sqlite().await).await;
}

// ---------------------------------------------------------------- idempotency, cursors, admin

async fn idempotency_cursors_and_admin_lookups(db: TestDb) {
    let app = TestApp::spawn_with(db, |s| s.jobs.worker_in_serve = false).await;
    seed_catalog(&app).await;
    let (team, key) = team(&app).await;
    let reference = reference(&app, &key).await;
    let create = |name: &str, idempotency: &str| {
        app.as_key(&key, Method::POST, "/api/models")
            .header("Idempotency-Key", idempotency)
            .json(&json!({"name": name, "description": "d", "reference_model_id": reference}))
            .send()
    };
    let (status, _, first) = read(create("One", "model-1").await.expect("request")).await;
    assert_eq!(status, 202, "{first}");
    // The same request again: the first result. Key order and whitespace do not matter.
    let same = app
        .as_key(&key, Method::POST, "/api/models")
        .header("Idempotency-Key", "model-1")
        .header("content-type", "application/json")
        .body(format!("{{ \"reference_model_id\": \"{reference}\", \"description\": \"d\", \"name\": \"One\" }}"))
        .send()
        .await
        .expect("request");
    let (status, _, repeat) = read(same).await;
    assert!(status == 200 || status == 202, "{repeat}");
    assert_eq!(repeat["job"]["job_id"], first["job"]["job_id"]);
    // The same key with another body, or on another endpoint: 422, nothing recorded.
    let before = event_count(&app).await;
    let answer = read(create("Two", "model-1").await.expect("request")).await;
    assert_eq!(problem(&answer, 422, "/problems/idempotency-key-reused", "other body")["field"], "Idempotency-Key");
    let other_endpoint = app
        .as_key(&key, Method::POST, "/api/generate")
        .header("Idempotency-Key", "model-1")
        .json(&json!({"model_id": first["model"]["model_id"], "prompt": "p"}))
        .send()
        .await
        .expect("request");
    problem(&read(other_endpoint).await, 422, "/problems/idempotency-key-reused", "other endpoint");
    assert_eq!(event_count(&app).await, before);
    // Keys are per team (the operator has its own): the same key on another's request is free.
    let other_team = app.create_team("Other", "pro").await;
    assert_eq!(app.grant(&other_team, 1_000, "model-1").await.status(), 200);
    // A request still running elsewhere with the same key: 409 with Retry-After.
    let body = json!({"name": "Three", "description": "d", "reference_model_id": reference});
    let fingerprint = kiln::http::idempotency::fingerprint(
        &Method::POST,
        "/api/models",
        &serde_json::to_vec(&body).expect("json").into(),
    );
    let now = app.state.credits.now();
    infrastructure::db_execute!(
        &app.state.db,
        "INSERT INTO idempotency_keys (scope, key, fingerprint, method, path, state, created_at, updated_at) \
         VALUES ($1, 'model-3', $2, 'POST', '/api/models', 'in_flight', $3, $3)",
        &team,
        &fingerprint,
        now
    )
    .expect("claim");
    let running = app.as_key(&key, Method::POST, "/api/models").header("Idempotency-Key", "model-3").json(&body).send().await.expect("request");
    assert!(running.headers().contains_key("retry-after"));
    problem(&read(running).await, 409, "/problems/idempotency-key-in-use", "in flight");
    // A refused request (4xx) leaves its key free for a corrected one.
    let refused = read(create("", "model-4").await.expect("request")).await;
    assert_eq!(refused.0, 422);
    assert_eq!(read(create("Four", "model-4").await.expect("request")).await.0, 202);

    // After the retention window (24 h) the binding is forgotten: the same key with
    // another grant reaches the ledger, whose own rule refuses it (409), and the sweeper
    // pass deletes what is left.
    assert_eq!(app.grant(&team, 10, "kept-a-day").await.status(), 200);
    let refused = read(app.grant(&team, 11, "kept-a-day").await).await;
    problem(&refused, 422, "/problems/idempotency-key-reused", "within the window");
    app.clock.advance(chrono::Duration::hours(25));
    let later = read(app.grant(&team, 11, "kept-a-day").await).await;
    problem(&later, 409, "/problems/idempotency-conflict", "after the window");
    let forgotten = infrastructure::idempotency::forget_expired(&app.state.db, app.state.credits.now()).await.expect("forget");
    assert!(forgotten >= 1, "{forgotten}");

    // Cursors are opaque, versioned base64url, bound to their list.
    let (_, _, page) = read(app.as_key(&key, Method::GET, "/api/models?limit=1").send().await.expect("list")).await;
    let cursor = page["next_cursor"].as_str().expect("a next page").to_string();
    let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&cursor).expect("base64url");
    let document: Value = serde_json::from_slice(&decoded).expect("json");
    assert_eq!(document["v"], 1);
    let (status, _, second) = read(app.as_key(&key, Method::GET, &format!("/api/models?limit=1&cursor={cursor}")).send().await.expect("list")).await;
    assert_eq!(status, 200);
    assert_ne!(second["items"][0]["model_id"], page["items"][0]["model_id"]);
    for path in [
        format!("/api/jobs?cursor={cursor}"),
        format!("/api/credits/history?cursor={cursor}"),
        format!("/api/reference-models?cursor={cursor}"),
        format!("/api/models/{}/images?cursor={cursor}", page["items"][0]["model_id"].as_str().expect("id")),
        "/api/models?cursor=not-a-cursor".to_string(),
        "/api/jobs?cursor=2026-01-01T00:00:00Z%7Cabc".to_string(),
        "/api/credits/history?cursor=12".to_string(),
    ] {
        let answer = read(app.as_key(&key, Method::GET, &path).send().await.expect("list")).await;
        assert_eq!(problem(&answer, 422, "/problems/invalid-cursor", &path)["field"], "cursor");
    }
    let (_, _, history) = read(app.as_key(&key, Method::GET, "/api/credits/history?limit=1").send().await.expect("history")).await;
    if let Some(cursor) = history["next_cursor"].as_str() {
        let answer = read(app.as_key(&key, Method::GET, &format!("/api/credits/history?limit=1&cursor={cursor}")).send().await.expect("h")).await;
        assert_eq!(answer.0, 200);
    }

    // Admin lookups of a team that does not exist: 404.
    let missing = "0190d6a8-0000-7000-8000-000000000000";
    for (method, path) in [
        (Method::GET, format!("/api/admin/teams/{missing}")),
        (Method::GET, format!("/api/admin/teams/{missing}/api-keys")),
        (Method::POST, format!("/api/admin/teams/{missing}/subscription-expiry")),
    ] {
        let answer = read(app.admin(method.clone(), &path).send().await.expect("request")).await;
        problem(&answer, 404, "/problems/not-found", &path);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_idempotency_cursors_and_admin_lookups() {
    idempotency_cursors_and_admin_lookups(TestDb::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_idempotency_cursors_and_admin_lookups() {
    idempotency_cursors_and_admin_lookups(TestDb::sqlite().await).await;
}
