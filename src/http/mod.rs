//! HTTP wiring: the router, its middleware, and the endpoint modules.

pub mod admin;
pub mod admin_catalog;
pub mod admin_dispatch;
pub mod admin_reads;
pub mod audit;
pub mod auth;
pub mod catalog;
pub mod consistency;
pub mod credits;
pub mod cursor;
pub mod extract;
pub mod fal;
pub mod files;
pub mod generate;
pub mod health;
pub mod idempotency;
pub mod job_events;
pub mod jobs;
pub mod metrics;
pub mod models;
pub mod openapi;
pub mod problem;
pub mod stripe;
pub mod text;
pub mod uploads;
pub mod webhooks;

use axum::http::{HeaderName, Request};
use axum::Router;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::state::AppState;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Every API route's checks, as one layer after routing: its path parameters and query
/// follow the text rule before any extractor reads them (or a key is bound to the
/// request); then a request that changes state is bound to its Idempotency-Key (or
/// answered from it) and given a consistency token, while a read passes straight through.
/// One layer, not three, on every request (each costs a boxed future and a clone of the
/// route: BENCHMARKS).
async fn api_route_checks(
    axum::extract::State(state): axum::extract::State<AppState>,
    params: Result<axum::extract::RawPathParams, axum::extract::rejection::RawPathParamsRejection>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if let Err(problem) = text::check_path_and_query(params, &request) {
        return problem.into_response();
    }
    if consistency::is_read(request.method()) {
        return next.run(request).await;
    }
    let response = idempotency::idempotent_requests(axum::extract::State(state.clone()), request, next).await;
    consistency::with_token(&state, response).await
}

/// The edge of every request, pages included: a body announced over its limit is a 413
/// before any of it is read; an error response that is not a problem yet becomes one
/// (`problem::problem_responses`, which leaves HTML pages alone).
async fn edge(request: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    use axum::response::IntoResponse;
    let response = match extract::oversized(&request) {
        Some(problem) => problem.into_response(),
        None => next.run(request).await,
    };
    problem::problem_responses(response).await
}

/// The API's routes plus `pages` (the dashboard, handed in by the caller: `http` does
/// not know `web`), under one set of middleware. The pages bring their own text guard
/// (HTML answers) and their own fallback: a URL under `/api` that no route answers is a
/// problem+json 404, any other unknown URL is the pages' (an HTML 404).
pub fn router(state: AppState, pages: Router<AppState>) -> Router {
    let routes = Router::new()
        .merge(health::routes())
        .merge(credits::routes())
        .merge(admin::routes())
        .merge(admin_reads::routes())
        .merge(admin_dispatch::routes())
        .merge(admin_catalog::routes())
        .merge(models::routes())
        .merge(generate::routes())
        .merge(jobs::routes())
        .merge(files::routes())
        .merge(catalog::routes())
        .merge(stripe::routes())
        .merge(fal::routes())
        .merge(audit::routes())
        .merge(metrics::routes())
        .merge(webhooks::routes())
        .merge(openapi::routes())
        .route("/api", axum::routing::any(problem::not_found))
        .route("/api/{*rest}", axum::routing::any(problem::not_found))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), api_route_checks))
        // Added after the route layers: the pages answer in HTML, not problem+json.
        .merge(pages)
        .layer(axum::middleware::from_fn(metrics::track_requests))
        .with_state(state)
        .layer(axum::extract::DefaultBodyLimit::max(extract::BODY_BYTES_MAX));
    // The routes are a service inside an outer router so that `edge` sees their
    // responses complete: axum adds a 405's `Allow` as a router's response leaves it.
    Router::new()
        .fallback_service(routes)
        .layer(axum::middleware::from_fn(edge))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request<_>| {
                    // The query string is left out: it may carry filters, never secrets,
                    // but the path is what operators search by.
                    let request_id = request
                        .extensions()
                        .get::<RequestId>()
                        .and_then(|id| id.header_value().to_str().ok())
                        .unwrap_or("-");
                    tracing::info_span!("request", method = %request.method(), path = %request.uri().path(),
                        request_id, team_id = tracing::field::Empty, operator = tracing::field::Empty)
                })
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}
