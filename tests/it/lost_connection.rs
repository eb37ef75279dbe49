//! A lost database connection abandons no job (issue 35), on the real PostgreSQL: the
//! connections are really terminated by the server (`pg_terminate_backend`), under load
//! and at each step of a job's life; a job whose worker lets it go while alive is taken
//! back once its lease lapses, and the attempt it was taken from records nothing more.
//!
//! Each test ends on the same checks: every job ended once, its reservation deducted or
//! refunded once, nothing reserved, no plan slot taken, `audit verify` clean.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use application::clock::Clock;
use application::event_store::EventStore;
use application::jobs::worker::Worker;
use domain::jobs::JobError;
use domain::JobId;
use reqwest::Method;
use serde_json::{json, Value};

use crate::jobs::{get, ready_model, team, wait_final, worker_command};
use crate::support::app::TestApp;
use crate::support::db::TestDb;

// ---------------------------------------------------------------- faults

/// Installs a trigger that terminates the backend appending an event of a planned type:
/// the append's connection is lost mid-transaction, as a server restart or a failover
/// loses it. Nothing is planned yet.
/// A point is an event type (its insert into `events`) or `jobs:{status}` (the inline
/// `jobs` projection writing that status: the loss then meets a projection's statement).
async fn install_faults(app: &TestApp) {
    for statement in [
        "CREATE SEQUENCE chaos_fired",
        "CREATE TABLE chaos_plan (point text PRIMARY KEY, kill_until bigint NOT NULL)",
        "CREATE FUNCTION chaos_kill() RETURNS trigger LANGUAGE plpgsql AS $$ \
         DECLARE until bigint; \
         BEGIN \
            SELECT kill_until INTO until FROM chaos_plan WHERE point = TG_ARGV[0] || (to_jsonb(NEW) ->> TG_ARGV[1]); \
            IF until IS NOT NULL AND (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM chaos_fired) < until THEN \
                PERFORM nextval('chaos_fired'); \
                PERFORM pg_terminate_backend(pg_backend_pid()); \
            END IF; \
            RETURN NEW; \
         END $$",
        "CREATE TRIGGER chaos AFTER INSERT ON events FOR EACH ROW EXECUTE FUNCTION chaos_kill('', 'event_type')",
        "CREATE TRIGGER chaos AFTER UPDATE OF status ON jobs FOR EACH ROW EXECUTE FUNCTION chaos_kill('jobs:', 'status')",
    ] {
        infrastructure::db_execute!(&app.state.db, statement).expect("install the fault");
    }
}

/// Plans the loss of the connection of the next `times` appends that reach `point` (after
/// [`install_faults`]).
async fn kill_appends_at(app: &TestApp, point: &str, times: i64) {
    // The sequence is not transactional: the kill rolls back the append, not the count.
    let fired = fired(app).await;
    infrastructure::db_execute!(
        &app.state.db,
        "INSERT INTO chaos_plan (point, kill_until) VALUES ($1, $2) \
         ON CONFLICT (point) DO UPDATE SET kill_until = excluded.kill_until",
        point,
        fired + times
    )
    .expect("plan the fault");
}

/// How many appends the faults have killed.
async fn fired(app: &TestApp) -> i64 {
    let row = infrastructure::db_fetch_optional!(&app.state.db, (i64, bool), "SELECT last_value, is_called FROM chaos_fired")
        .expect("read the fault count")
        .expect("one row");
    if row.1 { row.0 } else { 0 }
}

/// Terminates every connection to the test's database but the caller's: what a
/// PostgreSQL restart, a pooler restart or a failover does to them. Returns how many.
async fn terminate_all_backends(admin: &sqlx::PgPool, database: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid()) killed",
    )
    .bind(database)
    .fetch_one(admin)
    .await
    .expect("terminate backends")
}

// ---------------------------------------------------------------- checks

