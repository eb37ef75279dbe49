//! The operator console under `/ops`: the people who run Kiln see and steer every team,
//! job, worker and price. A door like the team pages: pages read through
//! `crate::queries`, actions go through the application's use cases, errors are the
//! same `WebError` pages. Kept apart from the team pages: its own session cookie
//! (`session`, naming an operator, path `/ops`), its own CSRF cookie (the same
//! `csrf` layer with `OPS_PAGES`), its own frame (`layout`, `templates/ops/`). A team
//! key or team session opens nothing here. One file per page.

pub mod audit;
pub mod catalog;
/// The charts are drawn by the module the team pages share (`web::charts`).
pub use super::charts;
pub mod dispatch;
pub mod frame;
pub mod job;
pub mod jobs;
pub mod layout;
pub mod overview;
pub mod pricing;
pub mod session;
pub mod sign_in;
pub mod team;
pub mod teams;
pub mod workers;

use axum::Router;

use super::{csrf, form};
use crate::state::AppState;

/// Every console page; POSTs pass the console's CSRF layer, paths and queries the text
/// rule; error pages are drawn in the console's frame (`frame`).
pub fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .merge(sign_in::routes())
        .merge(overview::routes())
        .merge(teams::routes())
        .merge(team::routes())
        .merge(dispatch::routes())
        .merge(jobs::routes())
        .merge(job::routes())
        .merge(workers::routes())
        .merge(audit::routes())
        .merge(pricing::routes())
        .merge(catalog::routes())
        // An unknown URL under `/ops` is the console's 404, in its frame.
        .route("/ops/{*rest}", axum::routing::any(form::not_found))
        .layer(axum::middleware::from_fn_with_state(state.clone(), csrf::protect_ops))
        .route_layer(axum::middleware::from_fn(form::check_path_and_query))
        // Outermost: every error page of the console (CSRF refusals too) in its frame.
        .layer(axum::middleware::from_fn_with_state(state, frame::errors_in_frame))
}
