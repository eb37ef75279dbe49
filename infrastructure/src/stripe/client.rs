//! The slice of Stripe's HTTP API Kiln calls: creating Checkout Sessions.
//!
//! Form-encoded `POST {base}/v1/checkout/sessions` with `Authorization: Bearer sk_…`. The
//! team goes into the session's metadata (and the subscription's, for plans) so the
//! webhooks that follow name it; the price id and the credits promised go there too, so
//! the webhook can grant without calling Stripe back. Errors never carry the key: reqwest
//! errors name the URL only, and Stripe's own messages mask keys.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// Largest response body read from Stripe; a session is a few kilobytes.
pub const RESPONSE_BYTES_MAX: usize = 1 << 20;
/// Longest Stripe error message kept for the log.
const MESSAGE_CHARS_MAX: usize = 300;

pub use application::payments::{CheckoutRequest, CheckoutSession, Purchase};

#[derive(Debug, thiserror::Error)]
pub enum StripeApiError {
    #[error("Stripe could not be reached")]
    Transport(#[source] reqwest::Error),
    #[error("Stripe refused the request: HTTP {status}, {kind}{}", code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Api {
        status: u16,
        /// Stripe's error `type`, e.g. `invalid_request_error`.
        kind: String,
        code: Option<String>,
        /// Stripe's message (keys in it are masked by Stripe), shortened.
        message: Option<String>,
    },
    #[error("Stripe's answer is not a checkout session")]
    UnexpectedResponse,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, Deserialize)]
struct ErrorDetail {
    #[serde(rename = "type", default)]
    kind: String,
    code: Option<String>,
    message: Option<String>,
}

/// A configured client for Stripe's API.
#[derive(Debug, Clone)]
pub struct CheckoutClient {
    http: reqwest::Client,
    sessions_url: String,
    secret_key: SecretString,
    success_url: String,
    cancel_url: String,
}

impl CheckoutClient {
    pub fn new(
        base_url: &str,
        secret_key: SecretString,
        success_url: String,
        cancel_url: String,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder().timeout(timeout).build()?;
        let sessions_url = format!("{}/v1/checkout/sessions", base_url.trim_end_matches('/'));
        Ok(Self { http, sessions_url, secret_key, success_url, cancel_url })
    }

    /// The form Stripe receives for `request`.
    pub fn form(&self, request: &CheckoutRequest<'_>) -> Vec<(&'static str, String)> {
        let team = request.team_id.to_string();
        let mut form = vec![
            ("line_items[0][price]", request.price_id.to_owned()),
            ("line_items[0][quantity]", "1".to_owned()),
            ("success_url", self.success_url.clone()),
            ("cancel_url", self.cancel_url.clone()),
            ("client_reference_id", team.clone()),
            ("metadata[team_id]", team.clone()),
            ("metadata[price_id]", request.price_id.to_owned()),
        ];
        match request.purchase {
            Purchase::Pack { credits } => {
                form.push(("mode", "payment".to_owned()));
                form.push(("metadata[credits]", credits.get().to_string()));
                if request.customer.is_none() {
                    // Without a customer, later purchases could not be tied to this team.
                    form.push(("customer_creation", "always".to_owned()));
                }
            }
            Purchase::Plan { plan } => {
                form.push(("mode", "subscription".to_owned()));
                form.push(("metadata[plan]", plan.to_string()));
                // The subscription's own events and invoices carry this, not the session's.
                form.push(("subscription_data[metadata][team_id]", team));
            }
        }
        if let Some(customer) = request.customer {
            form.push(("customer", customer.to_owned()));
        }
        form
    }

    /// Creates the session.
    pub async fn create_session(&self, request: &CheckoutRequest<'_>) -> Result<CheckoutSession, StripeApiError> {
        let mut call = self
            .http
            .post(&self.sessions_url)
            .bearer_auth(self.secret_key.expose_secret())
            .form(&self.form(request));
        if let Some(key) = &request.idempotency_key {
            call = call.header("Idempotency-Key", key);
        }
        let mut response = call.send().await.map_err(StripeApiError::Transport)?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(StripeApiError::Transport)? {
            if body.len() + chunk.len() > RESPONSE_BYTES_MAX {
                return Err(StripeApiError::UnexpectedResponse);
            }
            body.extend_from_slice(&chunk);
        }
        if status.is_success() {
            return serde_json::from_slice(&body).map_err(|_| StripeApiError::UnexpectedResponse);
        }
        let detail = serde_json::from_slice::<ErrorBody>(&body).ok().map(|b| b.error);
        Err(StripeApiError::Api {
            status: status.as_u16(),
            kind: detail.as_ref().map(|d| d.kind.clone()).unwrap_or_else(|| "unknown".into()),
            code: detail.as_ref().and_then(|d| d.code.clone()),
            message: detail.and_then(|d| d.message).map(|m| m.chars().take(MESSAGE_CHARS_MAX).collect()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::{Credits, Plan, TeamId};

    fn client() -> CheckoutClient {
        CheckoutClient::new(
            "http://stripe.test/",
            "sk_test_x".to_owned().into(),
            "https://app/ok".into(),
            "https://app/no".into(),
            Duration::from_secs(1),
        )
        .expect("client")
    }

    #[test]
    fn forms_for_packs_and_plans() {
        let team_id = TeamId::new(uuid::Uuid::from_u128(7));
        let client = client();
        assert_eq!(client.sessions_url, "http://stripe.test/v1/checkout/sessions");
        let pack = CheckoutRequest {
            team_id,
            price_id: "price_Pack",
            purchase: Purchase::Pack { credits: Credits::parse(500).expect("positive") },
            customer: None,
            idempotency_key: None,
        };
        let form = client.form(&pack);
        let get = |key: &str| form.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_str());
        assert_eq!(get("mode"), Some("payment"));
        assert_eq!(get("line_items[0][price]"), Some("price_Pack"));
        assert_eq!(get("metadata[credits]"), Some("500"));
        assert_eq!(get("customer_creation"), Some("always"));
        assert_eq!(get("client_reference_id"), Some(team_id.to_string().as_str()));

        let plan = CheckoutRequest { purchase: Purchase::Plan { plan: Plan::Pro }, customer: Some("cus_1"), ..pack };
        let form = client.form(&plan);
        let get = |key: &str| form.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_str());
        assert_eq!(get("mode"), Some("subscription"));
        assert_eq!(get("subscription_data[metadata][team_id]"), Some(team_id.to_string().as_str()));
        assert_eq!(get("customer"), Some("cus_1"));
        assert_eq!(get("customer_creation"), None);
    }
}