/// Every job of `jobs` (team → job ids) ended once, its reservation ended once and the
/// way its ending says; nothing is reserved, no plan slot is taken, the audit is clean.
pub(crate) async fn assert_each_ended_once(app: &TestApp, jobs: &HashMap<String, (String, Vec<String>)>) {
    for (team_id, (key, ids)) in jobs {
        let mut ended = Vec::new();
        for id in ids {
            ended.push(wait_final(app, key, id).await);
        }
        // Read once every job has ended: each ending's settlement is in it.
        let team_events = app.state.store.load_stream("TeamCredits", team_id, 0).await.expect("team events");
        for (id, job) in ids.iter().zip(ended) {
            let events = app.state.store.load_stream("GenerationJob", id, 0).await.expect("job events");
            let endings = events.iter().filter(|e| matches!(e.event_type.as_str(), "JobCompleted" | "JobFailed" | "JobCancelled")).count();
            assert_eq!(endings, 1, "job {id} ended once: {job}");
            let settled = |kind: &str| team_events.iter().filter(|e| e.event_type == kind && e.payload["reservation_id"] == id.as_str()).count();
            let (deducted, refunded) = (settled("CreditsDeducted"), settled("CreditsRefunded"));
            let expected = if job["status"] == "completed" { (1, 0) } else { (0, 1) };
            assert_eq!((deducted, refunded), expected, "job {id} ({}) charged or refunded once", job["status"]);
        }
        let (_, balance) = get(app, key, "/api/credits/balance").await;
        assert_eq!(balance["reserved"].as_i64(), Some(0), "no reservation left open: {balance}");
        let (_, concurrency) = get(app, key, "/api/jobs/concurrency").await;
        assert_eq!(concurrency["running"].as_i64(), Some(0), "no plan slot left taken: {concurrency}");
    }
    let report = projections::audit::verify(&app.state.db, None).await.expect("audit verify");
    assert!(report.ok(), "audit verify: {:#?}", report.violations);
}

