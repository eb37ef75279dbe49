//! Outages of what Kiln depends on, under load, on the real services (issue 29): the
//! single PostgreSQL server stopped for 5 s and started again (a private instance, never
//! the suite's shared server). Afterwards: no request got a 500, every job ended once and
//! was charged or refunded once, nothing stays reserved, the audit is clean, and job
//! event streams opened before the outage went on through it to the job's end, each event
//! once. (S3 and fal outages: `storage.rs`, `fal/mod.rs`; a changing primary: `ha.rs`.)

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;

use crate::jobs::worker_command;
use crate::lost_connection::{assert_each_ended_once, pro_teams_with_models, submit, until_served};
use crate::support::app::TestApp;
use crate::support::db::TestDb;
use crate::support::pg_instance::PgInstance;

/// How long the server stays down: longer than a pooled connection's acquire timeout
/// below, so requests meet the outage as 503s, not only as waits.
const OUTAGE: Duration = Duration::from_secs(5);

pub(crate) async fn postgres_stopped_for_five_seconds_under_load_loses_and_doubles_nothing() {
    let Some(server) = PgInstance::start() else { return };
    let app = TestApp::spawn_with(TestDb::postgres_on(&server.admin_url()).await, |s| {
        s.database.acquire_timeout_ms = 1_000;
        s.jobs.worker_in_serve = false;
    })
    .await;
    crate::support::app::seed_catalog(&app).await;
    // Two `kiln worker` processes, on the system clock (a claim whose commit outcome was
    // lost is taken back once its lease lapses).
    let spawn_worker = || {
        // Each job takes 600 ms at the provider: the jobs followed below cannot end
        // before the outage starts.
        worker_command(&app, 600)
            .env("KILN_JOBS__LEASE_SECS", "2")
            .env("KILN_DATABASE__ACQUIRE_TIMEOUT_MS", "1000")
            .spawn()
            .expect("start kiln worker")
    };
    let mut workers = [spawn_worker(), spawn_worker()];
    let teams = pro_teams_with_models(&app, 2).await;
    // Event streams of jobs submitted just before the outage.
    let mut followed = Vec::new();
    for n in 0..2 {
        let (_, key, model_id) = &teams[n];
        let job_id = submit(&app, key, model_id, &format!("followed {n}")).await;
        let response = app.as_key(key, Method::GET, &format!("/api/jobs/{job_id}/events")).send().await.expect("event stream");
        assert_eq!(response.status(), 200);
        followed.push((teams[n].0.clone(), key.clone(), job_id, tokio::spawn(read_event_stream(response))));
    }
    let app = Arc::new(app);
    let (outage_started, outage_seen) = tokio::sync::watch::channel(false);
    let mut clients = Vec::new();
    for client in 0..4 {
        let app = app.clone();
        let mut outage_seen = outage_seen.clone();
        let (team_id, key, model_id) = teams[client % teams.len()].clone();
        clients.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for n in 0..10 {
                if n == 3 {
                    // Half the load before the outage, half during and after it.
                    let _ = outage_seen.wait_for(|started| *started).await;
                }
                let job_id = submit(&app, &key, &model_id, &format!("client {client} job {n}")).await;
                if n % 4 == 3 {
                    let path = format!("/api/jobs/{job_id}");
                    let (status, body, _) = until_served(|| app.as_key(&key, Method::DELETE, &path)).await;
                    assert!(matches!(status, 200 | 409), "cancel: {status} {body}");
                }
                ids.push(job_id);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (team_id, key, ids)
        }));
    }

    tokio::time::sleep(Duration::from_millis(200)).await;
    server.stop();
    let _ = outage_started.send(true);
    // The fault itself is a duration: the server stays down this long.
    tokio::time::sleep(OUTAGE).await;
    let (status, problem) = crate::jobs::get(&app, &teams[0].1, "/api/credits/balance").await;
    assert_eq!((status, problem["type"].as_str()), (503, Some("/problems/database-unavailable")), "{problem}");
    server.start_again();
    let restarted = tokio::time::Instant::now();

    let mut jobs: HashMap<String, (String, Vec<String>)> = HashMap::new();
    for client in clients {
        let (team_id, key, ids) = client.await.expect("client");
        jobs.entry(team_id).or_insert_with(|| (key, Vec::new())).1.extend(ids);
    }
    for (team_id, key, job_id, stream) in followed {
        let (events, ended_at) = tokio::time::timeout(Duration::from_secs(60), stream).await.expect("the stream ends").expect("reader");
        let ids: Vec<i64> = events.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, (1..=ids.len() as i64).collect::<Vec<_>>(), "{job_id}: each event once, in order: {events:?}");
        let last = events.last().map(|(_, name)| name.as_str());
        assert!(matches!(last, Some("completed" | "failed" | "cancelled")), "{job_id}: the stream ends with the job: {events:?}");
        assert!(ended_at > restarted, "{job_id}: the stream was open across the outage");
        jobs.entry(team_id).or_insert_with(|| (key, Vec::new())).1.push(job_id);
    }
    assert_each_ended_once(&app, &jobs).await;
    for worker in &mut workers {
        let _ = std::process::Command::new("kill").args(["-TERM", &worker.id().to_string()]).status();
        worker.wait().expect("worker stops");
    }
}

/// Reads a job's server-sent events to their end: `(id, event name)` of each, and when
/// the stream ended.
async fn read_event_stream(mut response: reqwest::Response) -> (Vec<(i64, String)>, tokio::time::Instant) {
    let mut text = String::new();
    while let Some(chunk) = response.chunk().await.expect("event stream chunk") {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let ended_at = tokio::time::Instant::now();
    let mut events = Vec::new();
    for block in text.split("\n\n") {
        let field = |name: &str| block.lines().find_map(|line| line.strip_prefix(name).map(|v| v.trim().to_string()));
        if let (Some(id), Some(event)) = (field("id:"), field("event:")) {
            events.push((id.parse().expect("numeric id"), event));
        }
    }
    (events, ended_at)
}
