//! `/api/admin/*` reads across teams: the teams (search, cursor paging) and the
//! operators. Any operator (viewers too); the rows come from `queries::ops` and
//! `queries::operators`, the same the console shows.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::Operator;
use super::extract::ApiQuery;
use super::jobs::{page_limit, paginate};
use super::problem::Problem;
use crate::queries::operators::OperatorRow;
use crate::queries::ops::TeamRow;
use crate::state::AppState;

const TEAMS_LIST: &str = "admin-teams";

pub fn routes() -> Router<AppState> {
    // `GET /api/admin/teams` is routed with its POST, in `admin`.
    Router::new().route("/api/admin/operators", get(list_operators))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TeamsQuery {
    /// Part of a team's name (any case), or a team's id.
    #[param(max_length = 200)]
    pub search: Option<String>,
    /// Page size, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TeamPage {
    /// In the order the teams were opened.
    pub items: Vec<TeamRow>,
    pub next_cursor: Option<String>,
}

/// Every team with its plan, balance, reservations, running and queued jobs, and last
/// activity; searched by name or id.
#[utoipa::path(get, path = "/api/admin/teams", tag = "admin", operation_id = "listTeams", params(TeamsQuery),
    responses((status = 200, body = TeamPage)), security(("operator_key" = [])))]
pub async fn list_teams(State(state): State<AppState>, _: Operator, ApiQuery(query): ApiQuery<TeamsQuery>) -> Result<Json<TeamPage>, Problem> {
    let limit = page_limit(query.limit)?;
    let after = super::cursor::decode(TEAMS_LIST, query.cursor.as_deref())?;
    let search = query.search.as_deref().map(str::trim).filter(|s| !s.is_empty());
    if search.is_some_and(|s| s.chars().count() > domain::text::TEAM_NAME_CHARS_MAX) {
        return Err(Problem::invalid_field("search", "at most 200 characters"));
    }
    let rows = crate::queries::ops::teams(&state.db, search, after.as_deref(), i64::from(limit) + 1).await.map_err(|e| Problem::internal(&e))?;
    let (items, next_cursor) = paginate(rows, limit, |row| super::cursor::encode(TEAMS_LIST, &row.team_id));
    Ok(Json(TeamPage { items, next_cursor }))
}

/// Every operator (revoked ones too), oldest first. Keys are never shown.
#[utoipa::path(get, path = "/api/admin/operators", tag = "admin", operation_id = "listOperators",
    responses((status = 200, body = Vec<OperatorRow>)), security(("operator_key" = [])))]
pub async fn list_operators(State(state): State<AppState>, _: Operator) -> Result<Json<Vec<OperatorRow>>, Problem> {
    Ok(Json(crate::queries::operators::list(&state.db).await.map_err(|e| Problem::internal(&e))?))
}
