//! The dashboard: server-rendered pages for people, served by the same router and port as
//! the REST API (`http`). It is a second door onto the same system: pages read through
//! `crate::queries` (the read side the REST handlers use too) and change things only
//! through the application's use cases (`SubmitService`: estimate, submit, cancel), mapping their
//! errors to messages (`errors`) the way `http::problem` maps them to problem+json.
//! `web` and `http` never import each other.
//!
//! Shared pieces: `session` (signed cookie after an API-key sign-in, re-checked on every
//! request), `csrf` (token + Origin check on every POST, as a layer), `errors`, `layout`
//! (the frame every page is drawn in), `assets` (stylesheet and script, compiled in).
//! One file per page or area for the rest.

pub mod assets;
pub mod catalog;
pub mod credits;
pub mod csrf;
pub mod errors;
pub mod estimate;
pub mod generate;
pub mod history;
pub mod jobs;
pub mod layout;
pub mod models;
pub mod overview;
pub mod paging;
pub mod session;
pub mod sign_in;

use axum::Router;

use crate::state::AppState;

pub use session::WebKeys;

/// Every page and form of the dashboard; POSTs pass the CSRF layer first.
pub fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .merge(sign_in::routes())
        .merge(overview::routes())
        .merge(catalog::routes())
        .merge(models::routes())
        .merge(generate::routes())
        .merge(jobs::routes())
        .merge(history::routes())
        .merge(credits::routes())
        .layer(axum::middleware::from_fn_with_state(state, csrf::protect))
        .merge(assets::routes())
}
