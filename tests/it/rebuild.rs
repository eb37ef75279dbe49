//! `kiln projections rebuild`: shadow rebuild equals the live read models after a
//! randomized workload, swaps in atomically while writers run, keeps index and constraint
//! names, and `--verify` finds a tampered read model (CLI exit codes included).

use std::time::Duration;

use application::clock::Clock;
use application::credits::CreditsError;
use domain::{Credits, JobId, Operation, TeamCreditsCommand, TeamCreditsError, TeamId};
use projections::catalog;
use projections::rebuild::{self, NoProgress, RebuildOptions, RebuildReport};
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::app::TestApp;
use crate::support::db::TestDb;

fn team_id(text: &str) -> TeamId {
    text.parse().expect("team id")
}

/// A seeded random ledger workload on a few teams (grants with and without expiry,
/// reserves, deducts, refunds, adjustments, plan changes, the expiry sweeper), plus API
/// keys. Returns the teams.
pub async fn random_ledger_workload(app: &TestApp, seed: u64, steps: u32) -> Vec<TeamId> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut teams = Vec::new();
    for n in 0..3 {
        let team = app.create_team(&format!("R{n}"), "pro").await;
        app.issue_key(&team, "member").await;
        teams.push(team_id(&team));
    }
    let mut pending: Vec<(TeamId, JobId)> = Vec::new();
    let credits = &app.state.credits;
    let meta = json!({});
    for step in 0..steps {
        let team = teams[rng.gen_range(0..teams.len())];
        let now = app.clock.now();
        let command = match rng.gen_range(0..11) {
            0 | 1 => TeamCreditsCommand::GrantCredits {
                grant_id: domain::GrantId::new(uuid::Uuid::now_v7()),
                amount: Credits::parse(rng.gen_range(1..100)).expect("positive"),
                source: domain::GrantSource::Admin,
                expires_at: rng.gen_bool(0.5).then(|| now + chrono::Duration::hours(rng.gen_range(1..72))),
                key: domain::IdempotencyKey::parse(format!("g{seed}-{step}")).expect("key"),
                now,
            },
            2..=4 => {
                let job = JobId::new(uuid::Uuid::now_v7());
                pending.push((team, job));
                TeamCreditsCommand::ReserveCredits {
                    reservation_id: job,
                    amount: Credits::parse(rng.gen_range(1..60)).expect("positive"),
                    operation: Operation::ImageGeneration,
                    price_version: 1,
                    now,
                }
            }
            5 | 6 if !pending.is_empty() => {
                let (team, job) = pending.swap_remove(rng.gen_range(0..pending.len()));
                let end = if rng.gen_bool(0.7) {
                    TeamCreditsCommand::DeductCredits { reservation_id: job, now }
                } else {
                    TeamCreditsCommand::RefundCredits { reservation_id: job, now }
                };
                let _ = credits.execute(team, end, &meta).await;
                continue;
            }
            7 => TeamCreditsCommand::AdjustCredits {
                adjustment_id: domain::AdjustmentId::new(uuid::Uuid::now_v7()),
                amount: domain::SignedCredits::parse(rng.gen_range(1..40i64) * if rng.gen_bool(0.5) { 1 } else { -1 }).expect("non-zero"),
                reason: "random".into(),
                actor: "test".into(),
                now,
            },
            8 => {
                app.clock.advance(chrono::Duration::seconds(1));
                let plan = ["basic", "pro", "enterprise"][rng.gen_range(0..3)];
                let response = app
                    .admin(Method::PUT, &format!("/api/admin/teams/{team}/plan"))
                    .json(&json!({"plan": plan}))
                    .send()
                    .await
                    .expect("request");
                assert_eq!(response.status(), 200);
                continue;
            }
            _ => {
                app.clock.advance(chrono::Duration::hours(rng.gen_range(0..30)));
                kiln::sweeper::expire_credits_once(&app.state).await.expect("sweep");
                continue;
            }
        };
        match credits.execute(team, command, &meta).await {
            Ok(_) | Err(CreditsError::Rejected(TeamCreditsError::InsufficientCredits { .. })) => {}
            Err(other) => panic!("step {step}: {other}"),
        }
    }
    teams
}

