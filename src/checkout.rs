//! Starting a Stripe Checkout: the one rule set behind `POST /api/credits/checkout` and
//! the dashboard's "Buy credits" buttons. A price must be a configured pack or plan; a
//! plan is refused while the team has a live subscription (a second one would bill
//! twice); the team's Stripe customer is reused; a caller's idempotency key becomes a
//! Stripe idempotency key scoped to the team. The credits (or the plan) arrive later
//! through Stripe's signed webhook, never from here.

use infrastructure::stripe::store;
use infrastructure::stripe::{CheckoutRequest, Purchase, StripeApiError};
use domain::TeamId;
use sha2::{Digest, Sha256};

use crate::state::AppState;

/// Why a checkout could not start.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("Stripe is not configured on this server (stripe.secret_key)")]
    NotConfigured,
    #[error("price {0} is not a configured credit pack or plan")]
    UnknownPrice(String),
    #[error("the team has a live subscription ({0})")]
    AlreadySubscribed(String),
    #[error("the Stripe records could not be read: {0}")]
    Store(String),
    #[error(transparent)]
    Stripe(StripeApiError),
}

/// A Checkout Session to send the customer to.
#[derive(Debug, Clone)]
pub struct CheckoutStarted {
    pub session_id: String,
    pub url: String,
    pub purchase: Purchase,
}

/// Creates a Checkout Session for `price_id` on behalf of `team_id`.
pub async fn start(state: &AppState, team_id: TeamId, price_id: &str, idempotency_key: Option<&str>) -> Result<CheckoutStarted, CheckoutError> {
    let client = state.stripe.checkout().ok_or(CheckoutError::NotConfigured)?;
    let purchase = state.stripe.catalog().purchase(price_id).ok_or_else(|| CheckoutError::UnknownPrice(price_id.to_string()))?;
    if let Purchase::Plan { .. } = purchase {
        let live = store::live_subscription(&state.db, team_id, None).await.map_err(|e| CheckoutError::Store(e.to_string()))?;
        if let Some(live) = live {
            return Err(CheckoutError::AlreadySubscribed(live));
        }
    }
    let customer = store::customer_of_team(&state.db, team_id).await.map_err(|e| CheckoutError::Store(e.to_string()))?;
    // Stripe keys are at most 255 characters; a digest of team and key fits and keeps
    // one team's key from naming another team's session.
    let idempotency_key = idempotency_key.map(|k| format!("kiln-checkout-{}", hex::encode(Sha256::digest(format!("{team_id}:{k}")))));
    let request = CheckoutRequest { team_id, price_id, purchase, customer: customer.as_deref(), idempotency_key };
    let session = client.create_session(&request).await.map_err(CheckoutError::Stripe)?;
    tracing::info!(session_id = %session.id, %price_id, %team_id, "checkout session created");
    Ok(CheckoutStarted { session_id: session.id, url: session.url, purchase })
}
