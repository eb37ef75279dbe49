//! `/api/admin/reference-models` and `/api/admin/workers`: operators add, edit, retire
//! and restore reference models (with their preview images), and drain workers. Each
//! action takes an optional `reason`, recorded with the operator on the action's event;
//! every rule is the `OperatorActions` use case's, which the console calls too.

use std::collections::BTreeMap;

use application::operator_actions::ReasonRule;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use domain::catalog::{NewReference, ReferenceEdit};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::admin::ReasonQuery;
use super::auth::Operator;
use super::catalog::{catalog_problem, view, ReferenceModelView};
use super::extract::{ApiJson, ApiQuery};
use super::problem::Problem;
use crate::queries::catalog;
use crate::queries::ops::WorkerRow;
use crate::state::AppState;

const REFERENCES_LIST: &str = "admin-reference-models";
/// Workers listed, at most.
const WORKERS_MAX: i64 = 500;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/admin/reference-models", get(list_references).post(add_reference))
        .route("/api/admin/reference-models/{id}", get(get_reference).patch(edit_reference))
        .route("/api/admin/reference-models/{id}/preview", put(put_preview))
        .route("/api/admin/reference-models/{id}/retire", post(retire_reference))
        .route("/api/admin/reference-models/{id}/restore", post(restore_reference))
        .route("/api/admin/workers", get(list_workers))
        .route("/api/admin/workers/{worker_id}/drain", post(drain_worker))
        .route("/api/admin/workers/{worker_id}/undrain", post(undrain_worker))
}

/// A reference model as operators see it: retired ones too, with the last change.
#[derive(Debug, Serialize, ToSchema)]
pub struct AdminReferenceView {
    #[serde(flatten)]
    pub model: ReferenceModelView,
    /// Offered for new custom models (false: retired).
    pub active: bool,
    pub changed_at: Option<DateTime<Utc>>,
    pub changed_by: Option<String>,
    pub change_reason: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AdminReferencePage {
    pub items: Vec<AdminReferenceView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReferencesQuery {
    /// Only models whose name contains this (any case).
    pub search: Option<String>,
    /// Page size, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewReferenceRequest {
    /// Lower-case letters, digits and single hyphens, 3 to 100 characters.
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// fashion | fitness | beauty | lifestyle | business
    pub category: String,
    /// Thousandths, 100 to 10000 (1000 = 1.0): model creation costs grow with it.
    pub complexity_factor_milli: i64,
    /// At most 16 traits: `{"age_range": "25-34", "lighting": "golden hour"}`.
    #[serde(default)]
    pub characteristics: BTreeMap<String, String>,
    /// Why (recorded with the operator).
    pub reason: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditReferenceRequest {
    pub name: Option<String>,
    /// `""` clears it.
    pub description: Option<String>,
    /// Replaces every trait.
    pub characteristics: Option<BTreeMap<String, String>>,
    pub reason: Option<String>,
}

async fn admin_view(state: &AppState, id: &str) -> Result<AdminReferenceView, Problem> {
    let model = catalog::get(&state.db, id).await.map_err(catalog_problem)?.ok_or_else(|| Problem::not_found().detail("no such reference model"))?;
    to_admin_view(state, model)
}

fn to_admin_view(state: &AppState, model: catalog::ReferenceModel) -> Result<AdminReferenceView, Problem> {
    let (active, changed_at, changed_by, change_reason) = (model.active, model.changed_at, model.changed_by.clone(), model.change_reason.clone());
    Ok(AdminReferenceView { model: view(state, model)?, active, changed_at, changed_by, change_reason })
}

/// Every reference model, retired ones too, most popular first.
#[utoipa::path(get, path = "/api/admin/reference-models", tag = "admin", operation_id = "listAllReferenceModels", params(ReferencesQuery),
    responses((status = 200, body = AdminReferencePage)), security(("operator_key" = [])))]
pub async fn list_references(State(state): State<AppState>, _: Operator, ApiQuery(query): ApiQuery<ReferencesQuery>) -> Result<Json<AdminReferencePage>, Problem> {
    let limit = query.limit.unwrap_or(20);
    if !(1..=catalog::PAGE_LIMIT_MAX).contains(&limit) {
        return Err(Problem::invalid_field("limit", format!("limit must be 1 to {}", catalog::PAGE_LIMIT_MAX)));
    }
    let position = super::cursor::decode(REFERENCES_LIST, query.cursor.as_deref())?;
    let page = catalog::search_all(&state.db, query.search.as_deref(), limit, position.as_deref()).await.map_err(catalog_problem)?;
    let items = page.items.into_iter().map(|model| to_admin_view(&state, model)).collect::<Result<Vec<_>, _>>()?;
    let next_cursor = page.next_cursor.map(|position| super::cursor::encode(REFERENCES_LIST, &position));
    Ok(Json(AdminReferencePage { items, next_cursor }))
}

/// One reference model, retired or not.
#[utoipa::path(get, path = "/api/admin/reference-models/{id}", tag = "admin", operation_id = "getAnyReferenceModel",
    params(("id" = String, Path, description = "reference model id")),
    responses((status = 200, body = AdminReferenceView), (status = 404, description = "No such model (`/problems/not-found`)")),
    security(("operator_key" = [])))]
