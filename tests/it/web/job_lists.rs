//! The job lists: rows that tell (model, prompt, status, cost, time taken, error),
//! search and filters that narrow them, pages both ways, exports of exactly what is
//! filtered, the same filters in the API, and rows, cards and the header's credits that
//! follow the team live — on SQLite and PostgreSQL.

use reqwest::Method;
use serde_json::{json, Value};

use super::{api, app, browser, fetch_text, queue_generation, ready_model, sign_in, start_worker, stop_worker, team};
use crate::support::app::TestApp;
use crate::support::browser::Browser;
use crate::support::db::TestDb;

/// The job ids of the rows on the page, top to bottom.
async fn row_ids(browser: &Browser) -> Vec<String> {
    let ids = browser.run("return Array.from(document.querySelectorAll('#job-table tr[data-job-id]')).map(r => r.dataset.jobId);").await;
    ids.as_array().map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

/// Goes where the link `css` leads (and waits for that page).
async fn follow(browser: &Browser, css: &str) {
    let href = browser.run(&format!("return document.querySelector('{css}').getAttribute('href');")).await;
    browser.goto(href.as_str().expect("a link")).await;
}

/// Every row of the filtered list, following "Older jobs" to the end.
async fn all_pages(browser: &Browser, first: &str) -> Vec<String> {
    browser.goto(first).await;
    let mut ids = row_ids(browser).await;
    while browser.run("return !!document.getElementById('older-jobs');").await.as_bool() == Some(true) {
        follow(browser, "#older-jobs").await;
        let page = row_ids(browser).await;
        assert!(!page.is_empty(), "an older page has rows");
        ids.extend(page);
    }
    ids
}

async fn get(app: &TestApp, key: &str, path: &str) -> (u16, Value) {
    api(app, key, Method::GET, path, None).await
}

async fn lists_filter_page_and_export(app: TestApp, screenshots: bool) {
    let (_team, key) = team(&app, "Acme", "pro", 100_000).await;
    let model = ready_model(&app, &key).await;
    // A second model, still training (its creation job waits: no worker runs).
    app.clock.advance(chrono::Duration::seconds(1));
    let (_, page) = get(&app, &key, "/api/reference-models?limit=1").await;
    let body = json!({"name": "Bea", "description": "a cellist on a rooftop", "reference_model_id": page["items"][0]["id"]});
    let (status, created) = api(&app, &key, Method::POST, "/api/models", Some(body)).await;
    assert_eq!(status, 202, "{created}");
    let other_model = created["model"]["model_id"].as_str().expect("model").to_string();
    // A second apart each (the test clock stands still otherwise): newest first is an order.
    let queue = |prompt: String| {
        let (app, key, model) = (&app, &key, &model);
        async move {
            app.clock.advance(chrono::Duration::seconds(1));
            queue_generation(app, key, model, &prompt).await
        }
    };
    let mut sunsets = Vec::new();
    for n in 0..28 {
        sunsets.push(queue(format!("sunset over the harbour, take {n}")).await);
    }
    let bicycles = [queue("a red BICYCLE against a wall".into()).await, queue("an old bicycle in 50% fog".into()).await];
    let cancelled = api(&app, &key, Method::DELETE, &format!("/api/jobs/{}", bicycles[1]), None).await;
    assert_eq!(cancelled.0, 200, "{}", cancelled.1);

    let browser = browser(&app).await;
    sign_in(&browser, &key).await;

    // Rows name the model and the prompt; the cancelled one its reason.
    browser.goto("/history").await;
    let first_page = row_ids(&browser).await;
    assert_eq!(first_page.len(), 25, "a full page");
    assert_eq!(first_page[0], bicycles[1], "newest first");
    let row = browser.text(&format!("tr[data-job-id='{}']", bicycles[1])).await;
    assert!(row.contains("Ava") && row.contains("an old bicycle in 50% fog") && row.contains("cancelled"), "{row}");
    assert!(browser.text(&format!("tr[data-job-id='{}'] .error", bicycles[1])).await.len() > 3, "the cancel's reason");
    assert_eq!(browser.text(&format!("tr[data-job-id='{}'] .took", sunsets[27])).await, "—", "not ended");

    // Search by prompt (any case, `%` taken literally), then each filter narrows the list.
    for (query, expected) in [
        ("q=bicycle", vec![bicycles[1].clone(), bicycles[0].clone()]),
        ("q=50%25", vec![bicycles[1].clone()]),
        ("q=bicycle&status=cancelled", vec![bicycles[1].clone()]),
        ("status=queued&q=BICYCLE", vec![bicycles[0].clone()]),
        (&format!("model_id={other_model}"), vec![created["job"]["job_id"].as_str().expect("job").to_string()]),
        ("kind=model_creation", vec![created["job"]["job_id"].as_str().expect("job").to_string()]),
        ("from=2999-01-01", vec![]),
    ] {
        let ids = all_pages(&browser, &format!("/history?{query}")).await;
        if query == "kind=model_creation" {
            assert_eq!(ids.len(), 2, "both models' creations: {ids:?}");
            assert_eq!(ids[0], expected[0]);
        } else {
            assert_eq!(ids, expected, "{query}");
        }
    }
    browser.goto("/history?q=bicycle").await;
    assert_eq!(browser.run("return document.querySelector('#q').value;").await, "bicycle", "the form shows the filter");
    if screenshots {
        browser.screenshot("history-filtered").await;
    }
    // The form itself: a model picked and a day range, sent by its button.
    let today = crate::support::app::epoch().date_naive().to_string();
    browser.goto("/history").await;
    browser.run(&format!("document.querySelector('#model_id').value = '{other_model}';")).await;
    browser.run(&format!("document.querySelector('#from').value = '{today}'; document.querySelector('#to').value = '{today}';")).await;
    browser.click("#filter-jobs").await;
    let started = std::time::Instant::now();
    let sent = "return location.search.includes('model_id=') && document.readyState === 'complete';";
    while browser.run(sent).await.as_bool() != Some(true) {
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "the filter form was never sent");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(row_ids(&browser).await.len(), 1, "{}", browser.page_text().await);
    // A filter that cannot be read is said, not ignored.
    browser.goto("/history?from=2026-02-30").await;
    browser.wait_text("#notice h2", "Check the filter").await;
    assert!(browser.text("#notice").await.contains("from"));

    // Pages both ways: older, then newer back to the same first page.
    browser.goto("/history").await;
    assert_eq!(browser.run("return !!document.getElementById('newer-jobs');").await.as_bool(), Some(false), "the first page has nothing newer");
    follow(&browser, "#older-jobs").await;
    let second = row_ids(&browser).await;
    assert_eq!(second.len(), 32 - 25, "the rest: 28 + 2 generations, 2 creations");
    assert!(second.iter().all(|id| !first_page.contains(id)));
    follow(&browser, "#newer-jobs").await;
    assert_eq!(row_ids(&browser).await, first_page);
    assert_eq!(browser.run("return !!document.getElementById('newer-jobs');").await.as_bool(), Some(false));
    browser.assert_fits_width(390).await;

    // The exports hold exactly the filtered list, in its order.
    for filter in ["q=sunset", "status=queued&kind=image_generation", ""] {
        let listed = all_pages(&browser, &format!("/history?{filter}")).await;
        let (status, csv_text) = fetch_text(&browser, &format!("/history/jobs.csv?{filter}")).await;
        assert_eq!(status, 200);
        let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
        let headers = reader.headers().expect("header").clone();
        let id_column = headers.iter().position(|h| h == "job_id").expect("job_id column");
        let prompt_column = headers.iter().position(|h| h == "prompt").expect("prompt column");
        let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("a CSV row")).collect();
        assert_eq!(rows.iter().map(|r| r[id_column].to_string()).collect::<Vec<_>>(), listed, "CSV of {filter:?}");
        if filter == "q=sunset" {
            assert!(rows.iter().all(|r| r[prompt_column].starts_with("sunset over the harbour")));
        }
        let (status, json_text) = fetch_text(&browser, &format!("/history/jobs.json?{filter}")).await;
        assert_eq!(status, 200);
        let items: Vec<Value> = serde_json::from_str(&json_text).expect("one JSON array");
        assert_eq!(items.iter().map(|i| i["job_id"].as_str().expect("id").to_string()).collect::<Vec<_>>(), listed, "JSON of {filter:?}");
        assert!(items.iter().all(|i| i["cost_credits"].as_i64().is_some() && i.get("model_name").is_some()));
    }

    // The API reads the same filters, pages both ways, and refuses a bad one as a problem.
    let (status, found) = get(&app, &key, "/api/jobs?q=Bicycle").await;
    assert_eq!(status, 200);
    assert_eq!(found["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(found["items"][0]["prompt"], "an old bicycle in 50% fog");
    assert_eq!(found["items"][0]["model_name"], "Ava");
    let (_, today_jobs) = get(&app, &key, &format!("/api/jobs?from={today}&to={today}&model_id={model}&limit=200")).await;
    assert_eq!(today_jobs["items"].as_array().map(Vec::len), Some(31), "30 generations and the model's creation");
    let (_, first) = get(&app, &key, "/api/jobs?limit=10").await;
    assert!(first["prev_cursor"].is_null(), "nothing newer than the first page");
    let (_, second) = get(&app, &key, &format!("/api/jobs?limit=10&cursor={}", first["next_cursor"].as_str().expect("next"))).await;
    let (_, back) = get(&app, &key, &format!("/api/jobs?limit=10&cursor={}", second["prev_cursor"].as_str().expect("prev"))).await;
    assert_eq!(back["items"], first["items"], "back to the first page");
    for (bad, field) in [("from=2026-13-01", "from"), ("to=tomorrow", "to"), ("status=lost", "status"), ("kind=video", "kind"), ("model_id=nope", "model_id"), ("from=2026-12-02&to=2026-12-01", "to")] {
        let response = app.as_key(&key, Method::GET, &format!("/api/jobs?{bad}")).send().await.expect("list");
        assert_eq!(response.status(), 422, "{bad}");
        assert_eq!(response.headers()["content-type"], "application/problem+json", "{bad}");
        let problem: Value = response.json().await.expect("problem");
        assert_eq!(problem["field"], field, "{bad}: {problem}");
    }
    browser.close().await;
    app.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_job_lists_filter_page_and_export() {
    lists_filter_page_and_export(app(TestDb::sqlite().await).await, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_job_lists_filter_page_and_export() {
    lists_filter_page_and_export(app(TestDb::postgres().await).await, false).await;
}

/// With the overview open, a job submitted elsewhere lowers the header's credits and the
/// cards, and a running row turns completed — without a reload.
async fn overview_follows_the_team_live(app: TestApp) {
    let (_team, key) = team(&app, "Acme", "pro", 5_000).await;
    let model = ready_model(&app, &key).await;
    let job = queue_generation(&app, &key, &model, "a lighthouse in a storm").await;
    let browser = browser(&app).await;
    sign_in(&browser, &key).await;
    let (_, balance) = get(&app, &key, "/api/credits/balance").await;
    let available = balance["available"].as_i64().expect("available");
    assert_eq!(browser.text("#available").await, available.to_string());
    assert_eq!(browser.text(&format!("tr[data-job-id='{job}'] .status")).await, "queued");
    browser.run("window.kilnMarker = 11;").await;

    // Spent elsewhere (the API): the header and the cards follow.
    let second = queue_generation(&app, &key, &model, "a lighthouse at noon").await;
    let (_, job_view) = get(&app, &key, &format!("/api/jobs/{second}")).await;
    let after = available - job_view["cost_credits"].as_i64().expect("cost");
    browser.wait_text("#available", &after.to_string()).await;
    let summary = browser.text("#team-summary").await;
    assert!(summary.ends_with(&format!("{after} credits")), "{summary}");
    browser.wait_text("#queued", "2").await;

    // The listed row follows its job to the end, and the cards with it.
    let worker = start_worker(&app);
    browser.wait_text(&format!("tr[data-job-id='{job}'] .status"), "completed").await;
    browser.wait_text("#reserved", "0").await;
    stop_worker(worker).await;
    assert_ne!(browser.text(&format!("tr[data-job-id='{job}'] .took")).await, "—", "the time it took");
    assert_eq!(browser.run("return window.kilnMarker;").await.as_i64(), Some(11), "updated without reloading");
    browser.assert_fits_width(390).await;
    browser.close().await;
    app.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_overview_follows_the_team_live() {
    overview_follows_the_team_live(app(TestDb::sqlite().await).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_overview_follows_the_team_live() {
    overview_follows_the_team_live(app(TestDb::postgres().await).await).await;
}
