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
//! Subscription expiry is only recorded here (`SubscriptionExpired`); stopping the team's
//! queued jobs is the job engine's reaction to that event.

use application::aggregate_store::CommandError;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use domain::{TeamCreditsCommand, TeamCreditsError, TeamId};
use infrastructure::stripe::store::{self, EventRecord, EventStatus};
use infrastructure::stripe::{webhook, Action, Event, Interpretation, Purchase, StripeApiError, TeamHint};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::Instrument;
use utoipa::ToSchema;

use super::auth::TeamKey;
use super::extract::{ApiBytes, ApiJson, IdempotencyKey};
use super::problem::Problem;
use crate::app::AppState;
use crate::checkout::CheckoutError;

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
    let started = crate::checkout::start(&state, team_id, &body.price_id, idempotency.0.as_ref().map(|k| k.as_str())).await?;
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
            CheckoutError::Stripe(error) => stripe_failed(error),
        }
    }
}

/// Logged in full (Stripe masks keys in its messages; requests carry the key only in a
/// header, which errors never print); the client learns only that Stripe failed.
fn stripe_failed(error: StripeApiError) -> Problem {
    match &error {
        StripeApiError::Api { status, kind, code, message } => {
            tracing::error!(%error, status, kind, ?code, ?message, "Stripe refused to create a checkout session");
        }
        _ => tracing::error!(error = %format!("{:#}", anyhow::Error::from(error)), "Stripe checkout failed"),
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
    // A signed event whose text Kiln cannot store (a NUL or another control character)
    // is recorded as rejected and acknowledged: an error answer would only make Stripe
    // deliver it again for days.
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&body) {
        if let Some((field, why)) = super::text::first_violation(&value, &mut String::new()) {
            let ack = reject_unstorable(&state, &event, &body, now, &format!("{field} {why}")).instrument(span).await?;
            return Ok(Json(ack));
        }
    }
    let ack = handle_event(&state, &event, &body, now).instrument(span).await?;
    Ok(Json(ack))
}

async fn reject_unstorable(state: &AppState, event: &Event, body: &[u8], now: DateTime<Utc>, detail: &str) -> Result<WebhookAck, Problem> {
    tracing::warn!(detail, "Stripe event holds text Kiln cannot store; recorded as rejected and acknowledged");
    if let Some(status) = store::status_of(&state.db, event.id.as_str()).await.map_err(|e| Problem::internal(&e))? {
        return Ok(ack(event, status, true));
    }
    let event_type = super::text::storable(&event.kind);
    // The raw body holds the characters only as JSON escapes (`\u0000`): storable as text.
    let payload = String::from_utf8_lossy(body);
    let record = EventRecord {
        event_id: event.id.as_str(),
        event_type: &event_type,
        team_id: None,
        status: EventStatus::Rejected,
        detail: Some(detail),
        payload: Some(&payload),
        created_at: event.created,
        received_at: now,
    };
    store::record(&state.db, &record).await.map_err(|e| Problem::internal(&e))?;
    Ok(ack(event, EventStatus::Rejected, false))
}

async fn handle_event(state: &AppState, event: &Event, body: &[u8], now: DateTime<Utc>) -> Result<WebhookAck, Problem> {
    let seen = store::status_of(&state.db, event.id.as_str()).await.map_err(|e| Problem::internal(&e))?;
    if let Some(status) = seen.filter(|status| *status != EventStatus::Unresolved) {
        tracing::info!(status = status.as_str(), "Stripe event seen before");
        super::metrics::webhook_delivered("stripe", "duplicate");
        return Ok(ack(event, status, true));
    }
    let interpretation = webhook::interpret(event, state.stripe.catalog());
    let outcome = apply(state, event, &interpretation, now).await?;
    let payload = outcome.status.keeps_payload().then(|| String::from_utf8_lossy(body));
    let record = EventRecord {
        event_id: event.id.as_str(),
        event_type: &event.kind,
        team_id: outcome.team,
        status: outcome.status,
        detail: outcome.detail.as_deref(),
        payload: payload.as_deref(),
        created_at: event.created,
        received_at: now,
    };
    store::record(&state.db, &record).await.map_err(|e| Problem::internal(&e))?;
    let team = outcome.team.map(|t| t.to_string()).unwrap_or_default();
    let detail = outcome.detail.as_deref().unwrap_or("");
    match outcome.status {
        EventStatus::Applied => tracing::info!(%team, "Stripe event applied"),
        EventStatus::Ignored => tracing::info!(%team, detail, "Stripe event ignored"),
        EventStatus::Unresolved | EventStatus::Rejected => {
            tracing::warn!(%team, status = outcome.status.as_str(), detail, "Stripe event kept for inspection")
        }
    }
    super::metrics::webhook_delivered("stripe", outcome.status.as_str());
    Ok(ack(event, outcome.status, false))
}

