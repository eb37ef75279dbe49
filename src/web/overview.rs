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
use crate::queries::credits::BalanceView;
use crate::queries::jobs::PlanUsage;

pub fn routes() -> Router<AppState> {
    Router::new().route("/", get(page))
}

/// How many of the latest jobs the overview lists.
const LATEST_JOBS: usize = 10;

/// The overview's cards, as the page draws them and the live stream (`live`) sends them.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Cards {
    pub available: i64,
    pub reserved: i64,
    /// "1 of 3": running jobs of the plan's limit.
    pub running: String,
    pub queued: i64,
}

impl Cards {
    pub fn of(balance: &BalanceView, usage: &PlanUsage) -> Cards {
        Cards { available: balance.available, reserved: balance.reserved, running: format!("{} of {}", usage.running, usage.limit), queued: usage.queued }
    }
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    layout: Layout,
    cards: Cards,
    plan: String,
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
    let db = queries::read_db(&state.reads, token).await;
    let jobs = queries::jobs::page(db, session.team_id, &Default::default(), &queries::jobs::Page::First, LATEST_JOBS).await?.items;
    let page = OverviewPage {
        layout,
        cards: Cards::of(&balance, &usage),
        plan: balance.plan,
        paused: usage.paused,
        jobs: jobs.iter().map(JobRow::from).collect(),
    };
    Ok(Html(page.render()?))
}
