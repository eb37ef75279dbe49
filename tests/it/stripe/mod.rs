//! Stripe through HTTP on real PostgreSQL: checkout against a fake Stripe API on
//! loopback, and webhooks with payloads shaped like Stripe's, signed with a test secret.

pub mod fixtures;

use application::clock::Clock;
use axum::http::header;
use chrono::Duration;
use infrastructure::db_fetch_all;
use infrastructure::stripe::signature::sign;
use reqwest::Method;
use serde_json::{json, Value};

use self::fixtures::*;
use crate::support::app::TestApp;
use crate::support::db::TestDb;

// ---------------------------------------------------------------- app and helpers

async fn spawn(fake: &FakeStripe) -> TestApp {
    let base = fake.start().await;
    TestApp::spawn_with(TestDb::postgres().await, |settings| configure(settings, &base)).await
}

/// A team on `plan` and a member key of it.
async fn team(app: &TestApp, plan: &str) -> (String, String) {
    let team = app.create_team("Acme", plan).await;
    let key = app.issue_key(&team, "member").await;
    (team, key)
}

async fn balance(app: &TestApp, key: &str) -> Value {
    let response = app.as_key(key, Method::GET, "/api/credits/balance").send().await.expect("request");
    assert_eq!(response.status(), 200);
    response.json().await.expect("json")
}

async fn checkout(app: &TestApp, key: &str, price_id: &str) -> reqwest::Response {
    app.as_key(key, Method::POST, "/api/credits/checkout").json(&json!({"price_id": price_id})).send().await.expect("request")
}

/// Posts `body` to the webhook with `signature` as the `Stripe-Signature` header.
async fn post_webhook(app: &TestApp, body: Vec<u8>, signature: Option<String>) -> reqwest::Response {
    let mut request = app.client.post(app.url("/api/webhooks/stripe")).header(header::CONTENT_TYPE, "application/json");
    if let Some(signature) = signature {
        request = request.header("Stripe-Signature", signature);
    }
    request.body(body).send().await.expect("request")
}

/// Delivers `event` as Stripe does: signed now, with the test secret.
pub(crate) async fn deliver(app: &TestApp, event: &Value) -> Value {
    let body = serde_json::to_vec_pretty(event).expect("json");
    let signature = sign(WEBHOOK_SECRET.as_bytes(), app.clock.now().timestamp(), &body);
    let response = post_webhook(app, body, Some(signature)).await;
    assert_eq!(response.status(), 200, "{event}");
    response.json().await.expect("json")
}

/// `stripe_events` rows: (event id, status, payload kept), by event id.
async fn stripe_events(app: &TestApp) -> Vec<(String, String, bool)> {
    db_fetch_all!(
        &app.state.db,
        (String, String, bool),
        "SELECT event_id, status, payload IS NOT NULL FROM stripe_events ORDER BY event_id"
    )
    .expect("stripe_events")
}

async fn ledger_event_count(app: &TestApp) -> i64 {
    let rows = db_fetch_all!(&app.state.db, (i64,), "SELECT COUNT(*) FROM events").expect("count");
    rows[0].0
}

/// Seconds after the test clock's start, as Stripe's `created`.
fn at(app: &TestApp, offset_secs: i64) -> i64 {
    app.clock.now().timestamp() + offset_secs
}

// ---------------------------------------------------------------- checkout

