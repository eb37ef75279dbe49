//! `/`: the team at a glance — credits, plan usage, the latest jobs.

use askama::Template;
use axum::extract::State;
use axum::response::Html;
use axum::routing::get;
use axum::Router;

use super::consistency::PageReadToken;
use super::errors::WebError;
use super::jobs::JobRow;
use super::layout::Layout;
use super::session::Session;
use crate::state::AppState;
use crate::queries;

pub fn routes() -> Router<AppState> {
    Router::new().route("/", get(page))
}

/// How many of the latest jobs the overview lists.
const LATEST_JOBS: i64 = 10;

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    layout: Layout,
    available: i64,
    reserved: i64,
    plan: String,
    running: i64,
    limit: i64,
    queued: i64,
    /// An operator paused the team's dispatch.
    paused: bool,
    jobs: Vec<JobRow>,
}

async fn page(State(state): State<AppState>, session: Session, PageReadToken(token): PageReadToken) -> Result<Html<String>, WebError> {
    let balance = state.balances.balance(&state.db, session.team_id).await?.ok_or(WebError::SignedOut)?;
    let layout = Layout::with_balance(&session, &balance, "Overview", "overview");
    let usage = queries::jobs::plan_usage(&state.db, session.team_id).await?.ok_or(WebError::SignedOut)?;
    // The balance and plan usage above are exact (the primary); the latest jobs may come
    // from a replica.
    let jobs = queries::jobs::list(queries::read_db(&state.reads, token).await, session.team_id, &Default::default(), None, LATEST_JOBS).await?;
    let page = OverviewPage {
        layout,
        available: balance.available,
        reserved: balance.reserved,
        plan: balance.plan,
        running: usage.running,
        limit: usage.limit,
        queued: usage.queued,
        paused: usage.paused,
        jobs: jobs.iter().map(JobRow::from).collect(),
    };
    Ok(Html(page.render()?))
}
