//! Dispatch: one pick at a time per database (PostgreSQL), each seeing the claims made
//! before it; a worker killed with jobs claimed ahead of its slots and completions in
//! flight loses no job and charges each once, and the ledger, the chain and the
//! projections stay exact afterwards; a job cancelled while it waits in a worker is
//! never sent to the provider.

use std::collections::HashMap;
use std::time::Duration;

use application::event_store::EventStore;
use application::jobs::index::JobIndex;
use infrastructure::db_execute;

use crate::jobs::{get, queued_jobs, statuses, wait_final, worker_process, QueuedJobs};
use crate::support::app::TestApp;
use crate::support::db::TestDb;

/// A second pick waits while the first holds the dispatch turn, and then sees what was
/// claimed under it. Rows are written directly: `pick` reads only these.
#[tokio::test]
async fn postgres_a_pick_waits_for_the_turn_and_sees_the_claim_made_under_it() {
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
            let queued_at = now - chrono::Duration::seconds(100 - n);
            let job_id = crate::jobs::insert_queued_job(db, &team_id, queued_at, queued_at).await;
            team_of.insert(job_id, team);
        }
    }
    let index = std::sync::Arc::new(infrastructure::job_index::SqlJobIndex::new(db.clone()));
    let teams = |jobs: &[application::jobs::index::PickedJob]| {
        let mut teams: Vec<i32> = jobs.iter().map(|job| team_of[&job.job_id.to_string()]).collect();
        teams.sort_unstable();
        teams
    };
    let first = index.pick(now, 2).await.expect("first pick");
    assert_eq!(teams(&first.jobs), [0, 1], "the two least recently served teams, one job each");
    let second = tokio::spawn({
        let index = index.clone();
        async move { index.pick(now, 10).await.expect("second pick") }
    });
    // The second pick waits for the turn (seen from the server, not guessed from time).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let waiting = infrastructure::db_fetch_optional!(
            db,
            (i64,),
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' \
             AND query LIKE '%pg_advisory_xact_lock%'"
        )
        .expect("pg_stat_activity")
        .map_or(0, |(n,)| n);
        if waiting == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the second pick never waited for the turn");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!second.is_finished(), "the second pick ran while the first held the turn");
    // What a claim does to the read model, under the first pick's turn.
    for job in &first.jobs {
        db_execute!(db, "UPDATE jobs SET status = 'dispatched' WHERE job_id = $1", job.job_id.to_string()).expect("claim");
        db_execute!(
            db,
            "UPDATE team_dispatch SET running = running + 1, queued = queued - 1, last_dispatched_at = $2, share_tag = $3 WHERE team_id = $1",
            job.team_id.to_string(),
            now,
            job.share_tag
        )
        .expect("claim slot");
    }
    first.hold.release().await;
    let second = second.await.expect("second pick");
    assert_eq!(teams(&second.jobs), [0, 1, 2, 2, 3, 3], "every team's next job first, none of the claimed ones");
    second.hold.release().await;
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
    let jobs = queued_jobs(&app, 3, 1_000_000, 12).await;
    // Worker A (4 slots and 32 claimed ahead, 300 ms per job) claims the 30 jobs its
    // teams' plans allow in one append and completes some; it is killed while others
    // are at the provider or waiting in it, claimed.
    let mut a = crate::jobs::worker_command(&app, 300)
        .env("KILN_JOBS__WORKER_CONCURRENCY", "4")
        .env("KILN_JOBS__WORKER_LOCAL_QUEUE", "32")
        .spawn()
        .expect("start worker A");
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
    assert!(active > 4, "worker A held more than its slots when killed: {seen:?}");
    // Its first claim took all 30 in one append (jobs whose slots freed later were claimed
    // in further appends).
    let mut claims: HashMap<i64, usize> = HashMap::new();
    for QueuedJobs { ids, .. } in &jobs {
        for id in ids {
            let events = app.state.store.load_stream("GenerationJob", id, 0).await.expect("job events");
            if let Some(claim) = events.iter().find(|e| e.event_type == "JobDispatched") {
                *claims.entry(claim.log_position.commit_order).or_default() += 1;
            }
        }
    }
    assert_eq!(claims.values().max(), Some(&30), "worker A's claims: {claims:?}");

    let mut b = worker_process(&app, 0);
    for QueuedJobs { team_id, key, start, ids } in &jobs {
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

/// A provider whose first request waits until the test lets it go; it records every
/// job it is asked to run.
struct GatedProvider {
    asked: std::sync::Mutex<Vec<domain::JobId>>,
    gate: tokio::sync::Semaphore,
}

#[async_trait::async_trait]
impl application::provider::Provider for GatedProvider {
    fn name(&self) -> &'static str {
        "gated"
    }

    async fn submit(&self, request: application::provider::ProviderRequest) -> Result<application::provider::Submission, application::provider::ProviderError> {
        let first = {
            let mut asked = self.asked.lock().expect("asked");
            asked.push(request.job_id);
            asked.len() == 1
        };
        if first {
            let _ = self.gate.acquire().await.expect("gate").forget();
        }
        Ok(application::provider::Submission::Finished(application::provider::ProviderOutcome::Completed(Vec::new())))
    }

    async fn status(&self, _request_id: &str) -> Result<application::provider::ProviderStatus, application::provider::ProviderError> {
        Ok(application::provider::ProviderStatus::Unknown)
    }

    async fn cancel(&self, _request_id: &str) -> Result<(), application::provider::ProviderError> {
        Ok(())
    }
}

