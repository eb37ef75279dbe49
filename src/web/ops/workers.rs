//! `/ops/workers`: each worker process with its start, last heartbeat and the jobs it
//! holds (its leases); one silent past `jobs.worker_lost_after_secs` is flagged gone
//! (its jobs are taken back by the others' upkeep).

use askama::Template;
use axum::extract::State;
use axum::response::Html;
use axum::routing::get;
use axum::Router;

use super::layout::OpsLayout;
use super::session::OpsSession;
use crate::queries::ops::{self, WorkerRow};
use crate::state::AppState;
use crate::web::errors::WebError;
use crate::web::layout::time;

/// Workers listed, at most.
const WORKERS_MAX: i64 = 500;

pub fn routes() -> Router<AppState> {
    Router::new().route("/ops/workers", get(page))
}

struct WorkerLine {
    row: WorkerRow,
    started: String,
    heartbeat: String,
    gone: bool,
}

#[derive(Template)]
#[template(path = "ops/workers.html")]
struct WorkersPage {
    layout: OpsLayout,
    workers: Vec<WorkerLine>,
    lost_after_secs: i64,
}

async fn page(State(state): State<AppState>, session: OpsSession) -> Result<Html<String>, WebError> {
    let now = state.credits.now();
    let workers = ops::workers(&state.db, WORKERS_MAX)
        .await?
        .into_iter()
        .map(|row| WorkerLine { started: time(row.started_at), heartbeat: time(row.heartbeat_at), gone: now - row.heartbeat_at > state.worker_lost_after, row })
        .collect();
    let page = WorkersPage { layout: OpsLayout::new(&session, "Workers", "workers"), workers, lost_after_secs: state.worker_lost_after.num_seconds() };
    Ok(Html(page.render()?))
}
