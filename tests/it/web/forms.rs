//! The text rule and unreadable numbers through each form of the dashboard: refused on
//! the page the form was sent from, with what was typed kept and nothing recorded or
//! charged — on SQLite and PostgreSQL. Unknown dashboard URLs are an HTML 404.

use reqwest::Method;

use super::{api, app, browser, ready_model, sign_in, team};
use crate::support::app::TestApp;
use crate::support::browser::Browser;
use crate::support::db::TestDb;

async fn event_count(app: &TestApp) -> i64 {
    infrastructure::db_fetch_optional!(&app.state.db, (i64,), "SELECT COUNT(*) FROM events").expect("count").expect("row").0
}

/// (available, reserved) of the team's balance.
async fn balance(app: &TestApp, key: &str) -> (i64, i64) {
    let (_, balance) = api(app, key, Method::GET, "/api/credits/balance", None).await;
    (balance["available"].as_i64().expect("available"), balance["reserved"].as_i64().expect("reserved"))
}

/// Sets a form field's value as a script would (a person cannot type NUL): `value` is a
/// JavaScript string literal's body, escapes included.
async fn set(browser: &Browser, css: &str, value: &str) {
    browser.run(&format!("document.querySelector('{css}').value = '{value}';")).await;
}

/// Offers `value` in the select `css` and chooses it (what a hand-made request sends).
async fn choose_unoffered(browser: &Browser, css: &str, value: &str) {
    let script = format!(
        "const s = document.querySelector('{css}'); const o = document.createElement('option'); \
         o.value = '{value}'; o.text = '{value}'; s.add(o); s.value = '{value}';"
    );
    browser.run(&script).await;
}

async fn value(browser: &Browser, css: &str) -> String {
    browser.run(&format!("return document.querySelector('{css}').value;")).await.as_str().expect("a value").to_string()
}

/// Waits for the page's notice to say `title`; returns its text.
async fn refused_with(browser: &Browser, title: &str) -> String {
    browser.wait_text("#notice h2", title).await;
    browser.text("#notice").await
}

async fn forms_refuse_control_characters_and_unreadable_numbers(app: TestApp) {
    let (_team, key) = team(&app, "Acme", "pro", 5_000).await;
    let model_id = ready_model(&app, &key).await;
    let browser = browser(&app).await;
    sign_in(&browser, &key).await;
    let (events, money) = (event_count(&app).await, balance(&app, &key).await);

    // /generate: NUL and other controls in the prompt.
    for (typed, code) in [("on a beach\\u0000 at dawn", "U+0000"), ("on a beach\\u0007 at dawn", "U+0007"), ("on a beach\\u001b[31m at dawn", "U+001B")] {
        browser.goto("/generate").await;
        set(&browser, "#prompt", typed).await;
        set(&browser, "#count", "2").await;
        browser.click("#generate").await;
        let notice = refused_with(&browser, "Check the prompt").await;
        assert!(notice.contains(code), "{typed}: {notice}");
        let kept = value(&browser, "#prompt").await;
        assert!(kept.starts_with("on a beach") && kept.ends_with("at dawn"), "the prompt is kept: {kept:?}");
        assert_eq!(value(&browser, "#model_id").await, model_id, "the model is kept");
        assert_eq!(value(&browser, "#count").await, "2", "the count is kept");
    }
    // /generate: numbers the form cannot read are a message on the form.
    for count in ["-1", "abc", "99999999999", "1.5"] {
        browser.goto("/generate").await;
        browser.fill("#prompt", "on a beach at dawn").await;
        choose_unoffered(&browser, "#count", count).await;
        browser.click("#generate").await;
        let notice = refused_with(&browser, "Check the number of images").await;
        assert!(notice.contains("whole number from 1 to 8"), "{count}: {notice}");
        assert_eq!(value(&browser, "#prompt").await, "on a beach at dawn", "{count}: the prompt is kept");
    }
    // A count the form reads but the rules refuse: the use case's message.
    browser.goto("/generate").await;
    browser.fill("#prompt", "on a beach at dawn").await;
    choose_unoffered(&browser, "#count", "0").await;
    browser.click("#generate").await;
    refused_with(&browser, "Check the count").await;

    // /models/new (a multipart form): the name and the description.
    browser.goto("/models/new").await;
    set(&browser, "#name", "Ava\\u0000").await;
    browser.fill("#description", "a runner at golden hour").await;
    browser.click("#create-model").await;
    let notice = refused_with(&browser, "Check the name").await;
    assert!(notice.contains("U+0000"), "{notice}");
    assert!(value(&browser, "#name").await.starts_with("Ava"), "the name is kept");
    assert_eq!(value(&browser, "#description").await, "a runner at golden hour", "the description is kept");
    browser.goto("/models/new").await;
    browser.fill("#name", "Ava").await;
    set(&browser, "#description", "a runner\\u0001 at golden hour").await;
    browser.click("#create-model").await;
    let notice = refused_with(&browser, "Check the description").await;
    assert!(notice.contains("U+0001"), "{notice}");
    assert_eq!(value(&browser, "#name").await, "Ava", "the name is kept");

    // A model's page: the refinement prompt.
    browser.goto(&format!("/models/{model_id}")).await;
    set(&browser, "#prompt", "warmer\\u001b[31m light").await;
    browser.click("form[action$='/refine'] button[type=submit]").await;
    let notice = refused_with(&browser, "Check the prompt").await;
    assert!(notice.contains("U+001B"), "{notice}");
    assert!(value(&browser, "#prompt").await.starts_with("warmer"), "the prompt is kept");

    assert_eq!(event_count(&app).await, events, "nothing recorded");
    assert_eq!(balance(&app, &key).await, money, "nothing charged or reserved");
    browser.close().await;
    app.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_forms_refuse_control_characters_and_unreadable_numbers() {
    forms_refuse_control_characters_and_unreadable_numbers(app(TestDb::sqlite().await).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_forms_refuse_control_characters_and_unreadable_numbers() {
    forms_refuse_control_characters_and_unreadable_numbers(app(TestDb::postgres().await).await).await;
}

/// (status, content type, body) of a GET.
async fn get(app: &TestApp, path: &str) -> (u16, String, String) {
    let response = app.get(path).await;
    let status = response.status().as_u16();
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    (status, content_type, response.text().await.expect("body"))
}

/// A dashboard URL nothing answers is the dashboard's 404 page; one under `/api` stays a
/// problem. Page paths and queries the text rule refuses are pages too, never JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_dashboard_urls_are_an_html_404() {
    let app = app(TestDb::sqlite().await).await;
    for (path, status, says) in [
        ("/no-such-page", 404, "Not found"),
        ("/models/new/nothing", 404, "Not found"),
        ("/jobs/%00", 404, "Not found"),
        ("/models/a%01b", 404, "Not found"),
        ("/history?status=%00", 422, "Check the form"),
    ] {
        let (got, content_type, body) = get(&app, path).await;
        assert_eq!(got, status, "{path}: {body}");
        assert!(content_type.starts_with("text/html"), "{path}: {content_type}");
        assert!(body.contains(says), "{path}: {body}");
    }
    for path in ["/api/no-such-thing", "/api/jobs/x/nothing", "/api"] {
        let (got, content_type, body) = get(&app, path).await;
        assert_eq!(got, 404, "{path}: {body}");
        assert_eq!(content_type, "application/problem+json", "{path}");
        assert!(body.contains("/problems/not-found"), "{path}: {body}");
    }
    app.shutdown().await.expect("shutdown");
}
