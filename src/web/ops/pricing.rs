//! `/ops/pricing`: the price versions (newest first: effective from when, added by whom
//! and why, the base costs) and a form adding a version effective from a given time:
//! the newest version with new base costs, with a preview of what a sample generation
//! costs under it beside the version in effect now. Jobs keep the version they were
//! reserved at; jobs submitted from the effective time on get the new one.

use application::operator_actions::ReasonRule;
use askama::Template;
use axum::extract::State;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, NaiveDateTime, Utc};
use domain::{PriceRequest, PricingConfig};
use serde::Deserialize;

use super::layout::OpsLayout;
use super::session::OpsSession;
use crate::state::AppState;
use crate::web::errors::{Notice, WebError};
use crate::web::form::PageForm;
use crate::web::layout::time;

pub fn routes() -> Router<AppState> {
    Router::new().route("/ops/pricing", get(page).post(add_version))
}

#[derive(Clone)]
struct VersionLine {
    version: i64,
    effective: String,
    added_by: String,
    reason: String,
    model_creation: i64,
    model_refinement: i64,
    image: i64,
    sample: String,
}

#[derive(Template)]
#[template(path = "ops/pricing.html")]
struct PricingPage {
    layout: OpsLayout,
    notice: Option<Notice>,
    versions: Vec<VersionLine>,
    /// The version in effect now.
    current: i64,
    /// The form's starting values: the newest version's.
    newest: Option<VersionLine>,
    now: String,
}

/// What one 1024×1024 standard image costs under `config` (the preview's sample).
fn sample(config: &PricingConfig) -> String {
    let request = PriceRequest::ImageGeneration { resolution: "1024x1024".into(), quality: "standard".into(), model_complexity_milli: 1_000, count: 1 };
    config.quote(&request).map(|q| format!("{} credits", q.amount.get())).unwrap_or_else(|e| format!("not priced ({e})"))
}

fn line(version: i64, config: &PricingConfig, effective_at: Option<DateTime<Utc>>, added_by: Option<String>, reason: Option<String>) -> VersionLine {
    VersionLine {
        version,
        effective: effective_at.map_or_else(|| "from the start".to_string(), time),
        added_by: added_by.unwrap_or_else(|| "seed".into()),
        reason: reason.unwrap_or_default(),
        model_creation: config.model_creation.base_cost,
        model_refinement: config.model_refinement.base_cost,
        image: config.image_generation.base_cost,
        sample: sample(config),
    }
}

async fn render(state: &AppState, session: &OpsSession, notice: Option<Notice>) -> Result<Html<String>, WebError> {
    let rows = infrastructure::pricing::versions(&state.db).await.map_err(|e| WebError::internal(&e))?;
    let current = state.submit.prices().await?.version;
    let mut versions = Vec::new();
    for row in rows {
        let config: PricingConfig = serde_json::from_str(&row.config).map_err(|e| WebError::internal(&e))?;
        versions.push(line(row.version, &config, row.effective_at, row.added_by, row.reason));
    }
    let newest = versions.first().cloned();
    let now = state.credits.now();
    let page = PricingPage { layout: OpsLayout::new(session, "Pricing", "pricing"), notice, versions, current, newest, now: now.format("%Y-%m-%dT%H:%M").to_string() };
    Ok(Html(page.render()?))
}

async fn page(State(state): State<AppState>, session: OpsSession) -> Result<Html<String>, WebError> {
    render(&state, &session, None).await
}

#[derive(Deserialize)]
struct VersionForm {
    model_creation: String,
    model_refinement: String,
    image: String,
    /// `YYYY-MM-DDTHH:MM` in UTC (a `datetime-local` field).
    effective_at: String,
    reason: String,
}

fn credits(text: &str, what: &str) -> Result<i64, WebError> {
    text.trim().parse::<i64>().ok().filter(|v| *v >= 0).ok_or_else(|| WebError::Refused(Notice::new("Check the new prices", format!("The {what} must be a whole number of credits, 0 or more."))))
}

async fn add_version(State(state): State<AppState>, session: OpsSession, PageForm(form): PageForm<VersionForm>) -> Result<Response, WebError> {
    let effective_at = NaiveDateTime::parse_from_str(form.effective_at.trim(), "%Y-%m-%dT%H:%M")
        .map(|t| t.and_utc())
        .map_err(|_| WebError::Refused(Notice::new("Check the effective time", "Give the time the prices take effect as YYYY-MM-DDTHH:MM (UTC).")))?;
    let rows = infrastructure::pricing::versions(&state.db).await.map_err(|e| WebError::internal(&e))?;
    let newest = rows.first().ok_or(WebError::Internal)?;
    let mut config: PricingConfig = serde_json::from_str(&newest.config).map_err(|e| WebError::internal(&e))?;
    config.model_creation.base_cost = credits(&form.model_creation, "model creation cost")?;
    config.model_refinement.base_cost = credits(&form.model_refinement, "model refinement cost")?;
    config.image_generation.base_cost = credits(&form.image, "image cost")?;
    state.operator_actions.add_price_version(&session.operator, config, effective_at, Some(&form.reason), ReasonRule::Required).await?;
    Ok(Redirect::to("/ops/pricing").into_response())
}
