//! `/metrics` in the Prometheus text format: where each projection stands and its lag,
//! the log's head, and a few cheap gauges and counters.

use std::fmt::Write;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use infrastructure::{db_fetch_all, db_fetch_optional};

use super::problem::Problem;
use crate::app::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Projection positions and lag, the event log's head, teams and jobs, in Prometheus'
/// text format.
#[utoipa::path(get, path = "/metrics", tag = "operations", operation_id = "getMetrics",
    responses((status = 200, body = String, content_type = "text/plain; version=0.0.4; charset=utf-8")))]
async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, Problem> {
    let statuses = projections::catalog::status(&state.store).await.map_err(|e| Problem::internal(&e))?;
    let mut out = String::new();
    family(&mut out, "kiln_projection_lag_events", "gauge", "Events committed after the projection's position.");
    for s in &statuses {
        let kind = format!("{:?}", s.kind).to_lowercase();
        let _ = writeln!(out, "kiln_projection_lag_events{{projection=\"{}\",kind=\"{kind}\"}} {}", s.name, s.lag_events);
    }
    family(&mut out, "kiln_projection_checkpoint_position", "gauge", "Global log position the projection has applied.");
    for s in &statuses {
        let _ = writeln!(out, "kiln_projection_checkpoint_position{{projection=\"{}\"}} {}", s.name, s.position.position);
    }
    family(&mut out, "kiln_event_log_head_position", "gauge", "Position of the last committed event.");
    let head = statuses.first().map_or(0, |s| s.head.position);
    let _ = writeln!(out, "kiln_event_log_head_position {head}");
    family(&mut out, "kiln_appends_total", "counter", "Appends committed by this process.");
    let _ = writeln!(out, "kiln_appends_total {}", *state.store.subscribe_commits().borrow());
    let teams = db_fetch_optional!(&state.db, (i64,), "SELECT COUNT(*) FROM team_balances").map_err(|e| Problem::internal(&e))?;
    family(&mut out, "kiln_teams", "gauge", "Teams opened.");
    let _ = writeln!(out, "kiln_teams {}", teams.map_or(0, |t| t.0));
    let jobs = db_fetch_all!(&state.db, (String, i64), "SELECT status, COUNT(*) FROM jobs GROUP BY status ORDER BY status")
        .map_err(|e| Problem::internal(&e))?;
    family(&mut out, "kiln_jobs", "gauge", "Jobs by status.");
    for (status, count) in jobs {
        let _ = writeln!(out, "kiln_jobs{{status=\"{status}\"}} {count}");
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out))
}
