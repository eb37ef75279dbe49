//! `/credits`: balance, grants with their expiry, and how to get more — Stripe Checkout
//! when Stripe is configured (its success and cancel URLs land back here), otherwise
//! how an operator grants credits.

use askama::Template;
use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;

use super::form::PageForm;
use super::errors::{Notice, WebError};
use super::layout::{time, time_opt, Layout};
use super::session::Session;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/credits", get(page)).route("/credits/checkout", post(checkout))
}

#[derive(Debug, Deserialize)]
struct CheckoutForm {
    price_id: String,
    /// Checked by the CSRF layer.
    #[allow(dead_code)]
    csrf: Option<String>,
}

/// "Buy credits": starts a Stripe Checkout through the same rules as
/// `POST /api/credits/checkout` (`PaymentsService::start_checkout`) and sends the browser to Stripe's
/// payment page; Stripe returns it to `/credits?checkout=success|cancelled`.
async fn checkout(State(state): State<AppState>, session: Session, PageForm(form): PageForm<CheckoutForm>) -> Result<Response, WebError> {
    session.writer()?;
    match state.payments.start_checkout(session.team_id, form.price_id.trim(), None).await {
        Ok(started) => Ok(Redirect::to(&started.url).into_response()),
        Err(error) => match WebError::from(error) {
            WebError::Refused(notice) => Ok(render(&state, &session, Some(notice)).await?.into_response()),
            other => Err(other),
        },
    }
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
    render(&state, &session, checkout_notice(query.checkout.as_deref())).await
}

async fn render(state: &AppState, session: &Session, notice: Option<Notice>) -> Result<Html<String>, WebError> {
    let balance = state.balances.balance(&state.db, session.team_id).await?.ok_or(WebError::SignedOut)?;
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
        layout: Layout::with_balance(session, &balance, "Credits", "credits"),
        notice,
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
