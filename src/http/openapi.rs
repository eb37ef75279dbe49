//! The OpenAPI 3.1 description, generated from the handlers (utoipa), served at
//! `/openapi.json`, with Swagger UI at `/docs` from assets vendored into the binary.
//!
//! Handlers document their own successes and the errors only they return. The errors
//! every operation of a kind returns (a rejected key, a malformed body, an unknown id, an
//! unreachable database) are added here, by [`Contract`], from what the operation
//! declares: its security, its request body, its parameters. That keeps one place that
//! knows what the extractors in `auth.rs` and `extract.rs` answer, and every error
//! response pointing at the one `Problem` schema.

use axum::Router;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use super::{admin, admin_catalog, admin_dispatch, admin_reads, audit, catalog, credits, fal, generate, health, job_events, jobs, metrics, models, stripe, webhooks};
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "Kiln", description = "Event-sourced credit ledger and job engine for AI image generation.\n\n\
        Authenticate with a team's API key: `Authorization: Bearer kiln_…`. Errors are \
        `application/problem+json` (RFC 9457, schema `Problem`) with a stable `type` a client may match on."),
    paths(
        credits::balance, credits::history, credits::pricing,
        audit::ledger, audit::verify,
        stripe::checkout, stripe::webhook, fal::webhook,
        admin::create_team, admin::get_team, admin::change_plan, admin::issue_key, admin::list_keys,
        admin::revoke_key, admin::grant, admin::adjust, admin::issue_own_key, admin::list_own_keys,
        admin::revoke_own_key, admin::expire_subscription, admin_reads::list_teams, admin_reads::list_operators,
        admin_dispatch::dispatch_state, admin_dispatch::pause_all, admin_dispatch::resume_all, admin_dispatch::pause_team,
        admin_dispatch::resume_team, admin_dispatch::cancel_job, admin_dispatch::retry_job,
        admin_catalog::list_references, admin_catalog::get_reference, admin_catalog::add_reference, admin_catalog::edit_reference,
        admin_catalog::put_preview, admin_catalog::retire_reference, admin_catalog::restore_reference,
        admin_catalog::list_workers, admin_catalog::drain_worker, admin_catalog::undrain_worker,
        models::list, models::create, models::get_one, models::update, models::archive, models::refine,
        models::versions, models::images,
        generate::submit, generate::estimate, generate::status, generate::images,
        jobs::list, jobs::get_one, jobs::cancel, jobs::events, jobs::concurrency,
        catalog::list, catalog::get_one,
        health::healthz, health::readyz, metrics::metrics,
        webhooks::create, webhooks::list, webhooks::get_one, webhooks::update, webhooks::remove, webhooks::rotate,
        webhooks::send_test, webhooks::deliveries, webhooks::delivery, webhooks::redeliver,
    ),
    components(schemas(job_events::PublicJobEvent, projections::webhooks::WebhookMessage)),
    modifiers(&Contract),
    tags(
        (name = "billing", description = "Credits of the caller's team: balance, history, prices, and buying more"),
        (name = "audit", description = "The team's ledger replayed from events, and its verification (any key of the team)"),
        (name = "keys", description = "A team's own API keys (admin keys)"),
        (name = "admin", description = "Operator endpoints (operator key)"),
        (name = "webhooks", description = "Signed callbacks from Stripe and fal.ai (their signature is the credential)"),
        (name = "models", description = "Custom models: create and refine (jobs), read, edit, archive"),
        (name = "generation", description = "Image generation jobs, results and estimates"),
        (name = "jobs", description = "All jobs of the team: list, inspect, cancel, follow"),
        (name = "catalog", description = "Reference models a custom model is created from"),
        (name = "operations", description = "Liveness, readiness and metrics (no key)"),
        (name = "webhook-endpoints", description = "Where Kiln sends the team's notifications (Standard Webhooks): endpoints, secrets, delivery log. The notifications themselves are in `webhooks`"),
    )
)]
pub struct ApiDoc;