/// A model creation and an image generation through the API and the in-process worker,
/// so the jobs family (jobs, team_dispatch, custom_models, model_versions, images) has rows.
async fn job_workload(app: &TestApp) {
    crate::support::app::seed_catalog(app).await;
    let team = app.create_team("Jobs", "pro").await;
    let key = app.issue_key(&team, "member").await;
    assert_eq!(app.grant(&team, 10_000, "jobs-seed").await.status(), 200);
    let page: Value = app.as_key(&key, Method::GET, "/api/reference-models?limit=1").send().await.expect("request").json().await.expect("json");
    let reference = page["items"][0]["id"].as_str().expect("reference").to_string();
    let created: Value = app
        .as_key(&key, Method::POST, "/api/models")
        .json(&json!({"name": "Ava", "description": "a runner", "reference_model_id": reference}))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    let model = created["model"]["model_id"].as_str().expect("model id").to_string();
    wait_final(app, &key, created["job"]["job_id"].as_str().expect("job id")).await;
    let generated: Value = app
        .as_key(&key, Method::POST, "/api/generate")
        .json(&json!({"model_id": model, "prompt": "on a track", "resolution": "512x512"}))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    let generation = generated["job_id"].as_str().or(generated["job"]["job_id"].as_str()).expect("job id").to_string();
    wait_final(app, &key, &generation).await;
    // Its images expire (retention 0 days, a second on): `ImagesExpired` and its rows
    // (`job_image_expiries`, the images' rows gone) are in what the rebuild must equal.
    app.clock.advance(chrono::Duration::seconds(1));
    let swept = app.state.retention.sweep(0, None).await.expect("retention sweep");
    assert_eq!(swept.jobs, 1, "{swept:?}");
    let job: Value = app.as_key(&key, Method::GET, &format!("/api/jobs/{generation}")).send().await.expect("request").json().await.expect("json");
    assert_eq!(job["images_expired"], true, "{job}");
}

async fn wait_final(app: &TestApp, key: &str, job_id: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let job: Value = app.as_key(key, Method::GET, &format!("/api/jobs/{job_id}")).send().await.expect("request").json().await.expect("json");
        if matches!(job["status"].as_str(), Some("completed" | "failed" | "cancelled")) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "job {job_id} did not finish: {job}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn verify_all(app: &TestApp) -> Vec<RebuildReport> {
    let options = RebuildOptions { verify: true, ..RebuildOptions::default() };
    let mut reports = Vec::new();
    for info in catalog::catalog() {
        reports.push(rebuild::rebuild(&app.state.store, &info, &options, &NoProgress).await.expect("verify"));
    }
    reports
}

#[track_caller]
fn assert_all_match(reports: &[RebuildReport]) {
    for report in reports {
        assert!(report.matches(), "{} differs: {:#?}", report.projection, report.differences);
        assert!(report.events > 0, "{} read the log", report.projection);
    }
}

async fn rebuild_all(app: &TestApp) {
    for info in catalog::catalog() {
        let report = rebuild::rebuild(&app.state.store, &info, &RebuildOptions::default(), &NoProgress).await.expect("rebuild");
        assert!(report.swapped);
    }
}

async fn balance(app: &TestApp, team: TeamId) -> (i64, i64, usize) {
    let view = kiln::http::credits::load_balance(&app.state, team).await.expect("read").expect("team");
    (view.available, view.reserved, view.grants.len())
}

async fn index_names(app: &TestApp) -> Vec<String> {
    let sql = "SELECT indexname::text FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1";
    match &app.state.db {
        infrastructure::db::Database::Postgres(pool) => sqlx::query_scalar(sql).fetch_all(pool).await.expect("indexes"),
        _ => unreachable!("postgres only"),
    }
}

