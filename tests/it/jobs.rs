//! The job engine end to end over HTTP, on real PostgreSQL (and a SQLite smoke test):
//! create → refine → generate → fetch by signed URL, credits exact; refunds on failure
//! and cancel; plan limits with two workers; a killed worker; subscription expiry.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::app::TestApp;
use crate::support::db::TestDb;

async fn body(response: reqwest::Response) -> Value {
    let status = response.status();
    let text = response.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: {text}"))
}

async fn post(app: &TestApp, key: &str, path: &str, json_body: Value) -> (u16, Value) {
    let response = app.as_key(key, Method::POST, path).json(&json_body).send().await.expect("request");
    let status = response.status().as_u16();
    (status, body(response).await)
}

pub(crate) async fn get(app: &TestApp, key: &str, path: &str) -> (u16, Value) {
    let response = app.as_key(key, Method::GET, path).send().await.expect("request");
    let status = response.status().as_u16();
    (status, body(response).await)
}

pub(crate) async fn available(app: &TestApp, key: &str) -> i64 {
    get(app, key, "/api/credits/balance").await.1["available"].as_i64().expect("available")
}

/// Waits (bounded) until the job reaches a final status; returns its view.
pub(crate) async fn wait_final(app: &TestApp, key: &str, job_id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, job) = get(app, key, &format!("/api/jobs/{job_id}")).await;
        if matches!(job["status"].as_str(), Some("completed" | "failed" | "cancelled")) {
            return job;
        }
        assert!(tokio::time::Instant::now() < deadline, "job {job_id} did not finish: {job}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A team with a plan, credits and a member key; the catalog seeded.
pub(crate) async fn team(app: &TestApp, plan: &str, credits: i64) -> (String, String) {
    let team = app.create_team(&format!("{plan} team"), plan).await;
    let key = app.issue_key(&team, "member").await;
    if credits > 0 {
        assert_eq!(app.grant(&team, credits, &format!("seed-{team}")).await.status(), 200);
    }
    (team, key)
}

async fn first_reference(app: &TestApp, key: &str) -> (String, i64) {
    let (status, page) = get(app, key, "/api/reference-models?limit=1").await;
    assert_eq!(status, 200, "{page}");
    let id = page["items"][0]["id"].as_str().expect("reference id").to_string();
    let complexity: (i64,) = infrastructure::db_fetch_optional!(
        &app.state.db,
        (i64,),
        "SELECT complexity_factor_milli FROM reference_models WHERE id = $1",
        &id
    )
    .expect("query")
    .expect("row");
    (id, complexity.0)
}

async fn create_model(app: &TestApp, key: &str, reference: &str) -> (String, String) {
    let (status, created) = post(app, key, "/api/models", json!({"name": "Ava", "description": "a runner, golden hour", "reference_model_id": reference})).await;
    assert_eq!(status, 202, "{created}");
    (created["model"]["model_id"].as_str().expect("model").to_string(), created["job"]["job_id"].as_str().expect("job").to_string())
}

async fn end_to_end(app: TestApp) {
    crate::support::app::seed_catalog(&app).await;
    let (_team, key) = team(&app, "pro", 10_000).await;
    let (reference, complexity) = first_reference(&app, &key).await;
    let pricing = domain::PricingConfig::default_v1();
    let creation_cost = pricing.model_creation_cost(complexity).expect("price").get();

    // Create: the price is reserved at once and deducted on completion.
    let (model_id, job_id) = create_model(&app, &key, &reference).await;
    let job = wait_final(&app, &key, &job_id).await;
    assert_eq!((job["status"].as_str(), job["cost_credits"].as_i64()), (Some("completed"), Some(creation_cost)));
    let (_, model) = get(&app, &key, &format!("/api/models/{model_id}")).await;
    assert_eq!((model["status"].as_str(), model["current_version"].as_i64()), (Some("ready"), Some(1)));

    // Refine: version 2.
    let (status, refined) = post(&app, &key, &format!("/api/models/{model_id}/refine"), json!({"prompt": "sharper jawline"})).await;
    assert_eq!(status, 202, "{refined}");
    let refine_job = refined["job"]["job_id"].as_str().expect("job").to_string();
    let refine_cost = pricing.model_refinement_cost(1).expect("price").get();
    assert_eq!(wait_final(&app, &key, &refine_job).await["cost_credits"], refine_cost);
    let (_, versions) = get(&app, &key, &format!("/api/models/{model_id}/versions")).await;
    assert_eq!(versions.as_array().map(Vec::len), Some(2));
    assert_eq!(versions[1]["prompt"], "sharper jawline");
    // Version 2's artifact builds on version 1's: the worker handed the provider the
    // right artifact of the version it refined (without it the description is lost).
    let (v2_key,): (String,) = infrastructure::db_fetch_optional!(
        &app.state.db,
        (String,),
        "SELECT artifact_key FROM model_versions WHERE model_id = $1 AND version = 2",
        &model_id
    )
    .expect("query")
    .expect("version 2");
    let v2_bytes = app.state.objects.get(&v2_key).await.expect("read").expect("version 2 artifact stored");
    let v2: Value = serde_json::from_slice(&v2_bytes).expect("json");
    assert_eq!((v2["version"].as_i64(), v2["description"].as_str()), (Some(2), Some("a runner, golden hour")), "{v2}");
    assert_eq!(v2["prompts"], json!(["sharper jawline"]));

    // Estimate, then generate two images and fetch them by signed URL.
    let request = json!({"model_id": model_id, "prompt": "on a beach", "resolution": "512x512", "quality": "hd", "count": 2});
    let (_, estimate) = post(&app, &key, "/api/generate/estimate", request.clone()).await;
    let before = available(&app, &key).await;
    assert_eq!(before, 10_000 - creation_cost - refine_cost, "estimates spend nothing");
    let (status, generated) = post(&app, &key, "/api/generate", request).await;
    assert_eq!(status, 202, "{generated}");
    let generation = generated["job"]["job_id"].as_str().expect("job").to_string();
    assert_eq!(generated["job"]["cost_credits"], estimate["cost_credits"]);
    let job = wait_final(&app, &key, &generation).await;
    assert_eq!(job["status"], "completed", "{job}");
    let (_, images) = get(&app, &key, &format!("/api/generate/{generation}/images")).await;
    let urls: Vec<String> = images["images"].as_array().expect("images").iter().map(|i| i["url"].as_str().expect("url").to_string()).collect();
    assert_eq!(urls.len(), 2);
    for url in &urls {
        let response = reqwest::get(url).await.expect("fetch image");
        assert_eq!(response.status(), 200);
        let bytes = response.bytes().await.expect("bytes");
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n".as_slice(), "a PNG");
    }
    // A completed job cannot be cancelled.
    let cancel = app.as_key(&key, Method::DELETE, &format!("/api/jobs/{generation}")).send().await.expect("cancel");
    assert_eq!(cancel.status(), 409);
    assert_eq!(body(cancel).await["type"], "/problems/job-already-finished");
    let (_, model_images) = get(&app, &key, &format!("/api/models/{model_id}/images")).await;
    assert_eq!(model_images["items"].as_array().map(Vec::len), Some(2));

    // Credits: exactly the three prices were spent, nothing is held.
    let (_, balance) = get(&app, &key, "/api/credits/balance").await;
    let spent = creation_cost + refine_cost + estimate["cost_credits"].as_i64().expect("cost");
    assert_eq!((balance["available"].as_i64(), balance["reserved"].as_i64()), (Some(10_000 - spent), Some(0)));
    assert_eq!(balance["totals"]["deducted"], spent);
    app.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_create_refine_generate_fetch() {
    end_to_end(TestApp::spawn(TestDb::postgres().await).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_create_refine_generate_fetch() {
    end_to_end(TestApp::spawn(TestDb::sqlite().await).await).await;
}

pub(crate) async fn ready_model(app: &TestApp, key: &str) -> String {
    let (reference, _) = first_reference(app, key).await;
    let (model_id, job_id) = create_model(app, key, &reference).await;
    assert_eq!(wait_final(app, key, &job_id).await["status"], "completed");
    model_id
}

pub(crate) async fn generate(app: &TestApp, key: &str, model_id: &str, prompt: &str) -> (u16, Value) {
    post(app, key, "/api/generate", json!({"model_id": model_id, "prompt": prompt, "resolution": "512x512"})).await
}

/// A queued image job of `team_id` written straight into the `jobs` read model (the
/// dispatch walk's tests); returns its id.
pub(crate) async fn insert_queued_job(
    db: &infrastructure::db::Database,
    team_id: &str,
    queued_at: chrono::DateTime<chrono::Utc>,
    not_before: chrono::DateTime<chrono::Utc>,
) -> String {
    let job_id = uuid::Uuid::now_v7().to_string();
    infrastructure::db_execute!(
        db,
        "INSERT INTO jobs (job_id, team_id, kind, status, model_id, cost, price_version, input, queued_at, not_before, updated_at) \
         VALUES ($1, $2, 'image_generation', 'queued', 'm', 1, 1, '{}', $3, $4, $3)",
        &job_id,
        team_id,
        queued_at,
        not_before
    )
    .expect("jobs row");
    job_id
}

/// One Enterprise team's queued image jobs: the team, its key, the credits it had
/// before they were reserved, and the job ids.
pub(crate) struct QueuedJobs {
    pub team_id: String,
    pub key: String,
    pub start: i64,
    pub ids: Vec<String>,
}

/// `teams` Enterprise teams with `credits` each, a ready model each (made by an
/// in-process worker that then stops, so no worker runs afterwards) and `jobs` image
/// jobs queued per team.
pub(crate) async fn queued_jobs(app: &TestApp, teams: usize, credits: i64, jobs: usize) -> Vec<QueuedJobs> {
    queued_jobs_of(app, &vec![("enterprise", jobs); teams], credits).await
}

/// A team per `(plan, jobs)` with `credits` each and a ready model each (made by an
/// in-process worker that then stops, so no worker runs afterwards), and `jobs` image
/// jobs queued for it; every team's jobs are queued after every model is ready.
pub(crate) async fn queued_jobs_of(app: &TestApp, teams: &[(&str, usize)], credits: i64) -> Vec<QueuedJobs> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let helper = tokio::spawn(app.state.worker(&app.settings.jobs, "setup-worker".into()).run(stopped));
    let mut models = Vec::new();
    for (plan, jobs) in teams {
        let (team_id, key) = team(app, plan, credits).await;
        let model_id = ready_model(app, &key).await;
        models.push((team_id, key, model_id, *jobs));
    }
    let _ = stop.send(true);
    helper.await.expect("setup worker");
    let mut queued = Vec::new();
    for (team_id, key, model_id, jobs) in models {
        let start = available(app, &key).await;
        let mut ids = Vec::new();
        for n in 0..jobs {
            let (status, accepted) = generate(app, &key, &model_id, &format!("job {n}")).await;
            assert_eq!(status, 202, "{accepted}");
            ids.push(accepted["job"]["job_id"].as_str().expect("id").to_string());
        }
        queued.push(QueuedJobs { team_id, key, start, ids });
    }
    queued
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn provider_failure_refunds_and_the_model_stays_usable() {
    let app = TestApp::spawn_with(TestDb::postgres().await, |s| {
        s.provider.local_fail_prompts_containing = Some("forbidden".into());
    })
    .await;
    crate::support::app::seed_catalog(&app).await;
    let (_, key) = team(&app, "pro", 5_000).await;
    let model_id = ready_model(&app, &key).await;
    let before = available(&app, &key).await;
    let (status, accepted) = generate(&app, &key, &model_id, "something forbidden").await;
    assert_eq!(status, 202);
    let reserved_cost = accepted["job"]["cost_credits"].as_i64().expect("cost");
    let job = wait_final(&app, &key, accepted["job"]["job_id"].as_str().expect("job")).await;
    assert_eq!(job["status"], "failed", "{job}");
    let (_, balance) = get(&app, &key, "/api/credits/balance").await;
    assert_eq!((balance["available"].as_i64(), balance["reserved"].as_i64()), (Some(before), Some(0)), "refunded: {reserved_cost}");
    let (_, images) = get(&app, &key, &format!("/api/generate/{}/images", job["job_id"].as_str().expect("id"))).await;
    assert_eq!(images["images"].as_array().map(Vec::len), Some(0));
    let (status, _) = generate(&app, &key, &model_id, "fine").await;
    assert_eq!(status, 202, "the model is still usable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_refunds_queued_and_running_jobs_and_discards_late_results() {
    let app = TestApp::spawn_with(TestDb::postgres().await, |s| s.provider.local_latency_ms = 1_500).await;
    crate::support::app::seed_catalog(&app).await;
    let (_, key) = team(&app, "basic", 5_000).await;
    let model_id = ready_model(&app, &key).await;
    let start = available(&app, &key).await;
    // Basic runs one job at a time: the first runs (slowly), the second waits.
    let (_, running) = generate(&app, &key, &model_id, "first").await;
    let (_, waiting) = generate(&app, &key, &model_id, "second").await;
    let (running, waiting) = (running["job"]["job_id"].as_str().expect("id").to_string(), waiting["job"]["job_id"].as_str().expect("id").to_string());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while get(&app, &key, &format!("/api/jobs/{running}")).await.1["status"] == "queued" {
        assert!(tokio::time::Instant::now() < deadline, "first job never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(get(&app, &key, &format!("/api/jobs/{waiting}")).await.1["status"], "queued");
    for job in [&waiting, &running] {
        let response = app.as_key(&key, Method::DELETE, &format!("/api/jobs/{job}")).send().await.expect("cancel");
        assert_eq!(response.status(), 200);
        assert_eq!(body(response).await["status"], "cancelled");
    }
    // Cancelling again is refused with 409 (the job has ended): nothing refunded twice.
    let again = app.as_key(&key, Method::DELETE, &format!("/api/jobs/{running}")).send().await.expect("cancel");
    assert_eq!(again.status(), 409);
    assert_eq!(body(again).await["type"], "/problems/job-already-finished");
    assert_eq!(get(&app, &key, &format!("/api/jobs/{running}")).await.1["status"], "cancelled");
    // The running job's result arrives after the cancel and is discarded.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert_eq!(get(&app, &key, &format!("/api/jobs/{running}")).await.1["status"], "cancelled");
    let (_, balance) = get(&app, &key, "/api/credits/balance").await;
    assert_eq!((balance["available"].as_i64(), balance["reserved"].as_i64()), (Some(start), Some(0)));
    let (_, concurrency) = get(&app, &key, "/api/jobs/concurrency").await;
    assert_eq!((concurrency["running"].as_i64(), concurrency["queued"].as_i64()), (Some(0), Some(0)));
}

/// Counts, from the event log, the most jobs each team ever had active at once.
pub(crate) async fn max_active_per_team(app: &TestApp) -> std::collections::HashMap<String, i64> {
    use application::event_store::{EventStore, LogPosition};
    let mut team_of: std::collections::HashMap<String, String> = Default::default();
    let mut active: std::collections::HashMap<String, i64> = Default::default();
    let mut max: std::collections::HashMap<String, i64> = Default::default();
    let mut after = LogPosition::START;
    let mut dispatches: std::collections::HashMap<String, i64> = Default::default();
    loop {
        let page = app.state.store.read_log(after, 1_000).await.expect("log");
        let Some(last) = page.last() else { break };
        after = last.log_position;
        for event in page.iter().filter(|e| e.aggregate_type == "GenerationJob") {
            let job = event.aggregate_id.clone();
            match event.event_type.as_str() {
                "JobQueued" => {
                    team_of.insert(job, event.payload["team_id"].as_str().expect("team").to_string());
                }
                "JobDispatched" => {
                    let team = team_of[&job].clone();
                    *dispatches.entry(job).or_default() += 1;
                    let now = active.entry(team.clone()).or_default();
                    *now += 1;
                    let peak = max.entry(team).or_default();
                    *peak = (*peak).max(*now);
                }
                "JobCompleted" | "JobFailed" | "JobRetryScheduled" | "JobCancelled" => {
                    // Only endings of dispatched jobs free a slot; a queued cancel held none.
                    if dispatches.get(&job).copied().unwrap_or(0) > 0 {
                        *active.entry(team_of[&job].clone()).or_default() -= 1;
                    }
                }
                _ => {}
            }
        }
    }
    assert!(dispatches.values().all(|n| *n == 1), "no job ran twice: {dispatches:?}");
    max
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plan_limits_hold_with_two_workers() {
    let app = TestApp::spawn_with(TestDb::postgres().await, |s| s.provider.local_latency_ms = 150).await;
    crate::support::app::seed_catalog(&app).await;
    // A second worker with its own services over the same database: another process.
    let mut settings = app.settings.clone();
    settings.jobs.worker_concurrency = 16;
    let other = kiln::app::AppState::new(app.state.db.clone(), &settings, app.state.credits.clock().clone()).expect("state");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let second = tokio::spawn(other.worker(&settings.jobs, "second-worker".into()).run(stopped));

    let mut teams = Vec::new();
    for (plan, jobs) in [("basic", 3), ("pro", 6), ("enterprise", 14)] {
        let (team, key) = team(&app, plan, 100_000).await;
        let model_id = ready_model(&app, &key).await;
        let mut ids = Vec::new();
        for n in 0..jobs {
            let (status, accepted) = generate(&app, &key, &model_id, &format!("job {n}")).await;
            assert_eq!(status, 202, "{accepted}");
            ids.push(accepted["job"]["job_id"].as_str().expect("id").to_string());
        }
        teams.push((team, key, plan, ids));
    }
    for (_, key, _, ids) in &teams {
        for id in ids {
            assert_eq!(wait_final(&app, key, id).await["status"], "completed");
        }
    }
    let _ = stop.send(true);
    second.await.expect("second worker");
    // The log is read only below every transaction still open on the cluster (other
    // tests' included): wait until it shows every team's dispatches.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let peaks = loop {
        let peaks = max_active_per_team(&app).await;
        let seen_all = teams.iter().all(|(team, ..)| peaks.get(team).copied().unwrap_or(0) >= 1);
        if seen_all || tokio::time::Instant::now() > deadline {
            break peaks;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for (team, _, plan, _) in &teams {
        let limit = plan.parse::<domain::Plan>().expect("plan").concurrency_limit() as i64;
        let peak = peaks.get(team).copied().unwrap_or(0);
        assert!(peak <= limit, "{plan} team ran {peak} jobs at once (limit {limit})");
        assert!(peak >= 1);
    }
}

#[tokio::test]
async fn free_plans_queue_depth_and_repeated_submissions() {
    let app = TestApp::spawn_with(TestDb::postgres().await, |s| {
        s.jobs.queue_depth_max = 2;
        s.jobs.worker_in_serve = false;
    })
    .await;
    crate::support::app::seed_catalog(&app).await;
    let (reference, _) = {
        let (_, key) = team(&app, "pro", 0).await;
        first_reference(&app, &key).await
    };
    // Free: refused with a clear problem, nothing reserved.
    let (free_team, free_key) = team(&app, "free", 1_000).await;
    let (status, problem) = post(&app, &free_key, "/api/models", json!({"name": "x", "description": "y", "reference_model_id": reference})).await;
    assert_eq!((status, problem["type"].as_str()), (403, Some("/problems/plan-does-not-allow-jobs")), "{problem}");
    assert_eq!(available(&app, &free_key).await, 1_000);
    let _ = free_team;

    // Queue depth: with no worker, the third waiting job is refused with 429.
    let (_, key) = team(&app, "basic", 10_000).await;
    for n in 0..2 {
        let (status, _) = post(&app, &key, "/api/models", json!({"name": format!("m{n}"), "description": "d", "reference_model_id": reference})).await;
        assert_eq!(status, 202);
    }
    let (status, problem) = post(&app, &key, "/api/models", json!({"name": "m3", "description": "d", "reference_model_id": reference})).await;
    assert_eq!((status, problem["type"].as_str()), (429, Some("/problems/queue-full")), "{problem}");

    // The same Idempotency-Key returns the same job and reserves once.
    let (_, other_key) = team(&app, "pro", 10_000).await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let response = app
            .as_key(&other_key, Method::POST, "/api/models")
            .header("Idempotency-Key", "create-once")
            .json(&json!({"name": "same", "description": "d", "reference_model_id": reference}))
            .send()
            .await
            .expect("request");
        assert!(response.status() == 202 || response.status() == 200);
        seen.push(body(response).await["job"]["job_id"].as_str().expect("id").to_string());
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
    let (_, balance) = get(&app, &other_key, "/api/credits/balance").await;
    assert_eq!(balance["reserved"].as_i64().expect("reserved") + balance["available"].as_i64().expect("available"), 10_000);
    assert_eq!(get(&app, &other_key, "/api/jobs").await.1["items"].as_array().map(Vec::len), Some(1));

    // Bad input: unknown reference, empty prompt, too many images.
    let (status, _) = post(&app, &other_key, "/api/models", json!({"name": "x", "description": "y", "reference_model_id": "nope"})).await;
    assert_eq!(status, 422);
    let (status, _) = post(&app, &other_key, "/api/models", json!({"name": "", "description": "y", "reference_model_id": reference})).await;
    assert_eq!(status, 422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscription_expiry_finishes_running_refunds_queued_and_refuses_new() {
    let app = TestApp::spawn_with(TestDb::postgres().await, |s| s.provider.local_latency_ms = 1_000).await;
    crate::support::app::seed_catalog(&app).await;
    let (team, key) = team(&app, "basic", 10_000).await;
    let model_id = ready_model(&app, &key).await;
    let start = available(&app, &key).await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let (_, accepted) = generate(&app, &key, &model_id, &format!("job {n}")).await;
        ids.push(accepted["job"]["job_id"].as_str().expect("id").to_string());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while get(&app, &key, "/api/jobs/concurrency").await.1["running"] != 1 {
        assert!(tokio::time::Instant::now() < deadline, "no job started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Plan changes apply in effective-time order; the operator's expiry is effective now.
    app.clock.advance(chrono::Duration::seconds(1));
    let response = app.admin(Method::POST, &format!("/api/admin/teams/{team}/subscription-expiry")).send().await.expect("expire");
    assert_eq!(response.status(), 200);
    let expired = body(response).await;
    assert_eq!(expired["team"]["plan"], "free");
    // The worker's upkeep cancels queued jobs of plan-less teams too, so this request
    // may find one already cancelled; the statuses below are what counts.
    assert!((0..=2).contains(&expired["cancelled_jobs"].as_i64().expect("count")));

    let mut statuses = Vec::new();
    let mut charged = 0;
    for id in &ids {
        let job = wait_final(&app, &key, id).await;
        if job["status"] == "completed" {
            charged += job["cost_credits"].as_i64().expect("cost");
        }
        statuses.push(job["status"].as_str().expect("status").to_string());
    }
    statuses.sort();
    assert_eq!(statuses, vec!["cancelled", "cancelled", "completed"]);
    let (_, balance) = get(&app, &key, "/api/credits/balance").await;
    assert_eq!((balance["available"].as_i64(), balance["reserved"].as_i64()), (Some(start - charged), Some(0)));
    let (status, problem) = generate(&app, &key, &model_id, "after expiry").await;
    assert_eq!((status, problem["type"].as_str()), (403, Some("/problems/plan-does-not-allow-jobs")));
}

/// A `kiln worker` process on the test's database and storage.
pub(crate) fn worker_process(app: &TestApp, latency_ms: u64) -> std::process::Child {
    worker_command(app, latency_ms).spawn().expect("start kiln worker")
}

/// The command of [`worker_process`], for a test to add to (fal settings, a log file).
pub(crate) fn worker_command(app: &TestApp, latency_ms: u64) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"));
    command
        .arg("worker")
        .env("KILN_DATABASE__URL", &app.settings.database.url)
        .env("KILN_STORAGE__LOCAL_ROOT", &app.settings.storage.local_root)
        .env("KILN_PROVIDER__LOCAL_LATENCY_MS", latency_ms.to_string())
        .env("KILN_JOBS__POLL_INTERVAL_MS", "10")
        .env("KILN_JOBS__HEARTBEAT_INTERVAL_MS", "200")
        .env("KILN_JOBS__WORKER_LOST_AFTER_SECS", "1")
        .env("KILN_JOBS__RETRY_BACKOFF_BASE_MS", "10")
        .env("KILN_LOG__FORMAT", "json")
        .env_remove("RUST_LOG")
        // The browser tests' switch is not a setting; the worker's config refuses it.
        .env_remove("KILN_SCREENSHOTS")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    command
}

pub(crate) async fn statuses(app: &TestApp, key: &str, ids: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for id in ids {
        out.push(get(app, key, &format!("/api/jobs/{id}")).await.1["status"].as_str().expect("status").to_string());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_worker_loses_no_job_and_charges_once() {
    let app = TestApp::spawn_with(TestDb::postgres().await, |s| s.jobs.worker_in_serve = false).await;
    crate::support::app::seed_catalog(&app).await;
    let QueuedJobs { team_id, key, start, ids } = queued_jobs(&app, 1, 100_000, 4).await.remove(0);
    // Worker A takes all four and is killed mid-work.
    let mut a = worker_process(&app, 30_000);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while statuses(&app, &key, &ids).await.iter().any(|s| s == "queued") {
        assert!(tokio::time::Instant::now() < deadline, "worker A never took the jobs");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.kill().expect("kill -9 worker A");
    a.wait().expect("reap worker A");

    // Worker B finds A's jobs orphaned, checks with the provider, retries and finishes them.
    let mut b = worker_process(&app, 0);
    let mut costs = 0;
    for id in &ids {
        let job = wait_final(&app, &key, id).await;
        assert_eq!(job["status"], "completed", "{job}");
        costs += job["cost_credits"].as_i64().expect("cost");
    }
    let _ = std::process::Command::new("kill").args(["-TERM", &b.id().to_string()]).status();
    b.wait().expect("worker B stops");

    // Every job ended once and was charged once.
    use application::event_store::EventStore;
    let team_events = app.state.store.load_stream("TeamCredits", &team_id, 0).await.expect("team events");
    for id in &ids {
        let deducted = team_events.iter().filter(|e| e.event_type == "CreditsDeducted" && e.payload["reservation_id"] == id.as_str()).count();
        assert_eq!(deducted, 1, "job {id} charged once");
        let events = app.state.store.load_stream("GenerationJob", id, 0).await.expect("job events");
        let endings = events.iter().filter(|e| matches!(e.event_type.as_str(), "JobCompleted" | "JobFailed" | "JobCancelled")).count();
        assert_eq!(endings, 1, "job {id} ended once");
        assert!(events.iter().any(|e| e.event_type == "JobRetryScheduled"), "job {id} was retried after the kill");
    }
    let (_, balance) = get(&app, &key, "/api/credits/balance").await;
    assert_eq!((balance["available"].as_i64(), balance["reserved"].as_i64()), (Some(start - costs), Some(0)));
    let (_, concurrency) = get(&app, &key, "/api/jobs/concurrency").await;
    assert_eq!((concurrency["running"].as_i64(), concurrency["queued"].as_i64()), (Some(0), Some(0)), "nothing stuck");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_list_filters_events_stream_and_model_edits() {
    let app = TestApp::spawn(TestDb::postgres().await).await;
    crate::support::app::seed_catalog(&app).await;
    let (_, key) = team(&app, "pro", 10_000).await;
    let model_id = ready_model(&app, &key).await;
    let (_, accepted) = generate(&app, &key, &model_id, "to follow").await;
    let job_id = accepted["job"]["job_id"].as_str().expect("id").to_string();

    // The event stream replays the job's events and ends after its final one.
    let response = app.as_key(&key, Method::GET, &format!("/api/jobs/{job_id}/events")).send().await.expect("sse");
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = tokio::time::timeout(Duration::from_secs(30), response.text()).await.expect("stream ends").expect("text");
    let kinds: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
    assert_eq!(kinds.first(), Some(&"queued"));
    assert_eq!(kinds.last(), Some(&"completed"), "{text}");
    assert!(kinds.contains(&"dispatched"));

    // Lists filter by kind and status, newest first, and page.
    let (_, creations) = get(&app, &key, "/api/jobs?kind=model_creation").await;
    assert_eq!(creations["items"].as_array().map(Vec::len), Some(1));
    let (_, completed) = get(&app, &key, "/api/jobs?status=completed&limit=1").await;
    assert_eq!(completed["items"][0]["job_id"], job_id.as_str(), "newest first");
    let cursor = completed["next_cursor"].as_str().expect("a second page").to_string();
    let (_, second) = get(&app, &key, &format!("/api/jobs?status=completed&limit=1&cursor={}", cursor.replace('+', "%2B"))).await;
    assert_eq!(second["items"][0]["kind"], "model_creation");
    for bad in ["status=lost", "kind=video", "limit=0", "cursor=zzz"] {
        assert_eq!(get(&app, &key, &format!("/api/jobs?{bad}")).await.0, 422, "{bad}");
    }
    let (_, detail) = get(&app, &key, &format!("/api/jobs/{job_id}")).await;
    assert!(detail["events"].as_array().expect("events").len() >= 3);
    assert_eq!(detail["input"]["prompt"], "to follow");

    // Edit, list, archive: an archived model cannot generate.
    let response = app.as_key(&key, Method::PATCH, &format!("/api/models/{model_id}")).json(&json!({"name": "Renamed"})).send().await.expect("patch");
    assert_eq!(body(response).await["name"], "Renamed");
    let (_, models) = get(&app, &key, "/api/models").await;
    assert_eq!(models["items"][0]["name"], "Renamed");
    let archived = app.as_key(&key, Method::DELETE, &format!("/api/models/{model_id}")).send().await.expect("archive");
    assert_eq!(archived.status(), 204);
    assert_eq!(get(&app, &key, "/api/models").await.1["items"].as_array().map(Vec::len), Some(0));
    assert_eq!(get(&app, &key, "/api/models?archived=true").await.1["items"].as_array().map(Vec::len), Some(1));
    let (status, problem) = generate(&app, &key, &model_id, "after archive").await;
    assert_eq!((status, problem["type"].as_str()), (409, Some("/problems/model-archived")));

    // Another team sees none of it.
    let (_, stranger) = team(&app, "pro", 0).await;
    assert_eq!(get(&app, &stranger, &format!("/api/jobs/{job_id}")).await.0, 404);
    assert_eq!(get(&app, &stranger, &format!("/api/models/{model_id}")).await.0, 404);
    assert_eq!(get(&app, &stranger, &format!("/api/generate/{job_id}/images")).await.0, 404);
    let cancel = app.as_key(&stranger, Method::DELETE, &format!("/api/jobs/{job_id}")).send().await.expect("cancel");
    assert_eq!(cancel.status(), 404);
    // An auditor key reads but cannot submit.
    let own_team = get(&app, &key, "/api/credits/balance").await.1["team_id"].as_str().expect("team").to_string();
    let auditor_team_key = app.issue_key(&own_team, "auditor").await;
    assert_eq!(get(&app, &auditor_team_key, &format!("/api/jobs/{job_id}")).await.0, 200);
    let (status, _) = generate(&app, &auditor_team_key, &model_id, "nope").await;
    assert_eq!(status, 403);
}

/// A claim batch offering a team more jobs than its free slots claims the oldest ones
/// up to the plan's limit and leaves the rest queued, in one append per try.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_claim_batch_takes_no_more_than_the_plan_allows() {
    let app = TestApp::spawn_with(TestDb::postgres().await, |s| s.jobs.worker_in_serve = false).await;
    crate::support::app::seed_catalog(&app).await;
    // Models first, made by an in-process worker that then stops; then the jobs, which
    // no worker takes.
    let mut models = Vec::new();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let helper = tokio::spawn(app.state.worker(&app.settings.jobs, "setup-worker".into()).run(stopped));
    for plan in ["basic", "pro"] {
        let (_, key) = team(&app, plan, 100_000).await;
        models.push((plan, key.clone(), ready_model(&app, &key).await));
    }
    let _ = stop.send(true);
    helper.await.expect("setup worker");
    let mut offered = Vec::new();
    let mut keys = Vec::new();
    for ((plan, key, model_id), jobs) in models.into_iter().zip([3, 5]) {
        for n in 0..jobs {
            let (status, accepted) = generate(&app, &key, &model_id, &format!("{plan} {n}")).await;
            assert_eq!(status, 202, "{accepted}");
            let id: domain::JobId = accepted["job"]["job_id"].as_str().expect("id").parse().expect("job id");
            offered.push((plan, id));
        }
        keys.push((plan, key));
    }
    let ids: Vec<(domain::JobId, Option<i64>)> = offered.iter().map(|(_, id)| (*id, None)).collect();
    let claimed = app.state.jobs.dispatch_many(&ids, "local", "test-worker").await.expect("claim");
    let claimed_ids: Vec<domain::JobId> = claimed.iter().filter_map(|job| job.aggregate.job_id).collect();
    // The oldest of each team, up to its limit: basic 1, pro 3.
    let expected: Vec<domain::JobId> = [&offered[0..1], &offered[3..6]].concat().iter().map(|(_, id)| *id).collect();
    assert_eq!(claimed_ids, expected);
    assert!(claimed.iter().all(|job| job.aggregate.status == Some(domain::jobs::JobStatus::Dispatched)));
    // Timed in the order offered, a microsecond apart per place (a team's turn is its
    // latest claim: teams served by one claim do not tie).
    let times: Vec<_> = claimed.iter().map(|job| job.aggregate.dispatched_at.expect("dispatched at")).collect();
    let steps: Vec<i64> = times.windows(2).filter_map(|pair| (pair[1] - pair[0]).num_microseconds()).collect();
    assert_eq!(steps, [3, 1, 1], "{times:?}");
    // Offered again, the rest find no free slot.
    assert!(app.state.jobs.dispatch_many(&ids, "local", "test-worker").await.expect("claim again").is_empty());
    for ((plan, key), (running, queued)) in keys.iter().zip([(1, 2), (3, 2)]) {
        let (_, concurrency) = get(&app, key, "/api/jobs/concurrency").await;
        assert_eq!((concurrency["running"].as_i64(), concurrency["queued"].as_i64()), (Some(running), Some(queued)), "{plan}");
    }
    app.shutdown().await.expect("shutdown");
}

/// `dispatchable` on the read model as the projections leave it: every team's oldest
/// ready job before anyone's second (least recently served team first), no more per team
/// than its free slots, jobs waiting out a retry backoff neither offered nor holding a
/// place, full teams left out. Rows are written directly: the query reads only these.
async fn dispatch_order_is_fair(db: TestDb) {
    use application::jobs::index::JobIndex;
    use infrastructure::db_execute;
    let db = &db.db;
    let now = crate::support::app::epoch() + chrono::Duration::days(1);
    let at = |seconds: i64| now - chrono::Duration::seconds(1_000 - seconds);
    // (team, running, limit, last dispatched, queued jobs as (name, queued at, ready?))
    let teams: [(i32, i32, Option<i64>, Vec<(&str, i64, bool)>); 5] = [
        // Never served, but its only job waits out a retry backoff (created first, so its
        // id sorts first among the never-served teams).
        (0, 3, None, vec![("w0", 1, false)]),
        // A long queue of old jobs, served recently, 3 free slots.
        (0, 3, Some(900), vec![("b0", 0, true), ("b1", 1, true), ("b2", 2, true), ("b3", 3, true), ("b4", 4, true)]),
        // A newcomer: one job, queued last, never served.
        (0, 1, None, vec![("n0", 990, true)]),
        // No free slot.
        (1, 1, Some(100), vec![("f0", 2, true)]),
        // Served long ago, two jobs, two free slots.
        (1, 3, Some(10), vec![("o0", 500, true), ("o1", 501, true)]),
    ];
    let mut names = std::collections::HashMap::new();
    for (running, limit, served, jobs) in &teams {
        let team_id = uuid::Uuid::now_v7().to_string();
        db_execute!(
            db,
            "INSERT INTO team_dispatch (team_id, running, queued, running_limit, last_dispatched_at) VALUES ($1, $2, $3, $4, $5)",
            &team_id,
            *running,
            jobs.len() as i32,
            *limit,
            served.map(at)
        )
        .expect("team_dispatch row");
        for (name, queued, ready) in jobs {
            let not_before = if *ready { at(*queued) } else { now + chrono::Duration::minutes(5) };
            let job_id = insert_queued_job(db, &team_id, at(*queued), not_before).await;
            names.insert(job_id, name.to_string());
        }
    }
    let index = infrastructure::job_index::SqlJobIndex::new(db.clone());
    let offered = |limit: i64| {
        let (index, names) = (&index, &names);
        async move {
            let jobs = index.dispatchable(now, limit).await.expect("dispatchable");
            jobs.iter().map(|job| names[&job.job_id.to_string()].clone()).collect::<Vec<_>>()
        }
    };
    // Rank 1 first: never-served newcomer, then older (served long ago), then busy; the
    // waiting team's backoff job and the full team's job are never offered.
    assert_eq!(offered(3).await, ["n0", "o0", "b0"]);
    // Then each team's next jobs, within its free slots (older has 2, busy 3).
    assert_eq!(offered(10).await, ["n0", "o0", "b0", "o1", "b1", "b2"]);
    assert_eq!(offered(1).await, ["n0"], "the team in backoff does not take the only place");
}

#[tokio::test]
async fn postgres_dispatch_order_is_fair() {
    dispatch_order_is_fair(TestDb::postgres().await).await;
}

#[tokio::test]
async fn sqlite_dispatch_order_is_fair() {
    dispatch_order_is_fair(TestDb::sqlite().await).await;
}

/// The dispatch walk (both stores) is the rule of `domain::share`: over random teams of
/// every plan (share tags, free slots, last service, ready and waiting jobs) and turn
/// sizes, it offers the same teams' jobs, with the same tags, in the same order as the
/// in-memory reference `share::pick`.
async fn dispatch_follows_the_share_rule(db: TestDb) {
    use application::jobs::index::JobIndex;
    use domain::share::{pick, PlanWeights, ShareTeam, SHARE_UNIT};
    use infrastructure::db_execute;
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let db = &db.db;
    let weights = PlanWeights { basic: 1, pro: 3, enterprise: 10 };
    let index = infrastructure::job_index::SqlJobIndex::with_weights(db.clone(), weights);
    let now = crate::support::app::epoch() + chrono::Duration::days(1);
    let at = |seconds: i64| now - chrono::Duration::seconds(1_000 - seconds);
    // (plan, share tag, running, last served, ready jobs, a job in backoff?)
    let team = (
        prop_oneof![Just(domain::Plan::Basic), Just(domain::Plan::Pro), Just(domain::Plan::Enterprise)],
        0..4 * SHARE_UNIT,
        0u32..4,
        proptest::option::of(0i64..900),
        0usize..5,
        any::<bool>(),
    );
    let case = (proptest::collection::vec(team, 1..7), 1i64..12);
    let mut runner = TestRunner::deterministic();
    for _ in 0..25 {
        let (teams, limit) = case.new_tree(&mut runner).expect("case").current();
        db_execute!(db, "DELETE FROM jobs").expect("clear jobs");
        db_execute!(db, "DELETE FROM team_dispatch").expect("clear teams");
        let mut ids = Vec::new();
        let mut job_team = std::collections::HashMap::new();
        for (plan, tag, running, served, ready, waiting) in &teams {
            let team_id = uuid::Uuid::now_v7().to_string();
            let running = (*running).min(plan.concurrency_limit());
            db_execute!(
                db,
                "INSERT INTO team_dispatch (team_id, running, queued, running_limit, last_dispatched_at, plan, share_tag) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &team_id,
                running as i32,
                (*ready + usize::from(*waiting)) as i32,
                plan.concurrency_limit() as i32,
                served.map(at),
                plan.as_str(),
                *tag
            )
            .expect("team_dispatch row");
            for n in 0..*ready + usize::from(*waiting) {
                // The waiting job is the oldest: a backoff does not hold up the rest.
                let not_before = if *waiting && n == 0 { now + chrono::Duration::minutes(5) } else { at(n as i64) };
                let job_id = insert_queued_job(db, &team_id, at(n as i64), not_before).await;
                job_team.insert(job_id, ids.len());
            }
            ids.push((team_id, running));
        }
        let mut by_service: Vec<usize> = (0..teams.len()).collect();
        by_service.sort_by_key(|&i| (teams[i].3.is_some(), teams[i].3, ids[i].0.clone()));
        let share_teams: Vec<ShareTeam> = teams
            .iter()
            .enumerate()
            .map(|(i, (plan, tag, _, _, ready, _))| ShareTeam {
                stride: weights.stride(*plan),
                tag: *tag,
                ready: (*ready).min((plan.concurrency_limit() - ids[i].1) as usize),
                served_rank: by_service.iter().position(|&j| j == i).expect("ranked"),
            })
            .collect();
        let expected = pick(&share_teams, limit as usize);
        let offered: Vec<(usize, i64)> = index
            .dispatchable(now, limit)
            .await
            .expect("dispatchable")
            .iter()
            .map(|job| (job_team[&job.job_id.to_string()], job.share_tag))
            .collect();
        assert_eq!(offered, expected, "teams {teams:?}, limit {limit}");
    }
}

#[tokio::test]
async fn postgres_dispatch_follows_the_share_rule() {
    dispatch_follows_the_share_rule(TestDb::postgres().await).await;
}

#[tokio::test]
async fn sqlite_dispatch_follows_the_share_rule() {
    dispatch_follows_the_share_rule(TestDb::sqlite().await).await;
}

/// A job the provider is working on says so, in the API and on its event stream:
/// `running`, on its first attempt (counted from 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_the_provider_works_on_is_running_on_attempt_one() {
    let app = TestApp::spawn_with(TestDb::postgres().await, |s| s.jobs.worker_in_serve = false).await;
    crate::support::app::seed_catalog(&app).await;
    let QueuedJobs { key, ids, .. } = queued_jobs(&app, 1, 100_000, 1).await.remove(0);
    let mut worker = worker_process(&app, 1_500);
    let running = crate::fal::wait_job(&app, &key, &ids[0], "running", |j| j["status"] == "running").await;
    assert_eq!(running["attempt"], 1, "{running}");
    let job = wait_final(&app, &key, &ids[0]).await;
    assert_eq!(job["status"], "completed", "{job}");
    let types: Vec<&str> = job["events"].as_array().expect("events").iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types, ["JobQueued", "JobDispatched", "JobProgressed", "JobCompleted"], "{job}");
    let stream = app.as_key(&key, Method::GET, &format!("/api/jobs/{}/events", ids[0])).send().await.expect("events");
    let text = stream.text().await.expect("stream");
    assert!(text.contains("event: progress") && text.contains("\"running\":true"), "{text}");
    let _ = std::process::Command::new("kill").args(["-TERM", &worker.id().to_string()]).status();
    worker.wait().expect("worker stops");
}
