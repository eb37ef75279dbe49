//! An ordinary day on PostgreSQL, as issue #27 tells it: several teams (Basic, Pro,
//! Enterprise), two `kiln worker` processes, generations submitted through the API while
//! they run, some cancelled, Stripe top-ups, a subscription that expires, and a `kill -9`
//! of one worker mid-run (the other finishes). Afterwards every job has ended once and
//! been charged or refunded once, nothing stays reserved, the audit holds and
//! `kiln projections rebuild --verify` finds every read model equal to the log's fold.

use std::time::Duration;

use application::clock::Clock;
use application::event_store::EventStore;
use reqwest::Method;

use crate::jobs::{generate, get, queued_jobs_of, wait_final, worker_command, QueuedJobs};
use crate::stripe::deliver;
use crate::stripe::fixtures::{checkout_session, configure, event, FakeStripe};
use crate::support::app::TestApp;
use crate::support::db::TestDb;

async fn completed_count(app: &TestApp) -> i64 {
    infrastructure::db_fetch_all!(&app.state.db, (i64,), "SELECT COUNT(*) FROM jobs WHERE kind = 'image_generation' AND status = 'completed'")
        .expect("count")[0]
        .0
}

/// Image jobs that `worker` holds (claimed or at the provider).
async fn held_by(app: &TestApp, worker: &str) -> Vec<String> {
    infrastructure::db_fetch_all!(
        &app.state.db,
        (String,),
        "SELECT job_id FROM jobs WHERE kind = 'image_generation' AND status IN ('dispatched', 'running') AND worker LIKE $1",
        format!("{worker}%")
    )
    .expect("held")
    .into_iter()
    .map(|(id,)| id)
    .collect()
}