async fn rebuild_equals_live(app: TestApp, with_jobs: bool) {
    let teams = random_ledger_workload(&app, 0x7265_6275, 200).await;
    if with_jobs {
        job_workload(&app).await;
        // Real jobs through the engine: every deduction matches a completed job.
        let audit = projections::audit::verify(&app.state.db, None).await.expect("audit verify");
        assert!(audit.ok(), "{:#?}", audit.violations);
        assert!(audit.jobs >= 2, "the job-ledger checks ran: {audit:?}");
    }
    app.state.projector.catch_up_to_head(Duration::from_secs(30)).await.expect("projector");
    assert_all_match(&verify_all(&app).await);
    let before: Vec<_> = futures::future::join_all(teams.iter().map(|t| balance(&app, *t))).await;
    let indexes = if with_jobs { index_names(&app).await } else { Vec::new() };

    rebuild_all(&app).await;
    assert_all_match(&verify_all(&app).await);
    let after: Vec<_> = futures::future::join_all(teams.iter().map(|t| balance(&app, *t))).await;
    assert_eq!(before, after, "balances served the same after the swap");
    if with_jobs {
        assert_eq!(index_names(&app).await, indexes, "every index and constraint keeps its name");
    }
    // The app keeps working on the swapped tables: a grant shows up at once.
    let team = teams[0].to_string();
    assert_eq!(app.grant(&team, 5, "after-swap").await.status(), 200);
    assert_eq!(balance(&app, teams[0]).await.0, after[0].0 + 5);
    app.state.projector.catch_up_to_head(Duration::from_secs(30)).await.expect("projector");
    assert_all_match(&verify_all(&app).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_rebuild_equals_the_live_projections_after_a_random_workload() {
    rebuild_equals_live(TestApp::spawn(TestDb::postgres().await).await, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_rebuild_smoke() {
    rebuild_equals_live(TestApp::spawn(TestDb::sqlite().await).await, false).await;
}

/// Writers keep appending (two tasks, several teams) while every projection is rebuilt
/// and swapped; at the end the read models equal a fresh rebuild and the aggregates.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_rebuild_while_writers_run_ends_consistent() {
    let app = TestApp::spawn(TestDb::postgres().await).await;
    let teams = random_ledger_workload(&app, 42, 100).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for (n, team) in teams.iter().copied().enumerate() {
        let (credits, clock, stop) = (app.state.credits.clone(), app.clock.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut done = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let now = clock.now();
                let grant = TeamCreditsCommand::GrantCredits {
                    grant_id: domain::GrantId::new(uuid::Uuid::now_v7()),
                    amount: Credits::parse(10).expect("positive"),
                    source: domain::GrantSource::Admin,
                    expires_at: None,
                    key: domain::IdempotencyKey::parse(format!("w{n}-{done}")).expect("key"),
                    now,
                };
                credits.execute(team, grant, &json!({})).await.expect("grant");
                let job = JobId::new(uuid::Uuid::now_v7());
                let reserve = TeamCreditsCommand::ReserveCredits {
                    reservation_id: job,
                    amount: Credits::parse(3).expect("positive"),
                    operation: Operation::ImageGeneration,
                    price_version: 1,
                    now,
                };
                credits.execute(team, reserve, &json!({})).await.expect("reserve");
                let end = if done % 2 == 0 {
                    TeamCreditsCommand::DeductCredits { reservation_id: job, now }
                } else {
                    TeamCreditsCommand::RefundCredits { reservation_id: job, now }
                };
                credits.execute(team, end, &json!({})).await.expect("end");
                done += 1;
            }
            done
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..2 {
        rebuild_all(&app).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut rounds = 0;
    for writer in writers {
        rounds += writer.await.expect("writer");
    }
    assert!(rounds > 0, "writers ran during the rebuild");
    app.state.projector.catch_up_to_head(Duration::from_secs(30)).await.expect("projector");
    assert_all_match(&verify_all(&app).await);
    for team in &teams {
        let state = app.state.credits.state(*team).await.expect("state");
        let (available, reserved, _) = balance(&app, *team).await;
        assert_eq!((available, reserved), (state.available(), state.reserved()), "read model equals the aggregate");
    }
}

/// Runs the built `kiln` binary against the test database.
pub fn kiln(db_url: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("--database-url")
        .arg(db_url)
        .args(args)
        .output()
        .expect("run kiln")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_lists_reports_status_verifies_and_exits_non_zero_on_a_difference() {
    let app = TestApp::spawn(TestDb::postgres().await).await;
    let teams = random_ledger_workload(&app, 7, 60).await;
    app.state.projector.catch_up_to_head(Duration::from_secs(30)).await.expect("projector");
    let url = app.db.url.clone();

    let list = kiln(&url, &["projections", "list", "--json"]);
    assert!(list.status.success(), "{}", String::from_utf8_lossy(&list.stderr));
    let names: Value = serde_json::from_slice(&list.stdout).expect("json");
    assert_eq!(names.as_array().map(Vec::len), Some(catalog::catalog().len()));

    let status = kiln(&url, &["projections", "status", "--json"]);
    assert!(status.status.success());
    let statuses: Value = serde_json::from_slice(&status.stdout).expect("json");
    let history = statuses.as_array().expect("array").iter().find(|s| s["name"] == "credit_history").expect("credit_history");
    assert_eq!(history["lag_events"], 0, "{statuses}");
    let deliveries = statuses.as_array().expect("array").iter().find(|s| s["name"] == "webhook_deliveries").expect("webhook_deliveries");
    assert_eq!((deliveries["kind"].as_str(), deliveries["lag_events"].as_i64()), (Some("async"), Some(0)), "{statuses}");

    let verify = kiln(&url, &["projections", "rebuild", "--verify", "--json"]);
    assert_eq!(verify.status.code(), Some(0), "{}", String::from_utf8_lossy(&verify.stderr));
    let reports: Value = serde_json::from_slice(&verify.stdout).expect("json");
    assert!(reports.as_array().expect("array").iter().all(|r| r["differences"].as_array().is_some_and(Vec::is_empty)));

    // A read model edited behind the log's back: --verify names the table, exits 2,
    // and a rebuild repairs it.
    let infrastructure::db::Database::Postgres(pool) = &app.state.db else { unreachable!() };
    sqlx::query("UPDATE team_balances SET available = available + 1 WHERE team_id = $1")
        .bind(teams[0].to_string())
        .execute(pool)
        .await
        .expect("tamper");
    let verify = kiln(&url, &["projections", "rebuild", "team_balances", "--verify"]);
    assert_eq!(verify.status.code(), Some(3));
    let text = String::from_utf8_lossy(&verify.stdout);
    assert!(text.contains("DIFFERS") && text.contains("team_balances") && text.contains(&teams[0].to_string()), "{text}");

    let repaired = kiln(&url, &["projections", "rebuild", "team_balances", "--json"]);
    assert_eq!(repaired.status.code(), Some(0), "{}", String::from_utf8_lossy(&repaired.stderr));
    assert_eq!(kiln(&url, &["projections", "rebuild", "team_balances", "--verify"]).status.code(), Some(0));

    let unknown = kiln(&url, &["projections", "rebuild", "no_such_projection"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no projection named"));

    let metrics = app.get("/metrics").await.text().await.expect("text");
    assert!(metrics.contains("kiln_projection_lag_events{projection=\"credit_history\",kind=\"async\"}"), "{metrics}");
    assert!(metrics.contains("kiln_event_log_head_position"), "{metrics}");
}

/// The bulk pass refuses an event its fold cannot decode, naming its stream, sequence and
/// log position (looked up when the error is reported), and swaps nothing in.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_bulk_rebuild_names_an_event_it_cannot_decode() {
    let app = TestApp::spawn(TestDb::postgres().await).await;
    let team = app.create_team("Undecodable", "pro").await;
    assert_eq!(app.grant(&team, 5, "before-the-bad-one").await.status(), 200);
    let infrastructure::db::Database::Postgres(pool) = &app.state.db else { unreachable!("postgres only") };
    let (commit_order, position): (i64, i64) = sqlx::query_as(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         SELECT 'TeamCredits', $1, MAX(sequence) + 1, 'CreditsGranted', '1.0', '{\"type\": \"CreditsGranted\"}', '{}' \
         FROM events WHERE aggregate_type = 'TeamCredits' AND aggregate_id = $1 \
         RETURNING transaction_id::text::bigint AS commit_order, position",
    )
    .bind(&team)
    .fetch_one(pool)
    .await
    .expect("insert an undecodable event");
    // The bulk pass reads up to the readable end (below every transaction still running);
    // the app's own background work may hold it back a moment.
    let readable = "SELECT transaction_id < pg_snapshot_xmin(pg_current_snapshot()) FROM events WHERE position = $1";
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !sqlx::query_scalar::<_, bool>(readable).bind(position).fetch_one(pool).await.expect("readable") {
        assert!(std::time::Instant::now() < deadline, "the event never became readable");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // An inline projection: its rebuild reads the whole log (an async one stops at its
    // projector's checkpoint, which the projector cannot move past this event).
    let info = catalog::catalog().into_iter().find(|info| info.name == "team_balances").expect("team_balances");
    let error = rebuild::rebuild(&app.state.store, &info, &RebuildOptions::default(), &NoProgress).await.expect_err("refused");
    let rebuild::RebuildError::Projection { position: at, reason, .. } = error else { panic!("not a projection error: {error}") };
    assert_eq!((at.commit_order, at.position), (commit_order, position), "{reason}");
    assert!(reason.contains(&team) && reason.contains("does not decode"), "{reason}");
}
