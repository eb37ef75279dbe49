//! `/credits`: balance, grants with their expiry and the latest ledger entries beside
//! them, charts of the last days (credits spent per day by operation, the balance at
//! each day's end; `web::charts`, from `queries::credits`), and how to get more —
//! Stripe Checkout when Stripe is configured (its success and cancel URLs land back
//! here, and the page says only what is true: pending until the payment's grant is in
//! the ledger, then the grant), otherwise how an operator grants credits.

use askama::Template;
use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;

use super::charts::{self, Line};
use super::errors::{Notice, WebError};
use super::form::PageForm;
use super::history::EntryView;
use super::layout::{kind_label, time, time_opt, Layout};
use super::paging;
use super::session::Session;
use crate::queries;
use crate::queries::credits::{Days, LedgerFilter};
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
    /// The Checkout Session the customer comes back from (`{CHECKOUT_SESSION_ID}` in
    /// the configured success URL).
    session_id: Option<String>,
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

/// One day of the charts' numbers, for the table beside them.
pub struct DayRow {
    pub day: String,
    /// Spent per operation, in the order of `operations`.
    pub spent: Vec<i64>,
    pub total: i64,
    pub available: i64,
}

/// A drawn chart, with what it shows in words (for people who do not see it).
pub struct Figure {
    pub id: &'static str,
    pub title: String,
    pub summary: String,
    pub svg: String,
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
    /// The latest ledger entries, newest first.
    ledger: Vec<EntryView>,
    figures: Vec<Figure>,
    operations: Vec<&'static str>,
    days: Vec<DayRow>,
    stripe: bool,
    packs: Vec<PackRow>,
}

/// Days the charts cover, today included.
const CHART_DAYS: usize = 14;
/// Ledger entries shown beside the balance (the history page has them all).
const LEDGER_SHOWN: i64 = 12;

/// What to tell someone Stripe sends back here: only what is true. Where payments are not
/// set up nothing was bought; with payments on, a payment is pending until its grant is
/// in the ledger (Stripe confirms it to Kiln separately, by webhook), then it is the grant.
async fn checkout_notice(state: &AppState, team: domain::TeamId, query: &CreditsQuery) -> Result<Option<Notice>, WebError> {
    let Some(outcome) = query.checkout.as_deref() else { return Ok(None) };
    if !state.payments.configured() {
        return Ok(Some(Notice::new(
            "Payments are not set up here",
            "This Kiln does not sell credits online, so nothing was charged and no credits are on their way. Its operator grants credits.",
        )));
    }
    Ok(match outcome {
        "cancelled" => Some(Notice::new("Checkout cancelled", "Nothing was charged. You can buy credits whenever you like.")),
        "success" => {
            let grant = match query.session_id.as_deref().and_then(|id| state.payments.session_grant(id)) {
                Some(grant_id) => queries::credits::grant(&state.db, team, grant_id).await?,
                None => None,
            };
            Some(match (grant, query.session_id.as_deref()) {
                (Some(grant), _) => Notice::new(
                    "Payment received",
                    format!("{} credits were granted at {}. They are in your balance now.", grant.amount, time(grant.granted_at)),
                ),
                (None, Some(session)) => Notice::new(
                    "Payment pending",
                    "Stripe has not yet confirmed this payment to Kiln. The credits are granted the moment it does \
                     (usually within a minute); nothing more to do on your side.",
                )
                .next(&format!("/credits?checkout=success&session_id={}", paging::q(session)), "Check again"),
                (None, None) => Notice::new(
                    "Payment pending",
                    "The credits are granted once Stripe confirms the payment to Kiln; they will appear in the grants below.",
                ),
            })
        }
        _ => None,
    })
}

async fn page(State(state): State<AppState>, session: Session, Query(query): Query<CreditsQuery>) -> Result<Html<String>, WebError> {
    let notice = checkout_notice(&state, session.team_id, &query).await?;
    render(&state, &session, notice).await
}

/// The charts of the last [`CHART_DAYS`] days and their numbers.
async fn spending(state: &AppState, session: &Session) -> Result<(Vec<Figure>, Vec<&'static str>, Vec<DayRow>), WebError> {
    let days = Days::ending(state.credits.now(), CHART_DAYS);
    let spent = queries::credits::spending_by_day(&state.db, session.team_id, days).await?;
    let balance = queries::credits::balance_by_day(&state.db, session.team_id, days).await?;
    let dates = days.dates();
    let labels: Vec<String> = dates.iter().map(|d| d.format("%m-%d").to_string()).collect();
    let palette = [charts::BLUE_LINE, charts::AMBER_LINE, charts::GREEN_LINE, charts::RED_LINE];
    let operations: Vec<&'static str> = spent.by_operation.iter().map(|(op, _)| kind_label(op)).collect();
    let layers: Vec<Line<'_>> = spent
        .by_operation
        .iter()
        .enumerate()
        .map(|(i, (op, values))| Line { name: kind_label(op), color: palette[i % palette.len()], values: values.iter().map(|v| *v as f64).collect() })
        .collect();
    let total: i64 = spent.totals.iter().sum();
    let mut figures = Vec::new();
    if let Some(svg) = charts::stacked_bars("spent", &labels, "credits", &layers) {
        let summary = format!("{total} credits spent in the last {CHART_DAYS} days; today {}.", spent.totals.last().copied().unwrap_or(0));
        figures.push(Figure { id: "chart-spent", title: "Credits spent per day, by operation".into(), summary, svg });
    }
    let available = vec![Line { name: "available", color: charts::BLUE_LINE, values: balance.iter().map(|v| *v as f64).collect() }];
    if let Some(svg) = charts::lines_by("balance", &labels, "credits", &available) {
        let summary = format!("From {} to {} available credits.", balance.first().copied().unwrap_or(0), balance.last().copied().unwrap_or(0));
        figures.push(Figure { id: "chart-balance", title: "Available credits at the end of each day".into(), summary, svg });
    }
    let rows = dates
        .iter()
        .enumerate()
        .rev()
        .map(|(i, day)| DayRow {
            day: day.to_string(),
            spent: spent.by_operation.iter().map(|(_, values)| values[i]).collect(),
            total: spent.totals[i],
            available: balance[i],
        })
        .collect();
    Ok((figures, operations, rows))
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
    let ledger = queries::credits::history(&state.db, session.team_id, &LedgerFilter::default(), None, LEDGER_SHOWN).await?;
    let (figures, operations, days) = spending(state, session).await?;
    let stripe = state.payments.configured();
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
        ledger: ledger.into_iter().map(EntryView::from).collect(),
        figures,
        operations,
        days,
        stripe,
        packs,
    };
    Ok(Html(page.render()?))
}