fn output(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ordinary_flow_with_a_killed_worker_ends_with_rebuild_verify_and_audit_clean() {
    let stripe_api = FakeStripe::default().start().await;
    let app = TestApp::spawn_with(TestDb::postgres().await, |s| {
        s.jobs.worker_in_serve = false;
        configure(s, &stripe_api);
    })
    .await;
    crate::support::app::seed_catalog(&app).await;
    // The last team's subscription expires mid-run.
    let plans = [("enterprise", 10), ("pro", 6), ("basic", 3), ("basic", 4)];
    let mut teams = queued_jobs_of(&app, &plans, 50_000).await;
    let model_of: Vec<String> = {
        let mut models = Vec::new();
        for QueuedJobs { key, .. } in &teams {
            let (_, page) = get(&app, key, "/api/models").await;
            models.push(page["items"][0]["model_id"].as_str().expect("model").to_string());
        }
        models
    };

    // Two workers; A holds jobs claimed ahead of its slots.
    let mut a = worker_command(&app, 250)
        .env("KILN_JOBS__WORKER_CONCURRENCY", "3")
        .env("KILN_JOBS__WORKER_LOCAL_QUEUE", "6")
        .spawn()
        .expect("start worker A");
    // B starts once A holds jobs: a start of A slowed by a loaded machine could otherwise
    // leave B every job, and A nothing to hold when it is killed.
    let worker_a = format!("worker-{}-", a.id());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while held_by(&app, &worker_a).await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "worker A never claimed a job");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut b = worker_command(&app, 150).env("KILN_JOBS__WORKER_CONCURRENCY", "2").spawn().expect("start worker B");

    // Cancels: the last two jobs of the Enterprise and Pro teams (queued, claimed or
    // running; one that already ended answers 409).
    for team in &teams[..2] {
        for id in team.ids.iter().rev().take(2) {
            let response = app.as_key(&team.key, Method::DELETE, &format!("/api/jobs/{id}")).send().await.expect("cancel");
            assert!(matches!(response.status().as_u16(), 200 | 409), "{}", response.text().await.unwrap_or_default());
        }
    }
    // Stripe top-ups of 500 credits for every team, while the workers run.
    for (n, team) in teams.iter().enumerate() {
        let paid = event(
            &format!("evt_1FlowTopUp{n:02}"),
            "checkout.session.completed",
            app.clock.now().timestamp(),
            checkout_session(&format!("cs_test_flow{n}"), &team.team_id, &format!("cus_Flow{n:02}"), "paid"),
        );
        assert_eq!(deliver(&app, &paid).await["status"], "applied");
    }

    // Kill -9 worker A once something has completed and A holds jobs; more jobs arrive
    // meanwhile.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while completed_count(&app).await == 0 || held_by(&app, &worker_a).await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "worker A never held a job while others completed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.kill().expect("kill -9 worker A");
    a.wait().expect("reap worker A");
    // What A held when it died (a job it finished between the look above and the kill is
    // not among them); B takes these over once A's heartbeat or leases run out.
    let orphaned = held_by(&app, &worker_a).await;
    for (team, model) in teams.iter_mut().zip(&model_of).take(3) {
        for n in 0..2 {
            let (status, accepted) = generate(&app, &team.key, model, &format!("late {n}")).await;
            assert_eq!(status, 202, "{accepted}");
            team.ids.push(accepted["job"]["job_id"].as_str().expect("id").to_string());
        }
    }
    // The last team's subscription expires: its running job finishes, the queued ones
    // are cancelled and refunded, and it can submit no more.
    app.clock.advance(chrono::Duration::seconds(1));
    let expired = teams.last().expect("team");
    let response = app.admin(Method::POST, &format!("/api/admin/teams/{}/subscription-expiry", expired.team_id)).send().await.expect("expire");
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap_or_default());
    let (status, problem) = generate(&app, &expired.key, &model_of[3], "after expiry").await;
    assert_eq!((status, problem["type"].as_str()), (403, Some("/problems/plan-does-not-allow-jobs")));

    // Worker B finishes everything, A's claims included.
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    for team in &teams {
        let mut costs = 0;
        let mut jobs = Vec::new();
        for id in &team.ids {
            jobs.push((id, wait_final(&app, &team.key, id).await));
        }
        let credits = app.state.store.load_stream("TeamCredits", &team.team_id, 0).await.expect("team events");
        for (id, job) in jobs {
            let status = job["status"].as_str().expect("status").to_string();
            let events = app.state.store.load_stream("GenerationJob", id, 0).await.expect("job events");
            let endings = events.iter().filter(|e| matches!(e.event_type.as_str(), "JobCompleted" | "JobFailed" | "JobCancelled")).count();
            assert_eq!(endings, 1, "job {id} ended once");
            let of = |kind: &str| credits.iter().filter(|e| e.event_type == kind && e.payload["reservation_id"] == id.as_str()).count();
            let charged = if status == "completed" { (1, 0) } else { (0, 1) };
            assert_eq!((of("CreditsDeducted"), of("CreditsRefunded")), charged, "job {id} ({status}) charged or refunded once");
            if status == "completed" {
                costs += job["cost_credits"].as_i64().expect("cost");
            }
            *statuses.entry(status).or_default() += 1;
        }
        let (_, balance) = get(&app, &team.key, "/api/credits/balance").await;
        assert_eq!(
            (balance["available"].as_i64(), balance["reserved"].as_i64()),
            (Some(team.start + 500 - costs), Some(0)),
            "team {}: {balance}",
            team.team_id
        );
        let (_, concurrency) = get(&app, &team.key, "/api/jobs/concurrency").await;
        assert_eq!((concurrency["running"].as_i64(), concurrency["queued"].as_i64()), (Some(0), Some(0)), "nothing stuck");
    }
    // What A held when killed ended once (above), taken over by B unless cancelled.
    for id in &orphaned {
        let events = app.state.store.load_stream("GenerationJob", id, 0).await.expect("job events");
        let workers: Vec<&str> = events.iter().filter(|e| e.event_type == "JobDispatched").filter_map(|e| e.payload["worker"].as_str()).collect();
        assert!(workers[0].starts_with(&worker_a), "{id}: {workers:?}");
        let cancelled = events.iter().any(|e| e.event_type == "JobCancelled");
        if !cancelled {
            assert!(workers.iter().any(|w| !w.starts_with(&worker_a)), "{id} finished by another worker: {workers:?}");
        }
    }
    assert!(statuses.get("completed").copied().unwrap_or(0) > 0 && statuses.get("cancelled").copied().unwrap_or(0) > 0, "{statuses:?}");
    let _ = std::process::Command::new("kill").args(["-TERM", &b.id().to_string()]).status();
    b.wait().expect("worker B stops");

    let url = app.db.url.clone();
    let audit = crate::rebuild::kiln(&url, &["audit", "verify"]);
    assert!(audit.status.success(), "audit verify: {}", output(&audit));
    app.state.projector.catch_up_to_head(Duration::from_secs(30)).await.expect("projector");
    let rebuild = crate::rebuild::kiln(&url, &["projections", "rebuild", "--verify"]);
    assert!(rebuild.status.success(), "rebuild --verify: {}", output(&rebuild));
}
