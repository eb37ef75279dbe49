//! `/ops/audit`: `kiln audit verify` over the whole log, run from the page: every team's
//! hash chain, conservation, reservations against their jobs; the result (and each
//! violation) shown. Reading only, so viewers may run it too.

use askama::Template;
use axum::extract::{Query, State};
use axum::response::Html;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

use super::layout::OpsLayout;
use super::session::OpsSession;
use crate::state::AppState;
use crate::web::errors::WebError;

/// Violations listed on the page, at most (the CLI lists all).
const VIOLATIONS_SHOWN_MAX: usize = 200;

pub fn routes() -> Router<AppState> {
    Router::new().route("/ops/audit", get(page))
}

#[derive(Deserialize, Default)]
struct AuditQuery {
    /// `1`: run the verification now.
    run: Option<String>,
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

#[derive(Template)]
#[template(path = "ops/audit.html")]
struct AuditPage {
    layout: OpsLayout,
    verified: Option<Verified>,
}

async fn page(State(state): State<AppState>, session: OpsSession, Query(query): Query<AuditQuery>) -> Result<Html<String>, WebError> {
    let verified = if query.run.as_deref() == Some("1") {
        let report = projections::audit::verify(&state.db, None).await.map_err(|e| WebError::internal(&e))?;
        let more = report.violations.len().saturating_sub(VIOLATIONS_SHOWN_MAX);
        Some(Verified {
            ok: report.ok(),
            teams: report.teams,
            team_events: report.team_events,
            jobs: report.jobs,
            job_events: report.job_events,
            elapsed_ms: report.elapsed_ms,
            violations: report.violations.iter().take(VIOLATIONS_SHOWN_MAX).map(|v| v.to_string()).collect(),
            more,
        })
    } else {
        None
    };
    Ok(Html(AuditPage { layout: OpsLayout::new(&session, "Audit", "audit"), verified }.render()?))
}
