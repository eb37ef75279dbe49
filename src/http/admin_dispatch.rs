//! `/api/admin/*` operator actions on dispatch and jobs: pause or resume dispatch for
//! everyone or for one team, read where dispatch stands, cancel a team's job. Each
//! takes an optional `reason` (query), recorded with the operator; the rules are the
//! `OperatorActions` use cases the console calls too.

use application::operator_actions::ReasonRule;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

use super::admin::ReasonQuery;
use super::auth::Operator;
use super::problem::Problem;
use crate::queries::ops::{DispatchState, TeamRow};
use crate::state::AppState;

/// Paused teams listed, at most.
const PAUSED_TEAMS_MAX: i64 = 200;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/admin/dispatch", get(dispatch_state))
        .route("/api/admin/dispatch/pause", post(pause_all))
        .route("/api/admin/dispatch/resume", post(resume_all))
        .route("/api/admin/teams/{team_id}/dispatch/pause", post(pause_team))
        .route("/api/admin/teams/{team_id}/dispatch/resume", post(resume_team))
        .route("/api/admin/teams/{team_id}/jobs/{job_id}/cancel", post(cancel_job))
}

fn parse_team(text: &str) -> Result<domain::TeamId, Problem> {
    text.parse().map_err(|_| Problem::not_found().detail("no such team"))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DispatchView {
    /// Dispatch for every team.
    pub all: DispatchState,
    /// Teams whose own dispatch is paused (at most 200).
    pub paused_teams: Vec<TeamRow>,
}

/// Whether dispatch is paused for everyone (by whom, why), and which teams are paused.
#[utoipa::path(get, path = "/api/admin/dispatch", tag = "admin", operation_id = "getDispatch",
    responses((status = 200, body = DispatchView)), security(("operator_key" = [])))]
pub async fn dispatch_state(State(state): State<AppState>, _: Operator) -> Result<Json<DispatchView>, Problem> {
    let all = crate::queries::ops::dispatch_state(&state.db).await.map_err(|e| Problem::internal(&e))?;
    let paused_teams = crate::queries::ops::paused_teams(&state.db, PAUSED_TEAMS_MAX).await.map_err(|e| Problem::internal(&e))?;
    Ok(Json(DispatchView { all, paused_teams }))
}

async fn set_all(state: &AppState, operator: &Operator, paused: bool, reason: Option<&str>) -> Result<StatusCode, Problem> {
    state.operator_actions.set_dispatch_for_all(&operator.0, paused, reason, ReasonRule::Optional).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Pauses dispatch for every team: jobs are accepted and reserved, none is started.
#[utoipa::path(post, path = "/api/admin/dispatch/pause", tag = "admin", operation_id = "pauseDispatch", params(ReasonQuery),
    responses((status = 204, description = "Paused (or already paused)"), (status = 403, description = "A viewer (`/problems/forbidden`)")),
    security(("operator_key" = [])))]
pub async fn pause_all(State(state): State<AppState>, operator: Operator, Query(query): Query<ReasonQuery>) -> Result<StatusCode, Problem> {
    set_all(&state, &operator, true, query.reason.as_deref()).await
}

/// Resumes dispatch for every team (teams paused on their own stay paused).
#[utoipa::path(post, path = "/api/admin/dispatch/resume", tag = "admin", operation_id = "resumeDispatch", params(ReasonQuery),
    responses((status = 204, description = "Resumed (or already running)"), (status = 403, description = "A viewer (`/problems/forbidden`)")),
    security(("operator_key" = [])))]
pub async fn resume_all(State(state): State<AppState>, operator: Operator, Query(query): Query<ReasonQuery>) -> Result<StatusCode, Problem> {
    set_all(&state, &operator, false, query.reason.as_deref()).await
}

/// Pauses one team's dispatch; the team's pages say so.
#[utoipa::path(post, path = "/api/admin/teams/{team_id}/dispatch/pause", tag = "admin", operation_id = "pauseTeamDispatch",
    params(("team_id" = uuid::Uuid, Path, description = "The team's id"), ReasonQuery),
    responses((status = 204, description = "Paused (or already paused)")), security(("operator_key" = [])))]
pub async fn pause_team(State(state): State<AppState>, operator: Operator, Path(team): Path<String>, Query(query): Query<ReasonQuery>) -> Result<StatusCode, Problem> {
    state.operator_actions.pause_dispatch(&operator.0, parse_team(&team)?, query.reason.as_deref(), ReasonRule::Optional).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Resumes one team's dispatch.
#[utoipa::path(post, path = "/api/admin/teams/{team_id}/dispatch/resume", tag = "admin", operation_id = "resumeTeamDispatch",
    params(("team_id" = uuid::Uuid, Path, description = "The team's id"), ReasonQuery),
    responses((status = 204, description = "Resumed (or not paused)")), security(("operator_key" = [])))]
pub async fn resume_team(State(state): State<AppState>, operator: Operator, Path(team): Path<String>, Query(query): Query<ReasonQuery>) -> Result<StatusCode, Problem> {
    state.operator_actions.resume_dispatch(&operator.0, parse_team(&team)?, query.reason.as_deref(), ReasonRule::Optional).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Cancels one of the team's jobs and refunds it; the operator and reason go on the
/// team's ledger with the refund.
#[utoipa::path(post, path = "/api/admin/teams/{team_id}/jobs/{job_id}/cancel", tag = "admin", operation_id = "cancelTeamJob",
    params(("team_id" = uuid::Uuid, Path, description = "The team's id"), ("job_id" = uuid::Uuid, Path, description = "The job's id"), ReasonQuery),
    responses((status = 204, description = "Cancelled and refunded"), (status = 404, description = "No such job of the team"),
        (status = 409, description = "The job already ended (`/problems/job-already-finished`)")),
    security(("operator_key" = [])))]
pub async fn cancel_job(State(state): State<AppState>, operator: Operator, Path((team, job)): Path<(String, String)>, Query(query): Query<ReasonQuery>) -> Result<StatusCode, Problem> {
    let job: domain::JobId = job.parse().map_err(|_| Problem::not_found().detail("no such job"))?;
    let (_, ending) = state.operator_actions.cancel_job(&operator.0, parse_team(&team)?, job, query.reason.as_deref(), ReasonRule::Optional).await?;
    if ending == application::jobs::Ending::AlreadyDone {
        return Err(Problem::new(StatusCode::CONFLICT, "job-already-finished", "Job already finished").detail("the job already ended; nothing was refunded again"));
    }
    Ok(StatusCode::NO_CONTENT)
}
