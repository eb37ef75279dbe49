//! The Stripe side of the tests: a fake Stripe API on loopback (checkout sessions), the
//! settings that point Kiln at it, and webhook payloads shaped like Stripe's own.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Form, Json, Router};
use domain::{Credits, Plan};
use infrastructure::config::Settings;
use infrastructure::stripe::{CreditPack, PlanPrice};
use serde_json::{json, Value};

pub const SECRET_KEY: &str = "sk_test_51KilnTestKey";
pub const WEBHOOK_SECRET: &str = "whsec_kiln_test_secret";
pub const PACK_PRICE: &str = "price_1PackSmall500";
pub const REJECTED_PRICE: &str = "price_1PackArchived";
pub const BASIC_PRICE: &str = "price_1BasicMonthly";
pub const PRO_PRICE: &str = "price_1ProMonthly";
pub const ENTERPRISE_PRICE: &str = "price_1EnterpriseMonthly";
pub const SUCCESS_URL: &str = "https://kiln.test/credits?session_id={CHECKOUT_SESSION_ID}";
pub const CANCEL_URL: &str = "https://kiln.test/credits";

// ---------------------------------------------------------------- fake Stripe API

#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub authorization: Option<String>,
    pub idempotency_key: Option<String>,
    pub form: Vec<(String, String)>,
}

