//! Every team page checked by axe-core (the npm package, pinned in `axe/package.json`,
//! installed by `scripts/ensure-axe-core`; its `axe.min.js` is loaded into each page from
//! disk by the test, nothing is fetched at test time) with no serious or critical
//! violation allowed, and at a 390 px wide viewport with nothing wider than the screen.

use reqwest::Method;
use serde_json::json;

use super::{api, app, browser, queue_generation, ready_model, sign_in, team};
use crate::support::browser::Browser;
use crate::support::db::TestDb;

/// axe-core's script, from `scripts/ensure-axe-core`'s install.
fn axe_source() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/web/axe/node_modules/axe-core/axe.min.js");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e} (run scripts/ensure-axe-core)", path.display()))
}

/// The serious and critical violations axe-core finds on the page the browser shows,
/// one line each: rule, impact, help and the elements.
pub async fn axe_violations(browser: &Browser, axe: &str) -> Vec<String> {
    browser.run(axe).await;
    let script = "const done = arguments[arguments.length - 1]; \
        axe.run(document, { resultTypes: ['violations'] }) \
          .then(r => done(r.violations.filter(v => v.impact === 'serious' || v.impact === 'critical') \
            .map(v => `${v.id} (${v.impact}): ${v.help} — ${v.nodes.map(n => n.target.join(' ')).join(', ')}`))) \
          .catch(e => done([`axe failed: ${e}`]));";
    let found = browser.client.execute_async(script, Vec::new()).await.expect("axe runs");
    found.as_array().expect("a list").iter().map(|v| v.as_str().unwrap_or_default().to_string()).collect()
}

/// The page at `path` passes axe-core (nothing serious or critical) and fits 390 px.
async fn check(browser: &Browser, axe: &str, path: &str, failures: &mut Vec<String>) {
    browser.goto(path).await;
    for violation in axe_violations(browser, axe).await {
        failures.push(format!("{path}: {violation}"));
    }
    browser.client.set_window_size(390, 900).await.expect("resize");
    let overflow = browser.run("return document.documentElement.scrollWidth - document.documentElement.clientWidth;").await;
    if overflow.as_i64().unwrap_or(1) > 0 {
        // The innermost elements that stick out, to say where to look.
        let wide = browser
            .run("return [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > window.innerWidth + 1) \
                  .slice(0, 4).map(e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') + (e.className ? '.' + e.className : ''));")
            .await;
        failures.push(format!("{path}: {overflow} px wider than a 390 px screen ({wide})"));
    }
    browser.client.set_window_size(1200, 900).await.expect("resize");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_team_page_passes_axe_and_fits_a_390_px_screen() {
    let axe = axe_source();
    let app = app(TestDb::sqlite().await).await;
    let (team_id, member_key) = team(&app, "Accessible team with a rather long name for a phone", "pro", 5_000).await;
    let admin_key = app.issue_key(&team_id, "admin").await;
    // Something on every page: a model, a completed generation, a queued one, a webhook endpoint.
    let model_id = ready_model(&app, &member_key).await;
    let done = super::manage::completed_generation(&app, &member_key, &model_id, "a lighthouse in fog, wide shot").await;
    let queued = queue_generation(&app, &member_key, &model_id, "the same lighthouse at night").await;
    let (status, endpoint) = api(
        &app,
        &admin_key,
        Method::POST,
        "/api/webhook-endpoints",
        Some(json!({"url": "https://hooks.example.com/kiln", "event_types": ["credits.low"], "credits_low_threshold": 50})),
    )
    .await;
    assert_eq!(status, 201, "{endpoint}");
    let endpoint_id = endpoint["id"].as_str().expect("endpoint id").to_string();

    let browser = browser(&app).await;
    let mut failures = Vec::new();
    check(&browser, &axe, "/sign-in", &mut failures).await;
    sign_in(&browser, &admin_key).await;
    let pages = [
        "/".to_string(),
        "/generate".to_string(),
        format!("/generate?model={model_id}"),
        "/models".to_string(),
        "/models/new".to_string(),
        format!("/models/{model_id}"),
        "/catalog".to_string(),
        "/catalog?sort=name".to_string(),
        "/catalog?category=sports".to_string(),
        format!("/jobs/{done}"),
        format!("/jobs/{queued}"),
        format!("/jobs/{queued}/cancel"),
        format!("/generate?again={done}"),
        "/history".to_string(),
        "/history?status=completed&q=a".to_string(),
        "/history?from=yesterday".to_string(),
        "/credits".to_string(),
        "/credits?checkout=success".to_string(),
        "/keys".to_string(),
        "/webhooks".to_string(),
        format!("/webhooks/{endpoint_id}"),
        "/no-such-page".to_string(),
    ];
    for page in &pages {
        check(&browser, &axe, page, &mut failures).await;
    }
    assert!(failures.is_empty(), "accessibility failures:\n{}", failures.join("\n"));

    // The check can fail: an image without a text alternative is a critical violation.
    browser.goto("/").await;
    browser.run("const i = document.createElement('img'); i.src = '/static/none.png'; document.querySelector('main').append(i);").await;
    let found = axe_violations(&browser, &axe).await;
    assert!(found.iter().any(|v| v.starts_with("image-alt (critical)")), "{found:?}");
    browser.close().await;
    app.shutdown().await.expect("shutdown");
}
