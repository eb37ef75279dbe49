//! HTTP wiring: the router, its middleware, and the endpoint modules.

pub mod admin;
pub mod audit;
pub mod auth;
pub mod catalog;
pub mod credits;
pub mod extract;
pub mod fal;
pub mod files;
pub mod generate;
pub mod health;
pub mod jobs;
pub mod metrics;
pub mod models;
pub mod openapi;
pub mod problem;
pub mod stripe;

use axum::http::{HeaderName, Request};
use axum::Router;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::app::AppState;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(health::routes())
        .merge(credits::routes())
        .merge(admin::routes())
        .merge(models::routes())
        .merge(generate::routes())
        .merge(jobs::routes())
        .merge(files::routes())
        .merge(catalog::routes())
        .merge(stripe::routes())
        .merge(fal::routes())
        .merge(audit::routes())
        .merge(metrics::routes())
        .merge(openapi::routes())
        .fallback(problem::not_found)
        .with_state(state)
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
                        request_id, team_id = tracing::field::Empty)
                })
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}
