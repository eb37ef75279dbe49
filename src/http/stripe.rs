//! Stripe over HTTP: `POST /api/credits/checkout` starts a Checkout Session for a credit
//! pack or a plan; `POST /api/webhooks/stripe` turns Stripe's signed events into ledger
//! commands.
//!
//! The webhook checks the signature over the raw body before reading anything, then
//! answers every event it could verify with 200 (so Stripe stops retrying), except when
//! Kiln itself failed (5xx: Stripe retries, and the ledger's idempotency makes the retry
//! safe). Every verified event is recorded in `stripe_events` by its id; a redelivery of
//! an event that was applied or ignored is answered from there, and one that was kept
//! unresolved is tried again.
//!
//! What an event does is `application::payments` (the same rules for every door); this
//! door verifies, parses, and answers.

use application::payments::{CheckoutError, EventStatus, Handled, PaymentsError, ProviderFailure, VerifiedEvent};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use infrastructure::stripe::{webhook, Event, Purchase, StripeApiError};
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use utoipa::ToSchema;

use super::auth::TeamKey;
use super::extract::{ApiBytes, ApiJson, IdempotencyKey};
use super::problem::Problem;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/credits/checkout", post(checkout))
        .route("/api/webhooks/stripe", post(webhook))
}

fn not_configured(setting: &str) -> Problem {
    Problem::new(StatusCode::SERVICE_UNAVAILABLE, "payments-not-configured", "Payments not configured")
        .detail(format!("Stripe is not configured on this server ({setting})"))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckoutBody {
    /// A Stripe price id of a configured credit pack (one-off) or plan (subscription).
    pub price_id: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CheckoutView {
    /// Stripe's Checkout Session id (`cs_…`).
    pub session_id: String,
    /// Where to send the customer to pay.
    pub url: String,
    /// payment (a credit pack) | subscription (a plan)
    pub mode: String,
    /// Credits granted once the payment succeeds (packs).
    pub credits: Option<i64>,
    /// The plan the subscription puts the team on (plans).
    pub plan: Option<String>,
}

/// Starts a Stripe Checkout for a credit pack or a plan. The credits (or the plan) arrive
/// through Stripe's webhook once the payment succeeds.
#[utoipa::path(post, path = "/api/credits/checkout", tag = "billing", operation_id = "createCheckoutSession",
    request_body(content = CheckoutBody, example = json!({"price_id": "price_1QcreditPack500"})),
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[ -~]+$", description = "a retry returns the same session")),
    responses(
        (status = 201, body = CheckoutView),
        (status = 403, description = "A read-only key (`/problems/forbidden`)"),
        (status = 409, description = "a plan while a subscription is live (`/problems/already-subscribed`)"),
        (status = 422, description = "unknown price (`/problems/unknown-price`)"),
        (status = 502, description = "Stripe failed (`/problems/payment-provider-error`)"),
        (status = 503, description = "Stripe is not configured (`/problems/payments-not-configured`)")),
    security(("api_key" = [])))]
async fn checkout(
    State(state): State<AppState>,
    key: TeamKey,
    idempotency: IdempotencyKey,
    ApiJson(body): ApiJson<CheckoutBody>,
) -> Result<(StatusCode, Json<CheckoutView>), Problem> {
    let team_id = key.writer()?.team_id;
    let started = state.payments.start_checkout(team_id, &body.price_id, idempotency.0.as_ref().map(|k| k.as_str())).await?;
    let (mode, credits, plan) = match started.purchase {
        Purchase::Pack { credits } => ("payment", Some(credits.get()), None),
        Purchase::Plan { plan } => ("subscription", None, Some(plan.to_string())),
    };
    let view = CheckoutView { session_id: started.session_id, url: started.url, mode: mode.into(), credits, plan };
    Ok((StatusCode::CREATED, Json(view)))
}

impl From<CheckoutError> for Problem {
    fn from(error: CheckoutError) -> Self {
        match error {
            CheckoutError::NotConfigured => not_configured("stripe.secret_key"),
            CheckoutError::UnknownPrice(price_id) => Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "unknown-price", "Unknown price")
                .detail("price_id is not a configured credit pack or plan")
                .with("price_id", price_id),
            CheckoutError::AlreadySubscribed(live) => {
                Problem::new(StatusCode::CONFLICT, "already-subscribed", "Already subscribed")
                    .detail("the team has a live subscription; change or cancel it at Stripe instead")
                    .with("subscription_id", live)
            }
            error @ CheckoutError::Store(_) => Problem::internal(&error),
            CheckoutError::Provider(error) => stripe_failed(error),
        }
    }
}

