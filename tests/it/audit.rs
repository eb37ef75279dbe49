//! The auditor: replay as of an instant equals the balance served then; `audit verify`
//! passes a sound store and names an edited, a deleted and a reordered event; the
//! `/api/audit/*` endpoints; CLI exit codes.

use application::clock::Clock;
use chrono::Duration;
use domain::{Credits, JobId, Operation, TeamCreditsCommand, TeamId};
use infrastructure::db::Database;
use projections::audit;
use reqwest::Method;
use serde_json::{json, Value};

use crate::rebuild::kiln;
use crate::support::app::TestApp;
use crate::support::db::TestDb;

async fn body(response: reqwest::Response) -> Value {
    let status = response.status();
    let text = response.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: {text}"))
}

/// Opens a team and records a short history on it: grant, two reservations, a deduction,
/// a refund, an adjustment (TeamOpened is #1; the operator's grant and adjustment each
/// record an `OperatorActed` beside them: 9 events in all).
async fn team_with_history(app: &TestApp, name: &str) -> TeamId {
    let team = app.create_team(name, "pro").await;
    assert_eq!(app.grant(&team, 100, &format!("{name}-g")).await.status(), 200);
    let t: TeamId = team.parse().expect("team id");
    let (a, b) = (JobId::new(uuid::Uuid::now_v7()), JobId::new(uuid::Uuid::now_v7()));
    let credits = &app.state.credits;
    let now = app.clock.now();
    for (job, amount) in [(a, 30), (b, 20)] {
        let reserve = TeamCreditsCommand::ReserveCredits {
            reservation_id: job,
            amount: Credits::parse(amount).expect("positive"),
            operation: Operation::ImageGeneration,
            price_version: 1,
            now,
        };
        credits.execute(t, reserve, &json!({})).await.expect("reserve");
    }
    credits.execute(t, TeamCreditsCommand::DeductCredits { reservation_id: a, now }, &json!({})).await.expect("deduct");
    credits.execute(t, TeamCreditsCommand::RefundCredits { reservation_id: b, now }, &json!({})).await.expect("refund");
    let response = app
        .admin(Method::POST, &format!("/api/admin/teams/{team}/adjustments"))
        .header("Idempotency-Key", format!("{name}-adj"))
        .json(&json!({"amount": -5, "reason": "correction"}))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    t
}