#[tokio::test]
async fn checkout_creates_a_session_at_stripe() {
    let fake = FakeStripe::default();
    let app = spawn(&fake).await;
    let (team, key) = team(&app, "free").await;

    let response = checkout(&app, &key, PACK_PRICE).await;
    assert_eq!(response.status(), 201);
    let view: Value = response.json().await.expect("json");
    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    let seen = &requests[0];
    assert_eq!(view["session_id"], "cs_test_a11");
    assert_eq!(view["url"], "https://checkout.stripe.com/c/pay/cs_test_a11#fidkdWxOYHwnPyd1blpxYHZxWjA0");
    assert_eq!((view["mode"].as_str(), view["credits"].as_i64()), (Some("payment"), Some(500)));
    assert_eq!(seen.authorization.as_deref(), Some(format!("Bearer {SECRET_KEY}").as_str()));
    assert_eq!(seen.idempotency_key, None);
    for (field, expected) in [
        ("mode", "payment"),
        ("line_items[0][price]", PACK_PRICE),
        ("line_items[0][quantity]", "1"),
        ("success_url", SUCCESS_URL),
        ("cancel_url", CANCEL_URL),
        ("client_reference_id", &team),
        ("metadata[team_id]", &team),
        ("metadata[price_id]", PACK_PRICE),
        ("metadata[credits]", "500"),
        ("customer_creation", "always"),
    ] {
        assert_eq!(seen.field(field), Some(expected), "form field {field}");
    }

    // A plan is a subscription, whose own metadata names the team too. A client's
    // Idempotency-Key reaches Stripe (digested, so it fits Stripe's limit).
    let response = app
        .as_key(&key, Method::POST, "/api/credits/checkout")
        .header("Idempotency-Key", "upgrade-1")
        .json(&json!({"price_id": PRO_PRICE}))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 201);
    let view: Value = response.json().await.expect("json");
    assert_eq!((view["mode"].as_str(), view["plan"].as_str()), (Some("subscription"), Some("pro")));
    let seen = fake.requests().pop().expect("second request");
    assert_eq!(seen.field("mode"), Some("subscription"));
    assert_eq!(seen.field("subscription_data[metadata][team_id]"), Some(team.as_str()));
    assert!(seen.idempotency_key.as_deref().is_some_and(|k| k.starts_with("kiln-checkout-") && k.len() <= 255));

    // Unknown prices never reach Stripe.
    let response = checkout(&app, &key, "price_1Unknown").await;
    assert_eq!(response.status(), 422);
    let problem: Value = response.json().await.expect("json");
    assert_eq!(problem["type"], "/problems/unknown-price");
    assert_eq!(fake.requests().len(), 2);

    // Stripe's refusal is a 502 with a stable type, and no secret in sight.
    let response = checkout(&app, &key, REJECTED_PRICE).await;
    assert_eq!(response.status(), 502);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/problem+json");
    let text = response.text().await.expect("body");
    let problem: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(problem["type"], "/problems/payment-provider-error");
    assert!(!text.contains(SECRET_KEY) && !text.contains("sk_test"), "{text}");

    // Read-only keys buy nothing.
    let auditor = app.issue_key(&team, "auditor").await;
    assert_eq!(checkout(&app, &auditor, PACK_PRICE).await.status(), 403);
    assert_eq!(fake.requests().len(), 3);
}

#[tokio::test]
async fn a_server_without_stripe_keys_says_so() {
    let app = TestApp::spawn(TestDb::postgres().await).await;
    let (_, key) = team(&app, "free").await;
    let response = checkout(&app, &key, PACK_PRICE).await;
    assert_eq!(response.status(), 503);
    let problem: Value = response.json().await.expect("json");
    assert_eq!(problem["type"], "/problems/payments-not-configured");
    let response = post_webhook(&app, b"{}".to_vec(), Some("t=1,v1=00".into())).await;
    assert_eq!(response.status(), 503);

    let openapi: Value = app.get("/openapi.json").await.json().await.expect("json");
    for path in ["/api/credits/checkout", "/api/webhooks/stripe"] {
        assert!(openapi["paths"][path]["post"].is_object(), "{path} documented");
    }
}

// ---------------------------------------------------------------- top-ups

#[tokio::test]
async fn top_up_grants_once_even_when_delivered_three_times() {
    let fake = FakeStripe::default();
    let app = spawn(&fake).await;
    let (team, key) = team(&app, "basic").await;
    let paid = event("evt_1PkiLnTopUp01", "checkout.session.completed", at(&app, 5), checkout_session("cs_test_topup1", &team, "cus_PkiLn01", "paid"));

    let first = deliver(&app, &paid).await;
    assert_eq!((first["status"].as_str(), first["duplicate"].as_bool()), (Some("applied"), Some(false)));
    for _ in 0..2 {
        let again = deliver(&app, &paid).await;
        assert_eq!((again["status"].as_str(), again["duplicate"].as_bool()), (Some("applied"), Some(true)));
    }
    let view = balance(&app, &key).await;
    assert_eq!(view["available"], 500);
    let grants = view["grants"].as_array().expect("grants");
    assert_eq!(grants.len(), 1);
    assert_eq!((grants[0]["origin"].as_str(), grants[0]["amount"].as_i64()), (Some("stripe"), Some(500)));
    assert!(grants[0]["expires_at"].is_null());
    assert_eq!(stripe_events(&app).await, vec![("evt_1PkiLnTopUp01".to_owned(), "applied".to_owned(), false)]);
}