/// Logged in full (Stripe masks keys in its messages; requests carry the key only in a
/// header, which errors never print); the client learns only that Stripe failed.
fn stripe_failed(error: ProviderFailure) -> Problem {
    match error.downcast_ref::<StripeApiError>() {
        Some(api @ StripeApiError::Api { status, kind, code, message }) => {
            tracing::error!(error = %api, status, kind, ?code, ?message, "Stripe refused to create a checkout session");
        }
        _ => tracing::error!(error = %format!("{:#}", anyhow::anyhow!(error)), "Stripe checkout failed"),
    }
    Problem::new(StatusCode::BAD_GATEWAY, "payment-provider-error", "Payment provider error")
        .detail("Stripe could not create the checkout session; try again later")
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WebhookAck {
    pub event_id: String,
    /// applied | ignored | unresolved | rejected
    pub status: String,
    /// The event was seen before; nothing was done this time.
    pub duplicate: bool,
}

/// Stripe's webhook. Verifies `Stripe-Signature` (HMAC-SHA256 of `"{t}.{body}"`, 300 s
/// tolerance) before anything else; acts on checkout, invoice and subscription events.
#[utoipa::path(post, path = "/api/webhooks/stripe", tag = "webhooks", operation_id = "receiveStripeWebhook",
    request_body(content = Object, description = "a Stripe event, exactly as signed", content_type = "application/json",
        example = json!({"id": "evt_1Qexample", "object": "event", "type": "checkout.session.completed", "created": 1790000000,
            "data": {"object": {"id": "cs_test_1", "object": "checkout.session", "mode": "payment", "payment_status": "paid",
                "customer": "cus_1", "metadata": {"team_id": "01932c4e-8f3a-7b6e-9a41-2f5d8c7e1b09"}}}})),
    params(("Stripe-Signature" = String, Header, description = "t=<unix seconds>,v1=<hex HMAC-SHA256>")),
    responses(
        (status = 200, body = WebhookAck, description = "verified and recorded (also for ignored or unresolved events)"),
        (status = 400, description = "missing, forged or stale signature (`/problems/invalid-stripe-signature`), or not an event"),
        (status = 503, description = "no webhook secret configured")))]
async fn webhook(State(state): State<AppState>, headers: HeaderMap, ApiBytes(body): ApiBytes) -> Result<Json<WebhookAck>, Problem> {
    let verifier = state.stripe.webhook().ok_or_else(|| not_configured("stripe.webhook_secret"))?;
    let now = state.credits.now();
    // A header that is not ASCII is as good as malformed.
    let signature = headers.get("stripe-signature").map(|value| value.to_str().unwrap_or(""));
    verifier.verify(signature, &body, now).map_err(|error| {
        tracing::warn!(reason = %error, "Stripe webhook refused");
        super::metrics::webhook_delivered("stripe", "bad_signature");
        Problem::new(StatusCode::BAD_REQUEST, "invalid-stripe-signature", "Invalid Stripe signature").detail(error.to_string())
    })?;
    let event = Event::parse(&body).map_err(|error| {
        super::metrics::webhook_delivered("stripe", "malformed");
        Problem::new(StatusCode::BAD_REQUEST, "malformed-stripe-event", "Malformed Stripe event").detail(error.to_string())
    })?;
    let span = tracing::info_span!("stripe_event", event_id = %event.id, event_type = %event.kind.escape_debug());
    let verified = VerifiedEvent { id: &event.id, kind: &event.kind, created: event.created, body: &body };
    // A signed event whose text Kiln cannot store (a NUL or another control character)
    // is recorded as rejected and acknowledged: an error answer would only make Stripe
    // deliver it again for days.
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&body) {
        if let Some((field, why)) = super::text::first_violation(&value, &mut String::new()) {
            let why = format!("{field} {why}");
            tracing::warn!(parent: &span, detail = why, "Stripe event holds text Kiln cannot store; recorded as rejected and acknowledged");
            let event_type = super::text::storable(&event.kind);
            // The raw body holds the characters only as JSON escapes (`\u0000`): storable as text.
            let payload = String::from_utf8_lossy(&body);
            let handled = state.payments.reject(verified, &event_type, &payload, &why).instrument(span).await?;
            return Ok(Json(ack(&event, &handled)));
        }
    }
    let interpretation = webhook::interpret(&event, state.stripe.catalog());
    let handled = state.payments.handle(verified, &interpretation).instrument(span.clone()).await?;
    let _entered = span.enter();
    Ok(Json(ack(&event, &logged(handled))))
}

impl From<PaymentsError> for Problem {
    fn from(error: PaymentsError) -> Self {
        match error {
            PaymentsError::Store(error) => Problem::internal(&error),
            PaymentsError::Jobs(error) => Problem::from(error),
            PaymentsError::Command(error) => Problem::from(error),
        }
    }
}

fn logged(handled: Handled) -> Handled {
    let team = handled.team.map(|t| t.to_string()).unwrap_or_default();
    let detail = handled.detail.as_deref().unwrap_or("");
    if handled.duplicate {
        tracing::info!(status = handled.status.as_str(), "Stripe event seen before");
        super::metrics::webhook_delivered("stripe", "duplicate");
        return handled;
    }
    match handled.status {
        EventStatus::Applied => tracing::info!(%team, "Stripe event applied"),
        EventStatus::Ignored => tracing::info!(%team, detail, "Stripe event ignored"),
        EventStatus::Unresolved | EventStatus::Rejected => {
            tracing::warn!(%team, status = handled.status.as_str(), detail, "Stripe event kept for inspection")
        }
    }
    super::metrics::webhook_delivered("stripe", handled.status.as_str());
    handled
}

fn ack(event: &Event, handled: &Handled) -> WebhookAck {
    WebhookAck { event_id: event.id.to_string(), status: handled.status.as_str().into(), duplicate: handled.duplicate }
}
