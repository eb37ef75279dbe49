//! One job's page: its times from its events, "generate again" with its settings, all
//! its images as one zip, cancel behind a confirmation (pointer and keyboard); and the
//! small faults of the forms around it — on SQLite and PostgreSQL.

use std::io::Read;

use reqwest::Method;

use super::{api, app, browser, fetch_bytes, fetch_text, queue_generation, ready_model, ready_model_named, sign_in, start_worker, stop_worker, team};
use crate::support::app::TestApp;
use crate::support::browser::Browser;
use crate::support::db::TestDb;

async fn status_of(app: &TestApp, key: &str, job: &str) -> String {
    let (_, view) = api(app, key, Method::GET, &format!("/api/jobs/{job}"), None).await;
    view["status"].as_str().expect("status").to_string()
}

async fn wait_status(app: &TestApp, key: &str, job: &str, wanted: &str) {
    let started = std::time::Instant::now();
    while status_of(app, key, job).await != wanted {
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "{job} never {wanted}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn attribute(browser: &Browser, css: &str, name: &str) -> String {
    let script = format!("return document.querySelector(\"{css}\").getAttribute('{name}');");
    browser.run(&script).await.as_str().unwrap_or_default().to_string()
}

/// Sends Enter to the focused element (the keyboard's way to follow a link or press a button).
async fn press_enter(browser: &Browser) {
    let focused = browser.client.active_element().await.expect("a focused element");
    focused.send_keys("\u{E007}").await.expect("enter");
}

async fn job_page_times_again_zip_and_cancel(app: TestApp, screenshots: bool) {
    let (_team, key) = team(&app, "Acme", "pro", 5_000).await;
    let model = ready_model(&app, &key).await;
    let (_, creations) = api(&app, &key, Method::GET, "/api/jobs?kind=model_creation", None).await;
    let creation = creations["items"][0]["job_id"].as_str().expect("creation job").to_string();
    let browser = browser(&app).await;
    sign_in(&browser, &key).await;

    // A model job's steps each show the time they took; the job its times in all.
    browser.goto(&format!("/jobs/{creation}")).await;
    let took = browser.run("return Array.from(document.querySelectorAll('#job-steps .step-done .step-took')).map(s => s.textContent);").await;
    let took: Vec<String> = took.as_array().expect("steps").iter().map(|t| t.as_str().unwrap_or_default().to_string()).collect();
    assert!(took.len() >= 3, "{took:?}");
    // The training images sent with a job are recorded with its acceptance (no run time);
    // every step a worker ran has one.
    assert!(took.iter().all(|t| t.ends_with(" s)")), "every step ran and took a time: {took:?}");
    for fact in ["#job-waited", "#job-ran", "#job-elapsed"] {
        assert!(browser.text(fact).await.ends_with(" s"), "{fact}: {}", browser.text(fact).await);
    }

    // A completed generation: its times, its images in one zip, "generate again".
    let job = queue_generation(&app, &key, &model, "on a beach at dawn").await;
    let worker = start_worker(&app);
    wait_status(&app, &key, &job, "completed").await;
    stop_worker(worker).await;
    browser.goto(&format!("/jobs/{job}")).await;
    assert!(browser.text("#job-elapsed").await.ends_with(" s"));
    assert_eq!(browser.text("#download-zip").await, "Download all 2 images (zip)");
    browser.assert_fits_width(390).await;
    let (status, zip_bytes) = fetch_bytes(&browser, &attribute(&browser, "#download-zip", "href").await).await;
    assert_eq!(status, 200);
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip_bytes)).expect("a zip");
    let sources = browser.run("return Array.from(document.querySelectorAll('#job-images img')).map(i => i.getAttribute('src'));").await;
    let sources: Vec<String> = sources.as_array().expect("images").iter().map(|s| s.as_str().expect("src").to_string()).collect();
    assert_eq!(archive.len(), sources.len(), "every image");
    for (index, source) in sources.iter().enumerate() {
        let (status, shown) = fetch_bytes(&browser, source).await;
        assert_eq!(status, 200);
        let mut zipped = Vec::new();
        archive.by_name(&format!("{}.png", index + 1)).expect("image in the zip").read_to_end(&mut zipped).expect("read");
        assert_eq!(zipped, shown, "image {} is the one shown", index + 1);
    }
    // Another team's session gets no zip of it.
    let (_, other_key) = team(&app, "Other", "pro", 100).await;
    let other = super::browser(&app).await;
    sign_in(&other, &other_key).await;
    assert_eq!(fetch_text(&other, &format!("/jobs/{job}/images.zip")).await.0, 404);
    other.close().await;

    browser.click("#generate-again").await;
    browser.wait_text("h1", "Generate images").await;
    let value = |css: &'static str| {
        let browser = &browser;
        async move { browser.run(&format!("return document.querySelector('{css}').value;")).await.as_str().expect("value").to_string() }
    };
    assert_eq!(value("#prompt").await, "on a beach at dawn");
    assert_eq!(value("#count").await, "2");
    assert_eq!(value("#resolution").await, "512x512");
    assert_eq!(value("#model_id").await, model);

    // Cancel asks first: following the button cancels nothing, nor does "keep it".
    let queued = queue_generation(&app, &key, &model, "a quiet street").await;
    browser.goto(&format!("/jobs/{queued}")).await;
    browser.click("#cancel-job").await;
    browser.wait_text("h1", "Cancel this job?").await;
    assert_eq!(status_of(&app, &key, &queued).await, "queued");
    if screenshots {
        browser.screenshot("job-cancel").await;
    }
    browser.assert_fits_width(390).await;
    browser.click("#keep-job").await;
    browser.wait_text("#job-status", "queued").await;
    // A cancel sent without the confirmation is sent to it.
    let script = "const done = arguments[1]; const body = new URLSearchParams({csrf: document.querySelector('input[name=csrf]').value}); \
        fetch(arguments[0], {method: 'POST', body, credentials: 'same-origin'}).then(r => done(r.url));";
    let landed = browser.client.execute_async(script, vec![serde_json::json!(format!("/jobs/{queued}/cancel"))]).await.expect("post");
    assert!(landed.as_str().expect("url").ends_with(&format!("/jobs/{queued}/cancel")), "{landed}");
    assert_eq!(status_of(&app, &key, &queued).await, "queued");
    // With the keyboard alone: Enter on the button, Enter on the confirmation.
    browser.run("document.getElementById('cancel-job').focus();").await;
    press_enter(&browser).await;
    browser.wait_text("h1", "Cancel this job?").await;
    // The confirmation takes the focus as the page opens (autofocus).
    let started = std::time::Instant::now();
    while browser.run("return document.activeElement && document.activeElement.id;").await != "confirm-cancel" {
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "the confirmation never had the focus");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    press_enter(&browser).await;
    browser.wait_text("#job-status", "cancelled").await;
    let words = browser.text("#job-failure").await;
    assert!(words.contains("cancelled") && words.contains("refunded"), "{words}");
    assert_eq!(browser.run("return document.querySelectorAll('#cancel-job').length;").await.as_i64(), Some(0));
    browser.close().await;
    app.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_job_page_times_again_zip_and_cancel() {
    job_page_times_again_zip_and_cancel(app(TestDb::sqlite().await).await, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_job_page_times_again_zip_and_cancel() {
    job_page_times_again_zip_and_cancel(app(TestDb::postgres().await).await, false).await;
}

/// The estimate the page's script asks for, for the form as it is now.
async fn scripted_estimate(browser: &Browser) -> String {
    let script = "const done = arguments[0]; const form = document.querySelector('form[data-estimate]'); \
        fetch(form.dataset.estimate, {method: 'POST', body: new URLSearchParams(new FormData(form)), credentials: 'same-origin'}) \
        .then(r => r.text()).then(done);";
    browser.client.execute_async(script, Vec::new()).await.expect("estimate").as_str().expect("html").to_string()
}

async fn small_faults_are_fixed(app: TestApp) {
    let browser = browser(&app).await;

    // The Free plan's create form: the price, and that the plan runs no jobs — not a
    // balance after a job that cannot run.
    let (_, free_key) = team(&app, "Free team", "free", 1_000).await;
    sign_in(&browser, &free_key).await;
    browser.goto("/models/new").await;
    assert!(browser.text("#estimate-no-jobs").await.contains("runs no jobs"));
    let fragment = scripted_estimate(&browser).await;
    assert!(fragment.contains("estimate-no-jobs") && !fragment.contains("After this job"), "{fragment}");
    browser.client.delete_all_cookies().await.expect("sign out");

    // A team with no model is invited to create one, before and after submitting.
    let (_, key) = team(&app, "Acme", "pro", 5_000).await;
    sign_in(&browser, &key).await;
    browser.goto("/generate").await;
    assert!(browser.text("#estimate").await.contains("No ready model yet"));
    let fragment = scripted_estimate(&browser).await;
    assert!(fragment.contains("No ready model yet") && fragment.contains("/models/new"), "{fragment}");
    assert_eq!(attribute(&browser, "#no-models a", "href").await, "/models/new");
    // Sent anyway (the form has no model to pick): the same invitation.
    let script = "const done = arguments[0]; const form = document.querySelector('form[data-estimate]'); \
        const body = new URLSearchParams(new FormData(form)); body.set('prompt', 'anything'); \
        fetch('/generate', {method: 'POST', body, credentials: 'same-origin'}).then(r => r.text().then(t => done([r.status, t])));";
    let answer = browser.client.execute_async(script, Vec::new()).await.expect("submit");
    let page = answer[1].as_str().expect("page");
    assert_eq!(answer[0], 422);
    assert!(page.contains("No ready model yet") && !page.contains("does not exist in your team"), "{page}");

    // A model with a long name: the empty form prices the job (nothing typed is no
    // error yet) and fits a 390 px screen.
    let long_name = "Longname".repeat(domain::text::MODEL_NAME_CHARS_MAX / 8);
    let model = ready_model_named(&app, &key, &long_name).await;
    browser.goto("/generate").await;
    assert_eq!(browser.run("return document.querySelector('#model_id').value;").await, model.as_str());
    assert!(browser.text("#estimate-cost").await.parse::<i64>().is_ok());
    let fragment = scripted_estimate(&browser).await;
    assert!(fragment.contains("estimate-cost") && !fragment.contains("Check the prompt"), "{fragment}");
    browser.assert_fits_width(390).await;
    for page in ["/", "/history", &format!("/models/{model}")] {
        browser.goto(page).await;
        browser.assert_fits_width(390).await;
    }

    // The prompt boxes take what the server takes: the domain's text rule.
    let limit = domain::text::PROMPT_CHARS_MAX as i64;
    browser.goto("/generate").await;
    assert_eq!(browser.run("return document.querySelector('#prompt').maxLength;").await.as_i64(), Some(limit));
    browser.goto("/models/new").await;
    assert_eq!(browser.run("return document.querySelector('#description').maxLength;").await.as_i64(), Some(domain::text::DESCRIPTION_CHARS_MAX as i64));
    browser.goto(&format!("/models/{model}")).await;
    assert_eq!(browser.run("return document.querySelector('#prompt').maxLength;").await.as_i64(), Some(limit));
    // A prompt of the full length goes through.
    browser.goto("/generate").await;
    browser.run(&format!("document.querySelector('#prompt').value = 'x'.repeat({limit});")).await;
    browser.click("#generate").await;
    browser.wait_text("#job-status", "queued").await;
    browser.close().await;
    app.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_small_faults_are_fixed() {
    small_faults_are_fixed(app(TestDb::sqlite().await).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_small_faults_are_fixed() {
    small_faults_are_fixed(app(TestDb::postgres().await).await).await;
}