#[tokio::test]
async fn completed_and_async_payment_succeeded_of_one_session_grant_once() {
    let fake = FakeStripe::default();
    let app = spawn(&fake).await;
    let (team, key) = team(&app, "basic").await;

    // A delayed payment method: completed while unpaid (nothing yet), then succeeded.
    let pending = checkout_session("cs_test_delayed", &team, "cus_PkiLn02", "unpaid");
    let completed = deliver(&app, &event("evt_1Delayed01", "checkout.session.completed", at(&app, 1), pending.clone())).await;
    assert_eq!(completed["status"], "ignored");
    assert_eq!(balance(&app, &key).await["available"], 0);
    let mut settled = pending;
    settled["payment_status"] = json!("paid");
    let succeeded = deliver(&app, &event("evt_1Delayed02", "checkout.session.async_payment_succeeded", at(&app, 60), settled)).await;
    assert_eq!(succeeded["status"], "applied");
    assert_eq!(balance(&app, &key).await["available"], 500);

    // Both events of one paid session name the same grant: credited once.
    let session = checkout_session("cs_test_both", &team, "cus_PkiLn02", "paid");
    deliver(&app, &event("evt_1Both01", "checkout.session.completed", at(&app, 2), session.clone())).await;
    deliver(&app, &event("evt_1Both02", "checkout.session.async_payment_succeeded", at(&app, 3), session)).await;
    let view = balance(&app, &key).await;
    assert_eq!(view["available"], 1_000);
    assert_eq!(view["grants"].as_array().map(Vec::len), Some(2));
    let statuses: Vec<(String, String)> = stripe_events(&app).await.into_iter().map(|(id, status, _)| (id, status)).collect();
    let expected = [("evt_1Both01", "applied"), ("evt_1Both02", "applied"), ("evt_1Delayed01", "ignored"), ("evt_1Delayed02", "applied")];
    assert_eq!(statuses, expected.map(|(id, status)| (id.to_owned(), status.to_owned())));
}

// ---------------------------------------------------------------- signatures

#[tokio::test]
async fn bad_signatures_are_refused_and_record_nothing() {
    let fake = FakeStripe::default();
    let app = spawn(&fake).await;
    let (team, key) = team(&app, "basic").await;
    let events_before = ledger_event_count(&app).await;
    let payload = event("evt_1Forged01", "checkout.session.completed", at(&app, 0), checkout_session("cs_test_forged", &team, "cus_X", "paid"));
    let body = serde_json::to_vec(&payload).expect("json");
    let now = app.clock.now().timestamp();
    let secret = WEBHOOK_SECRET.as_bytes();
    let mut tampered = payload.clone();
    tampered["data"]["object"]["metadata"]["credits"] = json!("500000");

    let cases: Vec<(&str, Vec<u8>, Option<String>)> = vec![
        ("forged signature", body.clone(), Some(format!("t={now},v1={}", "ab".repeat(32)))),
        ("wrong secret", body.clone(), Some(sign(b"whsec_someone_else", now, &body))),
        ("body changed after signing", serde_json::to_vec(&tampered).expect("json"), Some(sign(secret, now, &body))),
        ("stale timestamp", body.clone(), Some(sign(secret, now - 301, &body))),
        ("timestamp from the future", body.clone(), Some(sign(secret, now + 301, &body))),
        ("missing header", body.clone(), None),
        ("malformed header", body.clone(), Some("v1=abc".into())),
    ];
    for (case, body, signature) in cases {
        let response = post_webhook(&app, body, signature).await;
        assert_eq!(response.status(), 400, "{case}");
        let problem: Value = response.json().await.expect("json");
        assert_eq!(problem["type"], "/problems/invalid-stripe-signature", "{case}");
    }
    assert!(stripe_events(&app).await.is_empty());
    assert_eq!(ledger_event_count(&app).await, events_before);
    assert_eq!(balance(&app, &key).await["available"], 0);

    // The same body, signed properly within the tolerance, is accepted.
    let signature = sign(secret, now - 299, &body);
    assert_eq!(post_webhook(&app, body, Some(signature)).await.status(), 200);
    assert_eq!(balance(&app, &key).await["available"], 500);
}

