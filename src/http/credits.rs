//! `/api/credits/*`: the team's balance, its credit history, and the price list. All
//! read models; every query is scoped to the caller's team.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use domain::TeamId;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::TeamKey;
use super::consistency::ReadToken;
use super::extract::ApiQuery;
use super::problem::Problem;
use crate::state::AppState;
use crate::queries;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/credits/balance", get(balance))
        .route("/api/credits/history", get(history))
        .route("/api/credits/pricing", get(pricing))
}

pub use crate::queries::credits::{BalanceView, GrantView, LedgerEntry, Totals, ENTRY_TYPES};

/// Reads a team's balance read model; `None` if the team does not exist.
pub async fn load_balance(state: &AppState, team: TeamId) -> Result<Option<BalanceView>, Problem> {
    state.balances.balance(&state.db, team).await.map_err(|e| Problem::internal(&e))
}

/// The caller's balance: available, reserved, per-grant remaining.
#[utoipa::path(get, path = "/api/credits/balance", tag = "billing", operation_id = "getCreditBalance",
    responses((status = 200, body = BalanceView)), security(("api_key" = [])))]
async fn balance(State(state): State<AppState>, key: TeamKey) -> Result<Json<BalanceView>, Problem> {
    let view = load_balance(&state, key.team_id).await?.ok_or_else(|| Problem::not_found().detail("no such team"))?;
    Ok(Json(view))
}

fn entry_type_schema() -> utoipa::openapi::schema::Object {
    super::openapi::one_of(ENTRY_TYPES.iter().copied())
}

pub const PAGE_LIMIT_DEFAULT: u32 = 50;
pub const PAGE_LIMIT_MAX: u32 = 200;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Entries at or after this instant (RFC 3339).
    pub from: Option<DateTime<Utc>>,
    /// Entries before this instant (RFC 3339).
    pub to: Option<DateTime<Utc>>,
    /// Only entries of this type.
    #[serde(rename = "type")]
    #[param(rename = "type", schema_with = entry_type_schema)]
    pub entry_type: Option<String>,
    /// Page size, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LedgerPage {
    /// Newest first.
    pub items: Vec<LedgerEntry>,
    pub next_cursor: Option<String>,
}

/// The caller's credit history, newest first, with the running balance.
#[utoipa::path(get, path = "/api/credits/history", tag = "billing", operation_id = "listCreditHistory", params(HistoryQuery, ReadToken),
    responses((status = 200, body = LedgerPage), (status = 422, description = "Bad filter, limit or cursor (`/problems/invalid-request`)")),
    security(("api_key" = [])))]
async fn history(
    State(state): State<AppState>,
    key: TeamKey,
    ReadToken(token): ReadToken,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> Result<Json<LedgerPage>, Problem> {
    if let Some(entry_type) = &query.entry_type {
        if !ENTRY_TYPES.contains(&entry_type.as_str()) {
            return Err(Problem::invalid(format!("type must be one of {}", ENTRY_TYPES.join(", "))));
        }
    }
    let limit = query.limit.unwrap_or(PAGE_LIMIT_DEFAULT);
    if !(1..=PAGE_LIMIT_MAX).contains(&limit) {
        return Err(Problem::invalid(format!("limit must be 1 to {PAGE_LIMIT_MAX}")));
    }
    let before: Option<i64> = match super::cursor::decode("credit-history", query.cursor.as_deref())? {
        Some(position) => Some(position.parse().map_err(|_| super::cursor::invalid())?),
        None => None,
    };
    let filter = queries::credits::LedgerFilter { from: query.from, to: query.to, entry_type: query.entry_type.as_deref() };
    let db = queries::read_db(&state.reads, token).await;
    let items = queries::credits::history(db, key.team_id, &filter, before, i64::from(limit) + 1)
        .await
        .map_err(|e| Problem::internal(&e))?;
    let (items, next_cursor) = super::jobs::paginate(items, limit, |last| super::cursor::encode("credit-history", &last.entry_no.to_string()));
    Ok(Json(LedgerPage { items, next_cursor }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PricingView {
    pub version: i64,
    /// The stored configuration: base costs and multipliers in thousandths (`_milli`).
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
    pub formulas: Vec<String>,
    pub rounding: String,
}

/// The current price configuration and how costs are computed from it.
#[utoipa::path(get, path = "/api/credits/pricing", tag = "billing", operation_id = "getPricing",
    responses((status = 200, body = PricingView)), security(("api_key" = [])))]
async fn pricing(State(state): State<AppState>, _key: TeamKey) -> Result<Json<PricingView>, Problem> {
    let config = state.submit.prices().await?;
    Ok(Json(PricingView {
        version: config.version,
        config: serde_json::to_value(&config).map_err(|e| Problem::internal(&e))?,
        formulas: vec![
            "model_creation = base_cost + reference_complexity_multiplier × complexity_factor".into(),
            "model_refinement = base_cost + refinement_scope_multiplier × iteration_count".into(),
            "image_generation = count × (base_cost + (resolution_multiplier + quality_multiplier) × model_complexity)".into(),
        ],
        rounding: "computed exactly in thousandths; each per-unit cost is rounded up to a whole credit".into(),
    }))
}
