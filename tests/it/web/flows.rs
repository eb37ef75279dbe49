//! The dashboard's scenarios, each in a real browser.

use reqwest::Method;

use super::{api, app, browser, queue_generation, ready_model, sign_in, start_worker, stop_worker, team};
use crate::support::app::TestApp;
use crate::support::db::TestDb;

/// Sign in, overview, catalog, a generation watched live to `completed`, its images,
/// the charge in the history and the CSV, the credits page.
async fn tour(app: TestApp, screenshots: bool) {
    let (_team, key) = team(&app, "Acme", "pro", 5_000).await;
    let browser = browser(&app).await;

    // Signed out, every page leads to the sign-in; a wrong key says so, without detail.
    browser.goto("/").await;
    assert_eq!(browser.path().await, "/sign-in");
    if screenshots {
        browser.screenshot("sign-in").await;
    }
    browser.fill("#api_key", "kiln_not-a-key").await;
    browser.click("main button[type=submit]").await;
    browser.wait_text("#notice h2", "That key was not accepted").await;

    sign_in(&browser, &key).await;
    assert_eq!(browser.text("#available").await, "5000");
    assert_eq!(browser.text("#running").await, "0 of 3");
    if screenshots {
        browser.screenshot("overview").await;
    }
    browser.assert_fits_width(375).await;

    // Catalog: cards with previews; search by name and filter by category.
    browser.goto("/catalog").await;
    let cards = browser.run("return document.querySelectorAll('#catalog li').length;").await;
    assert_eq!(cards.as_i64(), Some(12), "a full first page");
    let first = browser.text("#catalog li h2").await;
    let preview_loaded = browser.run("const i = document.querySelector('#catalog img'); return i.complete && i.naturalWidth > 0;").await;
    assert_eq!(preview_loaded.as_bool(), Some(true), "preview images load from the binary's signed URLs");
    if screenshots {
        browser.screenshot("catalog").await;
    }
    browser.fill("#q", &first).await;
    browser.click("form[role=search] button").await;
    browser.wait_text("#catalog li h2", &first).await;
    let found = browser.run("return document.querySelectorAll('#catalog li').length;").await;
    assert_eq!(found.as_i64(), Some(1), "searching a name finds that model");
    browser.assert_fits_width(375).await;

    // A generation waits queued (no worker yet); its page turns `completed` live.
    let model_id = ready_model(&app, &key).await;
    let job_id = queue_generation(&app, &key, &model_id, "on a beach at dawn").await;
    browser.goto(&format!("/jobs/{job_id}")).await;
    assert_eq!(browser.text("#job-status").await, "queued");
    browser.run("window.kilnMarker = 42;").await;
    let worker = start_worker(&app);
    browser.wait_text("#job-status", "completed").await;
    assert_eq!(browser.run("return window.kilnMarker;").await.as_i64(), Some(42), "updated without reloading");
    let images_loaded = "const i = document.querySelectorAll('#job-images img'); \
         return i.length === 2 && Array.from(i).every(x => x.complete && x.naturalWidth > 0);";
    let started = std::time::Instant::now();
    while browser.run(images_loaded).await.as_bool() != Some(true) {
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "the two images never showed");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(browser.text("#job-money").await.contains("deducted"));
    stop_worker(worker).await;
    if screenshots {
        browser.screenshot("job").await;
    }
    browser.assert_fits_width(375).await;

    // History: the job, and its charge in the credit history (an async read model).
    browser.wait_page_contains("/history", "deducted").await;
    let job_link = browser.run(&format!("return document.querySelectorAll('a[href=\"/jobs/{job_id}\"]').length;")).await;
    assert!(job_link.as_i64().unwrap_or(0) >= 2, "the job is listed and its ledger entries link to it");
    if screenshots {
        browser.screenshot("history").await;
    }
    browser.assert_fits_width(375).await;
    // The page's "deducted" may be the job list's; the ledger (async) may follow a moment later.
    let started = std::time::Instant::now();
    let csv = loop {
        let csv = browser
            .client
            .execute_async("const done = arguments[0]; fetch('/history/credits.csv').then(r => r.text()).then(done);", Vec::new())
            .await
            .expect("csv");
        let csv = csv.as_str().expect("csv text").to_string();
        if csv.lines().any(|l| l.contains(",deducted,") && l.contains(&job_id)) || started.elapsed() > std::time::Duration::from_secs(30) {
            break csv;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(csv.starts_with("entry_no,occurred_at,entry_type"), "{csv}");
    assert!(csv.lines().any(|l| l.contains(",deducted,") && l.contains(&job_id)), "{csv}");

    // Credits: balance after the three charges; without Stripe, how credits are granted.
    let (_, balance) = api(&app, &key, Method::GET, "/api/credits/balance", None).await;
    browser.goto("/credits").await;
    assert_eq!(browser.text("#credits-available").await, balance["available"].to_string());
    assert!(browser.text("#no-stripe").await.contains("Stripe is not configured"));
    if screenshots {
        browser.screenshot("credits").await;
    }
    browser.assert_fits_width(375).await;

    browser.close().await;
    app.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_dashboard_tour() {
    tour(app(TestDb::sqlite().await).await, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_dashboard_tour() {
    tour(app(TestDb::postgres().await).await, false).await;
}

/// A queued job cancelled from its page shows the refund, live and in the history.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_a_queued_job_from_its_page_refunds_it() {
    let app = app(TestDb::sqlite().await).await;
    let (_team, key) = team(&app, "Basic team", "basic", 2_000).await;
    let model_id = ready_model(&app, &key).await;
    let job_id = queue_generation(&app, &key, &model_id, "a quiet street").await;
    let browser = browser(&app).await;
    sign_in(&browser, &key).await;
    browser.goto(&format!("/jobs/{job_id}")).await;
    assert_eq!(browser.text("#job-status").await, "queued");
    browser.click("#cancel-job").await;
    browser.click("#confirm-cancel").await;
    browser.wait_text("#job-status", "cancelled").await;
    assert!(browser.text("#job-money").await.contains("refunded"), "{}", browser.text("#job-money").await);
    let buttons = browser.run("return document.querySelectorAll('#cancel-job').length;").await;
    assert_eq!(buttons.as_i64(), Some(0), "a cancelled job cannot be cancelled again");
    browser.wait_page_contains(&format!("/jobs/{job_id}"), "refunded").await;
    let (_, balance) = api(&app, &key, Method::GET, "/api/credits/balance", None).await;
    assert_eq!(balance["reserved"], 0, "{balance}");
    browser.wait_page_contains("/history", "refunded").await;
    browser.close().await;
    app.shutdown().await.expect("shutdown");
}

/// Forms need this site's CSRF token and Origin; one team's session cannot see another
/// team's job.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forms_need_the_csrf_token_and_teams_see_only_their_jobs() {
    let app = app(TestDb::sqlite().await).await;
    let (team_a, key_a) = team(&app, "Team A", "pro", 1_000).await;
    let (_, key_b) = team(&app, "Team B", "pro", 1_000).await;
    // Model creations are jobs too: each team has one, queued (no worker runs).
    let create = |key: String| {
        let app = &app;
        async move {
            let (_, page) = api(app, &key, Method::GET, "/api/reference-models?limit=1", None).await;
            let body = serde_json::json!({"name": "M", "description": "d", "reference_model_id": page["items"][0]["id"]});
            let (status, created) = api(app, &key, Method::POST, "/api/models", Some(body)).await;
            assert_eq!(status, 202, "{created}");
            created["job"]["job_id"].as_str().expect("job").to_string()
        }
    };
    let job_a = create(key_a.clone()).await;
    let job_b = create(key_b.clone()).await;
    let browser = browser(&app).await;
    sign_in(&browser, &key_a).await;

    browser.goto(&format!("/jobs/{job_b}")).await;
    assert_eq!(browser.text("h1").await, "Not found");
    browser.goto(&format!("/jobs/{job_b}/events")).await;
    assert!(browser.page_text().await.contains("Not found"), "nor its event stream");

    // Without the token the cancel is refused and the job stays queued.
    browser.goto(&format!("/jobs/{job_a}/cancel")).await;
    browser.run("document.querySelector('#confirm-cancel').form.querySelector('input[name=csrf]').remove();").await;
    browser.click("#confirm-cancel").await;
    browser.wait_text("h1", "Form refused").await;
    let (_, job) = api(&app, &key_a, Method::GET, &format!("/api/jobs/{job_a}"), None).await;
    assert_eq!(job["status"], "queued");

    // With the token but from another site (a forged cross-site form): refused too.
    browser.goto(&format!("/jobs/{job_a}")).await;
    let token = browser.run("return document.querySelector('input[name=csrf]').value;").await;
    let cookies = browser.client.get_all_cookies().await.expect("cookies");
    let cookie_header = cookies.iter().map(|c| format!("{}={}", c.name(), c.value())).collect::<Vec<_>>().join("; ");
    let forged = app
        .client
        .post(app.url(&format!("/jobs/{job_a}/cancel")))
        .header("cookie", &cookie_header)
        .header("origin", "http://evil.example")
        .form(&[("csrf", token.as_str().expect("token")), ("confirm", "yes")])
        .send()
        .await
        .expect("post");
    assert_eq!(forged.status(), 403);
    let (_, job) = api(&app, &key_a, Method::GET, &format!("/api/jobs/{job_a}"), None).await;
    assert_eq!(job["status"], "queued");
    // The very same request from this site's origin is accepted: the Origin made the difference.
    let same_site = app
        .client
        .post(app.url(&format!("/jobs/{job_a}/cancel")))
        .header("cookie", &cookie_header)
        .header("origin", format!("http://{}", app.address))
        .form(&[("csrf", token.as_str().expect("token")), ("confirm", "yes")])
        .send()
        .await
        .expect("post");
    assert_eq!(same_site.status(), 200, "redirected to the job page");
    let (_, job) = api(&app, &key_a, Method::GET, &format!("/api/jobs/{job_a}"), None).await;
    assert_eq!(job["status"], "cancelled");

    // A form with training images (multipart) needs the token as much: a wrong one is
    // refused and creates nothing.
    let models_before = api(&app, &key_a, Method::GET, "/api/models", None).await.1["items"].as_array().map(Vec::len);
    let multipart = |csrf: &str| {
        let boundary = "kiln-test-boundary";
        let body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{csrf}\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nForged\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"description\"\r\n\r\nd\r\n--{boundary}--\r\n"
        );
        app.client
            .post(app.url("/models"))
            .header("cookie", &cookie_header)
            .header("origin", format!("http://{}", app.address))
            .header("content-type", format!("multipart/form-data; boundary={boundary}"))
            .body(body)
    };
    let refused = multipart("not-the-token").send().await.expect("post");
    assert_eq!(refused.status(), 403);
    let models_after = api(&app, &key_a, Method::GET, "/api/models", None).await.1["items"].as_array().map(Vec::len);
    assert_eq!(models_after, models_before, "nothing created");
    // With the token it reaches the form's own checks (here: no reference model chosen).
    let checked = multipart(token.as_str().expect("token")).send().await.expect("post");
    assert_eq!(checked.status(), 422, "refused by the form, not by the CSRF check");

    // A revoked key signs the browser out at its next request.
    let keys: serde_json::Value =
        app.admin(Method::GET, &format!("/api/admin/teams/{team_a}/api-keys")).send().await.expect("keys").json().await.expect("json");
    let key_id = keys[0]["key_id"].as_str().expect("key id");
    let revoked = app.admin(Method::DELETE, &format!("/api/admin/teams/{team_a}/api-keys/{key_id}")).send().await.expect("revoke");
    assert_eq!(revoked.status(), 204);
    browser.goto("/").await;
    assert_eq!(browser.path().await, "/sign-in");
    browser.close().await;
    app.shutdown().await.expect("shutdown");
}