// ---------------------------------------------------------------- plans

async fn plan_of(app: &TestApp, key: &str) -> String {
    balance(app, key).await["plan"].as_str().expect("plan").to_owned()
}

#[tokio::test]
async fn subscription_events_move_the_plan_forward_only() {
    let fake = FakeStripe::default();
    let app = spawn(&fake).await;
    let (team, key) = team(&app, "free").await;
    let period_end = at(&app, 30 * 86_400);
    let sub = |price: &str, status: &str| subscription("sub_1PkiLnPlan", "cus_PkiLnPlan", Some(&team), price, status, period_end);

    deliver(&app, &event("evt_1Sub01", "customer.subscription.created", at(&app, 10), sub(PRO_PRICE, "active"))).await;
    assert_eq!(plan_of(&app, &key).await, "pro");

    // Downgrade.
    let mut downgrade = event("evt_1Sub03", "customer.subscription.updated", at(&app, 30), sub(BASIC_PRICE, "active"));
    downgrade["data"]["previous_attributes"] = json!({"items": {"data": [{"price": {"id": PRO_PRICE}}]}});
    assert_eq!(deliver(&app, &downgrade).await["status"], "applied");
    assert_eq!(plan_of(&app, &key).await, "basic");

    // An older update delivered late does not move the plan back.
    let late = event("evt_1Sub02", "customer.subscription.updated", at(&app, 20), sub(ENTERPRISE_PRICE, "active"));
    deliver(&app, &late).await;
    assert_eq!(plan_of(&app, &key).await, "basic");

    // Deletion ends the subscription: Free.
    let deleted = event("evt_1Sub05", "customer.subscription.deleted", at(&app, 50), sub(BASIC_PRICE, "canceled"));
    assert_eq!(deliver(&app, &deleted).await["status"], "applied");
    assert_eq!(plan_of(&app, &key).await, "free");
    // …and an update older than the deletion cannot revive it.
    deliver(&app, &event("evt_1Sub04", "customer.subscription.updated", at(&app, 40), sub(PRO_PRICE, "active"))).await;
    assert_eq!(plan_of(&app, &key).await, "free");

    // A new subscription, later, does.
    let renewed = subscription("sub_1PkiLnPlan2", "cus_PkiLnPlan", None, PRO_PRICE, "active", period_end);
    deliver(&app, &event("evt_1Sub06", "customer.subscription.created", at(&app, 60), renewed)).await;
    assert_eq!(plan_of(&app, &key).await, "pro", "resolved through the customer seen before");

    // Kiln sells no second subscription while one is live…
    let response = checkout(&app, &key, BASIC_PRICE).await;
    assert_eq!(response.status(), 409);
    let problem: Value = response.json().await.expect("json");
    assert_eq!((problem["type"].as_str(), problem["subscription_id"].as_str()), (Some("/problems/already-subscribed"), Some("sub_1PkiLnPlan2")));
    assert!(fake.requests().is_empty());
    // …but if one was bought elsewhere, ending the older one leaves the team on the other.
    let other = subscription("sub_1PkiLnPlan3", "cus_PkiLnPlan", Some(&team), BASIC_PRICE, "active", period_end);
    deliver(&app, &event("evt_1Sub07", "customer.subscription.created", at(&app, 70), other)).await;
    assert_eq!(plan_of(&app, &key).await, "basic");
    let ended = subscription("sub_1PkiLnPlan2", "cus_PkiLnPlan", None, PRO_PRICE, "canceled", period_end);
    assert_eq!(deliver(&app, &event("evt_1Sub08", "customer.subscription.deleted", at(&app, 80), ended)).await["status"], "ignored");
    assert_eq!(plan_of(&app, &key).await, "basic");
}