impl SeenRequest {
    pub fn field(&self, key: &str) -> Option<&str> {
        self.form.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

#[derive(Clone, Default)]
pub struct FakeStripe {
    seen: Arc<Mutex<Vec<SeenRequest>>>,
}

impl FakeStripe {
    /// Serves `POST /v1/checkout/sessions` on loopback; returns its base URL.
    pub async fn start(&self) -> String {
        let router = Router::new().route("/v1/checkout/sessions", post(create_session)).with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind fake Stripe");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, router).await });
        format!("http://{address}")
    }

    pub fn requests(&self) -> Vec<SeenRequest> {
        self.seen.lock().expect("lock").clone()
    }
}

async fn create_session(State(fake): State<FakeStripe>, headers: HeaderMap, Form(form): Form<Vec<(String, String)>>) -> Response {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let request = SeenRequest { authorization: text("authorization"), idempotency_key: text("idempotency-key"), form };
    fake.seen.lock().expect("lock").push(request.clone());
    if request.authorization.as_deref() != Some(&format!("Bearer {SECRET_KEY}")) {
        let error = json!({"error": {"type": "invalid_request_error", "message": "Invalid API Key provided: sk_test_****Key"}});
        return (StatusCode::UNAUTHORIZED, Json(error)).into_response();
    }
    let price = request.field("line_items[0][price]").unwrap_or_default().to_owned();
    if price == REJECTED_PRICE {
        let error = json!({"error": {
            "code": "resource_missing", "doc_url": "https://stripe.com/docs/error-codes/resource-missing",
            "message": format!("No such price: '{price}'"), "param": "line_items[0][price]", "type": "invalid_request_error"}});
        return (StatusCode::BAD_REQUEST, Json(error)).into_response();
    }
    let id = format!("cs_test_a1{}", fake.seen.lock().expect("lock").len());
    Json(json!({
        "id": id, "object": "checkout.session", "livemode": false,
        "mode": request.field("mode"), "status": "open", "payment_status": "unpaid",
        "client_reference_id": request.field("client_reference_id"),
        "metadata": {"team_id": request.field("metadata[team_id]"), "price_id": price},
        "success_url": request.field("success_url"), "cancel_url": request.field("cancel_url"),
        "url": format!("https://checkout.stripe.com/c/pay/{id}#fidkdWxOYHwnPyd1blpxYHZxWjA0"),
    }))
    .into_response()
}

// ---------------------------------------------------------------- settings

pub fn configure(settings: &mut Settings, api_base_url: &str) {
    let stripe = &mut settings.stripe;
    stripe.api_base_url = api_base_url.to_owned();
    stripe.secret_key = Some(SECRET_KEY.to_owned().into());
    stripe.webhook_secret = Some(WEBHOOK_SECRET.to_owned().into());
    stripe.success_url = SUCCESS_URL.into();
    stripe.cancel_url = CANCEL_URL.into();
    let credits = |n| Credits::parse(n).expect("positive");
    stripe.packs = vec![
        CreditPack { price_id: PACK_PRICE.into(), credits: credits(500) },
        CreditPack { price_id: REJECTED_PRICE.into(), credits: credits(100) },
    ];
    stripe.plan_prices = vec![
        PlanPrice { price_id: BASIC_PRICE.into(), plan: Plan::Basic },
        PlanPrice { price_id: PRO_PRICE.into(), plan: Plan::Pro },
        PlanPrice { price_id: ENTERPRISE_PRICE.into(), plan: Plan::Enterprise },
    ];
    stripe.monthly_credits.pro = 5_000;
}

// ---------------------------------------------------------------- Stripe-shaped fixtures

pub fn event(id: &str, kind: &str, created: i64, object: Value) -> Value {
    json!({
        "id": id, "object": "event", "api_version": "2024-06-20", "created": created,
        "data": {"object": object}, "livemode": false, "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": null}, "type": kind,
    })
}

pub fn checkout_session(session_id: &str, team: &str, customer: &str, payment_status: &str) -> Value {
    json!({
        "id": session_id, "object": "checkout.session", "after_expiration": null, "allow_promotion_codes": null,
        "amount_subtotal": 1900, "amount_total": 1900, "billing_address_collection": null,
        "cancel_url": CANCEL_URL, "client_reference_id": team, "created": 1_790_000_000, "currency": "usd",
        "customer": customer, "customer_creation": "always",
        "customer_details": {"address": null, "email": "billing@acme.test", "name": "Acme", "phone": null, "tax_exempt": "none", "tax_ids": []},
        "customer_email": null, "expires_at": 1_790_086_400, "invoice": null, "livemode": false, "locale": null,
        "metadata": {"team_id": team, "price_id": PACK_PRICE, "credits": "500"},
        "mode": "payment", "payment_intent": "pi_3PkiLnTest0001", "payment_method_types": ["card"],
        "payment_status": payment_status, "status": "complete", "submit_type": null, "subscription": null,
        "success_url": SUCCESS_URL, "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0}, "url": null,
    })
}

pub fn subscription(sub_id: &str, customer: &str, team: Option<&str>, price: &str, status: &str, period_end: i64) -> Value {
    let metadata = team.map(|t| json!({"team_id": t})).unwrap_or_else(|| json!({}));
    json!({
        "id": sub_id, "object": "subscription", "application": null, "billing_cycle_anchor": period_end - 2_592_000,
        "cancel_at": null, "cancel_at_period_end": false, "canceled_at": null, "collection_method": "charge_automatically",
        "created": period_end - 2_592_000, "currency": "usd",
        "current_period_end": period_end, "current_period_start": period_end - 2_592_000,
        "customer": customer, "default_payment_method": "pm_1PkiLnTest", "ended_at": null,
        "items": {"object": "list", "data": [{
            "id": "si_PkiLnTest01", "object": "subscription_item", "created": period_end - 2_592_000, "metadata": {},
            "price": {"id": price, "object": "price", "active": true, "currency": "usd", "product": "prod_PkiLnPlan",
                "recurring": {"interval": "month", "interval_count": 1, "usage_type": "licensed"}, "type": "recurring", "unit_amount": 4900},
            "quantity": 1, "subscription": sub_id}],
            "has_more": false, "total_count": 1, "url": format!("/v1/subscription_items?subscription={sub_id}")},
        "latest_invoice": "in_1PkiLnTest", "livemode": false, "metadata": metadata, "status": status,
    })
}

pub fn invoice(invoice_id: &str, customer: &str, sub_id: &str, team: Option<&str>, price: &str, period: (i64, i64)) -> Value {
    let metadata = team.map(|t| json!({"team_id": t})).unwrap_or_else(|| json!({}));
    let line = json!({
        "id": "il_1PkiLnTest", "object": "line_item", "amount": 4900, "currency": "usd",
        "description": "1 × Kiln plan (at $49.00 / month)", "livemode": false, "metadata": metadata,
        "period": {"end": period.1, "start": period.0},
        "price": {"id": price, "object": "price", "product": "prod_PkiLnPlan", "recurring": {"interval": "month"}, "unit_amount": 4900},
        "proration": false, "quantity": 1, "subscription": sub_id, "subscription_item": "si_PkiLnTest01", "type": "subscription",
    });
    // The invoice's own period is the one before (what usage was billed for); the
    // subscription line's period is the one being paid for.
    json!({
        "id": invoice_id, "object": "invoice", "account_country": "US", "amount_due": 4900, "amount_paid": 4900,
        "amount_remaining": 0, "attempt_count": 1, "attempted": true, "billing_reason": "subscription_cycle",
        "collection_method": "charge_automatically", "created": period.0, "currency": "usd", "customer": customer,
        "hosted_invoice_url": "https://invoice.stripe.com/i/acct_test/test_YWNjdF8", "livemode": false, "metadata": {},
        "number": "KILN-0001", "paid": true, "period_end": period.0, "period_start": period.0 - 2_592_000,
        "status": "paid", "subscription": sub_id, "subscription_details": {"metadata": metadata},
        "lines": {"object": "list", "data": [line], "has_more": false, "total_count": 1, "url": format!("/v1/invoices/{invoice_id}/lines")},
        "total": 4900,
    })
}

