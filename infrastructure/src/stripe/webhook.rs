//! What a Stripe webhook event means for the ledger. Pure: a verified event and the
//! catalog in, an [`Interpretation`] out (who it is about, what to do); the caller
//! resolves the team and runs the command.
//!
//! | event | action |
//! |---|---|
//! | `checkout.session.completed` (payment mode, paid) | grant the pack's credits (source stripe) |
//! | `checkout.session.async_payment_succeeded` | the same grant (same grant id: one per session) |
//! | `invoice.paid` for a subscription | grant the plan's monthly credits, expiring at the period's end |
//! | `customer.subscription.created` / `updated` | change plan (or expire, for a dead status) as of `created` |
//! | `customer.subscription.deleted` | expire the subscription as of `created` |
//! | anything else | ignore |
//!
//! Payloads are read leniently by field name, accepting both the classic shapes and those
//! of API version 2025-03-31 ("basil", which moved invoice fields under `parent` and
//! `pricing`), so an endpoint's API version upgrade does not silently stop grants.

use chrono::{DateTime, Utc};
use domain::{Credits, GrantId, GrantSource, IdempotencyKey, Plan, TeamId};
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use super::client::Purchase;
use super::settings::{MonthlyCredits, StripeSettings};

/// Namespace of grant ids derived from Stripe object ids (UUIDv5), so every delivery of
/// every event about one payment names the same grant.
const GRANT_NAMESPACE: Uuid = Uuid::from_u128(0x7374_7269_7065_2d67_7261_6e74_2d69_6473);

/// A verified event, as far as Kiln reads it.
#[derive(Debug, Clone)]
pub struct Event {
    /// `evt_…`: the idempotency key of everything the event causes.
    pub id: IdempotencyKey,
    pub kind: String,
    /// When Stripe created the event; orders plan changes.
    pub created: DateTime<Utc>,
    pub object: Value,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a Stripe event: {0}")]
pub struct MalformedEvent(String);

#[derive(Deserialize)]
struct Envelope {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    created: i64,
    data: Data,
}

#[derive(Deserialize)]
struct Data {
    object: Value,
}

impl Event {
    pub fn parse(body: &[u8]) -> Result<Self, MalformedEvent> {
        let envelope: Envelope = serde_json::from_slice(body).map_err(|e| MalformedEvent(e.to_string()))?;
        let id = IdempotencyKey::parse(envelope.id).map_err(|e| MalformedEvent(format!("id: {e}")))?;
        let created = DateTime::from_timestamp(envelope.created, 0).ok_or_else(|| MalformedEvent("created out of range".into()))?;
        Ok(Self { id, kind: envelope.kind, created, object: envelope.data.object })
    }
}

/// Stripe price ids → what they buy.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    packs: Vec<(String, Credits)>,
    plans: Vec<(String, Plan)>,
    monthly_credits: MonthlyCredits,
}

impl Catalog {
    pub fn from_settings(settings: &StripeSettings) -> Self {
        Self {
            packs: settings.packs.iter().map(|p| (p.price_id.clone(), p.credits)).collect(),
            plans: settings.plan_prices.iter().map(|p| (p.price_id.clone(), p.plan)).collect(),
            monthly_credits: settings.monthly_credits,
        }
    }

    /// The configured credit packs: (price id, credits).
    pub fn packs(&self) -> impl Iterator<Item = (&str, i64)> {
        self.packs.iter().map(|(id, credits)| (id.as_str(), credits.get()))
    }

    pub fn pack(&self, price_id: &str) -> Option<Credits> {
        self.packs.iter().find(|(id, _)| id == price_id).map(|(_, credits)| *credits)
    }

    pub fn plan(&self, price_id: &str) -> Option<Plan> {
        self.plans.iter().find(|(id, _)| id == price_id).map(|(_, plan)| *plan)
    }

    /// What checking out `price_id` buys; packs win if an id is configured as both.
    pub fn purchase(&self, price_id: &str) -> Option<Purchase> {
        self.pack(price_id)
            .map(|credits| Purchase::Pack { credits })
            .or_else(|| self.plan(price_id).map(|plan| Purchase::Plan { plan }))
    }
}

pub use application::payments::{Action, Interpretation, SubscriptionStatus, TeamHint};

