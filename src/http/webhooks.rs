//! `/api/webhook-endpoints`: a team's webhook endpoints (Standard Webhooks), their
//! secrets (shown once, rotated with an overlap), the delivery log, redelivery and test
//! events. Parse → `application::webhooks::WebhookService` → map; reads through
//! `queries::webhooks`, scoped to the key's team.

use application::webhooks::EndpointInput;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use domain::webhooks::{EventType, WebhookError};
use domain::{TeamId, WebhookEndpointId};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::auth::TeamKey;
use super::extract::{ApiJson, ApiQuery};
use super::jobs::{make_cursor, page_limit, paginate, parse_cursor};
use super::models::PageQuery;
use super::problem::Problem;
use crate::queries::webhooks::{self as q, DeliveryDetail, DeliveryView, EndpointView};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/webhook-endpoints", post(create).get(list))
        .route("/api/webhook-endpoints/{endpoint_id}", get(get_one).patch(update).delete(remove))
        .route("/api/webhook-endpoints/{endpoint_id}/rotate-secret", post(rotate))
        .route("/api/webhook-endpoints/{endpoint_id}/test", post(send_test))
        .route("/api/webhook-endpoints/{endpoint_id}/deliveries", get(deliveries))
        .route("/api/webhook-endpoints/{endpoint_id}/deliveries/{delivery_id}", get(delivery))
        .route("/api/webhook-endpoints/{endpoint_id}/deliveries/{delivery_id}/redeliver", post(redeliver))
}

impl From<WebhookError> for Problem {
    fn from(error: WebhookError) -> Self {
        match error {
            WebhookError::NotFound => Problem::not_found().detail("no such webhook endpoint or delivery"),
            WebhookError::AlreadyExists => Problem::new(StatusCode::CONFLICT, "webhook-endpoint-exists", "Webhook endpoint exists"),
            WebhookError::InvalidUrl(_) => Problem::invalid_field("url", error.to_string()),
            WebhookError::UnknownEventType(_) | WebhookError::NoEventTypes => Problem::invalid_field("event_types", error.to_string()),
            WebhookError::InvalidThreshold => Problem::invalid_field("credits_low_threshold", error.to_string()),
            WebhookError::InvalidSalt => Problem::internal_message("invalid secret salt"),
        }
    }
}

fn parse_endpoint(text: &str) -> Result<WebhookEndpointId, Problem> {
    text.parse().map_err(|_| Problem::not_found().detail("no such webhook endpoint"))
}

fn metadata(key: &TeamKey) -> serde_json::Value {
    json!({ "actor": format!("api-key:{}", key.key_id) })
}

async fn view(state: &AppState, team: TeamId, endpoint_id: &str) -> Result<EndpointView, Problem> {
    q::endpoint_of(&state.db, team, endpoint_id)
        .await
        .map_err(|e| Problem::internal(&e))?
        .ok_or_else(|| Problem::not_found().detail("no such webhook endpoint"))
}

fn event_type_schema() -> utoipa::openapi::schema::Array {
    utoipa::openapi::schema::ArrayBuilder::new().items(super::openapi::one_of(EventType::ALL.map(|t| t.as_str()))).min_items(Some(1)).build()
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpoint {
    /// `https://…` (plain http and private addresses only where configuration allows).
    #[schema(max_length = 2048)]
    pub url: String,
    #[schema(schema_with = event_type_schema)]
    pub event_types: Vec<String>,
    /// Needed with `credits.low`: it fires when available credits fall below this.
    #[schema(minimum = 1)]
    pub credits_low_threshold: Option<i64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateEndpoint {
    #[schema(max_length = 2048)]
    pub url: Option<String>,
    #[schema(schema_with = event_type_schema)]
    pub event_types: Option<Vec<String>>,
    #[schema(minimum = 1)]
    pub credits_low_threshold: Option<i64>,
    /// Turns deliveries on or off (a disabled endpoint gets nothing).
    pub enabled: Option<bool>,
}

/// An endpoint with its secret: answered only when the secret is made.
#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointWithSecret {
    #[serde(flatten)]
    pub endpoint: EndpointView,
    /// `whsec_…`: verify deliveries with it (any Standard Webhooks library). Shown once.
    pub secret: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointList {
    /// Oldest first.
    pub items: Vec<EndpointView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryPage {
    /// Newest first.
    pub items: Vec<DeliveryView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Queued {
    /// The delivery's `webhook-id`.
    pub delivery_id: String,
}

/// Creates an endpoint. The answer holds its secret, shown this once.
#[utoipa::path(post, path = "/api/webhook-endpoints", tag = "webhook-endpoints", operation_id = "createWebhookEndpoint",
    request_body(content = CreateEndpoint, example = json!({"url": "https://example.com/kiln", "event_types": ["job.completed", "credits.low"], "credits_low_threshold": 100})),
    responses((status = 201, body = EndpointWithSecret), (status = 422, description = "Invalid or refused URL, unknown event type, missing threshold (`/problems/invalid-request`)")),
    security(("api_key" = [])))]
async fn create(
    State(state): State<AppState>,
    key: TeamKey,
    ApiJson(body): ApiJson<CreateEndpoint>,
) -> Result<(StatusCode, Json<EndpointWithSecret>), Problem> {
    let key = key.writer()?;
    let input = EndpointInput { url: Some(body.url), event_types: Some(body.event_types), credits_low_threshold: body.credits_low_threshold };
    let (id, secret) = state.webhooks.create(key.team_id, input, &metadata(&key)).await?;
    let endpoint = view(&state, key.team_id, &id.to_string()).await?;
    Ok((StatusCode::CREATED, Json(EndpointWithSecret { endpoint, secret })))
}

/// The team's endpoints, oldest first.
#[utoipa::path(get, path = "/api/webhook-endpoints", tag = "webhook-endpoints", operation_id = "listWebhookEndpoints",
    params(PageQuery), responses((status = 200, body = EndpointList)), security(("api_key" = [])))]