/// The media type of every error.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Adds the security schemes, the `Problem` schema and the errors common to operations
/// of a kind, and points every error response at `Problem`.
struct Contract;

impl Modify for Contract {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some(description)).build())
        };
        components.add_security_scheme(
            "api_key",
            bearer("A team's API key (`kiln_…`), issued by the operator or by an admin key of the team."),
        );
        components.add_security_scheme(
            "operator_key",
            bearer("An operator's key (`kiln_op_…`, from `kiln operator create`; viewers only read) or the operator key of the server's configuration (`auth.operator_key`, the bootstrap admin)."),
        );
        components.schemas.insert("Problem".into(), RefOr::T(problem_schema()));
        components.schemas.insert("JobStreamEvent".into(), RefOr::T(job_stream_event_schema()));
        for item in openapi.paths.paths.values_mut() {
            for operation in [&mut item.put, &mut item.post, &mut item.delete, &mut item.patch].into_iter().flatten() {
                add_consistency_token(operation);
            }
            let operations = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
            for operation in operations.into_iter().flatten() {
                add_common_errors(operation);
                for (status, response) in operation.responses.responses.iter_mut() {
                    if let RefOr::T(response) = response {
                        if is_error(status) {
                            as_problem(status, response);
                        }
                    }
                }
            }
        }
    }
}

/// RFC 9457's members, and room for each kind's extension members.
fn problem_schema() -> Schema {
    let string = |description: &str| ObjectBuilder::new().schema_type(Type::String).description(Some(description));
    ObjectBuilder::new()
        .description(Some(
            "An error (RFC 9457). `type` is stable per kind of error (`/problems/{slug}`); `detail` is for humans. \
             Some kinds carry extension members (e.g. `available` and `requested` of `/problems/insufficient-credits`).",
        ))
        .property("type", string("The kind of error, e.g. `/problems/not-found`.").format(Some(utoipa::openapi::SchemaFormat::Custom("uri-reference".into()))))
        .required("type")
        .property("title", string("A short summary of the kind."))
        .required("title")
        .property(
            "status",
            ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(400)).maximum(Some(599)).description(Some("The HTTP status.")),
        )
        .required("status")
        .property("detail", string("This occurrence, explained."))
        .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(true)))
        .examples([serde_json::json!({
            "type": "/problems/insufficient-credits",
            "title": "Insufficient credits",
            "status": 402,
            "detail": "40 credits requested, 25 available",
            "available": 25,
            "requested": 40
        })])
        .into()
}

/// One server-sent event of a job's stream, as an SSE client reads it (the shape
/// OpenAPI 3.2 gives `text/event-stream` items, which schemathesis checks): `event` and
/// the JSON in `data` are a `PublicJobEvent`.
fn job_stream_event_schema() -> Schema {
    let mut data = ObjectBuilder::new()
        .schema_type(Type::String)
        .content_media_type("application/json")
        .description(Some("The event as JSON: a `PublicJobEvent`."))
        .build();
    // JSON Schema's `contentSchema` (what `data` decodes to); utoipa's `Object` has no field for it.
    let content_schema = serde_json::json!({"$ref": "#/components/schemas/PublicJobEvent"});
    data.extensions.get_or_insert_with(Default::default).insert("contentSchema".into(), content_schema);
    ObjectBuilder::new()
        .description(Some("One server-sent event of a job's progress."))
        .property("event", one_of(job_events::PUBLIC_JOB_EVENT_TYPES.iter().copied()))
        .required("event")
        .property(
            "id",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[0-9]+$"))
                .description(Some("The event's position in the job's history: send it as `Last-Event-ID` to resume after it.")),
        )
        .required("id")
        .property("data", data)
        .required("data")
        .into()
}