pub async fn get_reference(State(state): State<AppState>, _: Operator, Path(id): Path<String>) -> Result<Json<AdminReferenceView>, Problem> {
    Ok(Json(admin_view(&state, &id).await?))
}

/// Adds a reference model, offered at once (its preview: `PUT …/preview`).
#[utoipa::path(post, path = "/api/admin/reference-models", tag = "admin", operation_id = "addReferenceModel",
    request_body(content = NewReferenceRequest, example = json!({"id": "fashion-rain-01", "name": "Ines · Rain Editorial",
        "description": "A wet-look editorial in city rain", "category": "fashion", "complexity_factor_milli": 1500,
        "characteristics": {"lighting": "overcast"}, "reason": "autumn campaign"})),
    responses((status = 201, body = AdminReferenceView),
        (status = 403, description = "A viewer (`/problems/forbidden`)"),
        (status = 409, description = "The id is taken (`/problems/reference-model-exists`)"),
        (status = 422, description = "A field the rules refuse, named in `field` (`/problems/invalid-request`)")),
    security(("operator_key" = [])))]
pub async fn add_reference(State(state): State<AppState>, operator: Operator, ApiJson(body): ApiJson<NewReferenceRequest>) -> Result<(StatusCode, Json<AdminReferenceView>), Problem> {
    let raw = NewReference {
        id: body.id,
        name: body.name,
        description: body.description,
        category: body.category,
        traits: body.characteristics.into_iter().collect(),
        complexity_factor_milli: body.complexity_factor_milli,
    };
    let id = state.operator_actions.add_reference(&operator.0, raw, None, body.reason.as_deref(), ReasonRule::Optional).await?;
    Ok((StatusCode::CREATED, Json(admin_view(&state, id.as_str()).await?)))
}

/// Edits a reference model's name, description or traits (a retired one: 409).
#[utoipa::path(patch, path = "/api/admin/reference-models/{id}", tag = "admin", operation_id = "editReferenceModel",
    params(("id" = String, Path, description = "reference model id")),
    request_body(content = EditReferenceRequest, example = json!({"description": "Rain editorial, now with umbrellas", "reason": "brief changed"})),
    responses((status = 200, body = AdminReferenceView), (status = 404, description = "No such model (`/problems/not-found`)"),
        (status = 409, description = "Retired (`/problems/reference-model-retired`)"),
        (status = 422, description = "A field the rules refuse, or nothing to change (`/problems/invalid-request`)")),
    security(("operator_key" = [])))]
pub async fn edit_reference(State(state): State<AppState>, operator: Operator, Path(id): Path<String>, ApiJson(body): ApiJson<EditReferenceRequest>) -> Result<Json<AdminReferenceView>, Problem> {
    let raw = ReferenceEdit { name: body.name, description: body.description, traits: body.characteristics.map(|c| c.into_iter().collect()) };
    state.operator_actions.edit_reference(&operator.0, &id, raw, None, body.reason.as_deref(), ReasonRule::Optional).await?;
    Ok(Json(admin_view(&state, &id).await?))
}

/// An image's bytes, as the body of a request.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct ImageBytes(pub Vec<u8>);

/// Stores a new preview image (the body: PNG, JPEG or WebP, at most 1 MiB) and shows it
/// from now on.
#[utoipa::path(put, path = "/api/admin/reference-models/{id}/preview", tag = "admin", operation_id = "putReferenceModelPreview",
    params(("id" = String, Path, description = "reference model id"), ReasonQuery),
    request_body(content = ImageBytes, content_type = "application/octet-stream", description = "The image's bytes: PNG, JPEG or WebP (known by their content)"),
    responses((status = 200, body = AdminReferenceView), (status = 404, description = "No such model (`/problems/not-found`)"),
        (status = 409, description = "Retired (`/problems/reference-model-retired`)"),
        (status = 413, description = "The body is larger than the server accepts (`/problems/payload-too-large`)"),
        (status = 422, description = "Not an image, empty or larger than 1 MiB (`field`: `preview`)")),
    security(("operator_key" = [])))]
