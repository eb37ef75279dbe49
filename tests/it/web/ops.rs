//! The operator console (`/ops`) in Chromium: an admin operator signs in with their
//! key, finds a team, grants, adjusts, changes its plan, revokes a key and cancels a job,
//! each with a reason that the team's ledger then shows; verifies the team's audit
//! chain. A viewer sees and cannot act (a forged form is refused); a team session or
//! team key opens nothing; a form without the console's CSRF token is refused.

use application::clock::Clock;
use application::operators::{create, CreatedOperator};
use domain::operators::OperatorRole;
use reqwest::Method;
use serde_json::json;

use super::{api, app, browser, queue_generation, ready_model, sign_in, team};
use crate::support::app::TestApp;
use crate::support::browser::Browser;
use crate::support::db::TestDb;

pub(super) async fn operator(app: &TestApp, name: &str, role: OperatorRole) -> CreatedOperator {
    let clock = app.state.credits.clock().clone();
    create(&app.state.aggregates, clock.as_ref(), name, role, &json!({"actor": "test"})).await.expect("operator created")
}

/// Signs the browser in to the console with `key`; lands on the console's overview.
pub(super) async fn ops_sign_in(browser: &Browser, key: &str) {
    browser.goto("/ops/sign-in").await;
    browser.fill("#operator_key", key).await;
    browser.click("main button[type=submit]").await;
    browser.wait_text("h1", "Operations").await;
}

/// Fills the form `form` (its reason and, if given, its amount) and sends it.
pub(super) async fn act(browser: &Browser, form: &str, amount: Option<&str>, reason: &str) {
    if let Some(amount) = amount {
        browser.fill(&format!("{form} input[name=amount]"), amount).await;
    }
    browser.fill(&format!("{form} input[name=reason]"), reason).await;
    browser.click(&format!("{form} button[type=submit]")).await;
}

