//! `/ops/audit`: `kiln audit verify` over the whole log, run from the page in the
//! background (`crate::audit_runs`): every team's hash chain, conservation, reservations
//! against their jobs. While it runs the page shows its progress (events checked of
//! those in its snapshot), sent again by server-sent events (`/ops/audit/live`); then
//! its result and each violation, kept as the last result. Below: the operators' acts
//! outside any team's ledger (dispatch for everyone, prices, catalog, worker drains),
//! from events alone, as `kiln audit acts` writes them. Reading only, so viewers may
//! run it too.

use std::convert::Infallible;
use std::time::Duration;

use askama::Template;
use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use futures::Stream;
use serde::Deserialize;

use super::layout::OpsLayout;
use super::session::OpsSession;
use crate::audit_runs::RunsView;
use crate::state::AppState;
use crate::web::errors::WebError;
use crate::web::layout::time;

/// Violations listed on the page, at most (the CLI lists all).
const VIOLATIONS_SHOWN_MAX: usize = 200;
/// Operator acts listed, newest first, at most (`kiln audit acts` writes all).
const ACTS_SHOWN_MAX: usize = 100;
/// How often the live section is sent again while a run goes on, and when idle.
const LIVE_RUNNING_EVERY: Duration = Duration::from_millis(300);
const LIVE_IDLE_EVERY: Duration = Duration::from_secs(3);

pub fn routes() -> Router<AppState> {
    Router::new().route("/ops/audit", get(page)).route("/ops/audit/live", get(live))
}

#[derive(Deserialize, Default)]
struct AuditQuery {
    /// `1`: start a verification of the whole log (unless one runs).
    run: Option<String>,
}

struct RunningLine {
    started: String,
    by: String,
    checked: u64,
    total: u64,
    percent: u64,
}

struct Verified {
    ok: bool,
    teams: u64,
    team_events: u64,
    jobs: u64,
    job_events: u64,
    elapsed_ms: u64,
    violations: Vec<String>,
    more: usize,
}

struct FinishedLine {
    finished: String,
    by: String,
    /// The report, or why the run failed.
    verified: Result<Verified, String>,
}

/// The live part of the page: the run going on, and the last result.
#[derive(Template)]
#[template(path = "ops/audit_run.html")]
struct RunFragment {
    running: Option<RunningLine>,
    last: Option<FinishedLine>,
}

impl RunFragment {
    fn of(view: RunsView) -> Self {
        let running = view.running.map(|r| {
            let (checked, total) = (r.progress.events_checked(), r.progress.events_total());
            RunningLine { started: time(r.started_at), by: r.by, checked, total, percent: (checked * 100).checked_div(total).unwrap_or(0).min(100) }
        });
        let last = view.last.map(|f| FinishedLine {
            finished: time(f.finished_at),
            by: f.by,
            verified: f.outcome.map(|report| Verified {
                ok: report.ok(),
                teams: report.teams,
                team_events: report.team_events,
                jobs: report.jobs,
                job_events: report.job_events,
                elapsed_ms: report.elapsed_ms,
                more: report.violations.len().saturating_sub(VIOLATIONS_SHOWN_MAX),
                violations: report.violations.iter().take(VIOLATIONS_SHOWN_MAX).map(|v| v.to_string()).collect(),
            }),
        });
        Self { running, last }
    }
}

struct ActLine {
    at: String,
    action: String,
    subject: String,
    operator: String,
    reason: String,
}

#[derive(Template)]
#[template(path = "ops/audit.html")]
struct AuditPage {
    layout: OpsLayout,
    /// The rendered `RunFragment` (the live stream sends the same markup).
    run: String,
    acts: Vec<ActLine>,
}

async fn page(State(state): State<AppState>, session: OpsSession, Query(query): Query<AuditQuery>) -> Result<Response, WebError> {
    if query.run.as_deref() == Some("1") {
        state.audit_runs.start(state.db.clone(), state.credits.clock().clone(), &session.operator.name);
        return Ok(Redirect::to("/ops/audit").into_response());
    }
    let run = RunFragment::of(state.audit_runs.view()).render()?;
    let acts = projections::audit::operator_acts(&state.db)
        .await
        .map_err(|e| WebError::internal(&e))?
        .into_iter()
        .rev()
        .take(ACTS_SHOWN_MAX)
        .map(|a| ActLine { at: time(a.occurred_at), action: a.action, subject: a.subject, operator: a.operator, reason: a.reason.unwrap_or_default() })
        .collect();
    Ok(Html(AuditPage { layout: OpsLayout::new(&session, "Audit", "audit"), run, acts }.render()?).into_response())
}

/// The run's section again, as `fragment` events: often while a run goes on.
async fn live(State(state): State<AppState>, _: OpsSession) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream = futures::stream::unfold((state, true), |(state, first)| async move {
        let view = state.audit_runs.view();
        if !first {
            tokio::time::sleep(if view.running.is_some() { LIVE_RUNNING_EVERY } else { LIVE_IDLE_EVERY }).await;
        }
        let html = RunFragment::of(state.audit_runs.view()).render().unwrap_or_default();
        Some((Ok(Event::default().event("fragment").data(html)), (state, false)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