/// A write's success carries `Kiln-Consistency-Token` when a read replica is configured
/// (`consistency::with_token`).
fn add_consistency_token(operation: &mut Operation) {
    for (status, response) in operation.responses.responses.iter_mut() {
        if let (true, RefOr::T(response)) = (status.starts_with('2'), response) {
            let header = HeaderBuilder::new()
                .schema(super::consistency::token_schema())
                .description(Some(
                    "With a read replica configured: this write's position; send it back as the \
                     `Kiln-Consistency-Token` header of a read to see the write there.",
                ))
                .build();
            response.headers.insert(super::consistency::NAME.into(), header);
        }
    }
}

fn is_error(status: &str) -> bool {
    status.starts_with('4') || status.starts_with('5')
}

/// An error response's body is a `Problem`; a 503 may say when to retry.
fn as_problem(status: &str, response: &mut Response) {
    if response.description.is_empty() {
        response.description = default_description(status).into();
    }
    if response.content.is_empty() {
        response.content.insert(PROBLEM_JSON.into(), ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build());
    }
    if status == "503" && !response.headers.contains_key("Retry-After") {
        let seconds = ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0));
        let header = HeaderBuilder::new().schema(seconds).description(Some("Seconds to wait before retrying.")).build();
        response.headers.insert("Retry-After".into(), header);
    }
}

fn default_description(status: &str) -> &'static str {
    match status {
        "400" => "Bad request",
        "402" => "Not enough credits (`/problems/insufficient-credits`)",
        "403" => "The key may not do this (`/problems/forbidden`)",
        "404" => "No such resource for the caller (`/problems/not-found`)",
        "409" => "Conflicts with the resource's state",
        "410" => "Gone",
        "422" => "Invalid request (`/problems/invalid-request`)",
        "429" => "Too many requests",
        _ => "Error",
    }
}

fn problem_response(description: &str) -> RefOr<Response> {
    RefOr::T(ResponseBuilder::new().description(description).build())
}

/// The names of the security schemes the operation accepts.
fn schemes(operation: &Operation) -> Vec<String> {
    let requirements = operation.security.iter().flatten();
    let as_json = requirements.filter_map(|requirement| serde_json::to_value(requirement).ok());
    as_json.filter_map(|value| value.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>())).flatten().collect()
}

/// The errors an operation returns because of its shape: authentication (`auth.rs`),
/// the JSON body and query string (`extract.rs`), ids in the path, and the database.
fn add_common_errors(operation: &mut Operation) {
    let schemes = schemes(operation);
    let has_json_body = operation.request_body.as_ref().is_some_and(|body| body.content.contains_key("application/json"));
    let parameters = operation.parameters.iter().flatten();
    let (mut has_query, mut has_path, mut has_idempotency_key, mut has_token) = (false, false, false, false);
    for parameter in parameters {
        has_query |= parameter.parameter_in == ParameterIn::Query;
        has_path |= parameter.parameter_in == ParameterIn::Path;
        has_idempotency_key |= parameter.parameter_in == ParameterIn::Header && parameter.name == "Idempotency-Key";
        has_token |= parameter.parameter_in == ParameterIn::Header && parameter.name == super::consistency::NAME;
    }
    let mut common: Vec<(&str, &str)> = Vec::new();
    if schemes.iter().any(|s| s == "api_key") {
        common.push(("401", "Missing, unknown or revoked API key (`/problems/unauthorized`)."));
    }
    if schemes.iter().any(|s| s == "operator_key") {
        common.push(("401", "Not the operator key (`/problems/unauthorized`)."));
        common.push(("403", "No operator key is configured on this server (`/problems/admin-disabled`)."));
    }
    if has_json_body {
        common.push(("413", "The body is larger than the server accepts (`/problems/payload-too-large`)."));
    }
    // Webhooks (no scheme: their signature is the credential) read the raw bytes the
    // signature covers; every other body goes through `ApiJson`.
    if has_json_body && !schemes.is_empty() {
        common.push(("400", "The body is not JSON (`/problems/malformed-json`)."));
        common.push(("415", "The body is not sent as `application/json` (`/problems/unsupported-media-type`)."));
        common.push(("422", "The body does not fit the schema or its rules (`/problems/invalid-request`)."));
    }
    if has_query {
        common.push(("422", "A query parameter is malformed or out of range (`/problems/invalid-request`)."));
    }
    if has_idempotency_key {
        common.push((
            "409",
            "The first request with this Idempotency-Key is still running (`/problems/idempotency-key-in-use`, with \
             `Retry-After`), or the key named another operation (`/problems/idempotency-conflict`).",
        ));
        common.push((
            "422",
            "The Idempotency-Key was used with another request (`/problems/idempotency-key-reused`), or is empty, too \
             long or not visible ASCII (`/problems/invalid-request`).",
        ));
    }
    if has_token {
        common.push(("422", "The Kiln-Consistency-Token is malformed (`/problems/invalid-request`)."));
    }
    if has_path {
        common.push(("400", "The path is not valid UTF-8 (`/problems/malformed-path`)."));
        common.push(("404", "No such resource for the caller (`/problems/not-found`)."));
    }
    common.push((
        "503",
        "The database cannot be reached right now (`/problems/database-unavailable`), or too many writers contend \
         (`/problems/contention`): retry after `Retry-After`.",
    ));
    for (status, description) in common {
        // An operation's own description of a status wins: it knows more.
        operation.responses.responses.entry(status.into()).or_insert_with(|| problem_response(description));
    }
}

