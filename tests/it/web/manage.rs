//! The team pages of the second pass, in a real browser: keys managed by team admins,
//! models renamed and archived, the catalog's orders and pages both ways, the credits
//! page's charts, and what the page says when Stripe sends someone back.

use reqwest::Method;
use serde_json::{json, Value};

use super::{api, app, browser, queue_generation, ready_model, sign_in, start_worker, stop_worker, team};
use crate::support::app::TestApp;
use crate::support::browser::Browser;
use crate::support::db::TestDb;

/// A generation of `model_id` run by a worker until it completed; its job id.
pub async fn completed_generation(app: &TestApp, key: &str, model_id: &str, prompt: &str) -> String {
    let job_id = queue_generation(app, key, model_id, prompt).await;
    let worker = start_worker(app);
    let started = std::time::Instant::now();
    while api(app, key, Method::GET, &format!("/api/jobs/{job_id}"), None).await.1["status"] != "completed" {
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "the generation never completed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    stop_worker(worker).await;
    job_id
}

/// The id of the key named `name` in the keys table.
async fn key_row(browser: &Browser, name: &str) -> String {
    let script = format!(
        "const row = [...document.querySelectorAll('#keys tbody tr')].find(r => r.querySelector('.key-name').textContent.trim().startsWith({name:?})); \
         return row ? row.dataset.keyId : null;"
    );
    browser.run(&script).await.as_str().unwrap_or_else(|| panic!("no key named {name}")).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_team_admins_manage_keys_that_stop_working_once_revoked() {
    team_admins_manage_keys_that_stop_working_once_revoked(TestDb::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_team_admins_manage_keys_that_stop_working_once_revoked() {
    team_admins_manage_keys_that_stop_working_once_revoked(TestDb::postgres().await).await;
}

async fn team_admins_manage_keys_that_stop_working_once_revoked(db: TestDb) {
    let app = app(db).await;
    let (team_id, member_key) = team(&app, "Keys team", "pro", 1_000).await;
    let admin_key = app.issue_key(&team_id, "admin").await;

    // A member neither sees the page in the navigation nor reaches it.
    let member = browser(&app).await;
    sign_in(&member, &member_key).await;
    let link = member.run("return document.querySelectorAll('nav a[href=\"/keys\"]').length;").await;
    assert_eq!(link.as_i64(), Some(0), "no Keys link for a member");
    member.goto("/keys").await;
    assert_eq!(member.text("h1").await, "Not allowed");
    let signed_out = app.client.get(app.url("/keys")).send().await.expect("get");
    assert_eq!(signed_out.url().path(), "/sign-in", "signed out, the page sends to the sign-in");
    member.close().await;

    // An admin creates a named auditor key: shown once, then only listed.
    let browser = browser(&app).await;
    sign_in(&browser, &admin_key).await;
    browser.click("nav a[href='/keys']").await;
    browser.wait_text("h1", "API keys").await;
    browser.fill("#key-name", "finance dashboard").await;
    browser.click("input[name=role][value=auditor]").await;
    browser.click("#create-key-button").await;
    browser.wait_text("#issued-heading", "Key “finance dashboard” created").await;
    let secret = browser.run("return document.querySelector('#new-key').value;").await.as_str().expect("key").to_string();
    assert!(secret.starts_with("kiln_") && secret.len() > 40, "{secret}");
    browser.screenshot("keys").await;
    browser.assert_fits_width(390).await;
    let key_id = key_row(&browser, "finance dashboard").await;
    let row = |field: &str| format!("#keys tr[data-key-id='{key_id}'] .{field}");
    assert_eq!(browser.text(&row("key-role")).await, "auditor");
    assert_eq!(browser.text(&row("key-last-used")).await, "never");

    browser.goto("/keys").await;
    let shown = browser.run(&format!("return document.documentElement.outerHTML.includes({secret:?});")).await;
    assert_eq!(shown.as_bool(), Some(false), "the key is shown once, never again");

    // It works with the API as an auditor (reads, does not write), and its use is listed.
    let (status, balance) = api(&app, &secret, Method::GET, "/api/credits/balance", None).await;
    assert_eq!((status, balance["available"].as_i64()), (200, Some(1_000)));
    let (status, _) = api(&app, &secret, Method::POST, "/api/keys", Some(json!({"role": "admin", "name": "escalate"}))).await;
    assert_eq!(status, 403, "an auditor key manages no keys");
    let started = std::time::Instant::now();
    loop {
        browser.goto("/keys").await;
        if browser.text(&row("key-last-used")).await != "never" {
            break;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "the key's use was never listed");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(browser.text(&row("key-last-used")).await.ends_with("UTC"), "a time");

    // Revoked from the page: the very next API call with it is refused.
    browser.click(&format!("#keys tr[data-key-id='{key_id}'] button.revoke-key")).await;
    browser.wait_text("#notice h2", "Key revoked").await;
    let (status, problem) = api(&app, &secret, Method::GET, "/api/credits/balance", None).await;
    assert_eq!(status, 401, "{problem}");
    assert!(browser.text(&row("key-status")).await.starts_with("revoked"));
    // The admin's own key still works; the member's too.
    assert_eq!(api(&app, &admin_key, Method::GET, "/api/keys", None).await.0, 200);
    assert_eq!(api(&app, &member_key, Method::GET, "/api/credits/balance", None).await.0, 200);

    // A name the text rule refuses is said on the form, and nothing is created.
    let before = api(&app, &admin_key, Method::GET, "/api/keys", None).await.1.as_array().map(Vec::len);
    browser.run("document.querySelector('#key-name').removeAttribute('required');").await;
    browser.fill("#key-name", " ").await;
    browser.click("#create-key-button").await;
    browser.wait_text("#notice h2", "Check the name").await;
    let after = api(&app, &admin_key, Method::GET, "/api/keys", None).await.1.as_array().map(Vec::len);
    assert_eq!(after, before);
    browser.close().await;
    app.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_model_is_renamed_and_archived_from_its_page() {
    let app = app(TestDb::sqlite().await).await;
    let (_team, key) = team(&app, "Models team", "pro", 5_000).await;
    let model_id = ready_model(&app, &key).await;
    let browser = browser(&app).await;
    sign_in(&browser, &key).await;
    browser.goto(&format!("/models/{model_id}")).await;
    browser.fill("#model-name", "Ava, autumn editorial").await;
    browser.fill("#model-description", "a runner at golden hour, in wool").await;
    browser.click("#save-model").await;
    browser.wait_text("h1", "Ava, autumn editorial").await;
    let (_, model) = api(&app, &key, Method::GET, &format!("/api/models/{model_id}"), None).await;
    assert_eq!((model["name"].as_str(), model["description"].as_str()), (Some("Ava, autumn editorial"), Some("a runner at golden hour, in wool")));
    browser.screenshot("model-edit").await;
    browser.assert_fits_width(390).await;

    browser.click("#archive-model").await;
    browser.wait_text("#model-status", "archived").await;
    let (_, model) = api(&app, &key, Method::GET, &format!("/api/models/{model_id}"), None).await;
    assert_eq!(model["archived"], true, "{model}");
    let forms = browser.run("return document.querySelectorAll('#archive-model, #model-details, #refine-model').length;").await;
    assert_eq!(forms.as_i64(), Some(0), "an archived model offers no edits");
    let (status, _) = api(&app, &key, Method::POST, "/api/generate", Some(json!({"model_id": model_id, "prompt": "p"}))).await;
    assert_eq!(status, 409, "an archived model generates nothing");
    // The list no longer shows it.
    browser.goto("/models").await;
    assert!(!browser.page_text().await.contains("Ava, autumn editorial"));
    browser.close().await;
    app.shutdown().await.expect("shutdown");
}

/// The card names of the catalog page shown.
async fn card_names(browser: &Browser) -> Vec<String> {
    let names = browser.run("return [...document.querySelectorAll('#catalog li h2')].map(h => h.textContent);").await;
    names.as_array().expect("names").iter().map(|n| n.as_str().expect("name").to_string()).collect()
}

async fn api_names(app: &TestApp, key: &str, path: &str) -> Vec<String> {
    let (_, page) = api(app, key, Method::GET, path, None).await;
    page["items"].as_array().expect("items").iter().map(|m| m["name"].as_str().expect("name").to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_catalog_sorts_pages_back_and_names_unknown_filters() {
    let app = app(TestDb::sqlite().await).await;
    let (_team, key) = team(&app, "Catalog team", "basic", 0).await;
    let browser = browser(&app).await;
    sign_in(&browser, &key).await;

    browser.goto("/catalog").await;
    assert_eq!(card_names(&browser).await, api_names(&app, &key, "/api/reference-models?limit=12").await, "most popular first by default");
    assert_eq!(browser.run("return document.querySelector('#catalog-prev') === null;").await.as_bool(), Some(true), "no page before the first");

    // By name: A to Z, the same order as the API's.
    browser.run("document.querySelector('#sort').value = 'name';").await;
    browser.click("form[role=search] button").await;
    browser.wait_text("#catalog li h2", &api_names(&app, &key, "/api/reference-models?sort=name&limit=1").await[0]).await;
    let first = card_names(&browser).await;
    let mut sorted = first.clone();
    sorted.sort();
    assert_eq!(first, sorted);
    assert_eq!(first, api_names(&app, &key, "/api/reference-models?sort=name&limit=12").await);
    browser.screenshot("catalog-sort").await;

    // Next, then previous: back to the same page.
    browser.click("#catalog-next").await;
    browser.wait_text("#catalog li h2", &api_names(&app, &key, "/api/reference-models?sort=name&limit=13").await[12]).await;
    let second = card_names(&browser).await;
    assert!(second.iter().all(|n| n.as_str() >= first[11].as_str()), "the second page follows the first: {second:?}");
    browser.click("#catalog-prev").await;
    browser.wait_text("#catalog li h2", &first[0]).await;
    assert_eq!(card_names(&browser).await, first, "previous page is the first page again");
    assert_eq!(browser.run("return document.querySelector('#catalog-prev') === null;").await.as_bool(), Some(true));

    // Newest: the API's order.
    browser.goto("/catalog?sort=newest").await;
    assert_eq!(card_names(&browser).await, api_names(&app, &key, "/api/reference-models?sort=newest&limit=12").await);
    assert_eq!(browser.run("return document.querySelector('#sort').value;").await, "newest");

    // What the catalog does not know is said, not ignored.
    for (query, title) in [("category=sports", "Unknown category"), ("sort=price", "Unknown order"), ("colour=red", "Unknown filter"), ("cursor=forged", "That page link is not valid")] {
        browser.goto(&format!("/catalog?{query}")).await;
        assert_eq!(browser.text("#notice h2").await, title, "{query}");
        assert_eq!(card_names(&browser).await.len(), 0, "{query}: nothing listed as if it applied");
    }
    browser.close().await;
    app.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_the_credits_page_charts_spending_per_day_by_operation_and_the_balance() {
    the_credits_page_charts_spending_per_day_by_operation_and_the_balance(TestDb::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_the_credits_page_charts_spending_per_day_by_operation_and_the_balance() {
    the_credits_page_charts_spending_per_day_by_operation_and_the_balance(TestDb::postgres().await).await;
}

async fn the_credits_page_charts_spending_per_day_by_operation_and_the_balance(db: TestDb) {
    let app = app(db).await;
    let (_team, key) = team(&app, "Charts team", "pro", 5_000).await;
    let model_id = ready_model(&app, &key).await;
    completed_generation(&app, &key, &model_id, "on a pier at noon").await;
    let (_, balance) = api(&app, &key, Method::GET, "/api/credits/balance", None).await;
    let spent = balance["totals"]["deducted"].as_i64().expect("deducted");
    let available = balance["available"].as_i64().expect("available");
    assert!(spent > 0, "{balance}");

    let browser = browser(&app).await;
    sign_in(&browser, &key).await;
    // The charts read the credit history, which follows the log: wait until it has both charges.
    let total_drawn = format!("return [...document.querySelectorAll('#chart-spent svg text')].some(t => t.textContent.trim() === '{spent}');");
    let started = std::time::Instant::now();
    loop {
        browser.goto("/credits").await;
        if browser.run(&total_drawn).await.as_bool() == Some(true) {
            break;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "today's total {spent} was never drawn");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let texts = |chart: &str| {
        let script = format!("return [...document.querySelectorAll('#{chart} svg text')].map(t => t.textContent.trim());");
        let browser = &browser;
        async move { browser.run(&script).await.as_array().expect("texts").iter().map(|t| t.as_str().unwrap_or_default().to_string()).collect::<Vec<_>>() }
    };
    let spent_texts = texts("chart-spent").await;
    let today = chrono::DateTime::from_timestamp(1_790_000_000, 0).expect("epoch").format("%m-%d").to_string();
    for expected in ["Model creation", "Image generation", today.as_str()] {
        assert!(spent_texts.iter().any(|t| t == expected), "{expected} in {spent_texts:?}");
    }
    let balance_texts = texts("chart-balance").await;
    assert!(balance_texts.iter().any(|t| t == "available") && balance_texts.contains(&today), "{balance_texts:?}");

    // The numbers beside them: today's row (first, newest) has the total and the balance.
    let cells = browser.run("return [...document.querySelectorAll('#spending-days tbody tr:first-child td')].map(td => td.textContent);").await;
    let cells: Vec<&str> = cells.as_array().expect("cells").iter().map(|c| c.as_str().expect("cell")).collect();
    let n = cells.len();
    assert_eq!(cells[n - 2], spent.to_string(), "{cells:?}");
    assert_eq!(cells[n - 1], available.to_string(), "{cells:?}");
    // An older day spent nothing and held the balance the grant left.
    let older = browser.run("return [...document.querySelectorAll('#spending-days tbody tr:last-child td')].map(td => td.textContent);").await;
    let older: Vec<&str> = older.as_array().expect("cells").iter().map(|c| c.as_str().expect("cell")).collect();
    assert_eq!(&older[older.len() - 2..], ["0", "0"], "before the team's first grant: nothing");

    // The ledger beside the balance: newest first, the last entry the deduction.
    let first_entry = browser.text("#credits-ledger tbody tr:first-child").await;
    assert!(first_entry.contains("deducted"), "{first_entry}");
    assert_eq!(browser.text("#credits-available").await, available.to_string());
    browser.screenshot("credits-charts").await;
    browser.assert_fits_width(390).await;
    browser.close().await;
    app.shutdown().await.expect("shutdown");
}

/// Where payments are not set up, a return from "checkout" says so; nothing claims a payment.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_payments_a_checkout_return_claims_no_payment() {
    let app = app(TestDb::sqlite().await).await;
    let (_team, key) = team(&app, "No Stripe", "basic", 0).await;
    let browser = browser(&app).await;
    sign_in(&browser, &key).await;
    for query in ["checkout=success", "checkout=success&session_id=cs_test_forged", "checkout=cancelled"] {
        browser.goto(&format!("/credits?{query}")).await;
        assert_eq!(browser.text("#notice h2").await, "Payments are not set up here", "{query}");
        assert!(!browser.page_text().await.contains("Payment received"), "{query}");
    }
    browser.close().await;
    app.shutdown().await.expect("shutdown");
}

/// With payments on, the return page says pending until Stripe's confirmation grants the
/// credits, then the grant itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_payments_a_checkout_return_is_pending_until_the_grant_arrives() {
    use crate::stripe::fixtures::{checkout_session, configure, event, FakeStripe};
    let fake = FakeStripe::default();
    let base = fake.start().await;
    let app = TestApp::spawn_with(TestDb::sqlite().await, |s| {
        configure(s, &base);
        s.jobs.worker_in_serve = false;
    })
    .await;
    let (team_id, key) = team(&app, "Paying team", "basic", 0).await;
    let browser = browser(&app).await;
    sign_in(&browser, &key).await;

    browser.goto("/credits?checkout=success&session_id=cs_test_web_1").await;
    assert_eq!(browser.text("#notice h2").await, "Payment pending");
    assert!(!browser.page_text().await.contains("Payment received"));
    browser.goto("/credits?checkout=success").await;
    assert_eq!(browser.text("#notice h2").await, "Payment pending", "without a session id it cannot know more");
    browser.goto("/credits?checkout=cancelled").await;
    assert_eq!(browser.text("#notice h2").await, "Checkout cancelled");

    // Another team's paid session is not this team's payment.
    let (other_team, _) = team(&app, "Other team", "basic", 0).await;
    let other: Value = crate::stripe::deliver(&app, &event("evt_web_other", "checkout.session.completed", 1_790_000_000, checkout_session("cs_test_web_2", &other_team, "cus_other", "paid"))).await;
    assert_eq!(other["status"], "applied", "{other}");
    browser.goto("/credits?checkout=success&session_id=cs_test_web_2").await;
    assert_eq!(browser.text("#notice h2").await, "Payment pending");

    // Stripe confirms: "Check again" on the same return page now shows the grant.
    browser.goto("/credits?checkout=success&session_id=cs_test_web_1").await;
    let handled = crate::stripe::deliver(&app, &event("evt_web_1", "checkout.session.completed", 1_790_000_000, checkout_session("cs_test_web_1", &team_id, "cus_web", "paid"))).await;
    assert_eq!(handled["status"], "applied", "{handled}");
    browser.click("#notice a").await;
    browser.wait_text("#notice h2", "Payment received").await;
    assert!(browser.text("#notice p").await.starts_with("500 credits were granted"), "{}", browser.text("#notice p").await);
    assert_eq!(browser.text("#credits-available").await, "500");
    browser.close().await;
    app.shutdown().await.expect("shutdown");
}