pub fn interpret(event: &Event, catalog: &Catalog) -> Interpretation {
    let object = &event.object;
    match event.kind.as_str() {
        "checkout.session.completed" | "checkout.session.async_payment_succeeded" => checkout(event, catalog),
        "invoice.paid" => invoice(object, catalog),
        "customer.subscription.created" | "customer.subscription.updated" => subscription(event, catalog),
        "customer.subscription.deleted" => Interpretation {
            hint: subscription_hint(object),
            action: Action::ExpireSubscription { effective_at: event.created },
            subscription: subscription_status(object, "canceled"),
        },
        other => Interpretation::new(TeamHint::default(), Action::Ignore(format!("{other} is not handled"))),
    }
}

fn checkout(event: &Event, catalog: &Catalog) -> Interpretation {
    let session = &event.object;
    let hint = TeamHint {
        team_id: team_in(session.get("metadata")).or_else(|| text(session, &["client_reference_id"]).and_then(|t| t.parse().ok())),
        customer: id_at(session, "customer"),
        subscription: None,
    };
    let action = if text(session, &["mode"]) != Some("payment") {
        Action::Ignore("not a one-off payment; subscription credits come with invoice.paid".into())
    } else if event.kind == "checkout.session.completed"
        // `no_payment_required`: a 100% discount; the customer still bought the pack.
        && !matches!(text(session, &["payment_status"]), Some("paid" | "no_payment_required"))
    {
        Action::Ignore("payment not settled yet; checkout.session.async_payment_succeeded follows".into())
    } else {
        match (id_at(session, "id"), pack_credits(session, catalog)) {
            (None, _) => Action::Unresolved("session without an id".into()),
            (_, None) => Action::Unresolved("session names no configured credit pack".into()),
            (Some(session_id), Some(amount)) => Action::Grant {
                grant_id: checkout_grant(&session_id),
                amount,
                source: GrantSource::Stripe,
                expires_at: None,
            },
        }
    };
    Interpretation::new(hint, action)
}

/// The credits promised when the session was created (its metadata), else the pack of
/// its price as configured now.
fn pack_credits(session: &Value, catalog: &Catalog) -> Option<Credits> {
    let promised = text(session, &["metadata", "credits"]).and_then(|c| c.parse::<i64>().ok()).and_then(|c| Credits::parse(c).ok());
    promised.or_else(|| text(session, &["metadata", "price_id"]).and_then(|price| catalog.pack(price)))
}

fn invoice(invoice: &Value, catalog: &Catalog) -> Interpretation {
    let details = invoice.get("subscription_details").or_else(|| invoice.pointer("/parent/subscription_details"));
    let subscription = id_at(invoice, "subscription").or_else(|| details.and_then(|d| id_at(d, "subscription")));
    let hint = TeamHint {
        team_id: team_in(details.and_then(|d| d.get("metadata"))),
        customer: id_at(invoice, "customer"),
        subscription: subscription.clone(),
    };
    let action = if subscription.is_none() {
        Action::Ignore("invoice is not for a subscription".into())
    } else if text(invoice, &["billing_reason"]) == Some("subscription_update") {
        // Proration invoices of a mid-period change: the allowance comes with the next
        // period's invoice, not with each change.
        Action::Ignore("proration invoice of a plan change".into())
    } else {
        invoice_grant(invoice, catalog)
    };
    Interpretation::new(hint, action)
}

fn invoice_grant(invoice: &Value, catalog: &Catalog) -> Action {
    let lines = invoice.pointer("/lines/data").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let Some((plan, line)) = lines.iter().filter(|line| !is_proration(line)).find_map(|line| line_price(line).and_then(|p| catalog.plan(p)).map(|plan| (plan, line)))
    else {
        return Action::Unresolved("no invoice line has a price mapped to a plan".into());
    };
    let Some(amount) = catalog.monthly_credits.of(plan) else {
        return Action::Ignore(format!("the {plan} plan has no monthly credits"));
    };
    let Some(period_end) = line.pointer("/period/end").and_then(Value::as_i64).and_then(|end| DateTime::from_timestamp(end, 0)) else {
        return Action::Unresolved("subscription line without a period end".into());
    };
    let Some(invoice_id) = id_at(invoice, "id") else {
        return Action::Unresolved("invoice without an id".into());
    };
    Action::Grant {
        grant_id: derived_grant("invoice", &invoice_id),
        amount,
        source: GrantSource::Plan,
        expires_at: Some(period_end),
    }
}

