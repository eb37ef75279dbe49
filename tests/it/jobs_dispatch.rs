//! Parallel dispatch: pickers hold disjoint teams (PostgreSQL); a worker killed with
//! batches of claims and completions in flight loses no job and charges each once, and
//! the ledger, the chain and the projections stay exact afterwards.

use std::collections::HashMap;
use std::time::Duration;

use application::event_store::EventStore;
use application::jobs::index::JobIndex;
use infrastructure::db_execute;

use crate::jobs::{available, generate, get, ready_model, team, wait_final, worker_process};
use crate::support::app::TestApp;
use crate::support::db::TestDb;

/// Two picks held at once never offer the same team; once a hold is released, its
/// teams can be picked again. Rows are written directly: `pick` reads only these.
#[tokio::test]
async fn postgres_picks_held_at_once_take_disjoint_teams() {
    let db = TestDb::postgres().await;
    let db = &db.db;
    let now = crate::support::app::epoch() + chrono::Duration::days(1);
    // Four never-served teams, two ready jobs each, three free slots each.
    let mut team_of = HashMap::new();
    for team in 0..4 {
        let team_id = uuid::Uuid::now_v7().to_string();
        db_execute!(db, "INSERT INTO team_dispatch (team_id, running, queued, running_limit) VALUES ($1, 0, 2, 3)", &team_id)
            .expect("team_dispatch row");
        for n in 0..2 {
            let job_id = uuid::Uuid::now_v7().to_string();
            team_of.insert(job_id.clone(), team);
            let queued_at = now - chrono::Duration::seconds(100 - n);
            db_execute!(
                db,
                "INSERT INTO jobs (job_id, team_id, kind, status, model_id, cost, price_version, input, queued_at, not_before, updated_at) \
                 VALUES ($1, $2, 'image_generation', 'queued', 'm', 1, 1, '{}', $3, $3, $3)",
                &job_id,
                &team_id,
                queued_at
            )
            .expect("jobs row");
        }
    }
    let index = infrastructure::job_index::SqlJobIndex::new(db.clone());
    let teams = |jobs: &[(domain::JobId, domain::TeamId)]| {
        let mut teams: Vec<i32> = jobs.iter().map(|(job, _)| team_of[&job.to_string()]).collect();
        teams.sort_unstable();
        teams
    };
    let first = index.pick(now, 2).await.expect("first pick");
    assert_eq!(teams(&first.jobs), [0, 1], "the two least recently served teams, one job each");
    let second = index.pick(now, 10).await.expect("second pick");
    assert_eq!(teams(&second.jobs), [2, 2, 3, 3], "only the teams the first pick does not hold");
    first.hold.release().await;
    let third = index.pick(now, 10).await.expect("third pick");
    assert_eq!(teams(&third.jobs), [0, 0, 1, 1], "released teams are offered again; held ones are not");
    second.hold.release().await;
    third.hold.release().await;
}

/// Counts of the measured jobs by status, from the read model.
async fn by_status(app: &TestApp) -> HashMap<String, i64> {
    infrastructure::db_fetch_all!(&app.state.db, (String, i64), "SELECT status, COUNT(*) FROM jobs WHERE kind = 'image_generation' GROUP BY status")
        .expect("statuses")
        .into_iter()
        .collect()
}

/// A worker with many jobs in flight — claimed in batches, completed in joint
/// transactions — is killed (`kill -9`) once some have completed; another worker
/// finishes the rest. Every job ends once and is charged once, balances add up, nothing
/// stays stuck, and the audit and a rebuild of every projection agree with the live state.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_mid_batch_loses_no_job_and_charges_once() {
    let app = TestApp::spawn_with(TestDb::postgres().await, |s| s.jobs.worker_in_serve = false).await;
    crate::support::app::seed_catalog(&app).await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let helper = tokio::spawn(app.state.worker(&app.settings.jobs, "setup-worker".into()).run(stopped));
    let mut teams = Vec::new();
    for _ in 0..3 {
        let (team_id, key) = team(&app, "enterprise", 1_000_000).await;
        let model_id = ready_model(&app, &key).await;
        teams.push((team_id, key, model_id));
    }
    let _ = stop.send(true);
    helper.await.expect("setup worker");

    let mut jobs = Vec::new();
    for (team_id, key, model_id) in &teams {
        let start = available(&app, key).await;
        let mut ids = Vec::new();
        for n in 0..12 {
            let (status, accepted) = generate(&app, key, model_id, &format!("job {n}")).await;
            assert_eq!(status, 202, "{accepted}");
            ids.push(accepted["job"]["job_id"].as_str().expect("id").to_string());
        }
        jobs.push((team_id.clone(), key.clone(), start, ids));
    }
    // Worker A (16 slots, 300 ms per job) claims batches and completes some; it is
    // killed while others are claimed or running.
    let mut a = worker_process(&app, 300);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let seen = loop {
        let seen = by_status(&app).await;
        if seen.get("completed").copied().unwrap_or(0) > 0 {
            break seen;
        }
        assert!(tokio::time::Instant::now() < deadline, "worker A completed nothing: {seen:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    a.kill().expect("kill -9 worker A");
    a.wait().expect("reap worker A");
    let active = seen.get("dispatched").copied().unwrap_or(0) + seen.get("running").copied().unwrap_or(0);
    assert!(active > 1, "worker A held a batch when killed: {seen:?}");

    let mut b = worker_process(&app, 0);
    for (team_id, key, start, ids) in &jobs {
        let mut costs = 0;
        for id in ids {
            let job = wait_final(&app, key, id).await;
            assert_eq!(job["status"], "completed", "{job}");
            costs += job["cost_credits"].as_i64().expect("cost");
        }
        let team_events = app.state.store.load_stream("TeamCredits", team_id, 0).await.expect("team events");
        for id in ids {
            let deducted = team_events.iter().filter(|e| e.event_type == "CreditsDeducted" && e.payload["reservation_id"] == id.as_str()).count();
            assert_eq!(deducted, 1, "job {id} charged once");
            let events = app.state.store.load_stream("GenerationJob", id, 0).await.expect("job events");
            let endings = events.iter().filter(|e| matches!(e.event_type.as_str(), "JobCompleted" | "JobFailed" | "JobCancelled")).count();
            assert_eq!(endings, 1, "job {id} ended once");
        }
        let (_, balance) = get(&app, key, "/api/credits/balance").await;
        assert_eq!((balance["available"].as_i64(), balance["reserved"].as_i64()), (Some(start - costs), Some(0)));
        let (_, concurrency) = get(&app, key, "/api/jobs/concurrency").await;
        assert_eq!((concurrency["running"].as_i64(), concurrency["queued"].as_i64()), (Some(0), Some(0)), "nothing stuck");
    }
    let _ = std::process::Command::new("kill").args(["-TERM", &b.id().to_string()]).status();
    b.wait().expect("worker B stops");

    let url = app.db.url.clone();
    let audit = crate::rebuild::kiln(&url, &["audit", "verify"]);
    assert!(audit.status.success(), "audit verify: {}{}", String::from_utf8_lossy(&audit.stdout), String::from_utf8_lossy(&audit.stderr));
    app.state.projector.catch_up_to_head(Duration::from_secs(30)).await.expect("projector");
    let rebuild = crate::rebuild::kiln(&url, &["projections", "rebuild", "--verify"]);
    assert!(rebuild.status.success(), "rebuild --verify: {}{}", String::from_utf8_lossy(&rebuild.stdout), String::from_utf8_lossy(&rebuild.stderr));
}
