//! The credit ledger through HTTP (and, for money paths that have no public endpoint of
//! their own yet, through `CreditsService`), on real PostgreSQL with a SQLite smoke test.


use application::clock::Clock;
use application::credits::{CreditsError, CreditsService};
use chrono::Duration;
use domain::{Credits, JobId, Operation, ReservationState, TeamCredits, TeamCreditsCommand, TeamCreditsError, TeamId};
use infrastructure::db::Database;
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::app::TestApp;
use crate::support::db::TestDb;

async fn body(response: reqwest::Response) -> Value {
    response.json().await.expect("json body")
}

fn team_id(text: &str) -> TeamId {
    text.parse().expect("team id")
}

async fn balance(app: &TestApp, key: &str) -> Value {
    let response = app.as_key(key, Method::GET, "/api/credits/balance").send().await.expect("request");
    assert_eq!(response.status(), 200);
    body(response).await
}

async fn event_count(db: &Database) -> i64 {
    let sql = "SELECT COUNT(*) FROM events";
    match db {
        Database::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
        Database::Sqlite { read, .. } => sqlx::query_scalar(sql).fetch_one(read).await,
    }
    .expect("count events")
}

fn reserve(job: JobId, amount: i64, now: chrono::DateTime<chrono::Utc>) -> TeamCreditsCommand {
    TeamCreditsCommand::ReserveCredits {
        reservation_id: job,
        amount: Credits::parse(amount).expect("positive"),
        operation: Operation::ImageGeneration,
        price_version: 1,
        now,
    }
}

/// The inline read model must say exactly what the aggregate says.
async fn assert_read_model_matches(app: &TestApp, team: TeamId) {
    let state: TeamCredits = app.state.credits.state(team).await.expect("state");
    let view = kiln::http::credits::load_balance(&app.state, team).await.expect("read").expect("team exists");
    assert_eq!(
        (view.available, view.reserved, view.totals.granted, view.totals.deducted, view.totals.expired, view.totals.adjusted),
        (state.available(), state.reserved(), state.granted_total(), state.deducted_total(), state.expired_total(), state.adjusted_total()),
    );
    for block in state.grants().iter().filter(|b| b.remaining > 0 || b.reserved > 0) {
        let row = view.grants.iter().find(|g| g.grant_id == block.grant_id.to_string()).expect("block in read model");
        assert_eq!((row.remaining, row.reserved, row.deducted, row.expired), (block.remaining, block.reserved, block.deducted, block.expired));
    }
}

async fn operator_flow(app: TestApp) {
    let team = app.create_team("Acme", "pro").await;
    let member = app.issue_key(&team, "member").await;
    assert!(member.starts_with("kiln_"));

    // The same grant delivered three times is granted once.
    for _ in 0..3 {
        let response = app.grant(&team, 500, "grant-1").await;
        assert_eq!(response.status(), 200);
    }
    let view = balance(&app, &member).await;
    assert_eq!((view["available"].as_i64(), view["reserved"].as_i64(), view["plan"].as_str()), (Some(500), Some(0), Some("pro")));
    assert_eq!(view["concurrency_limit"], 3);
    assert_eq!(view["grants"].as_array().map(Vec::len), Some(1));

    // An expiring grant is spent first.
    let expires = (app.clock.now() + Duration::days(30)).to_rfc3339();
    let response = app
        .admin(Method::POST, &format!("/api/admin/teams/{team}/grants"))
        .header("Idempotency-Key", "grant-2")
        .json(&json!({"amount": 50, "expires_at": expires, "source": "plan"}))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let view = balance(&app, &member).await;
    assert_eq!(view["available"], 550);
    assert_eq!(view["grants"][0]["amount"], 50, "soonest-expiring block listed first: {view}");

    // Negative adjustment beyond the balance: 402 with the numbers, nothing recorded.
    let before = event_count(&app.state.db).await;
    let response = app
        .admin(Method::POST, &format!("/api/admin/teams/{team}/adjustments"))
        .header("Idempotency-Key", "adj-1")
        .json(&json!({"amount": -10_000, "reason": "typo"}))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 402);
    let problem = body(response).await;
    assert_eq!((problem["type"].as_str(), problem["available"].as_i64(), problem["requested"].as_i64()), (Some("/problems/insufficient-credits"), Some(550), Some(10_000)));
    assert_eq!(event_count(&app.state.db).await, before);

    let response = app
        .admin(Method::POST, &format!("/api/admin/teams/{team}/adjustments"))
        .header("Idempotency-Key", "adj-2")
        .json(&json!({"amount": -30, "reason": "goodwill reversal"}))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    assert_eq!(balance(&app, &member).await["available"], 520);

    // Plan change (plan changes apply in effective-time order, so time must move).
    app.clock.advance(Duration::seconds(1));
    let response = app
        .admin(Method::PUT, &format!("/api/admin/teams/{team}/plan"))
        .json(&json!({"plan": "basic"}))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    assert_eq!(balance(&app, &member).await["concurrency_limit"], 1);

    assert_read_model_matches(&app, team_id(&team)).await;
    let pricing = body(app.as_key(&member, Method::GET, "/api/credits/pricing").send().await.expect("request")).await;
    assert_eq!(pricing["version"], 1);
    app.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn postgres_operator_flow() {
    operator_flow(TestApp::spawn(TestDb::postgres().await).await).await;
}

