//! The console's catalog in Chromium: an admin adds a reference model with its preview,
//! edits it (the team's catalog shows the new text), retires it (the team's create form
//! no longer offers it; the API refuses it for a new model) and restores it, each with a
//! reason the audit page then lists; a viewer sees no form and a forged one is refused.
//! Error pages under `/ops` are drawn in the console's frame.

use domain::operators::OperatorRole;
use reqwest::Method;
use serde_json::json;

use super::ops::{operator, ops_sign_in};
use super::{api, app, browser, sign_in, team};
use crate::support::db::TestDb;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_admin_curates_the_catalog_from_the_console() {
    let app = app(TestDb::postgres().await).await;
    let (_, key) = team(&app, "Acme Studio", "pro", 5_000).await;
    let alice = operator(&app, "Alice", OperatorRole::Admin).await;
    let vera = operator(&app, "Vera", OperatorRole::Viewer).await;
    let browser = browser(&app).await;
    ops_sign_in(&browser, &alice.secret).await;

    // Add, with a preview image and traits.
    browser.goto("/ops/catalog").await;
    browser.wait_text("h1", "Catalog").await;
    browser.screenshot("ops-catalog").await;
    browser.assert_fits_width(390).await;
    let dir = tempfile::tempdir().expect("image dir");
    let image = dir.path().join("rain.png");
    std::fs::write(&image, infrastructure::provider::render::render_png(&[5; 32], 96, 96).expect("png")).expect("write");
    browser.fill("#r-id", "fashion-rain-01").await;
    browser.fill("#r-name", "Ines · Rain Editorial").await;
    browser.fill("#r-description", "A wet-look editorial in city rain").await;
    browser.fill("#r-complexity", "1500").await;
    browser.fill("#r-traits", "lighting: overcast\nsetting: city street at night").await;
    browser.attach("#r-preview", &image).await;
    browser.fill("#r-reason", "autumn campaign").await;
    browser.click("#add-reference").await;
    browser.wait_text("#notice h2", "Reference model added").await;
    let shown = browser.run("return document.querySelector('#reference-preview').naturalWidth;").await;
    assert_eq!(shown.as_i64(), Some(96), "the stored preview is served");
    browser.screenshot("ops-reference").await;
    browser.assert_fits_width(390).await;

    // Edit: the team sees the new text.
    browser.fill("#e-description", "Rain editorial, now with umbrellas").await;
    browser.fill("#e-reason", "brief changed").await;
    browser.click("#save-reference").await;
    browser.wait_text("#notice h2", "Reference model saved").await;
    let team_browser = super::browser(&app).await;
    sign_in(&team_browser, &key).await;
    team_browser.goto("/catalog?q=rain").await;
    assert!(team_browser.text("#catalog").await.contains("Rain editorial, now with umbrellas"));
    let offered_js = "return document.querySelectorAll('#reference_model_id option[value=\"fashion-rain-01\"]').length;";
    team_browser.goto("/models/new").await;
    assert_eq!(team_browser.run(offered_js).await.as_i64(), Some(1), "offered while active");

    // Retire: no longer offered in the team's create form nor accepted by the API.
    browser.fill("#retire-reason", "campaign over").await;
    browser.click("#retire").await;
    browser.wait_text("#notice h2", "Reference model retired").await;
    assert_eq!(browser.text("#reference-state").await, "retired");
    team_browser.goto("/models/new").await;
    assert_eq!(team_browser.run(offered_js).await.as_i64(), Some(0), "a retired reference is not offered");
    let body = json!({"name": "Rainy", "description": "in the rain", "reference_model_id": "fashion-rain-01"});
    let (status, problem) = api(&app, &key, Method::POST, "/api/models", Some(body)).await;
    assert!((400..500).contains(&status), "refused: {status} {problem}");
    team_browser.close().await;
    browser.goto("/ops/catalog?q=rain").await;
    assert!(browser.text("#ref-fashion-rain-01").await.contains("retired"));

    // The audit page lists each change with who and why.
    browser.goto("/ops/audit").await;
    let acts = browser.text("#acts tbody").await;
    for line in ["add_reference", "autumn campaign", "edit_reference", "brief changed", "retire_reference", "campaign over"] {
        assert!(acts.contains(line), "{line}: {acts}");
    }

    // A viewer: no forms; a forged retire is refused, in the console's frame.
    browser.click("header button[type=submit]").await;
    ops_sign_in(&browser, &vera.secret).await;
    browser.goto("/ops/catalog/fashion-editorial-01").await;
    let forms = browser.run("return document.querySelectorAll('main form[method=post]').length;").await;
    assert_eq!(forms.as_i64(), Some(0), "a viewer gets no action form");
    let token = browser.run("return document.querySelector('header input[name=csrf]').value;").await;
    let forged = format!(
        "const f = document.createElement('form'); f.method = 'post'; f.action = '/ops/catalog/fashion-editorial-01/retire'; \
         for (const [k, v] of [['csrf', '{}'], ['reason', 'x']]) {{ const i = document.createElement('input'); i.name = k; i.value = v; f.appendChild(i); }} \
         document.body.appendChild(f); f.submit();",
        token.as_str().expect("token")
    );
    browser.run(&forged).await;
    browser.wait_text("h1", "Not allowed").await;
    assert_eq!(browser.text("#operator-summary").await, "Vera · viewer", "the refusal is in the console's frame");
    let (_, still) = api(&app, crate::support::app::OPERATOR_KEY, Method::GET, "/api/admin/reference-models/fashion-editorial-01", None).await;
    assert_eq!(still["active"], true, "nothing retired: {still}");

    // An unknown console URL is the console's 404, in its frame, leading back into it.
    browser.goto("/ops/no-such-page").await;
    browser.wait_text("h1", "Not found").await;
    assert_eq!(browser.text("#operator-summary").await, "Vera · viewer");
    assert_eq!(browser.run("return document.querySelector('#notice a').getAttribute('href');").await, json!("/ops"));
    browser.close().await;
    app.shutdown().await.expect("shutdown");
}