/// A request that a lost connection may answer with 503 + Retry-After (never a 500): sent
/// again, with the same Idempotency-Key where it has one, until it is answered otherwise.
/// Returns the answer and how many 503s came first.
pub(crate) async fn until_served(request: impl Fn() -> reqwest::RequestBuilder) -> (u16, Value, usize) {
    let mut unavailable = 0;
    loop {
        let response = request().send().await.expect("request");
        let status = response.status().as_u16();
        let retry_after = response.headers().contains_key("retry-after");
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert!(status < 500 || status == 503, "a lost connection answered {status}: {body}");
        if status != 503 {
            return (status, body, unavailable);
        }
        assert!(retry_after, "a 503 says when to come back: {body}");
        assert_eq!(body["type"], "/problems/database-unavailable", "{body}");
        unavailable += 1;
        assert!(unavailable < 200, "the database never came back: {body}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// `count` Pro teams with a million credits and a ready model each: (team id, key, model id),
/// the load of the fault tests.
pub(crate) async fn pro_teams_with_models(app: &TestApp, count: usize) -> Vec<(String, String, String)> {
    let mut teams = Vec::new();
    for _ in 0..count {
        let (team_id, key) = team(app, "pro", 1_000_000).await;
        let model_id = ready_model(app, &key).await;
        teams.push((team_id, key, model_id));
    }
    teams
}

pub(crate) async fn submit(app: &TestApp, key: &str, model_id: &str, prompt: &str) -> String {
    let idempotency_key = format!("submit-{prompt}");
    let request = || {
        app.as_key(key, Method::POST, "/api/generate")
            .header("Idempotency-Key", &idempotency_key)
            .json(&json!({"model_id": model_id, "prompt": prompt, "resolution": "512x512"}))
    };
    let (status, accepted, _) = until_served(request).await;
    // 200: a repeat found the job accepted (the first try committed before its
    // connection was lost, or its answer was).
    assert!(matches!(status, 200 | 202), "{status}: {accepted}");
    accepted["job"]["job_id"].as_str().expect("job id").to_string()
}

// ---------------------------------------------------------------- at each step

/// The connection of each step's append is lost once: the claim, the completion, the
/// failure's refund (a worker's steps: the worker keeps the job and records the step
/// once the database answers) and the cancel's refund (a request: 503, then served).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_lost_at_each_step_of_a_job_ends_it_once() {
    let app = TestApp::spawn_with(TestDb::postgres().await, |s| {
        s.provider.local_latency_ms = 300;
        s.provider.local_fail_prompts_containing = Some("refused-by-provider".into());
    })
    .await;
    crate::support::app::seed_catalog(&app).await;
    let (team_id, key) = team(&app, "pro", 100_000).await;
    let model_id = ready_model(&app, &key).await;
    install_faults(&app).await;
    let mut ids = Vec::new();

    for (point, prompt, ending) in [
        ("JobDispatched", "lost claim", "completed"),
        ("JobCompleted", "lost completion", "completed"),
        ("jobs:completed", "lost in the projection", "completed"),
        ("JobFailed", "refused-by-provider", "failed"),
    ] {
        let before = fired(&app).await;
        kill_appends_at(&app, point, 1).await;
        let job_id = submit(&app, &key, &model_id, prompt).await;
        let job = wait_final(&app, &key, &job_id).await;
        assert_eq!(job["status"], ending, "{point}: {job}");
        assert_eq!(fired(&app).await, before + 1, "the append reaching {point} lost its connection once");
        ids.push(job_id);
    }

    // A cancel whose append loses its connection answers 503, and is served when sent again.
    let job_id = submit(&app, &key, &model_id, "lost cancel").await;
    crate::fal::wait_job(&app, &key, &job_id, "a claim", |j| j["status"] != "queued").await;
    let before = fired(&app).await;
    kill_appends_at(&app, "JobCancelled", 1).await;
    let (status, cancelled, unavailable) = until_served(|| app.as_key(&key, Method::DELETE, &format!("/api/jobs/{job_id}"))).await;
    assert_eq!((status, unavailable), (200, 1), "{cancelled}");
    assert_eq!(fired(&app).await, before + 1);
    assert_eq!(wait_final(&app, &key, &job_id).await["status"], "cancelled");
    ids.push(job_id);

    assert_each_ended_once(&app, &HashMap::from([(team_id, (key, ids))])).await;
}

/// On fal, the step between the provider's acceptance and its record: the worker keeps
/// the request id it was given and records it once the database answers, so the request
/// is sent to fal once and its webhook finds the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_lost_while_recording_the_provider_request_sends_nothing_twice() {
    let fake = crate::fal::fake::FakeFal::default();
    let app = crate::fal::spawn(&fake, 300).await;
    let (team_id, key) = crate::fal::pro_team(&app, 10_000).await;
    let (model_id, _) = crate::fal::fal_model(&app, &fake, &key).await;
    let submits_before = fake.submits().len();
    install_faults(&app).await;

    let before = fired(&app).await;
    kill_appends_at(&app, "JobProgressed", 1).await;
    let job_id = submit(&app, &key, &model_id, "lost request id").await;
    let requests = crate::fal::complete_every_request(&app, &fake, &key, &job_id).await;
    assert_eq!(fired(&app).await, before + 1, "recording the request lost its connection once");
    assert_eq!(requests.len(), 1, "one request recorded");
    assert_eq!(fake.submits().len(), submits_before + 1, "one request sent to fal: {:?}", fake.submits());
    assert_eq!(crate::fal::job(&app, &key, &job_id).await["status"], "completed");
    assert_each_ended_once(&app, &HashMap::from([(team_id, (key, vec![job_id]))])).await;
}

// ---------------------------------------------------------------- under load

/// Six clients submit (with Idempotency-Keys) and cancel while two `kiln worker`
/// processes run the jobs; five times, every connection Kiln holds is terminated.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_connection_lost_repeatedly_under_load_abandons_no_job() {
    let app = TestApp::spawn_with(TestDb::postgres().await, |s| s.jobs.worker_in_serve = false).await;
    crate::support::app::seed_catalog(&app).await;
    let spawn_worker = || {
        worker_command(&app, 150)
            .env("KILN_JOBS__LEASE_SECS", "2")
            .env("KILN_JOBS__WORKER_CONCURRENCY", "4")
            .spawn()
            .expect("start kiln worker")
    };
    let mut workers = [spawn_worker(), spawn_worker()];
    let teams = pro_teams_with_models(&app, 3).await;

    let admin = sqlx::PgPool::connect(&crate::support::db::admin_url()).await.expect("admin connection");
    let database = app.db.name().expect("a PostgreSQL database").to_string();
    let killed = Arc::new(AtomicUsize::new(0));
    let chaos = {
        let killed = killed.clone();
        tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(1_000)).await;
                killed.fetch_add(terminate_all_backends(&admin, &database).await as usize, Ordering::Relaxed);
            }
        })
    };
    let app = Arc::new(app);
    let mut clients = Vec::new();
    for client in 0..6 {
        let (app, (team_id, key, model_id)) = (app.clone(), teams[client % teams.len()].clone());
        clients.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for n in 0..15 {
                let job_id = submit(&app, &key, &model_id, &format!("client {client} job {n}")).await;
                if n % 5 == 4 {
                    let path = format!("/api/jobs/{job_id}");
                    let (status, body, _) = until_served(|| app.as_key(&key, Method::DELETE, &path)).await;
                    assert!(matches!(status, 200 | 409), "cancel: {status} {body}");
                }
                ids.push(job_id);
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            (team_id, key, ids)
        }));
    }
    let mut jobs: HashMap<String, (String, Vec<String>)> = HashMap::new();
    for client in clients {
        let (team_id, key, ids) = client.await.expect("client");
        jobs.entry(team_id).or_insert_with(|| (key, Vec::new())).1.extend(ids);
    }
    chaos.await.expect("chaos");
    assert!(killed.load(Ordering::Relaxed) >= 5, "connections were terminated");

    assert_each_ended_once(&app, &jobs).await;
    for worker in &mut workers {
        let _ = std::process::Command::new("kill").args(["-TERM", &worker.id().to_string()]).status();
        worker.wait().expect("worker stops");
    }
}