async fn list(State(state): State<AppState>, key: TeamKey, ApiQuery(query): ApiQuery<PageQuery>) -> Result<Json<EndpointList>, Problem> {
    let limit = page_limit(query.limit)?;
    let cursor = parse_cursor("webhook-endpoints", query.cursor.as_deref())?;
    let items = q::endpoints(&state.db, key.team_id, cursor, i64::from(limit) + 1).await.map_err(|e| Problem::internal(&e))?;
    let (items, next_cursor) = paginate(items, limit, |last| make_cursor("webhook-endpoints", last.created_at, &last.id));
    Ok(Json(EndpointList { items, next_cursor }))
}

#[utoipa::path(get, path = "/api/webhook-endpoints/{endpoint_id}", tag = "webhook-endpoints", operation_id = "getWebhookEndpoint",
    params(("endpoint_id" = uuid::Uuid, Path, description = "The endpoint's id")),
    responses((status = 200, body = EndpointView)), security(("api_key" = [])))]
async fn get_one(State(state): State<AppState>, key: TeamKey, Path(endpoint_id): Path<String>) -> Result<Json<EndpointView>, Problem> {
    let id = parse_endpoint(&endpoint_id)?;
    Ok(Json(view(&state, key.team_id, &id.to_string()).await?))
}

/// Changes the URL, the event types (with the threshold) or whether it is enabled.
#[utoipa::path(patch, path = "/api/webhook-endpoints/{endpoint_id}", tag = "webhook-endpoints", operation_id = "updateWebhookEndpoint",
    params(("endpoint_id" = uuid::Uuid, Path, description = "The endpoint's id")),
    request_body(content = UpdateEndpoint, example = json!({"enabled": false})),
    responses((status = 200, body = EndpointView), (status = 422, description = "Invalid field (`/problems/invalid-request`)")),
    security(("api_key" = [])))]
async fn update(
    State(state): State<AppState>,
    key: TeamKey,
    Path(endpoint_id): Path<String>,
    ApiJson(body): ApiJson<UpdateEndpoint>,
) -> Result<Json<EndpointView>, Problem> {
    let key = key.writer()?;
    let id = parse_endpoint(&endpoint_id)?;
    let metadata = metadata(&key);
    if body.url.is_some() || body.event_types.is_some() || body.credits_low_threshold.is_some() {
        let input = EndpointInput { url: body.url, event_types: body.event_types, credits_low_threshold: body.credits_low_threshold };
        state.webhooks.update(key.team_id, id, input, &metadata).await?;
    }
    if let Some(enabled) = body.enabled {
        state.webhooks.set_enabled(key.team_id, id, enabled, &metadata).await?;
    }
    Ok(Json(view(&state, key.team_id, &id.to_string()).await?))
}

#[utoipa::path(delete, path = "/api/webhook-endpoints/{endpoint_id}", tag = "webhook-endpoints", operation_id = "deleteWebhookEndpoint",
    params(("endpoint_id" = uuid::Uuid, Path, description = "The endpoint's id")),
    responses((status = 204, description = "Deleted: it gets nothing more")), security(("api_key" = [])))]
async fn remove(State(state): State<AppState>, key: TeamKey, Path(endpoint_id): Path<String>) -> Result<StatusCode, Problem> {
    let key = key.writer()?;
    state.webhooks.delete(key.team_id, parse_endpoint(&endpoint_id)?, &metadata(&key)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A new secret, shown once. Until `previous_secret_until` every delivery is signed
/// with both secrets, so receivers can switch without losing one.
#[utoipa::path(post, path = "/api/webhook-endpoints/{endpoint_id}/rotate-secret", tag = "webhook-endpoints", operation_id = "rotateWebhookSecret",
    params(("endpoint_id" = uuid::Uuid, Path, description = "The endpoint's id")),
    responses((status = 200, body = EndpointWithSecret)), security(("api_key" = [])))]
