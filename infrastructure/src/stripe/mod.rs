//! Stripe: credit packs bought through Checkout, plans from subscriptions.
//!
//! - [`settings`]: the `[stripe]` configuration section (keys, URLs, the price catalog).
//! - [`client`]: creating Checkout Sessions over Stripe's HTTP API.
//! - [`signature`]: the `Stripe-Signature` check (HMAC-SHA256, constant-time, tolerance).
//! - [`webhook`]: what a verified event means for the ledger (pure).
//! - [`store`]: the events seen (idempotency by event id) and customer → team mapping.
//!
//! [`Stripe`] bundles what the HTTP layer needs, built once from the settings. Running
//! the resulting ledger commands is the caller's job (through `CreditsService`).

pub mod client;
pub mod settings;
pub mod signature;
pub mod store;
pub mod webhook;

use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};

pub use client::{CheckoutClient, CheckoutRequest, CheckoutSession, Purchase, StripeApiError};
pub use settings::{CreditPack, MonthlyCredits, PlanPrice, StripeSettings};
pub use signature::SignatureError;
pub use webhook::{Action, Catalog, Event, Interpretation, MalformedEvent, SubscriptionStatus, TeamHint};

/// The webhook endpoint's secret and tolerance.
#[derive(Debug, Clone)]
pub struct WebhookVerifier {
    secret: SecretString,
    tolerance_secs: u64,
}

impl WebhookVerifier {
    /// Checks the `Stripe-Signature` header over the raw body; see [`signature::verify`].
    pub fn verify(&self, header: Option<&str>, payload: &[u8], now: DateTime<Utc>) -> Result<DateTime<Utc>, SignatureError> {
        signature::verify(header, payload, self.secret.expose_secret().as_bytes(), now, self.tolerance_secs)
    }
}

/// Stripe as the application sees it: the catalog, and the API client and webhook
/// verifier when their secrets are configured.
#[derive(Debug, Clone)]
pub struct Stripe {
    catalog: Catalog,
    checkout: Option<CheckoutClient>,
    webhook: Option<WebhookVerifier>,
}

impl Stripe {
    pub fn new(settings: &StripeSettings) -> Self {
        let checkout = settings.secret_key.clone().and_then(|key| {
            let timeout = Duration::from_secs(settings.request_timeout_secs.max(1));
            CheckoutClient::new(&settings.api_base_url, key, settings.success_url.clone(), settings.cancel_url.clone(), timeout)
                .inspect_err(|error| tracing::error!(%error, "cannot build the Stripe HTTP client; checkout disabled"))
                .ok()
        });
        let webhook = settings
            .webhook_secret
            .clone()
            .map(|secret| WebhookVerifier { secret, tolerance_secs: settings.webhook_tolerance_secs });
        Self { catalog: Catalog::from_settings(settings), checkout, webhook }
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// `None` when no secret key is configured.
    pub fn checkout(&self) -> Option<&CheckoutClient> {
        self.checkout.as_ref()
    }

    /// `None` when no webhook secret is configured.
    pub fn webhook(&self) -> Option<&WebhookVerifier> {
        self.webhook.as_ref()
    }
}

#[async_trait::async_trait]
impl application::payments::Checkout for Stripe {
    fn purchase(&self, price_id: &str) -> Option<Purchase> {
        self.catalog.purchase(price_id)
    }

    fn configured(&self) -> bool {
        self.checkout.is_some()
    }

    fn session_grant(&self, session_id: &str) -> domain::GrantId {
        webhook::checkout_grant(session_id)
    }

    async fn create_session(&self, request: &CheckoutRequest<'_>) -> Result<CheckoutSession, application::payments::ProviderFailure> {
        let client = self.checkout.as_ref().ok_or("Stripe is not configured (stripe.secret_key)")?;
        Ok(client.create_session(request).await?)
    }
}
