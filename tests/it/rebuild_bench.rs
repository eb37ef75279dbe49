//! Measurement, not a test (ignored by default): rebuild and `audit verify` of a large
//! credit log on PostgreSQL. Targets: rebuild ≥ 100,000 events/s; verify of 1,000,000
//! events < 30 s. Run with
//! `KILN_BENCH_EVENTS=1000000 cargo test --release --test it rebuild_bench -- --ignored --nocapture`.
//!
//! Results, with the load they were measured under: BENCHMARKS.md, "Projection rebuild
//! and audit verify".

use std::sync::Arc;
use std::time::Instant;

use application::event_store::{EventStore, NewEvent, StreamAppend};
use chrono::Utc;
use domain::{Allocation, Credits, GrantId, GrantSource, IdempotencyKey, JobId, Operation, Plan, TeamCreditsEvent, TeamId};
use infrastructure::event_store::SqlEventStore;
use projections::rebuild::{self, NoProgress, RebuildOptions};

use crate::support::db::TestDb;

fn new_event(event: TeamCreditsEvent) -> NewEvent {
    NewEvent {
        event_type: event.name().to_string(),
        event_version: "1".into(),
        payload: serde_json::to_value(&event).expect("serializes"),
        metadata: serde_json::json!({}),
    }
}

/// One team's stream: opened, one large grant, then reserve + deduct pairs.
fn team_stream(events_per_team: usize) -> StreamAppend {
    let team = TeamId::new(uuid::Uuid::now_v7());
    let grant = GrantId::new(uuid::Uuid::now_v7());
    let now = Utc::now();
    let mut events = vec![
        new_event(TeamCreditsEvent::TeamOpened { team_id: team, name: "bench".into(), plan: Plan::Pro, occurred_at: now }),
        new_event(TeamCreditsEvent::CreditsGranted {
            grant_id: grant,
            amount: Credits::parse(1_000_000_000).expect("positive"),
            source: GrantSource::Admin,
            expires_at: None,
            key: IdempotencyKey::parse(format!("bench-{team}")).expect("key"),
            occurred_at: now,
        }),
    ];
    while events.len() + 2 <= events_per_team {
        let job = JobId::new(uuid::Uuid::now_v7());
        let amount = Credits::parse(3).expect("positive");
        events.push(new_event(TeamCreditsEvent::CreditsReserved {
            reservation_id: job,
            amount,
            operation: Operation::ImageGeneration,
            price_version: 1,
            allocations: vec![Allocation { grant_id: grant, amount }],
            occurred_at: now,
        }));
        events.push(new_event(TeamCreditsEvent::CreditsDeducted { reservation_id: job, amount, occurred_at: now }));
    }
    StreamAppend { aggregate_type: "TeamCredits".into(), aggregate_id: team.to_string(), expected_sequence: 0, events, snapshot: None }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "measurement: run explicitly with --ignored --nocapture"]
async fn rebuild_bench() {
    let total: usize = std::env::var("KILN_BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let per_team = 1_000;
    let test_db = TestDb::postgres().await;
    let store = SqlEventStore::with_inline_projections(test_db.db.clone(), projections::inline_projections());
    let started = Instant::now();
    let teams = total / per_team;
    let store = Arc::new(store);
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for _ in (worker..teams).step_by(4) {
                store.append(vec![team_stream(per_team)]).await.expect("append");
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer");
    }
    println!("loaded {total} events ({teams} teams) in {:.1} s", started.elapsed().as_secs_f64());

    println!("load average before the measurements: {}", load_average());

    // The bulk pass's result must equal what the projection's own code writes: team_balances
    // is diffed against the live tables the appends wrote inline; credit_history (async, no
    // projector here) is first rebuilt batch by batch with its own code (the baseline),
    // then diffed against that.
    let history = projections::catalog::find("credit_history").expect("projection");
    let per_batch = RebuildOptions { bulk: false, ..RebuildOptions::default() };
    let report = rebuild::rebuild(&store, &history, &per_batch, &NoProgress).await.expect("rebuild");
    println!("baseline, per-batch rebuild credit_history: {} events in {} ms = {} events/s", report.events, report.elapsed_ms, report.events_per_sec);
    for name in ["team_balances", "credit_history"] {
        let info = projections::catalog::find(name).expect("projection");
        let verify = RebuildOptions { verify: true, ..RebuildOptions::default() };
        let report = rebuild::rebuild(&store, &info, &verify, &NoProgress).await.expect("rebuild --verify");
        assert!(report.matches(), "{name}: {:#?}", report.differences);
        println!("rebuild --verify {name}: equal to live; {} events in {} ms = {} events/s", report.events, report.elapsed_ms, report.events_per_sec);
        let report = rebuild::rebuild(&store, &info, &RebuildOptions::default(), &NoProgress).await.expect("rebuild");
        println!("rebuild {name}: {} events in {} ms = {} events/s", report.events, report.elapsed_ms, report.events_per_sec);
    }
    let verify = projections::audit::verify(&test_db.db, None).await.expect("verify");
    assert!(verify.ok(), "{:?}", &verify.violations[..verify.violations.len().min(5)]);
    println!("audit verify: {} team events in {} ms", verify.team_events, verify.elapsed_ms);
    println!("load average after: {}", load_average());
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}
