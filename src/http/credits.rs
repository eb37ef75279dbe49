//! `/api/credits/*`: the team's balance, its credit history, and the price list. All
//! read models; every query is scoped to the caller's team.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use domain::TeamId;
use infrastructure::{db_fetch_all, db_fetch_optional};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::TeamKey;
use super::extract::ApiQuery;
use super::problem::Problem;
use crate::app::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/credits/balance", get(balance))
        .route("/api/credits/history", get(history))
        .route("/api/credits/pricing", get(pricing))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Totals {
    pub granted: i64,
    pub deducted: i64,
    pub expired: i64,
    /// Net of positive and negative adjustments.
    pub adjusted: i64,
}

/// One credit block (a grant or a positive adjustment) that still holds credits.
#[derive(Debug, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct GrantView {
    pub grant_id: String,
    /// stripe | admin | plan | adjustment
    pub origin: String,
    pub amount: i64,
    /// Spendable now (not reserved, not spent, not expired).
    pub remaining: i64,
    /// Held by pending reservations.
    pub reserved: i64,
    pub deducted: i64,
    pub expired: i64,
    pub expires_at: Option<DateTime<Utc>>,
    pub granted_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BalanceView {
    pub team_id: String,
    pub name: String,
    /// free | basic | pro | enterprise
    pub plan: String,
    /// Jobs the plan may run at once.
    pub concurrency_limit: u32,
    /// Credits that can be spent now.
    pub available: i64,
    /// Credits held by jobs that have not finished.
    pub reserved: i64,
    pub totals: Totals,
    /// Blocks with credits left or held, soonest-expiring first (the order they are spent in).
    pub grants: Vec<GrantView>,
}

type BalanceRow = (String, String, i64, i64, i64, i64, i64, i64);

/// Reads a team's balance read model; `None` if the team does not exist.
pub async fn load_balance(state: &AppState, team: TeamId) -> Result<Option<BalanceView>, Problem> {
    let team_id = team.to_string();
    let row = db_fetch_optional!(
        &state.db,
        BalanceRow,
        "SELECT name, plan, available, reserved, granted_total, deducted_total, expired_total, adjusted_total \
         FROM team_balances WHERE team_id = $1",
        &team_id
    )
    .map_err(|e| Problem::internal(&e))?;
    let Some((name, plan, available, reserved, granted, deducted, expired, adjusted)) = row else {
        return Ok(None);
    };
    let grants = db_fetch_all!(
        &state.db,
        GrantView,
        "SELECT grant_id, origin, amount, remaining, reserved, deducted, expired, expires_at, granted_at \
         FROM credit_grants WHERE team_id = $1 AND (remaining > 0 OR reserved > 0) \
         ORDER BY expires_at IS NULL, expires_at, granted_at, grant_id",
        &team_id
    )
    .map_err(|e| Problem::internal(&e))?;
    let concurrency_limit = plan.parse::<domain::Plan>().map(|p| p.concurrency_limit()).unwrap_or(0);
    Ok(Some(BalanceView {
        team_id,
        name,
        plan,
        concurrency_limit,
        available,
        reserved,
        totals: Totals { granted, deducted, expired, adjusted },
        grants,
    }))
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

pub const ENTRY_TYPES: &[&str] = &["granted", "reserved", "deducted", "refunded", "adjusted", "expired"];
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

/// One ledger entry and the balance it left.
#[derive(Debug, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct LedgerEntry {
    /// Position in the team's ledger, from 1.
    pub entry_no: i64,
    pub entry_type: String,
    /// Credits moved (signed for adjustments).
    pub amount: i64,
    pub available_after: i64,
    pub reserved_after: i64,
    /// Grant, reservation (job) or adjustment id.
    pub reference: Option<String>,
    pub operation: Option<String>,
    /// Grant source or adjustment reason.
    pub detail: Option<String>,
    pub occurred_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LedgerPage {
    /// Newest first.
    pub items: Vec<LedgerEntry>,
    pub next_cursor: Option<String>,
}

/// The caller's credit history, newest first, with the running balance.
#[utoipa::path(get, path = "/api/credits/history", tag = "billing", operation_id = "listCreditHistory", params(HistoryQuery),
    responses((status = 200, body = LedgerPage), (status = 422, description = "Bad filter, limit or cursor (`/problems/invalid-request`)")),
    security(("api_key" = [])))]
async fn history(
    State(state): State<AppState>,
    key: TeamKey,
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
    let items = db_fetch_all!(
        &state.db,
        LedgerEntry,
        "SELECT entry_no, entry_type, amount, available_after, reserved_after, reference, operation, detail, occurred_at \
         FROM credit_ledger WHERE team_id = $1 \
           AND ($2 IS NULL OR occurred_at >= $2) AND ($3 IS NULL OR occurred_at < $3) \
           AND ($4 IS NULL OR entry_type = $4) AND ($5 IS NULL OR entry_no < $5) \
         ORDER BY entry_no DESC LIMIT $6",
        key.team_id.to_string(),
        query.from,
        query.to,
        query.entry_type.as_deref(),
        before,
        i64::from(limit) + 1
    )
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