/// A string that is one of `values` (for parameters parsed from text, documented as the
/// enum they are).
pub fn one_of<'a>(values: impl IntoIterator<Item = &'a str>) -> utoipa::openapi::schema::Object {
    ObjectBuilder::new().schema_type(Type::String).enum_values(Some(values)).build()
}

/// The document served: utoipa's, plus the OpenAPI 3.1 `webhooks` section (which
/// utoipa 5 does not model): one entry per notification type Kiln sends.
pub fn document() -> serde_json::Value {
    let mut document = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    let mut webhooks = serde_json::Map::new();
    let types = domain::webhooks::EventType::ALL.map(|t| t.as_str()).into_iter().chain([application::webhooks::TEST_EVENT_TYPE]);
    for event_type in types {
        webhooks.insert(event_type.to_string(), webhook_item(event_type));
    }
    if let Some(object) = document.as_object_mut() {
        object.insert("webhooks".into(), serde_json::Value::Object(webhooks));
    }
    document
}

fn webhook_item(event_type: &str) -> serde_json::Value {
    serde_json::json!({ "post": {
        "operationId": format!("webhook_{}", event_type.replace('.', "_")),
        "summary": format!("`{event_type}`, sent to each enabled endpoint subscribed to it"),
        "description": "Signed per Standard Webhooks: verify `webhook-signature` (`v1,<base64 HMAC-SHA256>` of             `{webhook-id}.{webhook-timestamp}.{body}` with the endpoint's `whsec_` secret; during a rotation's overlap two             signatures, space-separated) with any Standard Webhooks library. Retries carry the same `webhook-id`: use it to             drop repeats. Answer 2xx within the request time; anything else is retried with backoff for about three days.",
        "tags": ["webhook-endpoints"],
        "parameters": [
            { "name": "webhook-id", "in": "header", "required": true, "description": "The delivery's id, the same on every retry", "schema": { "type": "string" } },
            { "name": "webhook-timestamp", "in": "header", "required": true, "description": "Unix seconds of the attempt", "schema": { "type": "string" } },
            { "name": "webhook-signature", "in": "header", "required": true, "description": "`v1,<base64>` signature(s), space-separated", "schema": { "type": "string" } },
        ],
        "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/WebhookMessage" } } } },
        "responses": { "2XX": { "description": "Received; nothing is sent again" }, "default": { "description": "Not received: retried later" } },
    }})
}

pub fn routes() -> Router<AppState> {
    Router::new().merge(SwaggerUi::new("/docs").external_url_unchecked("/openapi.json", document()))
}
