//! The dashboard: server-rendered pages for people, served by the same router and port as
//! the REST API (`http`). It is a second door onto the same system: pages read through
//! `crate::queries` (the read side the REST handlers use too) and change things only
//! through the application's use cases (`SubmitService`: estimate, submit, cancel), mapping their
//! errors to messages (`errors`) the way `http::problem` maps them to problem+json.
//! `web` and `http` never import each other.
//!
//! Shared pieces: `session` (signed cookie after an API-key sign-in, re-checked on every
//! request), `csrf` (token + Origin check on every POST, as a layer), `errors`, `layout`
//! (the frame every page is drawn in), `assets` (stylesheet and script, compiled in),
//! `form` (forms and URLs read as pages: the text rule on path and query, form bodies
//! whose rejections are pages, the HTML 404 for an unknown URL). One file per page or
//! area for the rest. The operator console (`ops`) is its own tree under `/ops`.

pub mod assets;
pub mod catalog;
pub mod charts;
pub mod credits;
pub mod consistency;
pub mod csrf;
pub mod errors;
pub mod estimate;
pub mod form;
pub mod generate;
pub mod history;
pub mod job_zip;
pub mod jobs;
pub mod keys;
pub mod layout;
pub mod live;
pub mod models;
pub mod ops;
pub mod overview;
pub mod paging;
pub mod session;
pub mod sign_in;
pub mod webhooks;

use axum::Router;

use crate::state::AppState;

pub use session::WebKeys;

/// Every page and form of the dashboard; POSTs pass the CSRF layer first, and every
/// page's path and query the text rule. A URL nothing answers (outside `/api`, which
/// the API answers) gets the dashboard's 404 page.
pub fn routes(state: AppState) -> Router<AppState> {
    let state_for_ops = state.clone();
    Router::new()
        .merge(sign_in::routes())
        .merge(overview::routes())
        .merge(catalog::routes())
        .merge(models::routes())
        .merge(generate::routes())
        .merge(jobs::routes())
        .merge(history::routes())
        .merge(live::routes())
        .merge(credits::routes())
        .merge(webhooks::routes())
        .merge(keys::routes())
        .layer(axum::middleware::from_fn_with_state(state.clone(), consistency::remember_writes))
        .layer(axum::middleware::from_fn_with_state(state, csrf::protect))
        .route_layer(axum::middleware::from_fn(form::check_path_and_query))
        .merge(ops::routes(state_for_ops))
        .merge(assets::routes())
        .fallback(form::not_found)
}