// ---------------------------------------------------------------- plan allowance

#[tokio::test]
async fn invoice_credits_expire_at_period_end() {
    let fake = FakeStripe::default();
    let app = spawn(&fake).await;
    let (team, key) = team(&app, "free").await;
    let period = (at(&app, 0), at(&app, 30 * 86_400));
    let paid = event("evt_1Inv01", "invoice.paid", at(&app, 5), invoice("in_1PkiLnInv01", "cus_PkiLnInv", "sub_1PkiLnInv", Some(&team), PRO_PRICE, period));

    for _ in 0..3 {
        deliver(&app, &paid).await;
    }
    let view = balance(&app, &key).await;
    assert_eq!(view["available"], 5_000);
    let grants = view["grants"].as_array().expect("grants");
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0]["origin"], "plan");
    let expires_at = chrono::DateTime::parse_from_rfc3339(grants[0]["expires_at"].as_str().expect("expires_at")).expect("time");
    assert_eq!(expires_at.timestamp(), period.1);

    // Just before the period's end nothing expires; just after, the allowance is gone.
    app.clock.advance(Duration::seconds(period.1 - at(&app, 1)));
    kiln::sweeper::expire_credits_once(&app.state).await.expect("sweep");
    assert_eq!(balance(&app, &key).await["available"], 5_000);
    app.clock.advance(Duration::seconds(2));
    assert_eq!(kiln::sweeper::expire_credits_once(&app.state).await.expect("sweep"), 1);
    let view = balance(&app, &key).await;
    assert_eq!((view["available"].as_i64(), view["totals"]["expired"].as_i64()), (Some(0), Some(5_000)));
}

// ---------------------------------------------------------------- what Kiln cannot act on

#[tokio::test]
async fn unknown_and_unresolvable_events_are_acknowledged_and_kept() {
    let fake = FakeStripe::default();
    let app = spawn(&fake).await;
    let (team, key) = team(&app, "free").await;
    let events_before = ledger_event_count(&app).await;

    let unknown = event("evt_1Other01", "charge.refunded", at(&app, 1), json!({"id": "ch_1", "object": "charge", "amount_refunded": 1900}));
    assert_eq!(deliver(&app, &unknown).await["status"], "ignored");

    // An invoice of a customer Kiln has never seen, without team metadata.
    let period = (at(&app, 0), at(&app, 30 * 86_400));
    let orphan = event("evt_1Orphan01", "invoice.paid", at(&app, 2), invoice("in_1Orphan", "cus_PkiLnLater", "sub_1Later", None, PRO_PRICE, period));
    assert_eq!(deliver(&app, &orphan).await["status"], "unresolved");
    assert_eq!(ledger_event_count(&app).await, events_before);
    let rows = stripe_events(&app).await;
    assert_eq!(
        rows,
        vec![("evt_1Orphan01".to_owned(), "unresolved".to_owned(), true), ("evt_1Other01".to_owned(), "ignored".to_owned(), false)]
    );

    // Once the customer is known (a subscription naming the team), a redelivery of the
    // unresolved event (Stripe retry or a resend from the dashboard) is applied.
    let sub = subscription("sub_1Later", "cus_PkiLnLater", Some(&team), PRO_PRICE, "active", period.1);
    deliver(&app, &event("evt_1Later01", "customer.subscription.created", at(&app, 3), sub)).await;
    assert_eq!(deliver(&app, &orphan).await["status"], "applied");
    assert_eq!(balance(&app, &key).await["available"], 5_000);
    let statuses: Vec<(String, String)> = stripe_events(&app).await.into_iter().map(|(id, status, _)| (id, status)).collect();
    assert!(statuses.contains(&("evt_1Orphan01".to_owned(), "applied".to_owned())), "{statuses:?}");
}

// ---------------------------------------------------------------- SQLite smoke

