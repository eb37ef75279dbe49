//! `/ops/dispatch`: pause or resume dispatch for everyone (a provider outage), and the
//! teams whose own dispatch is paused. Jobs are still accepted and reserved while
//! paused; no worker takes one. Each change records the operator and the reason.

use application::operator_actions::ReasonRule;
use askama::Template;
use axum::extract::State;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;

use super::layout::OpsLayout;
use super::session::OpsSession;
use crate::queries::ops::{self, DispatchState, TeamRow};
use crate::state::AppState;
use crate::web::errors::WebError;
use crate::web::form::PageForm;
use crate::web::layout::time_opt;

/// Paused teams the page lists, at most.
const PAUSED_TEAMS_MAX: i64 = 200;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ops/dispatch", get(page))
        .route("/ops/dispatch/pause", post(pause))
        .route("/ops/dispatch/resume", post(resume))
}

#[derive(Template)]
#[template(path = "ops/dispatch.html")]
struct DispatchPage {
    layout: OpsLayout,
    state: DispatchState,
    changed_at: String,
    paused_teams: Vec<TeamRow>,
}

async fn page(State(state): State<AppState>, session: OpsSession) -> Result<Html<String>, WebError> {
    let dispatch = ops::dispatch_state(&state.db).await?;
    let paused_teams = ops::paused_teams(&state.db, PAUSED_TEAMS_MAX).await?;
    let page = DispatchPage { layout: OpsLayout::new(&session, "Dispatch", "dispatch"), changed_at: time_opt(dispatch.changed_at), state: dispatch, paused_teams };
    Ok(Html(page.render()?))
}

#[derive(Deserialize)]
struct ReasonForm {
    reason: String,
}

async fn set(state: &AppState, session: &OpsSession, paused: bool, reason: &str) -> Result<Response, WebError> {
    state.operator_actions.set_dispatch_for_all(&session.operator, paused, Some(reason), ReasonRule::Required).await?;
    Ok(Redirect::to("/ops/dispatch").into_response())
}

async fn pause(State(state): State<AppState>, session: OpsSession, PageForm(form): PageForm<ReasonForm>) -> Result<Response, WebError> {
    set(&state, &session, true, &form.reason).await
}

async fn resume(State(state): State<AppState>, session: OpsSession, PageForm(form): PageForm<ReasonForm>) -> Result<Response, WebError> {
    set(&state, &session, false, &form.reason).await
}