async fn an_admin_operator_steers_a_team(app: TestApp) {
    let (team_id, key) = team(&app, "Acme Studio", "pro", 1_000).await;
    let model = ready_model(&app, &key).await;
    let job = queue_generation(&app, &key, &model, "a lighthouse at dusk").await;
    let other_key = app.issue_key(&team_id, "member").await;
    let alice = operator(&app, "Alice", OperatorRole::Admin).await;
    let browser = browser(&app).await;
    ops_sign_in(&browser, &alice.secret).await;
    assert_eq!(browser.text("#operator-summary").await, "Alice · admin");

    // Find the team, open it.
    browser.goto("/ops/teams").await;
    browser.fill("#search", "acme").await;
    browser.click("form[role=search] button").await;
    browser.click("#teams a").await;
    browser.wait_text("h1", "Acme Studio").await;
    browser.screenshot("ops-team").await;
    browser.assert_fits_width(390).await;

    // Grant with a reason; the reason is required (the browser will not send without one,
    // and a hand-made empty one is refused on the page).
    let team_path = browser.path().await;
    browser.fill("#grant-amount", "250").await;
    browser.run("document.querySelector('#grant-reason').removeAttribute('required');").await;
    browser.click("#grant").await;
    browser.wait_text("#notice h1", "Say why").await;
    browser.goto(&team_path).await;
    act(&browser, "#grant-form", Some("250"), "make-good for the outage").await;
    browser.wait_text("#notice h2", "Credits granted").await;
    act(&browser, "#adjust-form", Some("-50"), "duplicate top-up").await;
    browser.wait_text("#notice h2", "Balance adjusted").await;
    // A plan change applies only if newer than the plan's (the test clock stands still).
    app.clock.advance(chrono::Duration::seconds(1));
    browser.run("document.querySelector('#plan-select').value = 'enterprise';").await;
    act(&browser, "#plan-form", None, "contract signed").await;
    browser.wait_text("#notice h2", "Plan changed").await;
    assert_eq!(browser.text("#plan").await, "enterprise");

    // Revoke the member key and cancel the queued job, each with a reason.
    let (_, keys) = api(&app, crate::support::app::OPERATOR_KEY, Method::GET, &format!("/api/admin/teams/{team_id}/api-keys"), None).await;
    let member_id = keys.as_array().expect("keys").last().expect("member key")["key_id"].as_str().expect("id").to_string();
    act(&browser, &format!("#key-{member_id} form"), None, "key pasted in a ticket").await;
    browser.wait_text("#notice h2", "Key revoked").await;
    let (status, _) = api(&app, &other_key, Method::GET, "/api/credits/balance", None).await;
    assert_eq!(status, 401, "the revoked key stopped working");
    act(&browser, &format!("#job-{job} form"), None, "stuck behind the outage").await;
    browser.wait_text("#notice h2", "Job cancelled").await;
    let (_, job_view) = api(&app, &key, Method::GET, &format!("/api/jobs/{job}"), None).await;
    assert_eq!(job_view["status"], "cancelled");
    let (_, balance) = api(&app, &key, Method::GET, "/api/credits/balance", None).await;
    assert_eq!(balance["reserved"], 0, "the cancelled job was refunded: {balance}");
    let available = balance["available"].as_i64().expect("available");

    // Retry the cancelled job: a new job, its own reservation at today's price, charged
    // once when it completes; retrying again names the same new job.
    browser.goto(&team_path).await;
    act(&browser, &format!("#job-{job} .retry-form"), None, "outage over").await;
    browser.wait_text("#notice h2", "Job retried").await;
    let retry_path = format!("/api/admin/teams/{team_id}/jobs/{job}/retry?reason=again");
    let (status, retried) = api(&app, crate::support::app::OPERATOR_KEY, Method::POST, &retry_path, None).await;
    assert_eq!((status, retried["created"].as_bool()), (202, Some(false)), "{retried}");
    let new_job = retried["job_id"].as_str().expect("new job").to_string();
    assert_ne!(new_job, job);
    let worker = super::start_worker(&app);
    wait_status(&app, &key, &new_job, "completed").await;
    super::stop_worker(worker).await;
    let (_, new_view) = api(&app, &key, Method::GET, &format!("/api/jobs/{new_job}"), None).await;
    let (_, balance) = api(&app, &key, Method::GET, "/api/credits/balance", None).await;
    let cost = new_view["cost_credits"].as_i64().expect("cost");
    assert_eq!((balance["available"].as_i64(), balance["reserved"].as_i64()), (Some(available - cost), Some(0)), "charged once: {balance}");
    let (_, old_view) = api(&app, &key, Method::GET, &format!("/api/jobs/{job}"), None).await;
    assert_eq!(old_view["status"], "cancelled", "the old job stays as it ended");

    // The ledger (async) shows every act with who and why.
    for detail in [
        "grant by Alice: make-good for the outage",
        "adjust by Alice: duplicate top-up",
        "change_plan by Alice: contract signed",
        "revoke_key by Alice: key pasted in a ticket",
        "cancel_job by Alice: stuck behind the outage",
        "retry_job by Alice: outage over",
    ] {
        browser.wait_page_contains(&team_path, detail).await;
    }
    // The team's own history page shows them too.
    let team_browser = super::browser(&app).await;
    sign_in(&team_browser, &key).await;
    team_browser.wait_page_contains("/history", "grant by Alice: make-good for the outage").await;
    team_browser.close().await;

    // Verify the audit chain from the page.
    browser.goto(&team_path).await;
    browser.click("#verify").await;
    browser.wait_text("#verify-result h3", "Ledger sound").await;
    browser.close().await;
    app.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_an_admin_operator_steers_a_team_from_the_console() {
    an_admin_operator_steers_a_team(app(TestDb::postgres().await).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_an_admin_operator_steers_a_team_from_the_console() {
    an_admin_operator_steers_a_team(app(TestDb::sqlite().await).await).await;
}

/// A viewer sees the team and no action; a forged action is refused. A team session or
/// team key opens no console page; a console form without its CSRF token is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_refuses_viewers_teams_and_forms_without_csrf() {
    let app = app(TestDb::sqlite().await).await;
    let (team_id, key) = team(&app, "Acme Studio", "pro", 1_000).await;
    let vera = operator(&app, "Vera", OperatorRole::Viewer).await;
    let alice = operator(&app, "Alice", OperatorRole::Admin).await;

    // A team's session does not open the console, and its key does not sign in there.
    let browser = browser(&app).await;
    sign_in(&browser, &key).await;
    for path in ["/ops", "/ops/teams", &format!("/ops/teams/{team_id}")] {
        browser.goto(path).await;
        assert_eq!(browser.path().await, "/ops/sign-in", "{path}");
    }
    browser.fill("#operator_key", &key).await;
    browser.click("main button[type=submit]").await;
    browser.wait_text("#notice h2", "That key was not accepted").await;

    // A viewer: no action forms; the same POST an admin's form sends is refused.
    ops_sign_in(&browser, &vera.secret).await;
    browser.goto(&format!("/ops/teams/{team_id}")).await;
    browser.wait_text("h1", "Acme Studio").await;
    let forms = browser.run("return document.querySelectorAll('main form[method=post]').length;").await;
    assert_eq!(forms.as_i64(), Some(0), "a viewer gets no action form");
    let token = browser.run("return document.querySelector('header input[name=csrf]').value;").await;
    let token = token.as_str().expect("token").to_string();
    let forged = format!(
        "const f = document.createElement('form'); f.method = 'post'; f.action = '/ops/teams/{team_id}/grant'; \
         for (const [k, v] of [['csrf', '{token}'], ['amount', '100'], ['reason', 'x'], ['nonce', '{nonce}']]) {{ \
         const i = document.createElement('input'); i.name = k; i.value = v; f.appendChild(i); }} \
         document.body.appendChild(f); f.submit();",
        nonce = uuid::Uuid::now_v7()
    );
    browser.run(&forged).await;
    browser.wait_text("h1", "Not allowed").await;
    // Verifying reads only: a viewer may.
    browser.goto(&format!("/ops/teams/{team_id}/verify")).await;
    browser.wait_text("#verify-result h3", "Ledger sound").await;

    // An admin's form without the CSRF token is refused, and nothing is granted.
    browser.click("header button[type=submit]").await;
    ops_sign_in(&browser, &alice.secret).await;
    browser.goto(&format!("/ops/teams/{team_id}")).await;
    browser.run("document.querySelector('#grant-form input[name=csrf]').remove();").await;
    act(&browser, "#grant-form", Some("100"), "no token").await;
    browser.wait_text("h1", "Form refused").await;
    let (_, balance) = api(&app, &key, Method::GET, "/api/credits/balance", None).await;
    assert_eq!(balance["available"], 1_000, "nothing was granted: {balance}");

    // The team key on the admin API: 401 problem+json.
    let (status, problem) = api(&app, &key, Method::GET, "/api/admin/teams", None).await;
    assert_eq!((status, problem["type"].as_str()), (401, Some("/problems/unauthorized")), "{problem}");
    browser.close().await;
    app.shutdown().await.expect("shutdown");
}

/// Waits until the team's job `job` shows `status` (through the API).
pub(super) async fn wait_status(app: &TestApp, key: &str, job: &str, status: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, view) = api(app, key, Method::GET, &format!("/api/jobs/{job}"), None).await;
        if view["status"] == status {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "job {job} never {status}: {view}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A paused team's job is accepted and reserved but not dispatched while another team's
/// job, queued after it, runs; the team's overview says dispatch is paused; resumed,
/// the job runs. Pausing every team stops the dispatch turn altogether.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_teams_job_waits_until_resumed() {
    let app = app(TestDb::postgres().await).await;
    let (team_a, key_a) = team(&app, "Paused Co", "pro", 5_000).await;
    let (_, key_b) = team(&app, "Running Co", "pro", 5_000).await;
    let (model_a, model_b) = (ready_model(&app, &key_a).await, ready_model(&app, &key_b).await);
    let alice = operator(&app, "Alice", OperatorRole::Admin).await;
    let browser = browser(&app).await;
    ops_sign_in(&browser, &alice.secret).await;
    browser.goto(&format!("/ops/teams/{team_a}")).await;
    act(&browser, "#dispatch-form", None, "suspected abuse").await;
    browser.wait_text("#notice h2", "Dispatch paused").await;

    let job_a = queue_generation(&app, &key_a, &model_a, "a quiet harbour").await;
    let (_, balance) = api(&app, &key_a, Method::GET, "/api/credits/balance", None).await;
    assert!(balance["reserved"].as_i64().unwrap_or(0) > 0, "accepted and reserved while paused: {balance}");
    let job_b = queue_generation(&app, &key_b, &model_b, "a busy market").await;
    let worker = super::start_worker(&app);
    wait_status(&app, &key_b, &job_b, "completed").await;
    let (_, view) = api(&app, &key_a, Method::GET, &format!("/api/jobs/{job_a}"), None).await;
    assert_eq!(view["status"], "queued", "not dispatched while paused, though an older job than B's: {view}");
    let team_browser = super::browser(&app).await;
    sign_in(&team_browser, &key_a).await;
    team_browser.wait_text("#dispatch-paused h2", "Dispatch is paused").await;
    team_browser.close().await;

    browser.goto(&format!("/ops/teams/{team_a}")).await;
    act(&browser, "#dispatch-form", None, "cleared").await;
    browser.wait_text("#notice h2", "Dispatch resumed").await;
    wait_status(&app, &key_a, &job_a, "completed").await;
    super::stop_worker(worker).await;

    // Paused for everyone (through the API): the dispatch turn hands out nothing.
    let operator_key = crate::support::app::OPERATOR_KEY;
    let (status, _) = api(&app, operator_key, Method::POST, "/api/admin/dispatch/pause?reason=provider%20outage", None).await;
    assert_eq!(status, 204);
    let job = queue_generation(&app, &key_b, &model_b, "a lighthouse").await;
    let picked = app.state.job_index.pick(app.clock.now() + chrono::Duration::hours(1), 10).await.expect("pick");
    assert!(picked.jobs.is_empty(), "nothing handed out while paused for everyone");
    drop(picked);
    let (_, dispatch) = api(&app, operator_key, Method::GET, "/api/admin/dispatch", None).await;
    assert_eq!((dispatch["all"]["paused"].as_bool(), dispatch["all"]["reason"].as_str()), (Some(true), Some("provider outage")), "{dispatch}");
    let (status, _) = api(&app, operator_key, Method::POST, "/api/admin/dispatch/resume?reason=provider%20back", None).await;
    assert_eq!(status, 204);
    let picked = app.state.job_index.pick(app.clock.now() + chrono::Duration::hours(1), 10).await.expect("pick");
    assert_eq!(picked.jobs.iter().map(|j| j.job_id.to_string()).collect::<Vec<_>>(), [job]);
    drop(picked);
    browser.close().await;
    app.shutdown().await.expect("shutdown");
}

/// A price version added from the console applies to jobs submitted from its effective
/// time on: a job submitted before keeps the old version and cost, one after gets the
/// new. The overview draws its charts from the jobs that ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_price_version_applies_from_its_effective_time() {
    let app = app(TestDb::sqlite().await).await;
    let (_, key) = team(&app, "Acme Studio", "pro", 5_000).await;
    let model = ready_model(&app, &key).await;
    let alice = operator(&app, "Alice", OperatorRole::Admin).await;
    let browser = browser(&app).await;
    ops_sign_in(&browser, &alice.secret).await;
    // The model's creation job ran: the overview's charts count it.
    browser.wait_text("#chart-jobs figcaption .hint", "Last hour: 1 completed, 0 failed.").await;
    assert!(browser.run("return document.querySelectorAll('#charts figure svg').length;").await.as_i64() >= Some(5), "five charts drawn");
    browser.screenshot("ops-overview").await;
    browser.assert_fits_width(390).await;

    browser.goto("/ops/pricing").await;
    assert_eq!(browser.text("#current-version").await, "1");
    let effective = (app.clock.now() + chrono::Duration::hours(1)).format("%Y-%m-%dT%H:%M").to_string();
    browser.fill("#p-image", "20").await;
    browser.run(&format!("document.querySelector('#p-effective').value = '{effective}';")).await;
    browser.fill("#p-reason", "GPU prices went up").await;
    browser.click("#add-version").await;
    browser.wait_text("#version-2 td:nth-child(5)", "20").await;
    assert_eq!(browser.text("#current-version").await, "1", "not in effect before its time");
    browser.screenshot("ops-pricing").await;

    let before = queue_generation(&app, &key, &model, "before the change").await;
    app.clock.advance(chrono::Duration::hours(2));
    let after = queue_generation(&app, &key, &model, "after the change").await;
    let (_, before) = api(&app, &key, Method::GET, &format!("/api/jobs/{before}"), None).await;
    let (_, after) = api(&app, &key, Method::GET, &format!("/api/jobs/{after}"), None).await;
    assert_eq!(before["price_version"], 1, "{before}");
    assert_eq!(after["price_version"], 2, "{after}");
    assert!(after["cost_credits"].as_i64() > before["cost_credits"].as_i64(), "the new price: {before} {after}");
    browser.goto("/ops/pricing").await;
    assert_eq!(browser.text("#current-version").await, "2");
    browser.close().await;
    app.shutdown().await.expect("shutdown");
}

/// Jobs across teams: filtered by team, the stuck view (queued jobs are not stuck), a
/// bulk cancel of the picked jobs with one reason; the workers page lists the worker that
/// ran the model job; the whole-log audit runs from its page.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_across_teams_are_filtered_and_cancelled_in_bulk() {
    let app = app(TestDb::sqlite().await).await;
    let (team_a, key_a) = team(&app, "Team A", "pro", 5_000).await;
    let (_, key_b) = team(&app, "Team B", "pro", 5_000).await;
    let model_a = ready_model(&app, &key_a).await;
    let model_b = ready_model(&app, &key_b).await;
    let job_a = queue_generation(&app, &key_a, &model_a, "a red kite").await;
    let job_b = queue_generation(&app, &key_b, &model_b, "a blue kite").await;
    let alice = operator(&app, "Alice", OperatorRole::Admin).await;
    let browser = browser(&app).await;
    ops_sign_in(&browser, &alice.secret).await;

    browser.goto(&format!("/ops/jobs?status=queued&team={team_a}")).await;
    let rows = browser.run("return Array.from(document.querySelectorAll('#jobs tbody tr')).map(r => r.id);").await;
    assert_eq!(rows, json!([format!("job-{job_a}")]), "filtered by team and status");
    browser.goto("/ops/jobs?stuck=1&stuck_after_minutes=0").await;
    browser.wait_text("#no-jobs", "No job matches.").await;

    browser.goto("/ops/jobs?status=queued").await;
    browser.screenshot("ops-jobs").await;
    browser.assert_fits_width(390).await;
    browser.run("document.querySelectorAll('#jobs input[name=job]').forEach(c => c.checked = true);").await;
    browser.fill("#bulk-reason", "provider incident").await;
    browser.click("#bulk-cancel").await;
    browser.wait_text("#notice h2", "Jobs cancelled").await;
    for (key, job) in [(&key_a, &job_a), (&key_b, &job_b)] {
        let (_, view) = api(&app, key, Method::GET, &format!("/api/jobs/{job}"), None).await;
        assert_eq!(view["status"], "cancelled", "{view}");
    }

    // The job's page: its whole timeline, with who cancelled it and why.
    browser.goto(&format!("/ops/teams/{team_a}/jobs/{job_a}")).await;
    let timeline = browser.text("#timeline tbody").await;
    assert!(timeline.contains("JobQueued") && timeline.contains("JobCancelled"), "{timeline}");
    assert!(timeline.contains("provider incident") && timeline.contains("operator:Alice"), "{timeline}");
    browser.screenshot("ops-job").await;

    browser.goto("/ops/workers").await;
    let workers = browser.text("#workers tbody").await;
    assert!(workers.contains("web-test-"), "the worker that ran the model jobs: {workers}");
    browser.goto("/ops/audit?run=1").await;
    browser.wait_text("#verify-result h2", "Log sound").await;
    browser.close().await;
    app.shutdown().await.expect("shutdown");
}
