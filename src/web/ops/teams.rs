//! `/ops/teams`: every team with its plan, balance, reservations, running and queued
//! jobs and last activity; searched by name or id, paged by id.

use askama::Template;
use axum::extract::{Query, State};
use axum::response::Html;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

use super::layout::OpsLayout;
use super::session::OpsSession;
use crate::queries::ops::TeamRow;
use crate::state::AppState;
use crate::web::errors::WebError;
use crate::web::layout::time;

/// Teams a page shows.
const TEAMS_PER_PAGE: i64 = 50;

pub fn routes() -> Router<AppState> {
    Router::new().route("/ops/teams", get(page))
}

#[derive(Deserialize, Default)]
struct TeamsQuery {
    search: Option<String>,
    /// The last team id of the previous page.
    after: Option<String>,
}

struct TeamLine {
    row: TeamRow,
    last_activity: String,
}

#[derive(Template)]
#[template(path = "ops/teams.html")]
struct TeamsPage {
    layout: OpsLayout,
    search: String,
    teams: Vec<TeamLine>,
    /// The link to the next page, if there is one.
    next: Option<String>,
}

async fn page(State(state): State<AppState>, session: OpsSession, Query(query): Query<TeamsQuery>) -> Result<Html<String>, WebError> {
    let search = query.search.as_deref().map(str::trim).filter(|s| !s.is_empty());
    let mut rows = crate::queries::ops::teams(&state.db, search, query.after.as_deref(), TEAMS_PER_PAGE + 1).await?;
    let next = (rows.len() as i64 > TEAMS_PER_PAGE).then(|| {
        rows.truncate(TEAMS_PER_PAGE as usize);
        let after = rows.last().map(|r| r.team_id.clone()).unwrap_or_default();
        let mut query = vec![("after", after)];
        if let Some(search) = search {
            query.push(("search", search.to_string()));
        }
        format!("/ops/teams?{}", serde_urlencoded::to_string(query).unwrap_or_default())
    });
    let teams = rows.into_iter().map(|row| TeamLine { last_activity: time(row.last_activity_at), row }).collect();
    let page = TeamsPage { layout: OpsLayout::new(&session, "Teams", "teams"), search: search.unwrap_or_default().to_string(), teams, next };
    Ok(Html(page.render()?))
}
