//! `/metrics` in the Prometheus text format, rendered by metrics-exporter-prometheus from
//! what the process recorded through the `metrics` facade (HTTP requests, job
//! transitions, credit movements, provider calls, webhooks, event-store appends), plus
//! gauges read from the database at scrape time (projection lag, queued and running jobs
//! per plan, jobs by status). With `metrics.bearer_token` set, a scrape must present it
//! (`Authorization: Bearer …`); anything else is a 401 problem.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use infrastructure::{db_fetch_all, db_fetch_optional};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sha2::{Digest, Sha256};

use super::problem::Problem;
use crate::state::AppState;

pub const HTTP_REQUESTS: &str = "kiln_http_requests_total";
pub const HTTP_DURATION: &str = "kiln_http_request_duration_seconds";
pub const WEBHOOK_DELIVERIES: &str = "kiln_webhook_deliveries_total";
pub const WEBHOOK_SIGNATURE_FAILURES: &str = "kiln_webhook_signature_failures_total";

/// Histogram buckets of every `*_seconds` metric: 1 ms to 5 min covers an append, an HTTP
/// request, a queue wait and a model training.
const SECONDS_BUCKETS: [f64; 16] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

static RECORDER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once; later calls return the same
/// handle). `None` if another recorder was installed first (metrics then go there).
pub fn recorder() -> Option<&'static PrometheusHandle> {
    RECORDER
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
                .ok()?;
            match builder.install_recorder() {
                Ok(handle) => Some(handle),
                Err(error) => {
                    tracing::warn!(%error, "cannot install the metrics recorder; /metrics shows database gauges only");
                    None
                }
            }
        })
        .as_ref()
}

pub fn routes() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

/// Middleware: counts and times every request by method, route template (never the raw
/// path: ids would make a series per job) and status.
pub async fn track_requests(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(HTTP_REQUESTS, "method" => method.clone(), "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!(HTTP_DURATION, "method" => method, "route" => route).record(started.elapsed().as_secs_f64());
    response
}

/// A webhook delivery's outcome (`applied`, `ignored`, `rejected`, …); a bad signature
/// also counts as a signature failure.
pub fn webhook_delivered(source: &'static str, outcome: &'static str) {
    metrics::counter!(WEBHOOK_DELIVERIES, "source" => source, "outcome" => outcome).increment(1);
    if outcome == "bad_signature" {
        metrics::counter!(WEBHOOK_SIGNATURE_FAILURES, "source" => source).increment(1);
    }
}

/// Checks the scrape's bearer token against `metrics.bearer_token`, if one is set.
fn authorize(parts: &Parts, state: &AppState) -> Result<(), Problem> {
    let Some(expected) = &state.metrics_token_sha256 else { return Ok(()) };
    // Digests, not tokens, are compared: the comparison's timing says nothing of the token.
    let presented: [u8; 32] = Sha256::digest(super::auth::bearer(parts)?.as_bytes()).into();
    if &presented == expected {
        Ok(())
    } else {
        Err(Problem::unauthorized("not the metrics token"))
    }
}

/// Every series this process recorded (HTTP, jobs, credits, provider, webhooks,
/// appends) and the database gauges, in Prometheus' text format.
#[utoipa::path(get, path = "/metrics", tag = "operations", operation_id = "getMetrics",
    responses((status = 200, body = String, content_type = "text/plain; version=0.0.4; charset=utf-8"),
        (status = 401, description = "`metrics.bearer_token` is set and the scrape did not present it (`/problems/unauthorized`)")))]
async fn metrics(State(state): State<AppState>, parts: Parts) -> Result<impl IntoResponse, Problem> {
    authorize(&parts, &state)?;
    record_database_gauges(&state).await?;
    let body = match recorder() {
        Some(handle) => {
            handle.run_upkeep();
            handle.render()
        }
        None => String::new(),
    };
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body))
}