/// Replays at every instant a balance was served and compares.
async fn replay_matches_what_was_served(app: TestApp) {
    let team = app.create_team("Replay", "pro").await;
    let auditor = app.issue_key(&team, "auditor").await;
    let t: TeamId = team.parse().expect("team id");
    let mut served: Vec<(chrono::DateTime<chrono::Utc>, i64, i64)> = Vec::new();
    let mut remember = |view: Value, at| served.push((at, view["available"].as_i64().expect("a"), view["reserved"].as_i64().expect("r")));
    let balance = |app: &TestApp| {
        let request = app.as_key(&auditor, Method::GET, "/api/credits/balance");
        async move { body(request.send().await.expect("request")).await }
    };
    let mut jobs = Vec::new();
    for step in 0..8i64 {
        app.clock.advance(Duration::minutes(10));
        let now = app.clock.now();
        match step % 4 {
            0 => assert_eq!(app.grant(&team, 50 + step, &format!("replay-{step}")).await.status(), 200),
            1 | 2 => {
                let job = JobId::new(uuid::Uuid::now_v7());
                jobs.push(job);
                let reserve = TeamCreditsCommand::ReserveCredits {
                    reservation_id: job,
                    amount: Credits::parse(7 + step).expect("positive"),
                    operation: Operation::ImageGeneration,
                    price_version: 1,
                    now,
                };
                app.state.credits.execute(t, reserve, &json!({})).await.expect("reserve");
            }
            _ => {
                let job = jobs.remove(0);
                app.state.credits.execute(t, TeamCreditsCommand::DeductCredits { reservation_id: job, now }, &json!({})).await.expect("deduct");
            }
        }
        remember(balance(&app).await, now);
    }
    for (at, available, reserved) in &served {
        let report = audit::replay(&app.state.db, &team, Some(*at)).await.expect("replay");
        assert_eq!((report.available, report.reserved), (*available, *reserved), "as of {at}");
        assert!(report.violations.is_empty(), "{:?}", report.violations);
        let query = format!("/api/audit/ledger?as_of={}", at.to_rfc3339().replace('+', "%2B"));
        let view = body(app.as_key(&auditor, Method::GET, &query).send().await.expect("request")).await;
        assert_eq!((view["available"].as_i64(), view["reserved"].as_i64()), (Some(*available), Some(*reserved)), "{view}");
    }
    // Before the first grant: the team exists with nothing.
    let opened = audit::replay(&app.state.db, &team, Some(served[0].0 - Duration::minutes(1))).await.expect("replay");
    assert_eq!((opened.available, opened.reserved, opened.entries.len()), (0, 0, 0));
    // The ledger entries end at the current balance and carry their chain hashes.
    let now = audit::replay(&app.state.db, &team, None).await.expect("replay");
    let last = now.entries.last().expect("entries");
    assert_eq!((last.available_after, last.reserved_after), (served[7].1, served[7].2));
    assert!(now.entries.iter().all(|e| e.hash.as_ref().is_some_and(|h| h.len() == 64)));

    let verify = body(app.as_key(&auditor, Method::GET, "/api/audit/verify").send().await.expect("request")).await;
    assert_eq!(verify["ok"], true, "{verify}");
    let bad = app.as_key(&auditor, Method::GET, "/api/audit/ledger?as_of=yesterday").send().await.expect("request");
    assert_eq!(bad.status(), 422);
    assert_eq!(bad.headers()["content-type"], "application/problem+json");
    assert_eq!(app.get("/api/audit/verify").await.status(), 401);
}

#[tokio::test]
async fn postgres_replay_as_of_equals_the_balance_served_then() {
    replay_matches_what_was_served(TestApp::spawn(TestDb::postgres().await).await).await;
}

#[tokio::test]
async fn sqlite_replay_as_of_equals_the_balance_served_then() {
    replay_matches_what_was_served(TestApp::spawn(TestDb::sqlite().await).await).await;
}

