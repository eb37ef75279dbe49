//! Kiln on a Patroni cluster (issue 29): `database.url` names HAProxy's write port of the
//! cluster `scripts/ha-up` runs (support/ha.rs), and the primary changes under load — a
//! switchover asked of Patroni, and a `kill -9` of the primary's postmaster (failover to
//! the synchronous standby). Clients submit and cancel jobs and grant credits (with
//! Idempotency-Keys, sent again on 503 as a client would), two `kiln worker` processes
//! run the jobs, and a reader follows the global log throughout.
//!
//! After the fault: no request got a 500 (a 503 carries Retry-After); writes are served
//! again within Patroni's ttl plus a margin; every job ended once and was charged or
//! refunded once; each acknowledged grant is recorded once; nothing stays reserved; the
//! log read across the fault has no gap and no duplicate; `kiln audit verify` and
//! `kiln projections rebuild --verify` are clean (the projector resumed from its
//! checkpoint).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use application::event_store::{EventStore, LogPosition};
use reqwest::Method;
use serde_json::json;

use crate::jobs::{team, worker_command};
use crate::lost_connection::{assert_each_ended_once, pro_teams_with_models, submit, until_served};
use crate::support::app::TestApp;
use crate::support::db::TestDb;
use crate::support::ha::{Cluster, TTL};
use crate::webhooks::{eventually, Receiver};

/// Service is back this long after the fault at the latest: the leader key's ttl (a
/// failover waits for it at worst) plus HAProxy's checks and the pool's reconnect.
const SERVICE_BACK_WITHIN: Duration = Duration::from_secs(TTL.as_secs() + 10);

enum Fault {
    Switchover,
    KillPrimary,
}

pub(crate) async fn a_patroni_switchover_under_load_loses_and_doubles_nothing() {
    under_load(Fault::Switchover).await;
}

pub(crate) async fn a_killed_primary_under_load_fails_over_losing_and_doubling_nothing() {
    under_load(Fault::KillPrimary).await;
}

