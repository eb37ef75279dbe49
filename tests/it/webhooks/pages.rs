//! The team's webhook pages in a real browser: create (the secret shown once), a refused
//! URL kept on the form with the reason, the endpoint's page, disable.

use crate::support::db::TestDb;
use crate::web::{browser, sign_in, team};

#[tokio::test]
async fn the_webhook_pages_create_refuse_and_disable() {
    let app = super::spawn(TestDb::postgres().await, true).await;
    let (_team, key) = team(&app, "Pages", "pro", 0).await;
    let browser = browser(&app).await;
    sign_in(&browser, &key).await;

    browser.goto("/webhooks").await;
    browser.wait_text("#no-endpoints", "No endpoints yet.").await;
    browser.fill("#url", "ftp://hooks.example.com/").await;
    browser.click("input[value='job.completed']").await;
    browser.click("form[action='/webhooks'] button[type=submit]").await;
    browser.wait_text("#notice h2", "Not saved").await;
    assert!(browser.text("#notice p").await.contains("https"), "the reason is shown");
    let kept = browser.run("return document.querySelector('#url').value;").await;
    assert_eq!(kept, "ftp://hooks.example.com/", "what was typed is kept");

    browser.fill("#url", "http://127.0.0.1:9/hook").await;
    browser.click("form[action='/webhooks'] button[type=submit]").await;
    browser.wait_text("#notice h2", "Endpoint created").await;
    let secret = browser.run("return document.querySelector('#webhook-secret').value;").await;
    assert!(secret.as_str().is_some_and(|s| s.starts_with("whsec_")), "{secret}");
    browser.assert_fits_width(390).await;

    // Shown once: the list does not show it again.
    browser.goto("/webhooks").await;
    let again = browser.run("return document.querySelector('#webhook-secret') === null;").await;
    assert_eq!(again.as_bool(), Some(true));
    browser.click("#endpoints a").await;
    browser.wait_text("#endpoint-status", "Status: enabled").await;
    browser.wait_text("#no-deliveries", "Nothing sent yet.").await;
    browser.assert_fits_width(390).await;
    browser.click("form[action$='/disable'] button").await;
    browser.wait_text("#endpoint-status", "Status: disabled").await;
    browser.close().await;
    app.shutdown().await.expect("clean shutdown");
}