pub async fn put_preview(State(state): State<AppState>, operator: Operator, Path(id): Path<String>, Query(query): Query<ReasonQuery>, body: Bytes) -> Result<Json<AdminReferenceView>, Problem> {
    state.operator_actions.edit_reference(&operator.0, &id, ReferenceEdit::default(), Some(body.to_vec()), query.reason.as_deref(), ReasonRule::Optional).await?;
    Ok(Json(admin_view(&state, &id).await?))
}

/// Retires a reference model: no longer listed nor accepted for new custom models; the
/// models made from it keep working.
#[utoipa::path(post, path = "/api/admin/reference-models/{id}/retire", tag = "admin", operation_id = "retireReferenceModel",
    params(("id" = String, Path, description = "reference model id"), ReasonQuery),
    responses((status = 200, body = AdminReferenceView), (status = 404, description = "No such model (`/problems/not-found`)")),
    security(("operator_key" = [])))]
pub async fn retire_reference(State(state): State<AppState>, operator: Operator, Path(id): Path<String>, Query(query): Query<ReasonQuery>) -> Result<Json<AdminReferenceView>, Problem> {
    state.operator_actions.retire_reference(&operator.0, &id, query.reason.as_deref(), ReasonRule::Optional).await?;
    Ok(Json(admin_view(&state, &id).await?))
}

/// Offers a retired reference model again.
#[utoipa::path(post, path = "/api/admin/reference-models/{id}/restore", tag = "admin", operation_id = "restoreReferenceModel",
    params(("id" = String, Path, description = "reference model id"), ReasonQuery),
    responses((status = 200, body = AdminReferenceView), (status = 404, description = "No such model (`/problems/not-found`)")),
    security(("operator_key" = [])))]
pub async fn restore_reference(State(state): State<AppState>, operator: Operator, Path(id): Path<String>, Query(query): Query<ReasonQuery>) -> Result<Json<AdminReferenceView>, Problem> {
    state.operator_actions.restore_reference(&operator.0, &id, query.reason.as_deref(), ReasonRule::Optional).await?;
    Ok(Json(admin_view(&state, &id).await?))
}

/// Every worker that has sent a heartbeat: jobs held and done, last error, drain.
#[utoipa::path(get, path = "/api/admin/workers", tag = "admin", operation_id = "listWorkers",
    responses((status = 200, body = Vec<WorkerRow>)), security(("operator_key" = [])))]
pub async fn list_workers(State(state): State<AppState>, _: Operator) -> Result<Json<Vec<WorkerRow>>, Problem> {
    Ok(Json(crate::queries::ops::workers(&state.db, WORKERS_MAX).await.map_err(|e| Problem::internal(&e))?))
}

/// Drains a worker: it claims no new job and finishes those it holds (from its next
/// heartbeat on).
#[utoipa::path(post, path = "/api/admin/workers/{worker_id}/drain", tag = "admin", operation_id = "drainWorker",
    params(("worker_id" = String, Path, description = "The worker's id, as listed"), ReasonQuery),
    responses((status = 204, description = "Drained (or already draining)"), (status = 404, description = "No such worker (`/problems/not-found`)")),
    security(("operator_key" = [])))]
pub async fn drain_worker(State(state): State<AppState>, operator: Operator, Path(worker): Path<String>, Query(query): Query<ReasonQuery>) -> Result<StatusCode, Problem> {
    state.operator_actions.drain_worker(&operator.0, &worker, query.reason.as_deref(), ReasonRule::Optional).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Lets a drained worker claim jobs again.
#[utoipa::path(post, path = "/api/admin/workers/{worker_id}/undrain", tag = "admin", operation_id = "undrainWorker",
    params(("worker_id" = String, Path, description = "The worker's id, as listed"), ReasonQuery),
    responses((status = 204, description = "Claiming again (or was not drained)")), security(("operator_key" = [])))]
pub async fn undrain_worker(State(state): State<AppState>, operator: Operator, Path(worker): Path<String>, Query(query): Query<ReasonQuery>) -> Result<StatusCode, Problem> {
    state.operator_actions.undrain_worker(&operator.0, &worker, query.reason.as_deref(), ReasonRule::Optional).await?;
    Ok(StatusCode::NO_CONTENT)
}