/// Every event of the log, read from the start in commit order by a reader that keeps
/// its position across the fault (as the projector does): (type, id, sequence) in the
/// order read.
async fn follow_log(app: Arc<TestApp>, stop: Arc<AtomicBool>) -> Vec<(String, String, i64)> {
    let mut after = LogPosition::START;
    let mut seen = Vec::new();
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        match app.state.store.read_log(after, 500).await {
            Ok(events) => {
                let empty = events.is_empty();
                for event in events {
                    after = event.log_position;
                    seen.push((event.aggregate_type, event.aggregate_id, event.sequence));
                }
                if empty && stopping {
                    return seen;
                }
                if empty {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            Err(error) => {
                assert!(error.is_unavailable(), "reading the log: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn under_load(fault: Fault) {
    let Some(cluster) = Cluster::up() else { return };
    let app = TestApp::spawn_with(TestDb::postgres_on(&cluster.write_url).await, |s| {
        s.jobs.worker_in_serve = false;
        s.webhooks.allow_http = true;
        s.webhooks.allow_private_addresses = true;
        s.webhooks.poll_interval_ms = 50;
        s.webhooks.backoff_min_ms = 200;
    })
    .await;
    // The workers sign webhooks by the wall clock; the app's senders by its clock: one time.
    app.clock.set(chrono::Utc::now());
    crate::support::app::seed_catalog(&app).await;
    let spawn_worker = || {
        worker_command(&app, 100)
            .env("KILN_JOBS__LEASE_SECS", "2")
            .env("KILN_JOBS__WORKER_CONCURRENCY", "4")
            .env("KILN_WEBHOOKS__ALLOW_HTTP", "true")
            .env("KILN_WEBHOOKS__ALLOW_PRIVATE_ADDRESSES", "true")
            .env("KILN_WEBHOOKS__POLL_INTERVAL_MS", "50")
            .env("KILN_WEBHOOKS__BACKOFF_MIN_MS", "200")
            .spawn()
            .expect("start kiln worker")
    };
    let mut workers = [spawn_worker(), spawn_worker()];
    let teams = pro_teams_with_models(&app, 2).await;
    // The first team's webhook endpoint hears its jobs end and its grants, through the fault.
    let receiver = Receiver::start(0).await;
    let hooks_key = app.issue_key(&teams[0].0, "admin").await;
    let created = app
        .as_key(&hooks_key, Method::POST, "/api/webhook-endpoints")
        .json(&json!({"url": receiver.url(), "event_types": ["job.completed", "job.failed", "job.cancelled", "credits.granted"]}))
        .send()
        .await
        .expect("create a webhook endpoint");
    assert_eq!(created.status(), 201);
    let created: serde_json::Value = created.json().await.expect("json");
    receiver.control(json!({"secrets": [created["secret"]]})).await;
    let app = Arc::new(app);
    let stop_reading = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn(follow_log(app.clone(), stop_reading.clone()));

    // Clients: four submitting (every fifth job cancelled), one granting.
    let accepted = Arc::new(AtomicUsize::new(0));
    let unavailable = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for client in 0..4 {
        let (app, accepted, unavailable) = (app.clone(), accepted.clone(), unavailable.clone());
        let (team_id, key, model_id) = teams[client % teams.len()].clone();
        clients.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for n in 0..12 {
                let job_id = submit(&app, &key, &model_id, &format!("client {client} job {n}")).await;
                accepted.fetch_add(1, Ordering::Relaxed);
                if n % 5 == 4 {
                    let path = format!("/api/jobs/{job_id}");
                    let (status, body, refused) = until_served(|| app.as_key(&key, Method::DELETE, &path)).await;
                    unavailable.fetch_add(refused, Ordering::Relaxed);
                    assert!(matches!(status, 200 | 409), "cancel: {status} {body}");
                }
                ids.push(job_id);
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            (team_id, key, ids)
        }));
    }
    let granter = {
        let (app, unavailable) = (app.clone(), unavailable.clone());
        let team_id = teams[0].0.clone();
        tokio::spawn(async move {
            let mut keys = Vec::new();
            for n in 0..20 {
                let key = format!("ha-grant-{n}");
                let (status, body, refused) = until_served(|| {
                    app.admin(Method::POST, &format!("/api/admin/teams/{team_id}/grants")).header("Idempotency-Key", &key).json(&json!({"amount": 7}))
                })
                .await;
                unavailable.fetch_add(refused, Ordering::Relaxed);
                assert_eq!(status, 200, "grant: {body}");
                keys.push(key);
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
            keys
        })
    };

    // The fault, once the load runs.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while accepted.load(Ordering::Relaxed) < 8 {
        assert!(tokio::time::Instant::now() < deadline, "the load never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = tokio::time::Instant::now();
    let old = match fault {
        Fault::Switchover => cluster.switchover().await.0,
        Fault::KillPrimary => cluster.kill_leader_postmaster().await,
    };
    let new = cluster.wait_new_leader(&old, SERVICE_BACK_WITHIN).await;
    // Service is back when a write through Kiln is acknowledged (a fresh grant).
    let probe_team = teams[1].0.clone();
    let (status, body, _) = until_served(|| {
        app.admin(Method::POST, &format!("/api/admin/teams/{probe_team}/grants")).header("Idempotency-Key", "ha-probe").json(&json!({"amount": 1}))
    })
    .await;
    assert_eq!(status, 200, "{body}");
    let back_after = started.elapsed();
    eprintln!("{old} → {new}; writes served again {back_after:?} after the fault");
    assert!(back_after < SERVICE_BACK_WITHIN, "service back after {back_after:?}, bound {SERVICE_BACK_WITHIN:?}");

    let mut jobs: HashMap<String, (String, Vec<String>)> = HashMap::new();
    for client in clients {
        let (team_id, key, ids) = client.await.expect("client");
        jobs.entry(team_id).or_insert_with(|| (key, Vec::new())).1.extend(ids);
    }
    let grant_keys = granter.await.expect("granter");
    eprintln!("503s answered during the fault: {}", unavailable.load(Ordering::Relaxed));

    // Every job ended once, charged or refunded once; nothing reserved; audit clean.
    assert_each_ended_once(&app, &jobs).await;
    // Every acknowledged grant is recorded once.
    let credits = app.state.store.load_stream("TeamCredits", &teams[0].0, 0).await.expect("team events");
    for key in &grant_keys {
        let recorded = credits.iter().filter(|e| e.event_type == "CreditsGranted" && e.payload["key"] == key.as_str()).count();
        assert_eq!(recorded, 1, "grant {key} recorded once");
    }

    // The log read across the fault: each event once, none missed.
    stop_reading.store(true, Ordering::Relaxed);
    let read = reader.await.expect("log reader");
    let distinct: HashSet<&(String, String, i64)> = read.iter().collect();
    assert_eq!(distinct.len(), read.len(), "an event was read twice");
    let stored: Vec<(String, String, i64)> =
        infrastructure::db_fetch_all!(&app.state.db, (String, String, i64), "SELECT aggregate_type, aggregate_id, sequence FROM events").expect("events");
    let stored: HashSet<&(String, String, i64)> = stored.iter().collect();
    let missed: Vec<_> = stored.difference(&distinct).take(5).collect();
    assert!(missed.is_empty(), "the reader missed events: {missed:?}");
    let phantom: Vec<_> = distinct.difference(&stored).take(5).collect();
    assert!(phantom.is_empty(), "the reader saw events that are not stored: {phantom:?}");

    for worker in &mut workers {
        let _ = std::process::Command::new("kill").args(["-TERM", &worker.id().to_string()]).status();
        worker.wait().expect("worker stops");
    }
    // The projector went on from its checkpoint; every read model equals the log's fold.
    app.state.projector.catch_up_to_head(Duration::from_secs(30)).await.expect("projector");
    let url = app.db.url.clone();
    let output = |out: &std::process::Output| format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let audit = crate::rebuild::kiln(&url, &["audit", "verify"]);
    assert!(audit.status.success(), "audit verify: {}", output(&audit));
    let rebuild = crate::rebuild::kiln(&url, &["projections", "rebuild", "--verify"]);
    assert!(rebuild.status.success(), "rebuild --verify: {}", output(&rebuild));

    // Every job of the first team and each of its acknowledged grants was called back:
    // one webhook-id per event (a delivery sent again across the fault keeps its id),
    // each request signed as the reference library verifies.
    let team_jobs: HashSet<String> = jobs[&teams[0].0].1.iter().cloned().collect();
    app.state.webhook_sender.wake();
    let log = eventually("a webhook for every job and grant of the first team", async || {
        let log = receiver.log().await;
        let ids = |kind: &str| log.iter().filter(|d| d["body"]["type"].as_str().is_some_and(|t| t.starts_with(kind))).filter_map(|d| d["id"].as_str()).collect::<HashSet<_>>().len();
        (ids("job.") == team_jobs.len() && ids("credits.granted") >= grant_keys.len()).then_some(log)
    })
    .await;
    let mut events_by_id: HashMap<&str, &serde_json::Value> = HashMap::new();
    let mut calls_by_job: HashMap<&str, HashSet<&str>> = HashMap::new();
    for delivery in &log {
        assert!(!delivery["verified"].as_array().expect("verified").is_empty(), "a delivery the library refused: {delivery}");
        let id = delivery["id"].as_str().expect("webhook-id");
        let first = events_by_id.entry(id).or_insert(&delivery["body"]);
        assert_eq!(*first, &delivery["body"], "webhook-id {id} sent with two bodies");
        if let Some(job_id) = delivery["body"]["data"]["job_id"].as_str() {
            assert!(team_jobs.contains(job_id), "a call for a job not of this team: {job_id}");
            calls_by_job.entry(job_id).or_default().insert(id);
        }
    }
    assert_eq!(calls_by_job.len(), team_jobs.len(), "every job of the team called back");
    assert!(calls_by_job.values().all(|ids| ids.len() == 1), "a job ended in two webhooks: {calls_by_job:?}");
    eprintln!("webhooks: {} requests, {} events", log.len(), events_by_id.len());

    // The next test finds the cluster whole (the old primary back as a replica).
    cluster.wait_healthy(Duration::from_secs(60)).await;
}

/// Reads from the replicas (`database.read_url` = HAProxy's read port): every write
/// answers with a consistency token, and a job list read with it shows the job just
/// submitted, served by the replica (or, if it had not replayed the write in time, the
/// primary); a token the replica cannot reach in time falls back to the primary; a
/// malformed one is a 422.
pub(crate) async fn replica_reads_see_the_clients_own_writes_through_the_consistency_token() {
    let Some(cluster) = Cluster::up() else { return };
    let db = TestDb::postgres_on(&cluster.write_url).await;
    let read_url = cluster.read_url_of(db.name().expect("a PostgreSQL database"));
    let app = TestApp::spawn_with(db, |s| {
        s.database.read_url = Some(read_url);
        s.jobs.worker_in_serve = false;
    })
    .await;
    crate::support::app::seed_catalog(&app).await;
    let (_, key) = team(&app, "pro", 1_000_000).await;
    let (_, page) = crate::jobs::get(&app, &key, "/api/reference-models?limit=1").await;
    let reference = page["items"][0]["id"].as_str().expect("a reference model").to_string();

    for n in 0..10 {
        let response = app
            .as_key(&key, Method::POST, "/api/models")
            .header("Idempotency-Key", format!("replica-{n}"))
            .json(&json!({"name": format!("Model {n}"), "description": "a runner", "reference_model_id": reference}))
            .send()
            .await
            .expect("create a model");
        assert_eq!(response.status(), 202);
        let token = response.headers().get("kiln-consistency-token").expect("a write carries a token").to_str().expect("ascii").to_string();
        let created: serde_json::Value = response.json().await.expect("json");
        let job_id = created["job"]["job_id"].as_str().expect("job id").to_string();
        let listed = app.as_key(&key, Method::GET, "/api/jobs?limit=100").header("Kiln-Consistency-Token", &token).send().await.expect("list");
        assert_eq!(listed.status(), 200);
        let listed: serde_json::Value = listed.json().await.expect("json");
        let ids: Vec<&str> = listed["items"].as_array().expect("items").iter().filter_map(|j| j["job_id"].as_str()).collect();
        assert!(ids.contains(&job_id.as_str()), "read-your-writes: job {job_id} in {ids:?}");
    }
    // A position the replica will not reach in time: the primary answers.
    let far = app.as_key(&key, Method::GET, "/api/jobs").header("Kiln-Consistency-Token", "FFFFFFFF/0").send().await.expect("list");
    assert_eq!(far.status(), 200);
    let malformed = app.as_key(&key, Method::GET, "/api/jobs").header("Kiln-Consistency-Token", "yesterday").send().await.expect("list");
    assert_eq!(malformed.status(), 422);

    let metrics = app.get("/metrics").await.text().await.expect("metrics");
    let reads = |from: &str| -> f64 {
        metrics
            .lines()
            .find(|line| line.starts_with("kiln_reads_total") && line.contains(&format!("from=\"{from}\"")))
            .and_then(|line| line.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    };
    assert!(reads("replica") >= 5.0, "most token reads were served by the replica: {}", reads("replica"));
    assert!(reads("primary") >= 1.0, "the unreachable token fell back to the primary");
}

/// A replica that cannot be reached (nothing listens at `database.read_url`): reads
/// without a token go straight to the replica, so until the replica's probe finds it
/// silent they answer 503 with Retry-After (never 500); then the primary serves them.
/// Runs in the main suite: it needs no cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_replica_leaves_reads_to_the_primary() {
    let app = TestApp::spawn_with(TestDb::postgres().await, |s| {
        s.database.read_url = Some("postgres://postgres@127.0.0.1:9/nowhere".to_string());
        s.database.acquire_timeout_ms = 300;
    })
    .await;
    let (_, key) = team(&app, "pro", 1_000).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let response = app.as_key(&key, Method::GET, "/api/jobs").send().await.expect("list");
        match response.status().as_u16() {
            200 => break,
            503 => assert!(response.headers().contains_key("retry-after"), "a 503 says when to retry"),
            other => panic!("a read while the replica is away answered {other}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "reads never turned to the primary");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, from) = app.state.reads.for_read(None).await;
    assert_eq!(from, infrastructure::replica::ReadFrom::Primary);
    app.shutdown().await.expect("clean shutdown");
}