fn ack(event: &Event, status: EventStatus, duplicate: bool) -> WebhookAck {
    WebhookAck { event_id: event.id.to_string(), status: status.as_str().into(), duplicate }
}

struct Outcome {
    status: EventStatus,
    team: Option<TeamId>,
    detail: Option<String>,
}

impl Outcome {
    fn new(status: EventStatus, team: Option<TeamId>, detail: impl Into<Option<String>>) -> Self {
        Self { status, team, detail: detail.into() }
    }
}

/// Runs the event's command, if it has one and its team is known. Only Kiln's own
/// failures are errors (5xx, so Stripe redelivers); everything else is an outcome.
async fn apply(state: &AppState, event: &Event, interpretation: &Interpretation, now: DateTime<Utc>) -> Result<Outcome, Problem> {
    let team = resolve_team(state, &interpretation.hint, now).await?;
    let db_error = |e: sqlx::Error| Problem::internal(&e);
    let subscription = interpretation.subscription.as_ref();
    if let (Some(team), Some(subscription)) = (team, subscription) {
        store::record_subscription(&state.db, &subscription.subscription_id, team, &subscription.status, event.created)
            .await
            .map_err(db_error)?;
    }
    let command = match &interpretation.action {
        Action::Ignore(reason) => return Ok(Outcome::new(EventStatus::Ignored, team, reason.clone())),
        Action::Unresolved(reason) => return Ok(Outcome::new(EventStatus::Unresolved, team, reason.clone())),
        action @ Action::ExpireSubscription { .. } => {
            // One subscription ending while another still pays (a plan bought anew
            // before the old one was cancelled) leaves the plan to the live one.
            if let Some(team_id) = team {
                let this = subscription.map(|s| s.subscription_id.as_str());
                if let Some(other) = store::live_subscription(&state.db, team_id, this).await.map_err(db_error)? {
                    let detail = format!("subscription {other} of the team is still live");
                    return Ok(Outcome::new(EventStatus::Ignored, team, detail));
                }
            }
            action.command(event.id.clone(), now)
        }
        action => action.command(event.id.clone(), now),
    };
    let (Some(command), Some(team_id)) = (command, team) else {
        let customer = interpretation.hint.customer.as_deref().unwrap_or("none");
        let reason = format!("no team: no team_id in metadata, customer {customer} unknown");
        return Ok(Outcome::new(EventStatus::Unresolved, None, reason));
    };
    let metadata = json!({ "actor": "stripe", "stripe_event_id": event.id.as_str(), "stripe_event_type": event.kind });
    let expiry = matches!(command, TeamCreditsCommand::ExpireSubscription { .. });
    match state.credits.execute(team_id, command, &metadata).await {
        Ok(outcome) => {
            // The job engine's policy: queued jobs of a team left without a plan are
            // cancelled and refunded (running ones finish and are charged). Gated on the
            // plan after the command, not on this call recording something, so a retry
            // after a crash between the two steps still cancels.
            if expiry && outcome.plan.concurrency_limit() == 0 {
                state.jobs.cancel_queued(team_id, state.job_index.as_ref(), "subscription expired", "stripe").await?;
            }
            Ok(Outcome::new(EventStatus::Applied, team, None))
        }
        Err(CommandError::Rejected(TeamCreditsError::TeamNotFound)) => {
            Ok(Outcome::new(EventStatus::Unresolved, team, format!("team {team_id} does not exist")))
        }
        Err(CommandError::Rejected(rejection)) => Ok(Outcome::new(EventStatus::Rejected, team, rejection.to_string())),
        Err(failure) => Err(Problem::from(failure)),
    }
}

/// The team named in the event's metadata (and then its customer is remembered for
/// events without metadata), else the team the customer was first seen paying for.
async fn resolve_team(state: &AppState, hint: &TeamHint, now: DateTime<Utc>) -> Result<Option<TeamId>, Problem> {
    match (hint.team_id, hint.customer.as_deref()) {
        (Some(team), Some(customer)) => {
            store::remember_customer(&state.db, customer, team, now).await.map_err(|e| Problem::internal(&e))?;
            Ok(Some(team))
        }
        (Some(team), None) => Ok(Some(team)),
        (None, Some(customer)) => store::team_of_customer(&state.db, customer).await.map_err(|e| Problem::internal(&e)),
        (None, None) => Ok(None),
    }
}
