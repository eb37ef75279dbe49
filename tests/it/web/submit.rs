//! Spending from the pages: a model created and images generated with the cost shown
//! first, the job watched live; the messages a Free team and a short balance get.

use reqwest::Method;

use super::{api, app, browser, sign_in, start_worker, stop_worker, team};
use crate::support::app::TestApp;
use crate::support::browser::Browser;
use crate::support::db::TestDb;

/// The job page the browser was sent to, once it is there: its id.
async fn job_page(browser: &Browser) -> String {
    browser.wait_text("#job-status", "queued").await;
    browser.path().await.strip_prefix("/jobs/").expect("a job page").to_string()
}

async fn select(browser: &Browser, css: &str, value: &str) {
    let script = format!(
        "const s = document.querySelector('{css}'); s.value = '{value}'; s.dispatchEvent(new Event('change', {{bubbles: true}}));"
    );
    browser.run(&script).await;
}

/// Sign in → create a model (cost first) → it trains → generate (estimate first) → the
/// job turns `completed` live → its images → the history shows the charge.
async fn create_and_generate(app: TestApp, screenshots: bool) {
    let (_team, key) = team(&app, "Acme", "pro", 5_000).await;
    let browser = browser(&app).await;
    sign_in(&browser, &key).await;

    browser.goto("/models/new").await;
    let creation_cost: i64 = browser.text("#estimate-cost").await.parse().expect("a cost before submitting");
    assert_eq!(browser.text("#estimate-after").await, (5_000 - creation_cost).to_string());
    browser.fill("#name", "Ava").await;
    browser.fill("#description", "a runner at golden hour").await;
    // One training image of the team's own joins the set (the rest are drawn).
    let own = tempfile::tempdir().expect("image dir");
    let own_image = own.path().join("ava-at-the-track.png");
    std::fs::write(&own_image, infrastructure::provider::render::render_png(&[9; 32], 64, 64).expect("png")).expect("write");
    browser.attach("#images", &own_image).await;
    if screenshots {
        browser.screenshot("model-new").await;
    }
    browser.click("#create-model").await;
    let creation = job_page(&browser).await;
    let worker = start_worker(&app);
    browser.wait_text("#job-status", "completed").await;
    stop_worker(worker).await;
    // The model job's steps, all done: the image sent, three batches of training images
    // (the other eleven), the set, training.
    let steps_done = "return document.querySelectorAll('#job-steps .step-done').length;";
    let started = std::time::Instant::now();
    while browser.run(steps_done).await.as_i64() != Some(6) {
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "the steps never all showed done");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    browser.goto("/models").await;
    browser.click("#models a").await;
    browser.wait_text("#model-status", "ready").await;
    if screenshots {
        browser.screenshot("model").await;
    }
    browser.assert_fits_width(375).await;

    // Generate: the estimate follows the options (script), the job page follows the job.
    browser.goto("/generate").await;
    browser.fill("#prompt", "on a beach at dawn").await;
    let one_image: i64 = browser.text("#estimate-cost").await.parse().expect("cost");
    select(&browser, "#count", "2").await;
    browser.wait_text("#estimate-cost", &(2 * one_image).to_string()).await;
    if screenshots {
        browser.screenshot("generate").await;
    }
    browser.assert_fits_width(375).await;
    browser.click("#generate").await;
    let generation = job_page(&browser).await;
    browser.run("window.kilnMarker = 7;").await;
    let worker = start_worker(&app);
    browser.wait_text("#job-status", "completed").await;
    assert_eq!(browser.run("return window.kilnMarker;").await.as_i64(), Some(7), "updated without reloading");
    let images = "const i = document.querySelectorAll('#job-images img'); \
         return i.length === 2 && Array.from(i).every(x => x.complete && x.naturalWidth > 0);";
    let started = std::time::Instant::now();
    while browser.run(images).await.as_bool() != Some(true) {
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "the two images never showed");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    stop_worker(worker).await;

    let (_, job) = api(&app, &key, Method::GET, &format!("/api/jobs/{generation}"), None).await;
    assert_eq!(job["cost_credits"], 2 * one_image, "charged what the estimate said");
    let (_, job) = api(&app, &key, Method::GET, &format!("/api/jobs/{creation}"), None).await;
    assert_eq!(job["cost_credits"], creation_cost);
    browser.wait_page_contains(&format!("/jobs/{generation}"), "deducted").await;
    browser.goto("/history").await;
    let charged = browser.run(&format!("return document.querySelectorAll('#credit-history a[href=\"/jobs/{generation}\"]').length;")).await;
    assert!(charged.as_i64().unwrap_or(0) >= 1, "the history links the charge to its job");
    browser.close().await;
    app.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_create_a_model_and_generate_from_the_pages() {
    create_and_generate(app(TestDb::sqlite().await).await, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_create_a_model_and_generate_from_the_pages() {
    create_and_generate(app(TestDb::postgres().await).await, false).await;
}

/// A Free team and a team short of credits are told why, and what to do, on the page
/// they submitted from.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn free_plan_and_short_balance_get_readable_messages() {
    let app = app(TestDb::sqlite().await).await;
    let (_, free_key) = team(&app, "Free team", "free", 1_000).await;
    let browser = browser(&app).await;
    sign_in(&browser, &free_key).await;
    browser.goto("/generate").await;
    assert!(browser.text("#plan-note").await.contains("runs no jobs"));
    browser.goto("/models/new").await;
    browser.fill("#name", "Nope").await;
    browser.fill("#description", "anything").await;
    browser.click("#create-model").await;
    browser.wait_text("#notice h2", "Your plan runs no jobs").await;
    assert_eq!(browser.run("return document.querySelector('#notice a').getAttribute('href');").await, "/credits");
    assert_eq!(browser.run("return document.querySelector('#name').value;").await, "Nope", "the form keeps what was typed");
    browser.client.delete_all_cookies().await.expect("sign out");

    let (_, poor_key) = team(&app, "Poor team", "pro", 10).await;
    sign_in(&browser, &poor_key).await;
    browser.goto("/models/new").await;
    assert!(browser.text("#estimate").await.contains("Not enough credits"), "said before submitting");
    browser.fill("#name", "Too dear").await;
    browser.fill("#description", "anything").await;
    browser.click("#create-model").await;
    browser.wait_text("#notice h2", "Not enough credits").await;
    assert!(browser.text("#notice").await.contains("your team has 10 available"));
    browser.screenshot("insufficient-credits").await;
    let (_, balance) = api(&app, &poor_key, Method::GET, "/api/credits/balance", None).await;
    assert_eq!((balance["available"].as_i64(), balance["reserved"].as_i64()), (Some(10), Some(0)), "nothing reserved");
    browser.close().await;
    app.shutdown().await.expect("shutdown");
}