#[tokio::test]
async fn webhooks_and_checkout_work_on_sqlite() {
    let fake = FakeStripe::default();
    let base = fake.start().await;
    let app = TestApp::spawn_with(TestDb::sqlite().await, |settings| configure(settings, &base)).await;
    let (team, key) = team(&app, "free").await;

    assert_eq!(checkout(&app, &key, PACK_PRICE).await.status(), 201);
    let paid = event("evt_1Lite01", "checkout.session.completed", at(&app, 1), checkout_session("cs_test_lite", &team, "cus_Lite", "paid"));
    deliver(&app, &paid).await;
    assert_eq!(deliver(&app, &paid).await["duplicate"], true);
    let sub = |price: &str, status: &str| subscription("sub_1Lite", "cus_Lite", None, price, status, at(&app, 30 * 86_400));
    deliver(&app, &event("evt_1Lite03", "customer.subscription.updated", at(&app, 20), sub(BASIC_PRICE, "active"))).await;
    deliver(&app, &event("evt_1Lite02", "customer.subscription.created", at(&app, 10), sub(PRO_PRICE, "active"))).await;
    let view = balance(&app, &key).await;
    assert_eq!((view["available"].as_i64(), view["plan"].as_str()), (Some(500), Some("basic")));
    assert_eq!(checkout(&app, &key, PRO_PRICE).await.status(), 409);
    // The customer learnt from the session is reused for the next purchase.
    assert_eq!(checkout(&app, &key, PACK_PRICE).await.status(), 201);
    let last = fake.requests().pop().expect("request");
    assert_eq!((last.field("customer"), last.field("customer_creation")), (Some("cus_Lite"), None));
    let unresolved = event("evt_1Lite04", "invoice.paid", at(&app, 30), invoice("in_1Lite", "cus_Nobody", "sub_1X", None, PRO_PRICE, (at(&app, 0), at(&app, 86_400))));
    assert_eq!(deliver(&app, &unresolved).await["status"], "unresolved");
    let statuses: Vec<String> = stripe_events(&app).await.into_iter().map(|(_, status, _)| status).collect();
    assert_eq!(statuses, ["applied", "applied", "applied", "unresolved"]);
}

/// A correctly signed event holding text Kiln cannot store (NUL, control characters) is
/// acknowledged (200, recorded as rejected, changing nothing), never a 5xx that Stripe
/// would redeliver for days; a redelivery is a duplicate. An id that is no key is a 400.
#[tokio::test]
async fn signed_events_with_control_characters_are_acknowledged_not_failed() {
    let fake = FakeStripe::default();
    let app = spawn(&fake).await;
    let (team, key) = team(&app, "basic").await;
    let events_before = ledger_event_count(&app).await;
    let mut session = checkout_session("cs_test_nul", &team, "cus_N\u{0}UL", "paid");
    session["metadata"]["note"] = json!("line\u{1b}[2J");
    let payload = event("evt_1Nul01", "checkout.session.completed\u{0}", at(&app, 0), session);
    for duplicate in [false, true] {
        let ack = deliver(&app, &payload).await;
        assert_eq!((ack["status"].as_str(), ack["duplicate"].as_bool()), (Some("rejected"), Some(duplicate)), "{ack}");
    }
    assert_eq!(stripe_events(&app).await, vec![("evt_1Nul01".to_string(), "rejected".to_string(), true)]);
    assert_eq!(ledger_event_count(&app).await, events_before);
    assert_eq!(balance(&app, &key).await["available"], 0);

    let bad_id = event("evt_\u{0}", "checkout.session.completed", at(&app, 0), checkout_session("cs_test_nul2", &team, "cus_Y", "paid"));
    let body = serde_json::to_vec(&bad_id).expect("json");
    let signature = sign(WEBHOOK_SECRET.as_bytes(), app.clock.now().timestamp(), &body);
    let response = post_webhook(&app, body, Some(signature)).await;
    assert_eq!(response.status(), 400);
    let problem: Value = response.json().await.expect("json");
    assert_eq!(problem["type"], "/problems/malformed-stripe-event");
}
