//! The OpenAPI description, generated from the handlers (utoipa), served at
//! `/openapi.json`, with Swagger UI at `/docs` from assets vendored into the binary.

use axum::Router;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use super::{admin, audit, catalog, credits, fal, generate, jobs, models, stripe};
use crate::app::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "Kiln", description = "Event-sourced credit ledger and job engine for AI image generation. \
        Errors are application/problem+json (RFC 9457) with a stable `type`."),
    paths(
        credits::balance, credits::history, credits::pricing,
        audit::ledger, audit::verify,
        stripe::checkout, stripe::webhook, fal::webhook,
        admin::create_team, admin::get_team, admin::change_plan, admin::issue_key, admin::list_keys,
        admin::revoke_key, admin::grant, admin::adjust, admin::issue_own_key, admin::list_own_keys,
        admin::revoke_own_key, admin::expire_subscription,
        models::list, models::create, models::get_one, models::update, models::archive, models::refine,
        models::versions, models::images,
        generate::submit, generate::estimate, generate::status, generate::images,
        jobs::list, jobs::get_one, jobs::cancel, jobs::events, jobs::concurrency,
        catalog::list, catalog::get_one,
    ),
    modifiers(&Security),
    tags(
        (name = "credits", description = "Balance, history and prices of the caller's team"),
        (name = "audit", description = "The team's ledger replayed from events, and its verification (any key of the team)"),
        (name = "keys", description = "A team's own API keys (admin keys)"),
        (name = "admin", description = "Operator endpoints (operator key)"),
        (name = "webhooks", description = "Signed callbacks from Stripe (and providers)"),
        (name = "models", description = "Custom models: create and refine (jobs), read, edit, archive"),
        (name = "generation", description = "Image generation jobs, results and estimates"),
        (name = "jobs", description = "All jobs of the team: list, inspect, cancel, follow"),
        (name = "catalog", description = "Reference models a custom model is created from"),
    )
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = || SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build());
        components.add_security_scheme("api_key", bearer());
        components.add_security_scheme("operator_key", bearer());
    }
}

pub fn routes() -> Router<AppState> {
    Router::new().merge(SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()))
}