/// Gauges that are facts of the database, not of this process: set just before rendering.
async fn record_database_gauges(state: &AppState) -> Result<(), Problem> {
    let statuses = projections::catalog::status(&state.store).await.map_err(|e| Problem::internal(&e))?;
    for s in &statuses {
        let kind = format!("{:?}", s.kind).to_lowercase();
        metrics::gauge!("kiln_projection_lag_events", "projection" => s.name, "kind" => kind).set(s.lag_events as f64);
        metrics::gauge!("kiln_projection_checkpoint_position", "projection" => s.name).set(s.position.position as f64);
    }
    let head = statuses.first().map_or(0, |s| s.head.position);
    metrics::gauge!("kiln_event_log_head_position").set(head as f64);
    metrics::gauge!("kiln_appends_committed").set(*state.store.subscribe_commits().borrow() as f64);

    let teams = db_fetch_optional!(&state.db, (i64,), "SELECT COUNT(*) FROM team_balances").map_err(|e| Problem::internal(&e))?;
    metrics::gauge!("kiln_teams").set(teams.map_or(0, |t| t.0) as f64);

    // Per plan: queued and running jobs, and the teams with jobs waiting (the ones
    // that compete for slots).
    let by_plan = db_fetch_all!(
        &state.db,
        (String, i64, i64, i64),
        "SELECT plan, CAST(COALESCE(SUM(queued), 0) AS BIGINT), CAST(COALESCE(SUM(running), 0) AS BIGINT), \
         CAST(COALESCE(SUM(CASE WHEN queued > 0 THEN 1 ELSE 0 END), 0) AS BIGINT) FROM team_dispatch GROUP BY plan"
    )
    .map_err(|e| Problem::internal(&e))?;
    let of_plan = |plan: domain::Plan| by_plan.iter().find(|(p, ..)| p == plan.as_str()).map_or((0, 0, 0), |(_, q, r, w)| (*q, *r, *w));
    let running_total: i64 = by_plan.iter().map(|(_, _, running, _)| running).sum();
    let entitled = state.plan_weights.entitled(domain::Plan::ALL.map(|plan| of_plan(plan).2.max(0) as u64));
    // Every plan gets every series, so a plan whose jobs all finished reads 0, not its
    // last non-zero value.
    for (plan, entitled) in domain::Plan::ALL.into_iter().zip(entitled) {
        let (queued, running, waiting_teams) = of_plan(plan);
        metrics::gauge!("kiln_jobs_queued", "plan" => plan.as_str()).set(queued as f64);
        metrics::gauge!("kiln_jobs_running", "plan" => plan.as_str()).set(running as f64);
        metrics::gauge!("kiln_dispatch_teams_waiting", "plan" => plan.as_str()).set(waiting_teams as f64);
        let weight = if plan == domain::Plan::Free { 0 } else { state.plan_weights.weight(plan) };
        metrics::gauge!("kiln_dispatch_weight", "plan" => plan.as_str()).set(f64::from(weight));
        // The plan's share of the jobs running now, and the share its waiting teams'
        // weights entitle it to when slots are scarce.
        let share = if running_total > 0 { running as f64 / running_total as f64 } else { 0.0 };
        metrics::gauge!("kiln_dispatch_share", "plan" => plan.as_str()).set(share);
        metrics::gauge!("kiln_dispatch_entitled_share", "plan" => plan.as_str()).set(entitled);
    }

    let by_status = db_fetch_all!(&state.db, (String, i64), "SELECT status, COUNT(*) FROM jobs GROUP BY status")
        .map_err(|e| Problem::internal(&e))?;
    for status in ["queued", "dispatched", "running", "completed", "failed", "cancelled"] {
        let count = by_status.iter().find(|(s, _)| s == status).map_or(0, |(_, n)| *n);
        metrics::gauge!("kiln_jobs", "status" => status).set(count as f64);
    }
    Ok(())
}