// ---------------------------------------------------------------- leases

fn job_id(id: &str) -> JobId {
    id.parse().expect("job id")
}

/// A job claimed by a worker that lives (it beats its heart) but no longer works on it:
/// once the claim's lease lapses another worker takes it back and runs it; the attempt
/// it was taken from can record nothing afterwards. A worker that renews its lease keeps
/// its job however long it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_lapsed_lease_is_taken_back_from_a_live_worker_and_its_attempt_is_fenced() {
    lapsed_lease_is_taken_back(TestDb::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_a_lapsed_lease_is_taken_back_from_a_live_worker_and_its_attempt_is_fenced() {
    lapsed_lease_is_taken_back(TestDb::sqlite().await).await;
}

async fn lapsed_lease_is_taken_back(db: TestDb) {
    let app = TestApp::spawn_with(db, |s| {
        s.jobs.worker_in_serve = false;
        s.jobs.retry_backoff_base_ms = 1_000;
    })
    .await;
    crate::support::app::seed_catalog(&app).await;
    let (team_id, key, ids) = {
        let queued = crate::jobs::queued_jobs(&app, 1, 100_000, 1).await.remove(0);
        (queued.team_id, queued.key, queued.ids)
    };
    let id = job_id(&ids[0]);
    let jobs = &app.state.jobs;
    let lease = Duration::from_secs(app.settings.jobs.lease_secs);
    let b: Worker = app.state.worker(&app.settings.jobs, "worker-b".into());

    // Worker A claims the job, lives on, and never works on it.
    let app = &app;
    let alive = |worker: &'static str| async move { app.state.job_index.heartbeat(worker, app.clock.now()).await.expect("heartbeat") };
    assert_eq!(jobs.dispatch_many(&[(id, None)], "local", "worker-a").await.expect("claim").len(), 1);
    alive("worker-a").await;
    b.maintain().await.expect("upkeep");
    assert_eq!(jobs.job(id).await.expect("job").attempt, 1, "within its claim's lease the job stays A's");

    app.clock.advance(chrono::Duration::from_std(lease).expect("lease") + chrono::Duration::seconds(1));
    alive("worker-a").await;
    b.maintain().await.expect("upkeep");
    let job = jobs.job(id).await.expect("job");
    assert_eq!(job.status.map(|s| s.as_str()), Some("queued"), "taken back from the live worker A once its lease lapsed");

    // A's attempt records nothing now, nor once the job is claimed again (by C, who
    // also lets it go).
    let stale = |outcome: Result<_, application::jobs::JobsError>| match outcome {
        Err(application::jobs::JobsError::Job(JobError::NotInProgress(_) | JobError::StaleAttempt { .. })) => {}
        other => panic!("attempt 1 recorded something after it was taken back: {other:?}"),
    };
    stale(jobs.complete(id, Some(1), Vec::new()).await.map(drop));
    app.clock.advance(chrono::Duration::seconds(2));
    assert_eq!(jobs.dispatch_many(&[(id, None)], "local", "worker-c").await.expect("claim").len(), 1);
    alive("worker-c").await;
    stale(jobs.complete(id, Some(1), Vec::new()).await.map(drop));
    stale(jobs.fail(id, Some(1), "late").await.map(drop));
    stale(jobs.retry_later(id, Some(1), "late", app.clock.now()).await);
    stale(jobs.progress(id, Some(1), Some("late-request".into()), None, Vec::new(), false).await);
    assert_eq!(jobs.job(id).await.expect("job").attempt, 2);

    // C lets go too; B takes the job back and, claiming it, runs it to its end while its
    // own lease is renewed — however far the clock moves meanwhile.
    app.clock.advance(chrono::Duration::from_std(lease).expect("lease") + chrono::Duration::seconds(1));
    alive("worker-c").await;
    b.maintain().await.expect("upkeep");
    app.clock.advance(chrono::Duration::seconds(2));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(b.clone().run(stopped));
    let job = wait_final(&app, &key, &ids[0]).await;
    assert_eq!((job["status"].as_str(), job["attempt"].as_i64()), (Some("completed"), Some(3)), "{job}");
    let _ = stop.send(true);
    running.await.expect("worker B stops");

    // Renewing writes one lease per held job; letting go of every job drops them.
    let index = &app.state.job_index;
    let leases = || async {
        infrastructure::db_fetch_all!(&app.state.db, (String, String, i32), "SELECT job_id, worker_id, attempt FROM job_leases WHERE worker_id = 'worker-z'")
            .expect("leases")
    };
    let other = JobId::new(uuid::Uuid::from_u128(42));
    index.renew_leases("worker-z", &[(id, 3), (other, 1)], app.clock.now()).await.expect("renew");
    let mut held = leases().await;
    held.sort();
    let mut expected = vec![(id.to_string(), "worker-z".to_string(), 3), (other.to_string(), "worker-z".to_string(), 1)];
    expected.sort();
    assert_eq!(held, expected);
    index.renew_leases("worker-z", &[(other, 1)], app.clock.now()).await.expect("renew");
    assert_eq!(leases().await, vec![(other.to_string(), "worker-z".to_string(), 1)]);
    index.renew_leases("worker-z", &[], app.clock.now()).await.expect("renew");
    assert_eq!(leases().await, Vec::new());

    assert_each_ended_once(app, &HashMap::from([(team_id, (key, ids))])).await;
}

/// A worker renewing its lease keeps a job that runs longer than the lease: another
/// worker's upkeep leaves it alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_renewed_lease_keeps_a_long_job_with_its_worker() {
    let app = TestApp::spawn_with(TestDb::postgres().await, |s| {
        s.jobs.worker_in_serve = false;
        s.jobs.heartbeat_interval_ms = 20;
        s.provider.local_latency_ms = 1_500;
    })
    .await;
    crate::support::app::seed_catalog(&app).await;
    let queued = crate::jobs::queued_jobs(&app, 1, 100_000, 1).await.remove(0);
    let id = job_id(&queued.ids[0]);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(app.state.worker(&app.settings.jobs, "worker-b".into()).run(stopped));
    crate::fal::wait_job(&app, &queued.key, &queued.ids[0], "a claim", |j| j["status"] != "queued").await;

    // Past the claim's lease: without a renewal the job would be taken back now.
    app.clock.advance(chrono::Duration::seconds(app.settings.jobs.lease_secs as i64 + 1));
    let now = app.clock.now();
    // Both renewed on the moved clock: the lease, and worker B's heartbeat (sent just
    // before the lease in B's loop: the clock may move between the two, and a heartbeat
    // from before the move says B was lost).
    let renewed = || async {
        let lease = infrastructure::db_fetch_optional!(&app.state.db, (chrono::DateTime<chrono::Utc>,), "SELECT expires_at FROM job_leases WHERE job_id = $1", queued.ids[0].as_str())
            .expect("lease")
            .is_some_and(|(expires_at,)| expires_at > now);
        let beat = infrastructure::db_fetch_optional!(&app.state.db, (chrono::DateTime<chrono::Utc>,), "SELECT heartbeat_at FROM workers WHERE worker_id = 'worker-b'")
            .expect("heartbeat")
            .is_some_and(|(at,)| at >= now);
        lease && beat
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !renewed().await {
        assert!(tokio::time::Instant::now() < deadline, "worker B never renewed its lease and heartbeat");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let c: Worker = app.state.worker(&app.settings.jobs, "worker-c".into());
    app.state.job_index.heartbeat("worker-c", now).await.expect("heartbeat");
    c.maintain().await.expect("upkeep");
    let job = app.state.jobs.job(id).await.expect("job");
    // Still its first attempt, not handed back to the queue (it may be running by now, or
    // even done, on a loaded machine).
    let status = job.status.map(|s| s.as_str());
    assert!(job.attempt == 1 && matches!(status, Some("dispatched" | "running" | "completed")), "the job stays with the worker renewing its lease: {status:?}, attempt {}", job.attempt);

    let job = wait_final(&app, &queued.key, &queued.ids[0]).await;
    assert_eq!((job["status"].as_str(), job["attempt"].as_i64()), (Some("completed"), Some(1)), "{job}");
    let _ = stop.send(true);
    running.await.expect("worker B stops");
}

// ---------------------------------------------------------------- the pool

/// Pooled connections that reach a server which no longer takes writes (as after a
/// failover: a demoted primary) are dropped before use once the first write met one:
/// at most that write answers 503, every other write goes through a fresh connection,
/// and no read-only connection is left in the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pooled_connections_on_a_read_only_server_are_dropped_before_use() {
    let app = TestApp::spawn_with(TestDb::postgres().await, |s| s.jobs.worker_in_serve = false).await;
    let team = app.create_team("Read-only", "pro").await;
    let infrastructure::db::Database::Postgres(pool) = &app.state.db else { unreachable!("a PostgreSQL test") };
    // A few connections open and idle, then every idle one answers as a demoted primary
    // would.
    let mut opened = Vec::new();
    for _ in 0..4 {
        opened.push(pool.acquire().await.expect("a connection"));
    }
    drop(opened);
    // A dropped connection goes back to the pool from a task of its own.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while pool.num_idle() < 4 {
        assert!(tokio::time::Instant::now() < deadline, "the connections never went back to the pool");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut taken = Vec::new();
    while let Some(mut conn) = pool.try_acquire() {
        sqlx::query("SET default_transaction_read_only = on").execute(&mut *conn).await.expect("make it read-only");
        taken.push(conn);
    }
    assert!(!taken.is_empty(), "the pool holds idle connections");
    drop(taken);

    let mut unavailable = 0;
    for n in 0..5 {
        let (status, body, refused) = until_served(|| {
            app.admin(Method::POST, &format!("/api/admin/teams/{team}/grants")).header("Idempotency-Key", format!("ro-{n}")).json(&json!({"amount": 10}))
        })
        .await;
        assert_eq!(status, 200, "{body}");
        unavailable += refused;
    }
    assert!(unavailable <= 1, "only the write that met the first read-only connection is refused: {unavailable}");
    let mut checked = Vec::new();
    while let Some(mut conn) = pool.try_acquire() {
        let read_only: String = sqlx::query_scalar("SHOW transaction_read_only").fetch_one(&mut *conn).await.expect("show");
        assert_eq!(read_only, "off", "a read-only connection stayed in the pool");
        checked.push(conn);
    }
}
