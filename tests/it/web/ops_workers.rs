//! The console's workers and audit pages in Chromium, with real `kiln worker`
//! processes: a worker drained from the page finishes the job it holds and claims
//! nothing new while another worker takes the new jobs; the page shows it draining, the
//! jobs each worker completed. The whole-log verification shows its progress while it
//! runs (held at its first read by a lock on the log) and then its result.

use application::event_store::EventStore;
use domain::operators::OperatorRole;
use reqwest::Method;
use serde_json::Value;

use super::ops::{act, operator, ops_sign_in, wait_status};
use super::{api, app, browser, queue_generation, ready_model, team};
use crate::support::app::{TestApp, OPERATOR_KEY};
use crate::support::db::TestDb;

/// The worker that claimed each dispatch of `job` (from its events).
async fn claimed_by(app: &TestApp, job: &str) -> Vec<String> {
    let events = app.state.store.load_stream("GenerationJob", job, 0).await.expect("job events");
    events.iter().filter(|e| e.event_type == "JobDispatched").filter_map(|e| e.payload["worker"].as_str().map(str::to_string)).collect()
}

/// The worker's row in `GET /api/admin/workers`, once `ready` holds for it.
async fn worker_row(app: &TestApp, worker: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, workers) = api(app, OPERATOR_KEY, Method::GET, "/api/admin/workers", None).await;
        if let Some(row) = workers.as_array().and_then(|rows| rows.iter().find(|w| w["worker_id"] == worker)) {
            if ready(row) {
                return row.clone();
            }
        }
        assert!(std::time::Instant::now() < deadline, "worker {worker} never ready: {workers}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn stop(mut worker: std::process::Child) {
    let _ = std::process::Command::new("kill").args(["-TERM", &worker.id().to_string()]).status();
    let _ = worker.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drained_worker_finishes_its_job_and_claims_nothing_new() {
    let app = app(TestDb::postgres().await).await;
    let (_, key) = team(&app, "Acme Studio", "enterprise", 50_000).await;
    let model = ready_model(&app, &key).await;
    let alice = operator(&app, "Alice", OperatorRole::Admin).await;

    // Worker A, slow, takes the first job and holds it.
    let logs = tempfile::tempdir().expect("log dir");
    let a_log = logs.path().join("worker-a.log");
    let a = crate::jobs::worker_command(&app, 4_000).stderr(std::fs::File::create(&a_log).expect("log")).spawn().expect("start worker A");
    let first = queue_generation(&app, &key, &model, "a slow first job").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let a_id = loop {
        if let Some(worker) = claimed_by(&app, &first).await.pop() {
            break worker;
        }
        assert!(std::time::Instant::now() < deadline, "worker A never claimed the first job: {}", std::fs::read_to_string(&a_log).unwrap_or_default());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };

    // Drained from the console, with a reason; A hears it with its next heartbeat.
    let browser = browser(&app).await;
    ops_sign_in(&browser, &alice.secret).await;
    browser.goto("/ops/workers").await;
    act(&browser, &format!("#worker-{a_id} form"), None, "kernel update").await;
    browser.wait_text("#notice h2", "Worker draining").await;
    let drained_at = chrono::Utc::now();
    worker_row(&app, &a_id, |row| row["draining"] == true && row["heartbeat_at"].as_str().and_then(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok()).is_some_and(|t| t > drained_at)).await;
    let (_, held) = api(&app, &key, Method::GET, &format!("/api/jobs/{first}"), None).await;

    // Worker B takes every new job; A finishes the one it holds.
    let b = crate::jobs::worker_process(&app, 0);
    let mut later = Vec::new();
    for n in 0..3 {
        later.push(queue_generation(&app, &key, &model, &format!("a later job {n}")).await);
    }
    for job in later.iter().chain([&first]) {
        wait_status(&app, &key, job, "completed").await;
    }
    assert_eq!(claimed_by(&app, &first).await, std::slice::from_ref(&a_id), "A finished the job it held (it was {}), once", held["status"]);
    let mut b_id = None;
    for job in &later {
        let claims = claimed_by(&app, job).await;
        assert!(!claims.is_empty() && claims.iter().all(|w| *w != a_id), "job {job} claimed by {claims:?}, never by the drained {a_id}");
        b_id = claims.into_iter().next();
    }
    let b_id = b_id.expect("worker B");
    let a_row = worker_row(&app, &a_id, |row| row["jobs_done"] == 1).await;
    assert_eq!((a_row["drain_changed_by"].as_str(), a_row["drain_reason"].as_str()), (Some("Alice"), Some("kernel update")), "{a_row}");
    worker_row(&app, &b_id, |row| row["jobs_done"].as_i64() >= Some(3) && row["draining"] == false).await;

    browser.goto("/ops/workers").await;
    assert!(browser.text(&format!("#worker-{a_id} .state")).await.contains("draining"));
    assert_eq!(browser.text(&format!("#worker-{a_id} .done")).await, "1");
    browser.screenshot("ops-workers").await;
    browser.assert_fits_width(390).await;
    stop(a);
    stop(b);

    // The same through the API: a viewer is refused, an unknown worker is not found, an
    // admin lets A claim again.
    let vera = operator(&app, "Vera", OperatorRole::Viewer).await;
    let (status, problem) = api(&app, &vera.secret, Method::POST, &format!("/api/admin/workers/{a_id}/undrain?reason=x"), None).await;
    assert_eq!((status, problem["type"].as_str()), (403, Some("/problems/forbidden")), "{problem}");
    let (status, problem) = api(&app, &alice.secret, Method::POST, "/api/admin/workers/no-such-worker/drain?reason=x", None).await;
    assert_eq!((status, problem["type"].as_str()), (404, Some("/problems/not-found")), "{problem}");
    let (status, _) = api(&app, &alice.secret, Method::POST, &format!("/api/admin/workers/{a_id}/undrain?reason=patched"), None).await;
    assert_eq!(status, 204);
    worker_row(&app, &a_id, |row| row["draining"] == false && row["drain_reason"] == "patched").await;

    // The drain is an operator act with who and why, from events alone.
    browser.goto("/ops/audit").await;
    let acts = browser.text("#acts tbody").await;
    assert!(acts.contains("drain_worker") && acts.contains("kernel update") && acts.contains("Alice"), "{acts}");
    assert!(acts.contains("undrain_worker") && acts.contains("patched"), "{acts}");
    browser.close().await;
    app.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_whole_log_verify_shows_its_progress_then_its_result() {
    let app = app(TestDb::postgres().await).await;
    let (_, key) = team(&app, "Acme Studio", "pro", 5_000).await;
    ready_model(&app, &key).await;
    let vera = operator(&app, "Vera", OperatorRole::Viewer).await;
    let browser = browser(&app).await;
    ops_sign_in(&browser, &vera.secret).await;
    browser.goto("/ops/audit").await;
    browser.wait_text("#verify-none", "No verification has run since this server started.").await;

    // A lock on the log holds the run at its first read: the page shows it going on.
    let infrastructure::db::Database::Postgres(pool) = &app.state.db else { panic!("a PostgreSQL test") };
    let mut hold = pool.begin().await.expect("begin");
    sqlx::query("LOCK TABLE events IN ACCESS EXCLUSIVE MODE").execute(&mut *hold).await.expect("lock the log");
    assert!(app.state.audit_runs.start(app.state.db.clone(), app.state.credits.clock().clone(), "Vera"), "started");
    browser.wait_text("#verify-progress h2", "Verifying…").await;
    assert!(!app.state.audit_runs.start(app.state.db.clone(), app.state.credits.clock().clone(), "Vera"), "one run at a time");
    hold.rollback().await.expect("release the log");
    browser.wait_text("#verify-result h2", "Log sound").await;
    let summary = browser.text("#verify-result p").await;
    assert!(summary.contains("started by Vera") && summary.contains("1 teams"), "{summary}");
    let view = app.state.audit_runs.view();
    let report = view.last.expect("a last run").outcome.expect("a report");
    assert!(report.team_events > 0);

    // Run from the page's button (a viewer may: it only reads): the result follows.
    browser.click("#verify-all").await;
    browser.wait_text("#verify-result h2", "Log sound").await;
    browser.screenshot("ops-audit").await;
    browser.assert_fits_width(390).await;
    browser.close().await;
    app.shutdown().await.expect("shutdown");
}