/// A job claimed ahead of a free slot and cancelled while it waits in the worker is
/// never sent to the provider; it is refunded once and the others run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_cancelled_while_it_waits_for_a_slot_is_not_sent_to_the_provider() {
    let app = TestApp::spawn_with(TestDb::postgres().await, |s| s.jobs.worker_in_serve = false).await;
    crate::support::app::seed_catalog(&app).await;
    let QueuedJobs { team_id, key, start, ids } = queued_jobs(&app, 1, 100_000, 3).await.remove(0);

    let provider = std::sync::Arc::new(GatedProvider { asked: Default::default(), gate: tokio::sync::Semaphore::new(0) });
    let mut config = application::jobs::worker::WorkerConfig::new("gated-worker".into());
    config.concurrency = 1;
    config.local_queue = 4;
    config.poll_interval = Duration::from_millis(10);
    let worker = application::jobs::worker::Worker::new(app.state.jobs.clone(), app.state.job_index.clone(), provider.clone(), app.state.objects.clone(), config);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(worker.run(stopped));
    // The first job holds the only slot; the other two wait in the worker, claimed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while provider.asked.lock().expect("asked").is_empty() || statuses(&app, &key, &ids).await.iter().any(|s| s == "queued") {
        assert!(tokio::time::Instant::now() < deadline, "the worker did not claim the jobs");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let first: domain::JobId = provider.asked.lock().expect("asked")[0];
    let waiting: Vec<&String> = ids.iter().filter(|id| **id != first.to_string()).collect();
    let response = app.as_key(&key, reqwest::Method::DELETE, &format!("/api/jobs/{}", waiting[0])).send().await.expect("cancel");
    assert_eq!(response.status().as_u16(), 200, "{}", response.text().await.unwrap_or_default());
    provider.gate.add_permits(1);

    let done: Vec<String> = ids.iter().filter(|id| *id != waiting[0]).cloned().collect();
    let mut costs = 0;
    for id in &done {
        let job = wait_final(&app, &key, id).await;
        assert_eq!(job["status"], "completed", "{job}");
        costs += job["cost_credits"].as_i64().expect("cost");
    }
    let job = wait_final(&app, &key, waiting[0]).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    let _ = stop.send(true);
    running.await.expect("worker stops");
    let asked: Vec<String> = provider.asked.lock().expect("asked").iter().map(ToString::to_string).collect();
    assert_eq!(asked.len(), 2, "only the jobs not cancelled were sent: {asked:?}");
    assert!(!asked.contains(waiting[0]), "the cancelled job was sent to the provider");
    let (_, balance) = get(&app, &key, "/api/credits/balance").await;
    assert_eq!((balance["available"].as_i64(), balance["reserved"].as_i64()), (Some(start - costs), Some(0)), "team {team_id}: refunded once");
}

