//! `/credits`: balance, grants with their expiry, and how to get more — Stripe Checkout
//! when Stripe is configured (its success and cancel URLs land back here), otherwise
//! how an operator grants credits.

use askama::Template;
use axum::extract::{Query, State};
use axum::response::Html;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

use super::errors::{Notice, WebError};
use super::layout::{time, time_opt, Layout};
use super::session::Session;
use crate::app::AppState;
use crate::queries;

pub fn routes() -> Router<AppState> {
    Router::new().route("/credits", get(page))
}

#[derive(Debug, Default, Deserialize)]
struct CreditsQuery {
    /// Set by Stripe's return URLs: `success` or `cancelled`.
    checkout: Option<String>,
}

pub struct GrantRow {
    pub origin: String,
    pub amount: i64,
    pub remaining: i64,
    pub reserved: i64,
    pub granted_at: String,
    pub expires_at: String,
}

pub struct PackRow {
    pub price_id: String,
    pub credits: i64,
}

#[derive(Template)]
#[template(path = "credits.html")]
struct CreditsPage {
    layout: Layout,
    notice: Option<Notice>,
    team_id: String,
    plan: String,
    available: i64,
    reserved: i64,
    granted: i64,
    deducted: i64,
    expired: i64,
    grants: Vec<GrantRow>,
    stripe: bool,
    packs: Vec<PackRow>,
}

fn checkout_notice(checkout: Option<&str>) -> Option<Notice> {
    match checkout? {
        "success" => Some(Notice::new(
            "Payment received",
            "Thank you. Stripe confirms the payment to Kiln separately; the credits appear here within a minute.",
        )),
        "cancelled" => Some(Notice::new("Checkout cancelled", "Nothing was charged. You can buy credits whenever you like.")),
        _ => None,
    }
}

async fn page(State(state): State<AppState>, session: Session, Query(query): Query<CreditsQuery>) -> Result<Html<String>, WebError> {
    let balance = queries::credits::balance(&state.db, session.team_id).await?.ok_or(WebError::SignedOut)?;
    let grants = balance
        .grants
        .iter()
        .map(|g| GrantRow {
            origin: g.origin.clone(),
            amount: g.amount,
            remaining: g.remaining,
            reserved: g.reserved,
            granted_at: time(g.granted_at),
            expires_at: time_opt(g.expires_at),
        })
        .collect();
    let stripe = state.stripe.checkout().is_some();
    let packs = state.stripe.catalog().packs().map(|(price_id, credits)| PackRow { price_id: price_id.to_string(), credits }).collect();
    let page = CreditsPage {
        layout: Layout::load(&state, &session, "Credits", "credits").await?,
        notice: checkout_notice(query.checkout.as_deref()),
        team_id: balance.team_id,
        plan: balance.plan,
        available: balance.available,
        reserved: balance.reserved,
        granted: balance.totals.granted,
        deducted: balance.totals.deducted,
        expired: balance.totals.expired,
        grants,
        stripe,
        packs,
    };
    Ok(Html(page.render()?))
}