async fn rotate(State(state): State<AppState>, key: TeamKey, Path(endpoint_id): Path<String>) -> Result<Json<EndpointWithSecret>, Problem> {
    let key = key.writer()?;
    let id = parse_endpoint(&endpoint_id)?;
    let secret = state.webhooks.rotate(key.team_id, id, &metadata(&key)).await?;
    let endpoint = view(&state, key.team_id, &id.to_string()).await?;
    Ok(Json(EndpointWithSecret { endpoint, secret }))
}

/// Queues a `webhook.test` event to the endpoint.
#[utoipa::path(post, path = "/api/webhook-endpoints/{endpoint_id}/test", tag = "webhook-endpoints", operation_id = "sendWebhookTest",
    params(("endpoint_id" = uuid::Uuid, Path, description = "The endpoint's id")),
    responses((status = 202, body = Queued)), security(("api_key" = [])))]
async fn send_test(State(state): State<AppState>, key: TeamKey, Path(endpoint_id): Path<String>) -> Result<(StatusCode, Json<Queued>), Problem> {
    let key = key.writer()?;
    let delivery_id = state.webhooks.send_test(key.team_id, parse_endpoint(&endpoint_id)?).await?;
    state.webhook_sender.wake();
    Ok((StatusCode::ACCEPTED, Json(Queued { delivery_id })))
}

/// The endpoint's delivery log, newest first.
#[utoipa::path(get, path = "/api/webhook-endpoints/{endpoint_id}/deliveries", tag = "webhook-endpoints", operation_id = "listWebhookDeliveries",
    params(("endpoint_id" = uuid::Uuid, Path, description = "The endpoint's id"), PageQuery),
    responses((status = 200, body = DeliveryPage)), security(("api_key" = [])))]
async fn deliveries(
    State(state): State<AppState>,
    key: TeamKey,
    Path(endpoint_id): Path<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<DeliveryPage>, Problem> {
    let id = parse_endpoint(&endpoint_id)?.to_string();
    view(&state, key.team_id, &id).await?;
    let limit = page_limit(query.limit)?;
    let cursor = parse_cursor("webhook-deliveries", query.cursor.as_deref())?;
    let items = q::deliveries(&state.db, key.team_id, &id, cursor, i64::from(limit) + 1).await.map_err(|e| Problem::internal(&e))?;
    let (items, next_cursor) = paginate(items, limit, |last| make_cursor("webhook-deliveries", last.created_at, &last.id));
    Ok(Json(DeliveryPage { items, next_cursor }))
}

/// One delivery with each of its attempts (status, latency, the answer's start).
#[utoipa::path(get, path = "/api/webhook-endpoints/{endpoint_id}/deliveries/{delivery_id}", tag = "webhook-endpoints", operation_id = "getWebhookDelivery",
    params(("endpoint_id" = uuid::Uuid, Path, description = "The endpoint's id"), ("delivery_id" = String, Path, description = "The delivery's `webhook-id`")),
    responses((status = 200, body = DeliveryDetail)), security(("api_key" = [])))]
async fn delivery(State(state): State<AppState>, key: TeamKey, Path((endpoint_id, delivery_id)): Path<(String, String)>) -> Result<Json<DeliveryDetail>, Problem> {
    let id = parse_endpoint(&endpoint_id)?.to_string();
    q::delivery_of(&state.db, key.team_id, &id, &delivery_id)
        .await
        .map_err(|e| Problem::internal(&e))?
        .map(Json)
        .ok_or_else(|| Problem::not_found().detail("no such delivery"))
}

/// Sends the delivery again now, with the same `webhook-id`.
#[utoipa::path(post, path = "/api/webhook-endpoints/{endpoint_id}/deliveries/{delivery_id}/redeliver", tag = "webhook-endpoints", operation_id = "redeliverWebhook",
    params(("endpoint_id" = uuid::Uuid, Path, description = "The endpoint's id"), ("delivery_id" = String, Path, description = "The delivery's `webhook-id`")),
    responses((status = 202, body = Queued)), security(("api_key" = [])))]
async fn redeliver(State(state): State<AppState>, key: TeamKey, Path((endpoint_id, delivery_id)): Path<(String, String)>) -> Result<(StatusCode, Json<Queued>), Problem> {
    let key = key.writer()?;
    let id = parse_endpoint(&endpoint_id)?.to_string();
    let found = q::delivery_of(&state.db, key.team_id, &id, &delivery_id).await.map_err(|e| Problem::internal(&e))?;
    found.ok_or_else(|| Problem::not_found().detail("no such delivery"))?;
    state.webhooks.redeliver(key.team_id, &delivery_id).await?;
    state.webhook_sender.wake();
    Ok((StatusCode::ACCEPTED, Json(Queued { delivery_id })))
}