#[tokio::test]
async fn sqlite_operator_flow() {
    operator_flow(TestApp::spawn(TestDb::sqlite().await).await).await;
}

#[tokio::test]
async fn keys_are_scoped_roles_enforced_and_revocation_immediate() {
    let app = TestApp::spawn(TestDb::postgres().await).await;
    let (a, b) = (app.create_team("A", "basic").await, app.create_team("B", "basic").await);
    let (admin_a, auditor_a, admin_b) = (app.issue_key(&a, "admin").await, app.issue_key(&a, "auditor").await, app.issue_key(&b, "admin").await);
    app.grant(&a, 100, "a-1").await;
    app.grant(&b, 7, "b-1").await;

    // Each key sees its own team only.
    assert_eq!(balance(&app, &auditor_a).await["available"], 100);
    assert_eq!(balance(&app, &admin_b).await["available"], 7);

    // No key, a made-up key, the operator key on team endpoints: 401.
    let no_key = app.client.get(app.url("/api/credits/balance")).send().await.expect("request");
    assert_eq!(no_key.status(), 401);
    assert_eq!(body(no_key).await["type"], "/problems/unauthorized");
    for bogus in ["kiln_00", "test-operator-key"] {
        assert_eq!(app.as_key(bogus, Method::GET, "/api/credits/balance").send().await.expect("request").status(), 401);
    }
    // Team keys are not operator keys.
    assert_eq!(app.as_key(&admin_a, Method::POST, "/api/admin/teams").json(&json!({"name": "x"})).send().await.expect("request").status(), 401);

    // An auditor reads but cannot manage keys.
    let response = app.as_key(&auditor_a, Method::POST, "/api/keys").json(&json!({"role": "member", "name": "x"})).send().await.expect("request");
    assert_eq!(response.status(), 403);

    // Another team's key is "not found", even for an admin key.
    let keys_b: Value = body(app.as_key(&admin_b, Method::GET, "/api/keys").send().await.expect("request")).await;
    let key_b_id = keys_b[0]["key_id"].as_str().expect("key id").to_string();
    let cross = app.as_key(&admin_a, Method::DELETE, &format!("/api/keys/{key_b_id}")).send().await.expect("request");
    assert_eq!(cross.status(), 404);
    assert_eq!(balance(&app, &admin_b).await["available"], 7, "B's key still works");

    // Revocation is immediate; the listing never shows a secret.
    let issued = body(app.as_key(&admin_a, Method::POST, "/api/keys").json(&json!({"role": "member", "name": "ci"})).send().await.expect("request")).await;
    let (new_key, new_id) = (issued["api_key"].as_str().expect("key").to_string(), issued["key_id"].as_str().expect("id").to_string());
    assert_eq!(balance(&app, &new_key).await["available"], 100);
    let revoked = app.as_key(&admin_a, Method::DELETE, &format!("/api/keys/{new_id}")).send().await.expect("request");
    assert_eq!(revoked.status(), 204);
    assert_eq!(app.as_key(&new_key, Method::GET, "/api/credits/balance").send().await.expect("request").status(), 401);
    let listing = app.as_key(&admin_a, Method::GET, "/api/keys").send().await.expect("request").text().await.expect("text");
    assert!(!listing.contains(&new_key) && !listing.contains(&admin_a), "secrets never listed");
    let stored: Vec<String> = match &app.state.db {
        Database::Postgres(pool) => sqlx::query_scalar("SELECT key_hash FROM api_keys").fetch_all(pool).await.expect("hashes"),
        _ => unreachable!("postgres test"),
    };
    assert!(stored.iter().all(|h| h.len() == 64 && !h.contains("kiln_")), "only hashes are stored");
}

