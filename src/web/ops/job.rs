//! `/ops/teams/{team_id}/jobs/{job_id}`: one job as an operator sees it — its state, its
//! whole event timeline (time, type, worker, attempt, provider request id, step, reason,
//! who recorded it), its credits — with cancel or retry (through `OperatorActions`,
//! the forms posting to the team page's actions).

use askama::Template;
use axum::extract::{Path, State};
use axum::response::Html;
use axum::routing::get;
use axum::Router;
use domain::TeamId;

use super::layout::OpsLayout;
use super::session::OpsSession;
use crate::queries;
use crate::queries::credits::LedgerEntry;
use crate::queries::jobs::JobView;
use crate::queries::ops::TimelineEntry;
use crate::state::AppState;
use crate::web::errors::WebError;
use crate::web::layout::{is_final, time_opt};

pub fn routes() -> Router<AppState> {
    Router::new().route("/ops/teams/{team_id}/jobs/{job_id}", get(page))
}

struct Line {
    entry: TimelineEntry,
    at: String,
}

#[derive(Template)]
#[template(path = "ops/job.html")]
struct JobPage {
    layout: OpsLayout,
    team_id: String,
    job: JobView,
    timeline: Vec<Line>,
    credits: Vec<LedgerEntry>,
    active: bool,
    retryable: bool,
}

async fn page(State(state): State<AppState>, session: OpsSession, Path((team, job)): Path<(String, String)>) -> Result<Html<String>, WebError> {
    let team: TeamId = team.parse().map_err(|_| WebError::NotFound)?;
    let view = queries::jobs::job(&state.db, team, &job).await?.ok_or(WebError::NotFound)?;
    let timeline = queries::ops::job_timeline(&state.store, &view.job_id).await.map_err(|e| WebError::internal(&e))?;
    let credits = queries::credits::entries_of_job(&state.db, team, &view.job_id).await?;
    let page = JobPage {
        layout: OpsLayout::new(&session, "Job", "jobs"),
        team_id: team.to_string(),
        active: !is_final(&view.status),
        retryable: matches!(view.status.as_str(), "failed" | "cancelled") && view.kind == domain::Operation::ImageGeneration.as_str(),
        timeline: timeline.into_iter().map(|entry| Line { at: time_opt(entry.occurred_at), entry }).collect(),
        credits,
        job: view,
    };
    Ok(Html(page.render()?))
}
