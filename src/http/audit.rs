//! `/api/audit/*`: the caller's team's ledger replayed from events (as of an instant) and
//! the verification of its invariants and hash chain. Open to every key of the team
//! (auditor, member, admin); read-only.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use projections::audit::ledger::{BlockView, LedgerEntry, ReservationView, Totals};
use projections::audit::{self, AuditError, Violation};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::TeamKey;
use super::extract::ApiQuery;
use super::problem::Problem;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/audit/ledger", get(ledger)).route("/api/audit/verify", get(verify))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LedgerQuery {
    /// Fold only the events that occurred at or before this instant (RFC 3339; default: all).
    pub as_of: Option<DateTime<Utc>>,
}

/// The team's ledger as of `as_of`, from its events alone (not from read models).
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditLedgerView {
    pub team_id: String,
    pub as_of: Option<DateTime<Utc>>,
    /// Events folded, and the stream sequence of the last one.
    pub events: u64,
    pub last_sequence: i64,
    pub available: i64,
    pub reserved: i64,
    /// granted, deducted, expired, adjusted
    #[schema(value_type = Object)]
    pub totals: Totals,
    /// Credit blocks still holding credits, in spending order.
    #[schema(value_type = Vec<Object>)]
    pub grants: Vec<BlockView>,
    #[schema(value_type = Vec<Object>)]
    pub open_reservations: Vec<ReservationView>,
    /// Every money entry with the balance it left and its chain hash.
    #[schema(value_type = Vec<Object>)]
    pub entries: Vec<LedgerEntry>,
    /// Broken rules among the folded events (empty for a sound ledger).
    #[schema(value_type = Vec<Object>)]
    pub violations: Vec<Violation>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditVerifyView {
    pub team_id: String,
    /// True when no invariant is broken and the hash chain is intact.
    pub ok: bool,
    pub team_events: u64,
    /// Jobs whose reservations were checked against their outcome.
    pub jobs: u64,
    pub job_events: u64,
    /// Each violation names its event (aggregate type, id, sequence) and kind.
    #[schema(value_type = Vec<Object>)]
    pub violations: Vec<Violation>,
    pub elapsed_ms: u64,
}

fn problem(error: AuditError) -> Problem {
    match error {
        AuditError::TeamNotFound(_) => Problem::not_found().detail("no such team"),
        other => Problem::internal(&other),
    }
}

/// Replays the caller's team ledger from its events, optionally as of an instant.
#[utoipa::path(get, path = "/api/audit/ledger", tag = "audit", operation_id = "getAuditLedger", params(LedgerQuery),
    responses((status = 200, body = AuditLedgerView),
        (status = 422, description = "`as_of` is not an RFC 3339 instant (`/problems/invalid-request`)")),
    security(("api_key" = [])))]
async fn ledger(
    State(state): State<AppState>,
    key: TeamKey,
    ApiQuery(query): ApiQuery<LedgerQuery>,
) -> Result<Json<AuditLedgerView>, Problem> {
    let r = audit::replay(&state.db, &key.team_id.to_string(), query.as_of).await.map_err(problem)?;
    Ok(Json(AuditLedgerView {
        team_id: r.team_id,
        as_of: r.as_of,
        events: r.events,
        last_sequence: r.last_sequence,
        available: r.available,
        reserved: r.reserved,
        totals: r.totals,
        grants: r.grants,
        open_reservations: r.open_reservations,
        entries: r.entries,
        violations: r.violations,
    }))
}

/// Checks every ledger invariant and the hash chain of the caller's team.
#[utoipa::path(get, path = "/api/audit/verify", tag = "audit", operation_id = "verifyAuditLedger",
    responses((status = 200, body = AuditVerifyView)),
    security(("api_key" = [])))]
async fn verify(State(state): State<AppState>, key: TeamKey) -> Result<Json<AuditVerifyView>, Problem> {
    let team_id = key.team_id.to_string();
    let r = audit::verify(&state.db, Some(&team_id)).await.map_err(problem)?;
    Ok(Json(AuditVerifyView {
        team_id,
        ok: r.ok(),
        team_events: r.team_events,
        jobs: r.jobs,
        job_events: r.job_events,
        violations: r.violations,
        elapsed_ms: r.elapsed_ms,
    }))
}