/// A table of bad requests: each gets its problem type and records nothing.
#[tokio::test]
async fn bad_input_is_refused_with_a_problem_and_records_nothing() {
    let app = TestApp::spawn(TestDb::postgres().await).await;
    let team = app.create_team("T", "pro").await;
    let grants = format!("/api/admin/teams/{team}/grants");
    let before = event_count(&app.state.db).await;
    #[rustfmt::skip]
    let cases: Vec<(&str, Option<&str>, &str, u16, &str)> = vec![
        (grants.as_str(), Some("k"), r#"{"amount": 0}"#, 422, "/problems/invalid-amount"),
        (grants.as_str(), Some("k"), r#"{"amount": -5}"#, 422, "/problems/invalid-amount"),
        (grants.as_str(), Some("k"), r#"{"amount": 99999999999999999999999}"#, 422, "/problems/invalid-request"),
        (grants.as_str(), Some("k"), r#"{"amount": 5.5}"#, 422, "/problems/invalid-request"),
        (grants.as_str(), Some("k"), r#"{"amount": 5, "currency": "usd"}"#, 422, "/problems/invalid-request"),
        (grants.as_str(), Some("k"), r#"{"amount": 5"#, 400, "/problems/malformed-json"),
        (grants.as_str(), None, r#"{"amount": 5}"#, 400, "/problems/idempotency-key-required"),
        (grants.as_str(), Some("k"), r#"{"amount": 5, "source": "stripe"}"#, 422, "/problems/invalid-request"),
        (grants.as_str(), Some("k"), r#"{"amount": 5, "expires_at": "2001-01-01T00:00:00Z"}"#, 422, "/problems/invalid-request"),
        ("/api/admin/teams/not-a-uuid/grants", Some("k"), r#"{"amount": 5}"#, 404, "/problems/not-found"),
        ("/api/admin/teams/0190d6a8-0000-7000-8000-000000000000/grants", Some("k"), r#"{"amount": 5}"#, 404, "/problems/not-found"),
        ("/api/admin/teams", None, r#"{"name": "X", "plan": "platinum"}"#, 422, "/problems/invalid-request"),
        ("/api/admin/teams", None, r#"{"name": ""}"#, 422, "/problems/invalid-request"),
        ("/api/admin/teams", None, r#"{"name": "X", "owner": "me"}"#, 422, "/problems/invalid-request"),
    ];
    for (path, key, json_body, status, problem_type) in cases {
        let mut request = app.admin(Method::POST, path).header("content-type", "application/json").body(json_body.to_string());
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.expect("request");
        assert_eq!(response.status().as_u16(), status, "{path} {json_body}");
        assert_eq!(response.headers()["content-type"], "application/problem+json");
        assert_eq!(body(response).await["type"], problem_type, "{path} {json_body}");
    }
    assert_eq!(event_count(&app.state.db).await, before, "nothing recorded");

    // Reusing an idempotency key for a different grant is refused (the key is bound to
    // the first request's body), not a second grant.
    assert_eq!(app.grant(&team, 10, "same").await.status(), 200);
    let conflict = app.grant(&team, 11, "same").await;
    assert_eq!(conflict.status(), 422);
    assert_eq!(body(conflict).await["type"], "/problems/idempotency-key-reused");
    let member = app.issue_key(&team, "member").await;
    assert_eq!(balance(&app, &member).await["available"], 10);

    // Bad history filters.
    for query in ["type=stolen", "limit=0", "limit=1000", "cursor=abc", "from=yesterday"] {
        let response = app.as_key(&member, Method::GET, &format!("/api/credits/history?{query}")).send().await.expect("request");
        assert_eq!(response.status(), 422, "{query}");
    }
}

/// Two projectors (two processes) taking turns on one log: each reads the log from where
/// it last left its checkpoints, and whatever the other applied since is not applied
/// again; a batch of many teams, with endings of reservations made in earlier batches,
/// leaves each team's ledger exactly as the audit replays it from the events.
async fn projectors_taking_turns_apply_each_event_once(app: TestApp) {
    let credits = &app.state.credits;
    let meta = json!({});
    let teams: Vec<TeamId> = {
        let mut teams = Vec::new();
        for n in 0..5 {
            teams.push(team_id(&app.create_team(&format!("P{n}"), "pro").await));
        }
        teams
    };
    let (first, second) = (
        projections::projector::Projector::new(app.state.store.clone(), projections::async_projections()),
        projections::projector::Projector::new(app.state.store.clone(), projections::async_projections()),
    );
    let mut open: Vec<(TeamId, JobId)> = Vec::new();
    for round in 0..6 {
        for (n, team) in teams.iter().enumerate() {
            let now = app.clock.now();
            let grant = TeamCreditsCommand::GrantCredits {
                grant_id: domain::GrantId::new(uuid::Uuid::now_v7()),
                amount: Credits::parse(100).expect("positive"),
                source: domain::GrantSource::Admin,
                expires_at: None,
                key: domain::IdempotencyKey::parse(format!("turns-{round}-{n}")).expect("key"),
                now,
            };
            credits.execute(*team, grant, &meta).await.expect("grant");
            let job = JobId::new(uuid::Uuid::now_v7());
            credits.execute(*team, reserve(job, 10 + n as i64, now), &meta).await.expect("reserve");
            open.push((*team, job));
        }
        // End the reservations of the round before: their reserved entries are in a
        // batch one of the projectors already applied.
        let ending: Vec<(TeamId, JobId)> = open.drain(..open.len().saturating_sub(teams.len())).collect();
        for (k, (team, job)) in ending.into_iter().enumerate() {
            let now = app.clock.now();
            let end = if k % 2 == 0 {
                TeamCreditsCommand::DeductCredits { reservation_id: job, now }
            } else {
                TeamCreditsCommand::RefundCredits { reservation_id: job, now }
            };
            credits.execute(team, end, &meta).await.expect("end");
        }
        let turn = if round % 2 == 0 { &first } else { &second };
        turn.catch_up().await.expect("projector");
    }
    first.catch_up_to_head(std::time::Duration::from_secs(30)).await.expect("projector");
    second.catch_up_to_head(std::time::Duration::from_secs(30)).await.expect("projector");
    app.state.projector.catch_up_to_head(std::time::Duration::from_secs(30)).await.expect("projector");
    for team in &teams {
        let replay = projections::audit::replay(&app.state.db, &team.to_string(), None).await.expect("replay");
        assert!(replay.violations.is_empty(), "{:?}", replay.violations);
        let filter = kiln::queries::credits::LedgerFilter::default();
        let mut history = kiln::queries::credits::history(&app.state.db, *team, &filter, None, 10_000).await.expect("history");
        history.reverse();
        let replayed: Vec<_> = replay.entries.into_iter().map(|e| kiln::queries::credits::LedgerEntry { hash: None, ..e }).collect();
        let count = |types: &[&str]| history.iter().filter(|e| types.contains(&e.entry_type.as_str())).count();
        // Six rounds of a grant and a reservation; the reservations of five rounds ended.
        assert_eq!((count(&["granted"]), count(&["reserved"]), count(&["deducted", "refunded"])), (6, 6, 5), "ledger of {team}");
        assert_eq!(history, replayed, "ledger of {team}");
        assert!(history.iter().filter(|e| e.entry_type == "deducted" || e.entry_type == "refunded").all(|e| e.operation.as_deref() == Some("image_generation")));
    }
    app.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn postgres_projectors_taking_turns_apply_each_event_once() {
    projectors_taking_turns_apply_each_event_once(TestApp::spawn(TestDb::postgres().await).await).await;
}

#[tokio::test]
async fn sqlite_projectors_taking_turns_apply_each_event_once() {
    projectors_taking_turns_apply_each_event_once(TestApp::spawn(TestDb::sqlite().await).await).await;
}

#[tokio::test]
async fn history_lists_every_entry_with_running_balance_filters_and_pages() {
    let app = TestApp::spawn(TestDb::postgres().await).await;
    let team = app.create_team("H", "pro").await;
    let member = app.issue_key(&team, "member").await;
    let t = team_id(&team);
    app.grant(&team, 100, "g1").await;
    app.clock.advance(Duration::hours(1));
    let (job_a, job_b) = (JobId::new(uuid::Uuid::now_v7()), JobId::new(uuid::Uuid::now_v7()));
    let credits = &app.state.credits;
    let meta = json!({});
    credits.execute(t, reserve(job_a, 30, app.clock.now()), &meta).await.expect("reserve a");
    credits.execute(t, reserve(job_b, 20, app.clock.now()), &meta).await.expect("reserve b");
    app.clock.advance(Duration::hours(1));
    let mid = app.clock.now();
    credits.execute(t, TeamCreditsCommand::DeductCredits { reservation_id: job_a, now: mid }, &meta).await.expect("deduct");
    credits.execute(t, TeamCreditsCommand::RefundCredits { reservation_id: job_b, now: mid }, &meta).await.expect("refund");
    app.state.projector.catch_up_to_head(std::time::Duration::from_secs(30)).await.expect("projector");

    let page = body(app.as_key(&member, Method::GET, "/api/credits/history").send().await.expect("request")).await;
    let rows: Vec<(String, i64, i64, i64)> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| (e["entry_type"].as_str().expect("type").to_string(), e["amount"].as_i64().expect("amount"), e["available_after"].as_i64().expect("a"), e["reserved_after"].as_i64().expect("r")))
        .collect();
    let expected = vec![
        ("refunded".to_string(), 20, 70, 0),
        ("deducted".to_string(), 30, 50, 20),
        ("reserved".to_string(), 20, 50, 50),
        ("reserved".to_string(), 30, 70, 30),
        // The operator's grant: who granted and why, moving nothing.
        ("operator".to_string(), 0, 100, 0),
        ("granted".to_string(), 100, 100, 0),
    ];
    assert_eq!(rows, expected, "newest first, with running balances");
    assert_eq!(page["next_cursor"], Value::Null);

    // Type filter, time range, pagination.
    let reserved = body(app.as_key(&member, Method::GET, "/api/credits/history?type=reserved").send().await.expect("request")).await;
    assert_eq!(reserved["items"].as_array().map(Vec::len), Some(2));
    let since = mid.to_rfc3339().replace('+', "%2B");
    let late = body(app.as_key(&member, Method::GET, &format!("/api/credits/history?from={since}")).send().await.expect("request")).await;
    assert_eq!(late["items"].as_array().map(Vec::len), Some(2));
    let mut seen = Vec::new();
    let mut path = "/api/credits/history?limit=2".to_string();
    loop {
        let page = body(app.as_key(&member, Method::GET, &path).send().await.expect("request")).await;
        seen.extend(page["items"].as_array().expect("items").iter().map(|e| e["entry_no"].as_i64().expect("no")));
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/api/credits/history?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, vec![6, 5, 4, 3, 2, 1], "pages cover every entry once");

    // Another team sees none of it.
    let other = app.create_team("O", "pro").await;
    let other_key = app.issue_key(&other, "member").await;
    let theirs = body(app.as_key(&other_key, Method::GET, "/api/credits/history").send().await.expect("request")).await;
    assert_eq!(theirs["items"].as_array().map(Vec::len), Some(0));
    assert_read_model_matches(&app, t).await;
}

/// A history read is planned once per connection and filter combination, not at every
/// request. With `($n IS NULL OR …)` clauses for the filters not given, PostgreSQL judged
/// a fresh custom plan cheaper at every execution once the ledger held a few thousand
/// rows (≈ 35 µs of planning per read, as much as the read itself).
#[tokio::test]
async fn postgres_history_reads_reuse_their_plans() {
    let t = TestDb::postgres().await;
    let Database::Postgres(pool) = &t.db else { unreachable!("a PostgreSQL test database") };
    let team = TeamId::new(uuid::Uuid::now_v7());
    sqlx::query(
        "INSERT INTO credit_ledger (team_id, entry_no, sequence, entry_type, amount, available_after, reserved_after, occurred_at) \
         SELECT CASE WHEN g % 50 = 0 THEN $1 ELSE 'another team ' || (g % 50) END, g, g, \
                CASE WHEN g % 2 = 0 THEN 'granted' ELSE 'reserved' END, 1, g, 0, now() - g * interval '1 second' \
         FROM generate_series(1, 5000) AS g",
    )
    .bind(team.to_string())
    .execute(pool)
    .await
    .expect("ledger");
    sqlx::query("ANALYZE credit_ledger").execute(pool).await.expect("analyze");
    // One connection: the prepared statements counted below are the reads' own.
    let one = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&t.url).await.expect("pool");
    let db = Database::Postgres(one.clone());
    let granted = kiln::queries::credits::LedgerFilter { entry_type: Some("granted"), ..Default::default() };
    for filter in [kiln::queries::credits::LedgerFilter::default(), granted] {
        for before in [None, Some(2_500)] {
            for _ in 0..10 {
                let rows = kiln::queries::credits::history(&db, team, &filter, before, 21).await.expect("history");
                assert_eq!(rows.len(), 21);
            }
        }
    }
    let plans: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements WHERE statement LIKE 'SELECT entry_no, %'",
    )
    .fetch_all(&one)
    .await
    .expect("prepared statements");
    assert_eq!(plans.len(), 4, "one statement per filter combination: {plans:?}");
    for (statement, generic, custom) in plans {
        assert!(custom <= 5 && generic >= 5, "planned {custom} times for 10 reads, reused {generic} times: {statement}");
    }
}

/// Many concurrent reserve → deduct|refund flows on one team, from two "processes"
/// (two services over the same database, each with its own cache and locks).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_money_paths_keep_the_ledger_exact() {
    let app = TestApp::spawn(TestDb::postgres().await).await;
    let team = app.create_team("Hot", "enterprise").await;
    let t = team_id(&team);
    app.grant(&team, 1_000, "seed").await;
    let second_process = CreditsService::new(app.state.aggregates.clone(), app.state.credits.clock().clone());
    let services = [app.state.credits.clone(), second_process];
    let mut tasks = Vec::new();
    for worker in 0..16u32 {
        let service = services[worker as usize % 2].clone();
        let now = app.clock.now();
        tasks.push(tokio::spawn(async move {
            let mut outcome = (0i64, 0i64, 0u32);
            for n in 0..15u32 {
                let job = JobId::new(uuid::Uuid::now_v7());
                match service.execute(t, reserve(job, 7, now), &json!({})).await {
                    Ok(_) => {}
                    Err(CreditsError::Rejected(TeamCreditsError::InsufficientCredits { .. })) => {
                        outcome.2 += 1;
                        continue;
                    }
                    Err(other) => panic!("reserve failed: {other}"),
                }
                let end = if (worker + n) % 3 == 0 {
                    TeamCreditsCommand::RefundCredits { reservation_id: job, now }
                } else {
                    TeamCreditsCommand::DeductCredits { reservation_id: job, now }
                };
                // Each end is sent twice (a retried callback): the second is a no-op.
                let first = service.execute(t, end.clone(), &json!({})).await.expect("end");
                let again = service.execute(t, end.clone(), &json!({})).await.expect("repeat");
                assert!(again.events.is_empty());
                assert_eq!(first.reservation.as_ref().map(|r| r.state), again.reservation.as_ref().map(|r| r.state));
                match first.reservation.map(|r| r.state) {
                    Some(ReservationState::Deducted) => outcome.0 += 7,
                    Some(ReservationState::Refunded) => outcome.1 += 7,
                    other => panic!("unexpected end {other:?}"),
                }
            }
            outcome
        }));
    }
    let mut deducted = 0;
    for task in tasks {
        deducted += task.await.expect("task").0;
    }
    let state = app.state.credits.state(t).await.expect("state");
    assert_eq!(state.deducted_total(), deducted);
    assert_eq!(state.reserved(), 0);
    assert_eq!(state.available() + state.deducted_total(), 1_000, "conserved");
    assert!(state.available() >= 0);
    assert_read_model_matches(&app, t).await;
}

/// Many teams at once from two "processes" whose committers each keep one joint
/// transaction open at a time, so commands of different teams share transactions and
/// the two processes' writers of the same team conflict inside them. Every team's ledger
/// ends exact, and the log shows transactions that carried several teams.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn teams_committed_together_stay_exact_when_processes_collide() {
    let app = TestApp::spawn(TestDb::postgres().await).await;
    let mut teams = Vec::new();
    for n in 0..6 {
        let team = app.create_team(&format!("Joint {n}"), "enterprise").await;
        app.grant(&team, 500, "seed").await;
        teams.push(team_id(&team));
    }
    let processes = [
        CreditsService::new(app.state.aggregates.clone(), app.state.credits.clock().clone()).with_commits_in_flight(1),
        CreditsService::new(app.state.aggregates.clone(), app.state.credits.clock().clone()).with_commits_in_flight(1),
    ];
    let mut tasks = Vec::new();
    for client in 0..24usize {
        let service = processes[client % 2].clone();
        let team = teams[client % teams.len()];
        let now = app.clock.now();
        tasks.push(tokio::spawn(async move {
            let mut deducted = 0i64;
            for n in 0..10usize {
                let job = JobId::new(uuid::Uuid::now_v7());
                match service.execute(team, reserve(job, 3, now), &json!({})).await {
                    Ok(_) => {}
                    Err(CreditsError::Rejected(TeamCreditsError::InsufficientCredits { .. })) => continue,
                    Err(other) => panic!("reserve failed: {other}"),
                }
                let end = if (client + n) % 4 == 0 {
                    TeamCreditsCommand::RefundCredits { reservation_id: job, now }
                } else {
                    deducted += 3;
                    TeamCreditsCommand::DeductCredits { reservation_id: job, now }
                };
                let ended = service.execute(team, end, &json!({})).await.expect("end");
                assert_eq!(ended.events.len(), 1, "each reservation ends once, by this call");
            }
            (team, deducted)
        }));
    }
    let mut deducted_by_team = std::collections::HashMap::<TeamId, i64>::new();
    for task in tasks {
        let (team, deducted) = task.await.expect("task");
        *deducted_by_team.entry(team).or_default() += deducted;
    }
    for team in &teams {
        let state = app.state.credits.state(*team).await.expect("state");
        assert_eq!(state.deducted_total(), deducted_by_team[team], "team {team}");
        assert_eq!(state.reserved(), 0);
        assert_eq!(state.available() + state.deducted_total(), 500, "conserved");
        assert_read_model_matches(&app, *team).await;
    }
    let Database::Postgres(pool) = &app.db.db else { unreachable!("postgres test") };
    let widest: i64 = sqlx::query_scalar(
        "SELECT COALESCE(MAX(n), 0) FROM (SELECT COUNT(DISTINCT aggregate_id) AS n FROM events \
         WHERE aggregate_type = 'TeamCredits' GROUP BY transaction_id) AS t",
    )
    .fetch_one(pool)
    .await
    .expect("widest transaction");
    assert!(widest > 1, "no transaction carried more than one team");
}

/// The team writer snapshots after its commits, in the background: a snapshot appears
/// without any further command, and a fresh load from it equals the writer's state.
#[tokio::test]
async fn team_snapshots_are_written_after_commits_and_load_back_equal() {
    let app = TestApp::spawn(TestDb::postgres().await).await;
    let team = app.create_team("Snap", "pro").await;
    let t = team_id(&team);
    app.grant(&team, 1_000, "seed").await;
    let aggregates = application::aggregate_store::AggregateStore::new(app.state.aggregates.event_store().clone(), 10);
    let service = CreditsService::new(aggregates.clone(), app.state.credits.clock().clone());
    let now = app.clock.now();
    for _ in 0..12 {
        service.execute(t, reserve(JobId::new(uuid::Uuid::now_v7()), 5, now), &json!({})).await.expect("reserve");
    }
    let Database::Postgres(pool) = &app.db.db else { unreachable!("postgres test") };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let sequence = loop {
        let stored: Option<i64> = sqlx::query_scalar(
            "SELECT last_sequence FROM snapshots WHERE aggregate_type = 'TeamCredits' AND aggregate_id = $1",
        )
        .bind(t.to_string())
        .fetch_optional(pool)
        .await
        .expect("snapshot row");
        if let Some(sequence) = stored {
            break sequence;
        }
        assert!(std::time::Instant::now() < deadline, "no snapshot written");
        tokio::task::yield_now().await;
    };
    assert!(sequence >= 10, "snapshot at {sequence}");
    let loaded = aggregates.load::<TeamCredits>(&t.to_string()).await.expect("load");
    assert_eq!(loaded.snapshot_sequence, sequence, "the load started from the snapshot");
    let mut replayed = TeamCredits::default();
    for stored in aggregates.event_store().load_stream("TeamCredits", &t.to_string(), 0).await.expect("stream") {
        cqrs_es::Aggregate::apply(&mut replayed, application::aggregate_store::decode_event::<TeamCredits>(&stored).expect("event"));
    }
    assert_eq!(loaded.aggregate, replayed, "snapshot + tail equals a replay from the start");
    assert_eq!((loaded.aggregate.available(), loaded.aggregate.reserved()), (940, 60));
}

/// A process that reserved and died before deducting: another process finishes the job
/// exactly once.
#[tokio::test]
async fn a_crash_between_reserve_and_deduct_loses_nothing_and_doubles_nothing() {
    let app = TestApp::spawn(TestDb::postgres().await).await;
    let team = app.create_team("Crash", "pro").await;
    let t = team_id(&team);
    app.grant(&team, 100, "seed").await;
    let job = JobId::new(uuid::Uuid::now_v7());
    let now = app.clock.now();
    {
        let doomed = CreditsService::new(app.state.aggregates.clone(), app.state.credits.clock().clone());
        doomed.execute(t, reserve(job, 40, now), &json!({})).await.expect("reserve");
        // The process dies here: its in-memory state is gone.
    }
    let survivor = CreditsService::new(app.state.aggregates.clone(), app.state.credits.clock().clone());
    let deduct = TeamCreditsCommand::DeductCredits { reservation_id: job, now };
    let first = survivor.execute(t, deduct.clone(), &json!({})).await.expect("deduct");
    assert_eq!(first.events.len(), 1);
    // A late refund (e.g. a failure report racing the completion) changes nothing.
    let late = survivor.execute(t, TeamCreditsCommand::RefundCredits { reservation_id: job, now }, &json!({})).await.expect("late");
    assert!(late.events.is_empty());
    assert_eq!(late.reservation.map(|r| r.state), Some(ReservationState::Deducted));
    // The original process's service (stale cache) deducting again is a no-op too.
    let stale = app.state.credits.execute(t, deduct, &json!({})).await.expect("stale");
    assert!(stale.events.is_empty());
    let state = survivor.state(t).await.expect("state");
    assert_eq!((state.available(), state.reserved(), state.deducted_total()), (60, 0, 40));
    assert_read_model_matches(&app, t).await;
}

#[tokio::test]
async fn openapi_and_docs_are_served_from_the_binary() {
    let app = TestApp::spawn(TestDb::sqlite().await).await;
    let spec: Value = body(app.get("/openapi.json").await).await;
    for path in ["/api/credits/balance", "/api/credits/history", "/api/credits/pricing", "/api/admin/teams"] {
        assert!(spec["paths"].get(path).is_some(), "{path} documented");
    }
    let docs = app.get("/docs/").await;
    assert_eq!(docs.status(), 200);
    assert!(docs.text().await.expect("html").contains("swagger"), "Swagger UI page");
}

/// A seeded random workload (grants with and without expiry, reserves, deducts, refunds,
/// adjustments, time passing and the expiry sweeper) on three teams; afterwards the read
/// models must agree with the aggregates exactly, and the history's last entry with the
/// balance.
async fn random_workload_read_models_agree(app: TestApp) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x6b696c6e);
    let mut teams = Vec::new();
    for n in 0..3 {
        teams.push(team_id(&app.create_team(&format!("T{n}"), "pro").await));
    }
    let mut pending: Vec<(TeamId, JobId)> = Vec::new();
    let credits = &app.state.credits;
    let meta = json!({});
    for step in 0..300u32 {
        let team = teams[rng.gen_range(0..teams.len())];
        let now = app.clock.now();
        let command = match rng.gen_range(0..10) {
            0 | 1 => TeamCreditsCommand::GrantCredits {
                grant_id: domain::GrantId::new(uuid::Uuid::now_v7()),
                amount: Credits::parse(rng.gen_range(1..100)).expect("positive"),
                source: domain::GrantSource::Admin,
                expires_at: rng.gen_bool(0.5).then(|| now + Duration::hours(rng.gen_range(1..72))),
                key: domain::IdempotencyKey::parse(format!("g{step}")).expect("key"),
                now,
            },
            2..=4 => {
                let job = JobId::new(uuid::Uuid::now_v7());
                pending.push((team, job));
                reserve(job, rng.gen_range(1..60), now)
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
                amount: domain::SignedCredits::parse(rng.gen_range(-40..40i64).max(1) * if rng.gen_bool(0.5) { 1 } else { -1 }).expect("non-zero"),
                reason: "random".into(),
                actor: "test".into(),
                now,
            },
            _ => {
                app.clock.advance(Duration::hours(rng.gen_range(0..30)));
                kiln::sweeper::expire_credits_once(&app.state).await.expect("sweep");
                continue;
            }
        };
        match credits.execute(team, command, &meta).await {
            Ok(_) | Err(CreditsError::Rejected(TeamCreditsError::InsufficientCredits { .. })) => {}
            Err(other) => panic!("step {step}: {other}"),
        }
        // Every team's balance as the API reads it (on PostgreSQL, grants remembered
        // while the balance row keeps its version) is the balance read afresh: the
        // unchanged teams' grants are served from memory, the changed team's are not.
        for team in &teams {
            let served = kiln::http::credits::load_balance(&app.state, *team).await.expect("read").expect("team");
            let fresh = kiln::queries::credits::balance(&app.state.db, *team).await.expect("read").expect("team");
            assert_eq!(serde_json::to_value(served).expect("json"), serde_json::to_value(fresh).expect("json"), "step {step}");
        }
    }
    app.state.projector.catch_up_to_head(std::time::Duration::from_secs(30)).await.expect("projector");
    let mut expired_total = 0;
    for team in &teams {
        assert_read_model_matches(&app, *team).await;
        let state = credits.state(*team).await.expect("state");
        expired_total += state.expired_total();
        let last: Option<(i64, i64)> = infrastructure::db_fetch_optional!(
            &app.state.db,
            (i64, i64),
            "SELECT available_after, reserved_after FROM credit_ledger WHERE team_id = $1 ORDER BY entry_no DESC LIMIT 1",
            team.to_string()
        )
        .expect("history");
        assert_eq!(last, Some((state.available(), state.reserved())), "history ends at the balance");
    }
    assert!(expired_total > 0, "the workload exercised expiry");
}

#[tokio::test]
async fn postgres_random_workload_read_models_agree() {
    random_workload_read_models_agree(TestApp::spawn(TestDb::postgres().await).await).await;
}

#[tokio::test]
async fn sqlite_random_workload_read_models_agree() {
    random_workload_read_models_agree(TestApp::spawn(TestDb::sqlite().await).await).await;
}

/// The balance's grants are remembered with the version of the team's balance row and
/// read again only when that row changed: every credit append changes it (the random
/// workload above checks the API's reads against fresh ones after each step). Here the
/// grants are changed behind the projection's back to see which read answers.
#[tokio::test]
async fn postgres_balance_grants_are_read_again_when_the_balance_row_changes() {
    let app = TestApp::spawn(TestDb::postgres().await).await;
    let team = team_id(&app.create_team("Remembered", "pro").await);
    let credits = &app.state.credits;
    let grant = |amount: i64, key: &str| TeamCreditsCommand::GrantCredits {
        grant_id: domain::GrantId::new(uuid::Uuid::now_v7()),
        amount: Credits::parse(amount).expect("positive"),
        source: domain::GrantSource::Admin,
        expires_at: None,
        key: domain::IdempotencyKey::parse(key).expect("key"),
        now: app.clock.now(),
    };
    credits.execute(team, grant(100, "first"), &json!({})).await.expect("grant");
    let remaining = |view: &kiln::queries::credits::BalanceView| view.grants.iter().map(|g| g.remaining).collect::<Vec<_>>();
    let read = || async { kiln::http::credits::load_balance(&app.state, team).await.expect("read").expect("team") };
    assert_eq!(remaining(&read().await), [100]);

    let Database::Postgres(pool) = &app.state.db else { unreachable!("a PostgreSQL test") };
    sqlx::query("UPDATE credit_grants SET remaining = 99 WHERE team_id = $1").bind(team.to_string()).execute(pool).await.expect("update");
    assert_eq!(remaining(&read().await), [100], "the balance row did not change: the grants are the remembered ones");
    let fresh = kiln::queries::credits::balance(&app.state.db, team).await.expect("read").expect("team");
    assert_eq!(remaining(&fresh), [99], "an uncached read sees the table");

    sqlx::query("UPDATE team_balances SET updated_at = updated_at WHERE team_id = $1").bind(team.to_string()).execute(pool).await.expect("touch");
    assert_eq!(remaining(&read().await), [99], "a new version of the balance row: the grants are read again");

    app.clock.advance(Duration::seconds(1));
    credits.execute(team, grant(5, "second"), &json!({})).await.expect("grant");
    assert_eq!(remaining(&read().await), [99, 5], "an append: read again");
}
