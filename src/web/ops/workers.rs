//! `/ops/workers`: each worker process with its start, last heartbeat, the jobs it holds
//! (its leases), the jobs it completed and the last error its jobs met (as it reports
//! them with its heartbeat); one silent past `jobs.worker_lost_after_secs` is flagged
//! gone (its jobs are taken back by the others' upkeep). An admin drains a worker (it
//! claims nothing new and finishes what it holds, from its next heartbeat) or lets it
//! claim again, with a reason, through `OperatorActions`.

use application::operator_actions::ReasonRule;
use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;

use super::layout::OpsLayout;
use super::session::OpsSession;
use crate::queries::ops::{self, WorkerRow};
use crate::state::AppState;
use crate::web::errors::{Notice, WebError};
use crate::web::form::PageForm;
use crate::web::layout::{time, time_opt};

/// Workers listed, at most.
const WORKERS_MAX: i64 = 500;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ops/workers", get(page))
        .route("/ops/workers/{worker_id}/drain", post(drain))
        .route("/ops/workers/{worker_id}/undrain", post(undrain))
}

struct WorkerLine {
    row: WorkerRow,
    started: String,
    heartbeat: String,
    last_error_at: String,
    gone: bool,
}

#[derive(Template)]
#[template(path = "ops/workers.html")]
struct WorkersPage {
    layout: OpsLayout,
    notice: Option<Notice>,
    workers: Vec<WorkerLine>,
    lost_after_secs: i64,
}

#[derive(Deserialize, Default)]
struct WorkersQuery {
    done: Option<String>,
}

fn done_notice(done: Option<&str>) -> Option<Notice> {
    let (title, detail) = match done? {
        "drain" => ("Worker draining", "From its next heartbeat it claims no new job and finishes those it holds; the drain and your reason are recorded."),
        "undrain" => ("Worker claiming again", "From its next heartbeat it claims jobs again."),
        _ => return None,
    };
    Some(Notice::new(title, detail))
}

async fn page(State(state): State<AppState>, session: OpsSession, Query(query): Query<WorkersQuery>) -> Result<Html<String>, WebError> {
    let now = state.credits.now();
    let workers = ops::workers(&state.db, WORKERS_MAX)
        .await?
        .into_iter()
        .map(|row| WorkerLine {
            started: time(row.started_at),
            heartbeat: time(row.heartbeat_at),
            last_error_at: time_opt(row.last_error_at),
            gone: now - row.heartbeat_at > state.worker_lost_after,
            row,
        })
        .collect();
    let page = WorkersPage {
        layout: OpsLayout::new(&session, "Workers", "workers"),
        notice: done_notice(query.done.as_deref()),
        workers,
        lost_after_secs: state.worker_lost_after.num_seconds(),
    };
    Ok(Html(page.render()?))
}

#[derive(Deserialize)]
struct ReasonForm {
    reason: String,
}

async fn drain(State(state): State<AppState>, session: OpsSession, Path(worker): Path<String>, PageForm(form): PageForm<ReasonForm>) -> Result<Response, WebError> {
    state.operator_actions.drain_worker(&session.operator, &worker, Some(&form.reason), ReasonRule::Required).await?;
    Ok(Redirect::to("/ops/workers?done=drain").into_response())
}

async fn undrain(State(state): State<AppState>, session: OpsSession, Path(worker): Path<String>, PageForm(form): PageForm<ReasonForm>) -> Result<Response, WebError> {
    state.operator_actions.undrain_worker(&session.operator, &worker, Some(&form.reason), ReasonRule::Required).await?;
    Ok(Redirect::to("/ops/workers?done=undrain").into_response())
}