fn line_price(line: &Value) -> Option<&str> {
    text(line, &["price", "id"])
        .or_else(|| text(line, &["price"]))
        .or_else(|| text(line, &["pricing", "price_details", "price"]))
        .or_else(|| text(line, &["plan", "id"]))
}

fn is_proration(line: &Value) -> bool {
    let flag = |path: &str| line.pointer(path).and_then(Value::as_bool).unwrap_or(false);
    flag("/proration") || flag("/parent/subscription_item_details/proration")
}

fn subscription_hint(subscription: &Value) -> TeamHint {
    TeamHint {
        team_id: team_in(subscription.get("metadata")),
        customer: id_at(subscription, "customer"),
        subscription: id_at(subscription, "id"),
    }
}

fn subscription(event: &Event, catalog: &Catalog) -> Interpretation {
    let subscription = &event.object;
    let hint = subscription_hint(subscription);
    let effective_at = event.created;
    let action = match text(subscription, &["status"]) {
        Some("active" | "trialing" | "past_due") => {
            let items = subscription.pointer("/items/data").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
            match items.iter().find_map(|item| line_price(item).and_then(|p| catalog.plan(p))) {
                Some(plan) => Action::ChangePlan { plan, effective_at },
                None => Action::Unresolved("no subscription item has a price mapped to a plan".into()),
            }
        }
        // The subscription no longer pays: the team is on Free until a new one does.
        Some("canceled" | "unpaid" | "incomplete_expired" | "paused") => Action::ExpireSubscription { effective_at },
        Some(status) => Action::Ignore(format!("subscription status {status} changes nothing yet")),
        None => Action::Unresolved("subscription without a status".into()),
    };
    Interpretation { hint, action, subscription: subscription_status(subscription, "unknown") }
}

fn subscription_status(subscription: &Value, default_status: &str) -> Option<SubscriptionStatus> {
    Some(SubscriptionStatus {
        subscription_id: id_at(subscription, "id")?,
        status: text(subscription, &["status"]).unwrap_or(default_status).to_owned(),
    })
}

/// The grant a paid Checkout Session's credits arrive as (so the customer's return page
/// can tell whether they have).
pub fn checkout_grant(session_id: &str) -> GrantId {
    derived_grant("checkout-session", session_id)
}

fn derived_grant(scope: &str, stripe_id: &str) -> GrantId {
    GrantId::new(Uuid::new_v5(&GRANT_NAMESPACE, format!("stripe:{scope}:{stripe_id}").as_bytes()))
}

fn text<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(value, |value, key| value.get(key))?.as_str()
}

/// A field holding an id, or an expanded object with one.
fn id_at(value: &Value, field: &str) -> Option<String> {
    let field = value.get(field)?;
    field.as_str().or_else(|| field.get("id").and_then(Value::as_str)).filter(|id| !id.is_empty()).map(str::to_owned)
}

