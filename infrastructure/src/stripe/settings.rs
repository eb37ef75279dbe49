//! The `[stripe]` configuration section.
//!
//! Owns [`StripeSettings`]: keys (secrets, never serialized or printed), URLs, and the
//! catalog that maps Stripe price ids to what Kiln sells: credit packs (one-off payments)
//! and plans (subscriptions), plus each plan's monthly credit allowance. Price ids are
//! values, not map keys, because environment variables are lower-cased by the config
//! loader and Stripe's ids are case-sensitive.

use domain::{Credits, Plan};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StripeSettings {
    /// Stripe's API. Tests point it at a fake on loopback.
    pub api_base_url: String,
    /// The secret API key (`sk_…`). Unset: `POST /api/credits/checkout` answers 503.
    #[serde(skip_serializing)]
    pub secret_key: Option<SecretString>,
    /// The webhook endpoint's signing secret (`whsec_…`). Unset: the webhook answers 503.
    #[serde(skip_serializing)]
    pub webhook_secret: Option<SecretString>,
    /// How far a webhook's signed timestamp may be from now, either way.
    pub webhook_tolerance_secs: u64,
    /// Limit on one call to Stripe's API.
    pub request_timeout_secs: u64,
    /// Where Stripe sends the customer after paying; may contain `{CHECKOUT_SESSION_ID}`.
    pub success_url: String,
    /// Where Stripe sends the customer who gives up.
    pub cancel_url: String,
    /// One-off credit packs (checkout in `payment` mode).
    pub packs: Vec<CreditPack>,
    /// Subscription prices and the plan each one buys (checkout in `subscription` mode).
    pub plan_prices: Vec<PlanPrice>,
    /// Credits granted with each paid subscription invoice, expiring at the period's end.
    pub monthly_credits: MonthlyCredits,
}

/// A Stripe price that buys a fixed number of credits once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreditPack {
    pub price_id: String,
    /// Credits granted when the payment succeeds (> 0; checked when the config loads).
    pub credits: Credits,
}

/// A Stripe recurring price and the plan a subscription to it puts the team on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanPrice {
    pub price_id: String,
    pub plan: Plan,
}

/// Credits per paid subscription period, by plan; 0 grants nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonthlyCredits {
    pub basic: u32,
    pub pro: u32,
    pub enterprise: u32,
}

impl MonthlyCredits {
    /// The allowance of `plan`, if it has one.
    pub fn of(&self, plan: Plan) -> Option<Credits> {
        let credits = match plan {
            Plan::Free => 0,
            Plan::Basic => self.basic,
            Plan::Pro => self.pro,
            Plan::Enterprise => self.enterprise,
        };
        Credits::parse(i64::from(credits)).ok()
    }
}

impl Default for MonthlyCredits {
    fn default() -> Self {
        Self { basic: 1_000, pro: 5_000, enterprise: 25_000 }
    }
}

impl Default for StripeSettings {
    fn default() -> Self {
        Self {
            api_base_url: "https://api.stripe.com".into(),
            secret_key: None,
            webhook_secret: None,
            webhook_tolerance_secs: 300,
            request_timeout_secs: 10,
            success_url: "http://127.0.0.1:8080/credits?checkout=success&session_id={CHECKOUT_SESSION_ID}".into(),
            cancel_url: "http://127.0.0.1:8080/credits?checkout=cancelled".into(),
            packs: Vec::new(),
            plan_prices: Vec::new(),
            monthly_credits: MonthlyCredits::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Settings;

    use super::*;

    #[test]
    // figment's Jail fixes the closure's (large) error type.
    #[allow(clippy::result_large_err)]
    fn catalog_from_toml_secrets_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "k.toml",
                r#"
                [stripe]
                success_url = "https://kiln.example/ok"
                [stripe.monthly_credits]
                pro = 6000
                [[stripe.packs]]
                price_id = "price_1AbcPack"
                credits = 500
                [[stripe.plan_prices]]
                price_id = "price_1AbcPro"
                plan = "pro"
                "#,
            )?;
            jail.set_env("KILN_STRIPE__SECRET_KEY", "sk_test_env");
            jail.set_env("KILN_STRIPE__WEBHOOK_SECRET", "whsec_env");
            let settings = Settings::load(Some(Path::new("k.toml"))).expect("valid settings");
            let stripe = &settings.stripe;
            assert_eq!(stripe.packs, vec![CreditPack { price_id: "price_1AbcPack".into(), credits: Credits::parse(500).expect("positive") }]);
            assert_eq!(stripe.plan_prices, vec![PlanPrice { price_id: "price_1AbcPro".into(), plan: Plan::Pro }]);
            assert_eq!(stripe.monthly_credits, MonthlyCredits { pro: 6_000, ..MonthlyCredits::default() });
            assert_eq!(stripe.api_base_url, "https://api.stripe.com");
            assert_eq!(stripe.success_url, "https://kiln.example/ok");
            let printed = format!("{settings:?}");
            assert!(stripe.secret_key.is_some() && !printed.contains("sk_test_env") && !printed.contains("whsec_env"));

            // Lists from the environment keep the case of price ids.
            jail.set_env("KILN_STRIPE__PACKS", r#"[{price_id="price_1EnvPack",credits=7}]"#);
            let settings = Settings::load(Some(Path::new("k.toml"))).expect("valid settings");
            assert_eq!(settings.stripe.packs, vec![CreditPack { price_id: "price_1EnvPack".into(), credits: Credits::parse(7).expect("positive") }]);

            jail.set_env("KILN_STRIPE__PACKS", r#"[{price_id="price_1",credits=0}]"#);
            assert!(Settings::load(Some(Path::new("k.toml"))).is_err(), "a pack of no credits is refused");
            Ok(())
        });
    }
}