/// Plan priority when the workers' slots are scarce: two `kiln worker` processes of two
/// slots each (and two claims ahead) serve Enterprise, Pro and Basic teams with deep
/// queues. Each plan's share of the first dispatches matches its weight (10 : 3 : 1 per
/// team, the default) within 0.05, every team's oldest job is dispatched within the
/// bound of `domain::share`, each team's own jobs go in their order, and every job ends
/// once, charged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn saturated_workers_share_slots_by_plan_weight() {
    let app = TestApp::spawn_with(TestDb::postgres().await, |s| s.jobs.worker_in_serve = false).await;
    crate::support::app::seed_catalog(&app).await;
    let plans = [("enterprise", 60), ("enterprise", 60), ("pro", 20), ("pro", 20), ("basic", 10), ("basic", 10)];
    let jobs = crate::jobs::queued_jobs_of(&app, &plans, 1_000_000).await;
    let spawn_worker = || {
        crate::jobs::worker_command(&app, 100)
            .env("KILN_JOBS__WORKER_CONCURRENCY", "2")
            .env("KILN_JOBS__WORKER_LOCAL_QUEUE", "2")
            .spawn()
            .expect("start kiln worker")
    };
    let mut workers = [spawn_worker(), spawn_worker()];
    for QueuedJobs { key, ids, .. } in &jobs {
        for id in ids {
            assert_eq!(wait_final(&app, key, id).await["status"], "completed");
        }
    }
    for worker in &mut workers {
        let _ = std::process::Command::new("kill").args(["-TERM", &worker.id().to_string()]).status();
        worker.wait().expect("worker stops");
    }

    // Claims in commit order (claims are made under the shared dispatch turn).
    let claims: Vec<(String, String)> = infrastructure::db_fetch_all!(
        &app.state.db,
        (String, String),
        "SELECT e.aggregate_id, j.team_id FROM events e JOIN jobs j ON j.job_id = e.aggregate_id \
         WHERE e.event_type = 'JobDispatched' AND j.kind = 'image_generation' ORDER BY e.transaction_id, e.position"
    )
    .expect("claims");
    assert_eq!(claims.len(), plans.iter().map(|(_, n)| n).sum::<usize>(), "every job claimed once");
    let plan_of: HashMap<&str, &str> = jobs.iter().zip(plans).map(|(q, (plan, _))| (q.team_id.as_str(), plan)).collect();
    let weights = domain::share::PlanWeights::default();
    let weight = |plan: &str| weights.weight(plan.parse().expect("plan"));
    let total_weight: u32 = plans.iter().map(|(plan, _)| weight(plan)).sum();

    // The window: as many claims as every team's weight once over, four times (no team
    // runs out of jobs within it: Enterprise 40 of 60, Pro 12 of 20, Basic 4 of 10).
    let window = 4 * total_weight as usize;
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (_, team) in &claims[..window] {
        *seen.entry(plan_of[team.as_str()]).or_default() += 1;
    }
    for plan in ["enterprise", "pro", "basic"] {
        let teams = plans.iter().filter(|(p, _)| *p == plan).count() as f64;
        let entitled = teams * f64::from(weight(plan)) / f64::from(total_weight);
        let share = seen.get(plan).copied().unwrap_or(0) as f64 / window as f64;
        assert!((share - entitled).abs() <= 0.05, "{plan}: share {share:.3} of the first {window} claims, entitled {entitled:.3} ({seen:?})");
    }

    // Bound (`PlanWeights::wait_bound`): before a team's first claim, at most Σ over the
    // other teams of (⌊their weight / its weight⌋ + 1) claims of others.
    for (q, (plan, _)) in jobs.iter().zip(plans) {
        let others = jobs.iter().zip(plans).filter(|(other, _)| other.team_id != q.team_id).map(|(_, (other, _))| other.parse().expect("plan"));
        let bound = weights.wait_bound(plan.parse().expect("plan"), others);
        let first = claims.iter().position(|(_, team)| *team == q.team_id).expect("a claim");
        assert!(first <= bound as usize, "{plan} team's first claim after {first} others, bound {bound}");
        // Its own jobs in their order.
        let order: Vec<&str> = claims.iter().filter(|(_, team)| *team == q.team_id).map(|(job, _)| job.as_str()).collect();
        assert_eq!(order, q.ids.iter().map(String::as_str).collect::<Vec<_>>(), "{plan} team's jobs in order");
    }
    for QueuedJobs { team_id, key, start, ids } in &jobs {
        let (_, balance) = get(&app, key, "/api/credits/balance").await;
        let mut costs = 0;
        for id in ids {
            costs += get(&app, key, &format!("/api/jobs/{id}")).await.1["cost_credits"].as_i64().expect("cost");
        }
        assert_eq!((balance["available"].as_i64(), balance["reserved"].as_i64()), (Some(start - costs), Some(0)), "team {team_id}");
    }
}