fn team_in(metadata: Option<&Value>) -> Option<TeamId> {
    metadata?.get("team_id")?.as_str()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::stripe::settings::{CreditPack, PlanPrice};

    const TEAM: &str = "0190b7f4-0000-7000-8000-000000000001";

    fn catalog() -> Catalog {
        let settings = StripeSettings {
            packs: vec![CreditPack { price_id: "price_Pack500".into(), credits: Credits::parse(500).expect("positive") }],
            plan_prices: vec![
                PlanPrice { price_id: "price_Basic".into(), plan: Plan::Basic },
                PlanPrice { price_id: "price_Pro".into(), plan: Plan::Pro },
            ],
            ..StripeSettings::default()
        };
        Catalog::from_settings(&settings)
    }

    fn event(kind: &str, object: Value) -> Event {
        let body = json!({"id": "evt_1", "object": "event", "type": kind, "created": 1_790_000_100, "data": {"object": object}});
        Event::parse(body.to_string().as_bytes()).expect("event")
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).expect("valid")
    }

    #[test]
    fn basil_invoice_shape_grants_the_plan_allowance() {
        let invoice = json!({
            "id": "in_1", "object": "invoice", "customer": "cus_1", "billing_reason": "subscription_cycle",
            "parent": {"type": "subscription_details", "subscription_details": {"subscription": "sub_1", "metadata": {"team_id": TEAM}}},
            "lines": {"object": "list", "data": [{
                "id": "il_1", "period": {"start": 1_790_000_000, "end": 1_792_592_000},
                "pricing": {"type": "price_details", "price_details": {"price": "price_Pro", "product": "prod_1"}},
                "parent": {"type": "subscription_item_details", "subscription_item_details": {"proration": false}}
            }]}
        });
        let got = interpret(&event("invoice.paid", invoice), &catalog());
        assert_eq!(got.hint.team_id, Some(TEAM.parse().expect("uuid")));
        assert_eq!(got.hint.subscription.as_deref(), Some("sub_1"));
        assert_eq!(
            got.action,
            Action::Grant {
                grant_id: derived_grant("invoice", "in_1"),
                amount: Credits::parse(5_000).expect("positive"),
                source: GrantSource::Plan,
                expires_at: Some(at(1_792_592_000)),
            }
        );
    }

    #[test]
    fn what_is_ignored_or_unresolved() {
        #[track_caller]
        fn check(kind: &str, object: Value, expected: fn(&Action) -> bool) {
            let got = interpret(&event(kind, object), &catalog());
            assert!(expected(&got.action), "{kind}: {:?}", got.action);
        }
        let ignored = |a: &Action| matches!(a, Action::Ignore(_));
        let unresolved = |a: &Action| matches!(a, Action::Unresolved(_));
        check("charge.refunded", json!({"id": "ch_1"}), ignored);
        check("checkout.session.completed", json!({"id": "cs_1", "mode": "payment", "payment_status": "unpaid"}), ignored);
        check("checkout.session.completed", json!({"id": "cs_1", "mode": "subscription", "payment_status": "paid"}), ignored);
        check("checkout.session.completed", json!({"id": "cs_1", "mode": "payment", "payment_status": "paid", "metadata": {"price_id": "price_X"}}), unresolved);
        check("invoice.paid", json!({"id": "in_1", "subscription": null, "lines": {"data": []}}), ignored);
        check("invoice.paid", json!({"id": "in_1", "subscription": "sub_1", "billing_reason": "subscription_update"}), ignored);
        check("invoice.paid", json!({"id": "in_1", "subscription": "sub_1", "billing_reason": "subscription_cycle",
            "lines": {"data": [{"price": {"id": "price_Other"}, "period": {"end": 1}}]}}), unresolved);
        check("customer.subscription.updated", json!({"id": "sub_1", "status": "incomplete"}), ignored);
        check("customer.subscription.updated", json!({"id": "sub_1", "status": "active", "items": {"data": [{"price": {"id": "price_X"}}]}}), unresolved);
        check("customer.subscription.updated", json!({"id": "sub_1", "status": "unpaid"}), |a| matches!(a, Action::ExpireSubscription { .. }));
    }

    #[test]
    fn both_checkout_events_of_a_session_name_one_grant() {
        let session = json!({"id": "cs_1", "object": "checkout.session", "mode": "payment", "payment_status": "paid",
            "customer": {"id": "cus_1", "object": "customer"}, "client_reference_id": TEAM, "metadata": {"price_id": "price_Pack500"}});
        let completed = interpret(&event("checkout.session.completed", session.clone()), &catalog());
        let succeeded = interpret(&event("checkout.session.async_payment_succeeded", session), &catalog());
        assert_eq!(completed, succeeded);
        assert_eq!(completed.hint.customer.as_deref(), Some("cus_1"));
        assert!(matches!(completed.action, Action::Grant { amount, source: GrantSource::Stripe, expires_at: None, .. } if amount.get() == 500));
    }

    #[test]
    fn malformed_events() {
        assert!(Event::parse(b"{}").is_err());
        assert!(Event::parse(br#"{"id":"","type":"x","created":1,"data":{"object":{}}}"#).is_err());
        assert!(Event::parse(br#"{"id":"evt_1","type":"x","created":1,"data":{"object":{}}}"#).is_ok());
    }
}
