//! `/ops/jobs`: jobs across every team, filtered by status, kind, team, age and error
//! text; the stuck jobs (active and silent past a threshold, or held by a worker gone);
//! bulk cancel of a selection, each with the reason (through `OperatorActions`, so
//! each cancel refunds and lands on its team's ledger with the operator).

use application::operator_actions::ReasonRule;
use askama::Template;
use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::Duration;
use domain::{JobId, TeamId};
use serde::Deserialize;

use super::layout::OpsLayout;
use super::session::OpsSession;
use crate::queries::ops::{self, OpsJobFilter, OpsJobRow};
use crate::state::AppState;
use crate::web::errors::{Notice, WebError};
use crate::web::layout::time;

/// Jobs a page lists, at most.
const JOBS_MAX: i64 = 200;
/// Jobs one bulk action takes, at most.
const BULK_MAX: usize = 200;
/// An active job silent this long is stuck (default of the stuck view).
const STUCK_AFTER_MINUTES_DEFAULT: i64 = 15;

pub fn routes() -> Router<AppState> {
    Router::new().route("/ops/jobs", get(page)).route("/ops/jobs/cancel", post(bulk_cancel))
}

#[derive(Deserialize, Default)]
struct JobsQuery {
    status: Option<String>,
    kind: Option<String>,
    team: Option<String>,
    /// Queued at least this many minutes ago.
    older_than_minutes: Option<String>,
    error: Option<String>,
    /// `1`: only stuck jobs.
    stuck: Option<String>,
    stuck_after_minutes: Option<String>,
    /// How many a bulk cancel just cancelled.
    cancelled: Option<String>,
}

struct JobLine {
    row: OpsJobRow,
    queued: String,
    updated: String,
    active: bool,
}

#[derive(Template)]
#[template(path = "ops/jobs.html")]
struct JobsPage {
    layout: OpsLayout,
    notice: Option<Notice>,
    jobs: Vec<JobLine>,
    status: String,
    kind: String,
    team: String,
    older_than_minutes: String,
    error: String,
    stuck: bool,
    stuck_after_minutes: i64,
    statuses: [&'static str; 6],
    kinds: Vec<&'static str>,
}

fn blank(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

fn minutes(value: &Option<String>, what: &str) -> Result<Option<i64>, WebError> {
    blank(value)
        .map(|v| v.parse::<i64>().ok().filter(|m| (0..=525_600).contains(m)).ok_or_else(|| WebError::BadForm(format!("{what} must be a whole number of minutes."))))
        .transpose()
}

async fn page(State(state): State<AppState>, session: OpsSession, Query(query): Query<JobsQuery>) -> Result<Html<String>, WebError> {
    let now = state.credits.now();
    let status = blank(&query.status).filter(|s| domain::jobs::JobStatus::parse(s).is_some());
    let kind = blank(&query.kind).filter(|k| k.parse::<domain::Operation>().is_ok());
    let team = blank(&query.team).filter(|t| t.parse::<TeamId>().is_ok());
    let older = minutes(&query.older_than_minutes, "Age")?;
    let stuck = query.stuck.as_deref() == Some("1");
    let stuck_after = minutes(&query.stuck_after_minutes, "The stuck threshold")?.unwrap_or(STUCK_AFTER_MINUTES_DEFAULT);
    let filter = OpsJobFilter {
        status,
        kind,
        team,
        queued_before: older.map(|m| now - Duration::minutes(m)),
        error: blank(&query.error),
        stuck: stuck.then(|| (now - Duration::minutes(stuck_after), now - state.worker_lost_after)),
    };
    let rows = ops::jobs(&state.db, &filter, JOBS_MAX).await?;
    let notice = blank(&query.cancelled).map(|n| Notice::new("Jobs cancelled", format!("{n} jobs cancelled and refunded; each is on its team's ledger with your reason.")));
    let page = JobsPage {
        layout: OpsLayout::new(&session, if stuck { "Stuck jobs" } else { "Jobs" }, "jobs"),
        notice,
        jobs: rows
            .into_iter()
            .map(|row| JobLine { queued: time(row.queued_at), updated: time(row.updated_at), active: !crate::web::layout::is_final(&row.status), row })
            .collect(),
        status: status.unwrap_or_default().to_string(),
        kind: kind.unwrap_or_default().to_string(),
        team: team.unwrap_or_default().to_string(),
        older_than_minutes: older.map(|m| m.to_string()).unwrap_or_default(),
        error: blank(&query.error).unwrap_or_default().to_string(),
        stuck,
        stuck_after_minutes: stuck_after,
        statuses: ["queued", "dispatched", "running", "completed", "failed", "cancelled"],
        kinds: domain::Operation::ALL.iter().map(|o| o.as_str()).collect(),
    };
    Ok(Html(page.render()?))
}

/// Cancels the selected jobs (`job` fields, each `{team_id}:{job_id}`) with one reason.
/// Jobs that ended meanwhile are skipped.
async fn bulk_cancel(State(state): State<AppState>, session: OpsSession, body: axum::body::Bytes) -> Result<Response, WebError> {
    let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).map_err(|_| WebError::BadForm("The form could not be read.".into()))?;
    let reason = fields.iter().find(|(k, _)| k == "reason").map(|(_, v)| v.as_str());
    let picked: Vec<(TeamId, JobId)> = fields
        .iter()
        .filter(|(k, _)| k == "job")
        .filter_map(|(_, v)| v.split_once(':'))
        .filter_map(|(team, job)| Some((team.parse().ok()?, job.parse().ok()?)))
        .take(BULK_MAX)
        .collect();
    if picked.is_empty() {
        return Err(WebError::Refused(Notice::new("Nothing selected", "Tick the jobs to cancel, then send the form again.").next("/ops/jobs", "Jobs")));
    }
    let mut cancelled = 0;
    for (team, job) in picked {
        match state.operator_actions.cancel_job(&session.operator, team, job, reason, ReasonRule::Required).await {
            Ok((_, application::jobs::Ending::Recorded)) => cancelled += 1,
            Ok(_) => {}
            // Ended meanwhile: nothing to cancel.
            Err(application::operator_actions::ActionError::Jobs(application::jobs::JobsError::Job(domain::jobs::JobError::AlreadyFinished(_)))) => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(Redirect::to(&format!("/ops/jobs?cancelled={cancelled}")).into_response())
}