async fn exec(db: &Database, sql: &str) {
    match db {
        Database::Postgres(pool) => sqlx::query(sql).execute(pool).await.map(|_| ()),
        Database::Sqlite { write, .. } => sqlx::query(sql).execute(write).await.map(|_| ()),
    }
    .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

#[track_caller]
fn assert_named(report: &audit::VerifyReport, team: TeamId, sequence: i64, kind: &str) {
    let found = report
        .violations
        .iter()
        .any(|v| v.aggregate_id == team.to_string() && v.sequence == Some(sequence) && v.kind == kind);
    assert!(found, "expected {kind} at {team} #{sequence}: {:#?}", report.violations);
}

/// Three teams, three kinds of tampering by a superuser who disabled the append-only
/// trigger: each is named; an untouched team is not.
#[tokio::test]
async fn postgres_verify_names_an_edited_a_deleted_and_a_reordered_event() {
    let app = TestApp::spawn(TestDb::postgres().await).await;
    let (edited, deleted, reordered, clean) = (
        team_with_history(&app, "Edited").await,
        team_with_history(&app, "Deleted").await,
        team_with_history(&app, "Reordered").await,
        team_with_history(&app, "Clean").await,
    );
    let sound = audit::verify(&app.state.db, None).await.expect("verify");
    assert!(sound.ok(), "{:#?}", sound.violations);
    assert_eq!(sound.teams, 4);
    let url = app.db.url.clone();
    let cli = kiln(&url, &["audit", "verify"]);
    assert_eq!(cli.status.code(), Some(0), "{}{}", String::from_utf8_lossy(&cli.stdout), String::from_utf8_lossy(&cli.stderr));

    let db = &app.state.db;
    exec(db, "ALTER TABLE events DISABLE TRIGGER events_append_only").await;
    // The grant (#2) now says 1000 credits.
    exec(db, &format!("UPDATE events SET payload = jsonb_set(payload, '{{amount}}', '1000') WHERE aggregate_id = '{edited}' AND sequence = 2")).await;
    // The deduction (#5) is gone.
    exec(db, &format!("DELETE FROM events WHERE aggregate_id = '{deleted}' AND sequence = 5")).await;
    // The two reservations (#3, #4) swap places.
    for (from, to) in [(3, 1000), (4, 3), (1000, 4)] {
        exec(db, &format!("UPDATE events SET sequence = {to} WHERE aggregate_id = '{reordered}' AND sequence = {from}")).await;
    }
    exec(db, "ALTER TABLE events ENABLE TRIGGER events_append_only").await;

    let report = audit::verify(&app.state.db, None).await.expect("verify");
    assert_named(&report, edited, 2, "hash-mismatch");
    assert_named(&report, deleted, 5, "event-missing");
    assert_named(&report, deleted, 6, "chain-broken");
    assert_named(&report, reordered, 3, "hash-mismatch");
    assert_named(&report, reordered, 4, "hash-mismatch");
    assert!(report.violations.iter().all(|v| v.aggregate_id != clean.to_string()), "{:#?}", report.violations);

    let cli = kiln(&url, &["audit", "verify"]);
    assert_eq!(cli.status.code(), Some(3));
    let text = String::from_utf8_lossy(&cli.stdout);
    for (team, sequence) in [(edited, 2), (deleted, 5), (reordered, 3)] {
        assert!(text.contains(&format!("{team} #{sequence}")), "{team} #{sequence} named in:\n{text}");
    }
    let json = kiln(&url, &["audit", "verify", "--json"]);
    assert_eq!(json.status.code(), Some(3));
    let parsed: Value = serde_json::from_slice(&json.stdout).expect("json");
    assert!(parsed["violations"].as_array().is_some_and(|v| !v.is_empty()));

    // Team-scoped over HTTP: the edited team's auditor sees its violation, the clean one none.
    let key = app.issue_key(&edited.to_string(), "auditor").await;
    let view = body(app.as_key(&key, Method::GET, "/api/audit/verify").send().await.expect("request")).await;
    assert_eq!(view["ok"], false, "{view}");
    let clean_key = app.issue_key(&clean.to_string(), "member").await;
    let view = body(app.as_key(&clean_key, Method::GET, "/api/audit/verify").send().await.expect("request")).await;
    assert_eq!(view["ok"], true, "{view}");
}

/// A writer that bypasses the aggregate (correctly chained, wrong money): the ledger
/// rules name its events.
#[tokio::test]
async fn verify_names_broken_ledger_rules_in_well_chained_events() {
    use application::event_store::{EventStore, NewEvent, StreamAppend};
    let app = TestApp::spawn(TestDb::sqlite().await).await;
    let team = team_with_history(&app, "Rules").await;
    let now = app.clock.now();
    let event = |e: domain::TeamCreditsEvent| NewEvent {
        event_type: e.name().to_string(),
        event_version: "1".into(),
        payload: serde_json::to_value(&e).expect("json"),
        metadata: json!({}),
    };
    let stranger = JobId::new(uuid::Uuid::now_v7());
    let events = vec![
        event(domain::TeamCreditsEvent::CreditsDeducted { reservation_id: stranger, amount: Credits::parse(5).expect("5"), occurred_at: now }),
        event(domain::TeamCreditsEvent::CreditsExpired {
            grant_id: domain::GrantId::new(uuid::Uuid::now_v7()),
            amount: Credits::parse(1_000).expect("1000"),
            occurred_at: now,
        }),
    ];
    let append = StreamAppend { aggregate_type: "TeamCredits".into(), aggregate_id: team.to_string(), expected_sequence: 9, events, snapshot: None };
    // The inline projection refuses a negative balance, so the bad events go in without it.
    let bare = infrastructure::event_store::SqlEventStore::new(app.state.db.clone());
    bare.append(&[append]).await.expect("append");
    let report = audit::verify(&app.state.db, Some(&team.to_string())).await.expect("verify");
    assert_named(&report, team, 10, "ended-before-begun");
    assert_named(&report, team, 11, "unknown-block");
    assert_named(&report, team, 11, "negative-available");
    assert!(report.violations.iter().all(|v| !v.kind.starts_with("hash") && v.kind != "chain-broken"), "{:#?}", report.violations);
}

#[tokio::test]
async fn sqlite_verify_detects_an_edited_event() {
    let app = TestApp::spawn(TestDb::sqlite().await).await;
    let team = team_with_history(&app, "Lite").await;
    assert!(audit::verify(&app.state.db, None).await.expect("verify").ok());
    exec(&app.state.db, "DROP TRIGGER events_refuse_update").await;
    exec(
        &app.state.db,
        &format!("UPDATE events SET payload = json_set(payload, '$.amount', 1000) WHERE aggregate_id = '{team}' AND sequence = 2"),
    )
    .await;
    let report = audit::verify(&app.state.db, None).await.expect("verify");
    assert_named(&report, team, 2, "hash-mismatch");
}

/// `audit replay` and `audit export` through the binary, and its exit codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_replay_and_export() {
    let app = TestApp::spawn(TestDb::postgres().await).await;
    let team = team_with_history(&app, "Export").await;
    let url = app.db.url.clone();
    let replay = kiln(&url, &["audit", "replay", "--team", &team.to_string(), "--json"]);
    assert_eq!(replay.status.code(), Some(0), "{}", String::from_utf8_lossy(&replay.stderr));
    let report: Value = serde_json::from_slice(&replay.stdout).expect("json");
    assert_eq!((report["available"].as_i64(), report["reserved"].as_i64()), (Some(65), Some(0)), "{report}");
    let human = kiln(&url, &["audit", "replay", "--team", &team.to_string()]);
    assert!(String::from_utf8_lossy(&human.stdout).contains("available 65"));

    let jsonl = kiln(&url, &["audit", "export", "--team", &team.to_string(), "--format", "jsonl"]);
    assert_eq!(jsonl.status.code(), Some(0));
    let lines: Vec<Value> = String::from_utf8_lossy(&jsonl.stdout).lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    let types: Vec<&str> = lines.iter().map(|l| l["entry_type"].as_str().expect("type")).collect();
    // The operator's grant and adjustment each have their `operator` entry (who, why).
    assert_eq!(types, ["granted", "operator", "reserved", "reserved", "deducted", "refunded", "adjusted", "operator"]);
    let csv = kiln(&url, &["audit", "export", "--team", &team.to_string(), "--format", "csv"]);
    let text = String::from_utf8_lossy(&csv.stdout);
    assert!(text.starts_with("team_id,entry_no,"), "{text}");
    assert_eq!(text.lines().count(), 9);
    let future = (app.clock.now() + Duration::days(1)).to_rfc3339();
    let none = kiln(&url, &["audit", "export", "--team", &team.to_string(), "--from", &future]);
    assert_eq!(String::from_utf8_lossy(&none.stdout).lines().count(), 0);

    let missing = kiln(&url, &["audit", "replay", "--team", "0190d6a8-0000-7000-8000-000000000000"]);
    assert_eq!(missing.status.code(), Some(1));
    let bad_time = kiln(&url, &["audit", "replay", "--team", &team.to_string(), "--as-of", "yesterday"]);
    assert_eq!(bad_time.status.code(), Some(2), "clap usage errors exit 2");
}
