//! `/healthz`: the process is up. `/readyz`: the database answers and every migration
//! is applied.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::problem::Problem;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz))
}

/// The process is up (nothing else is checked).
#[utoipa::path(get, path = "/healthz", tag = "operations", operation_id = "checkHealth",
    responses((status = 200, body = Object, example = json!({"status": "ok"}))))]
async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// The database answers and every migration is applied.
#[utoipa::path(get, path = "/readyz", tag = "operations", operation_id = "checkReadiness",
    responses((status = 200, body = Object, example = json!({"status": "ready", "database": "postgres"})),
        (status = 503, description = "Not ready: the database does not answer or misses migrations (`/problems/not-ready`)")))]
async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, Problem> {
    state.db.readiness().await.map_err(|error| {
        let detail = error_chain(&error);
        tracing::warn!(error = %detail, "not ready");
        Problem::not_ready(&detail)
    })?;
    Ok(Json(json!({"status": "ready", "database": format!("{:?}", state.db.backend()).to_lowercase()})))
}

/// `error: cause: cause…` on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
