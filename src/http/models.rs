//! `/api/models/*`: the team's custom models. Creating and refining are jobs (queued,
//! priced, reserved atomically); the rest reads or edits the model.

use application::jobs::steps::Upload;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use application::jobs::submit::{ModelCreationRequest, RefinementRequest};
use domain::{ModelId, TeamId};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::TeamKey;
use super::extract::{is_upload, ApiJson, ApiQuery, IdempotencyKey, UPLOAD_BODY_BYTES_MAX};
use super::uploads;
use super::generate::{accepted_status, accepted_view, requester, JobAccepted};
use super::jobs::{make_cursor, page_limit, paginate, parse_cursor};
use super::problem::Problem;
use crate::state::AppState;
use crate::queries;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/models", get(list).post(create).layer(DefaultBodyLimit::max(UPLOAD_BODY_BYTES_MAX)))
        .route("/api/models/{model_id}", get(get_one).patch(update).delete(archive))
        .route("/api/models/{model_id}/refine", post(refine).layer(DefaultBodyLimit::max(UPLOAD_BODY_BYTES_MAX)))
        .route("/api/models/{model_id}/versions", get(versions))
        .route("/api/models/{model_id}/images", get(images))
}

pub use crate::queries::models::{ModelView, VersionView};

fn parse_model(text: &str) -> Result<ModelId, Problem> {
    text.parse().map_err(|_| Problem::not_found().detail("no such model"))
}

pub async fn load_model_view(state: &AppState, team: TeamId, model_id: &str) -> Result<ModelView, Problem> {
    queries::models::model(&state.db, team, model_id)
        .await
        .map_err(|e| Problem::internal(&e))?
        .ok_or_else(|| Problem::not_found().detail("no such model"))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ModelsQuery {
    /// Include archived models (default false).
    pub archived: Option<bool>,
    /// Page size, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelPage {
    pub items: Vec<ModelView>,
    pub next_cursor: Option<String>,
}

/// The team's custom models, newest first.
#[utoipa::path(get, path = "/api/models", tag = "models", operation_id = "listModels", params(ModelsQuery),
    responses((status = 200, body = ModelPage)), security(("api_key" = [])))]
async fn list(State(state): State<AppState>, key: TeamKey, ApiQuery(query): ApiQuery<ModelsQuery>) -> Result<Json<ModelPage>, Problem> {
    let limit = page_limit(query.limit)?;
    let after = parse_cursor("models", query.cursor.as_deref())?;
    let items = queries::models::list(&state.db, key.team_id, query.archived.unwrap_or(false), after, i64::from(limit) + 1)
        .await
        .map_err(|e| Problem::internal(&e))?;
    let (items, next_cursor) = paginate(items, limit, |m| make_cursor("models", m.created_at, &m.model_id));
    Ok(Json(ModelPage { items, next_cursor }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateModel {
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    /// The model to create, in words.
    #[schema(min_length = 1, max_length = 4000)]
    pub description: String,
    /// A reference model of the catalog (`GET /api/reference-models`).
    pub reference_model_id: String,
}

/// A model creation with training images (`multipart/form-data`): the fields of
/// `CreateModel`, and `images` parts.
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // documents the multipart form; read by `uploads::read`
pub struct CreateModelWithImages {
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    #[schema(min_length = 1, max_length = 4000)]
    pub description: String,
    pub reference_model_id: String,
    /// Training images: up to 20 PNG, JPEG or WebP files of at most 10 MiB, or a zip of
    /// them with optional same-named `.txt` captions. They count towards the training
    /// set; only the rest is generated.
    #[schema(value_type = Vec<String>, format = Binary, max_items = 20)]
    pub images: Vec<Vec<u8>>,
}

/// A refinement with training images (`multipart/form-data`).
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // documents the multipart form; read by `uploads::read`
pub struct RefineModelWithImages {
    #[schema(min_length = 1, max_length = 4000)]
    pub prompt: String,
    /// As for a creation: added to the new version's training set.
    #[schema(value_type = Vec<String>, format = Binary, max_items = 20)]
    pub images: Vec<Vec<u8>>,
}

/// The body as JSON, or as a multipart form with training images.
async fn body_and_images<T: serde::de::DeserializeOwned>(state: &AppState, request: Request) -> Result<(T, Vec<Upload>), Problem> {
    if is_upload(request.method(), request.uri().path(), request.headers()) {
        uploads::read(request, state).await
    } else {
        let ApiJson(body) = ApiJson::<T>::from_request(request, state).await?;
        Ok((body, Vec::new()))
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelJobAccepted {
    pub model: ModelView,
    #[serde(flatten)]
    pub accepted: JobAccepted,
}

/// Creates a model: queues its creation job and reserves its price.
#[utoipa::path(post, path = "/api/models", tag = "models", operation_id = "createModel",
    request_body(content(
        (CreateModel = "application/json", example = json!({
            "name": "Autumn editorial",
            "description": "A confident editorial look: tailored wool coats, warm window light, muted earth tones",
            "reference_model_id": "fashion-editorial-01"
        })),
        (CreateModelWithImages = "multipart/form-data"))),
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[ -~]+$", description = "a retry returns the same model and job")),
    responses((status = 202, body = ModelJobAccepted),
        (status = 402, description = "Not enough credits for the creation (`/problems/insufficient-credits`)"),
        (status = 403, description = "A read-only key (`/problems/forbidden`), or a plan that runs no jobs (`/problems/plan-does-not-allow-jobs`)"),
        (status = 409, description = "The Idempotency-Key names another request (`/problems/idempotency-conflict`)"),
        (status = 422, description = "Unknown reference model, an invalid name or description, or training images that are not PNG, JPEG or WebP, too large or too many (`/problems/invalid-request`)"),
        (status = 429, description = "Too many queued jobs (`/problems/queue-full`)")),
    security(("api_key" = [])))]
async fn create(
    State(state): State<AppState>,
    key: TeamKey,
    idempotency: IdempotencyKey,
    request: Request,
) -> Result<(StatusCode, Json<ModelJobAccepted>), Problem> {
    let key = key.writer()?;
    let (body, uploads) = body_and_images::<CreateModel>(&state, request).await?;
    let request =
        ModelCreationRequest { name: body.name, description: body.description, reference_model_id: body.reference_model_id, uploads };
    let submitted = state.submit.create_model(&requester(&key), idempotency.0.as_ref(), request).await?;
    let accepted = accepted_view(&state, key.team_id, submitted.job_id, submitted.created).await?;
    let model = load_model_view(&state, key.team_id, &submitted.model_id.to_string()).await?;
    Ok((StatusCode::ACCEPTED, Json(ModelJobAccepted { model, accepted })))
}

/// One model: status and current version.
#[utoipa::path(get, path = "/api/models/{model_id}", tag = "models", operation_id = "getModel", params(("model_id" = uuid::Uuid, Path, description = "The custom model's id")),
    responses((status = 200, body = ModelView)), security(("api_key" = [])))]
async fn get_one(State(state): State<AppState>, key: TeamKey, Path(model_id): Path<String>) -> Result<Json<ModelView>, Problem> {
    Ok(Json(load_model_view(&state, key.team_id, &model_id).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateModel {
    #[schema(min_length = 1, max_length = 200)]
    pub name: Option<String>,
    #[schema(min_length = 1, max_length = 4000)]
    pub description: Option<String>,
}

/// Renames a model or edits its description.
#[utoipa::path(patch, path = "/api/models/{model_id}", tag = "models", operation_id = "updateModel", params(("model_id" = uuid::Uuid, Path, description = "The custom model's id")),
    request_body(content = UpdateModel, example = json!({"name": "Autumn editorial, v2"})),
    responses((status = 200, body = ModelView),
        (status = 403, description = "A read-only key (`/problems/forbidden`)"),
        (status = 409, description = "The model is archived or in another state (`/problems/model-archived`, `/problems/model-state`)"),
        (status = 422, description = "An invalid name or description (`/problems/invalid-request`)")),
    security(("api_key" = [])))]
async fn update(
    State(state): State<AppState>,
    key: TeamKey,
    Path(model_id): Path<String>,
    ApiJson(body): ApiJson<UpdateModel>,
) -> Result<Json<ModelView>, Problem> {
    let key = key.writer()?;
    let id = parse_model(&model_id)?;
    let change = application::models::DetailsChange { name: body.name, description: body.description };
    let clock = state.credits.clock().as_ref();
    application::models::update_details(&state.aggregates, clock, key.team_id, id, change, &format!("key:{}", key.key_id)).await?;
    Ok(Json(load_model_view(&state, key.team_id, &model_id).await?))
}

/// Archives a model: it keeps its history but can no longer be refined or used.
#[utoipa::path(delete, path = "/api/models/{model_id}", tag = "models", operation_id = "archiveModel", params(("model_id" = uuid::Uuid, Path, description = "The custom model's id")),
    responses((status = 204, description = "Archived"), (status = 403, description = "A read-only key (`/problems/forbidden`)"),
        (status = 409, description = "Already archived, or in another state (`/problems/model-archived`, `/problems/model-state`)")),
    security(("api_key" = [])))]
async fn archive(State(state): State<AppState>, key: TeamKey, Path(model_id): Path<String>) -> Result<StatusCode, Problem> {
    let key = key.writer()?;
    let id = parse_model(&model_id)?;
    application::models::archive(&state.aggregates, state.credits.clock().as_ref(), key.team_id, id, &format!("key:{}", key.key_id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefineModel {
    /// What to change, in words.
    #[schema(min_length = 1, max_length = 4000)]
    pub prompt: String,
}

/// Refines a ready model: queues a refinement job and reserves its price.
#[utoipa::path(post, path = "/api/models/{model_id}/refine", tag = "models", operation_id = "refineModel",
    request_body(content(
        (RefineModel = "application/json", example = json!({"prompt": "Softer light, a little more grain"})),
        (RefineModelWithImages = "multipart/form-data"))),
    params(("model_id" = uuid::Uuid, Path, description = "The custom model's id"), ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[ -~]+$", description = "a retry returns the same job")),
    responses((status = 202, body = JobAccepted), (status = 200, body = JobAccepted, description = "A repeat of an earlier request (same Idempotency-Key): its job"),
        (status = 402, description = "Not enough credits for the refinement (`/problems/insufficient-credits`)"),
        (status = 403, description = "A read-only key (`/problems/forbidden`), or a plan that runs no jobs (`/problems/plan-does-not-allow-jobs`)"),
        (status = 409, description = "The model is not ready, archived, or already refining (`/problems/model-not-ready`, `/problems/model-archived`, `/problems/refinement-in-progress`), or the Idempotency-Key names another request"),
        (status = 429, description = "Too many queued jobs (`/problems/queue-full`)")),
    security(("api_key" = [])))]
async fn refine(
    State(state): State<AppState>,
    key: TeamKey,
    Path(model_id): Path<String>,
    idempotency: IdempotencyKey,
    request: Request,
) -> Result<(StatusCode, Json<JobAccepted>), Problem> {
    let key = key.writer()?;
    let (body, uploads) = body_and_images::<RefineModel>(&state, request).await?;
    let request = RefinementRequest { model_id, prompt: body.prompt, uploads };
    let submitted = state.submit.refine_model(&requester(&key), idempotency.0.as_ref(), request).await?;
    let accepted = accepted_view(&state, key.team_id, submitted.job_id, submitted.created).await?;
    Ok((accepted_status(&accepted), Json(accepted)))
}

/// The model's versions, oldest first.
#[utoipa::path(get, path = "/api/models/{model_id}/versions", tag = "models", operation_id = "listModelVersions", params(("model_id" = uuid::Uuid, Path, description = "The custom model's id")),
    responses((status = 200, body = Vec<VersionView>)), security(("api_key" = [])))]
async fn versions(State(state): State<AppState>, key: TeamKey, Path(model_id): Path<String>) -> Result<Json<Vec<VersionView>>, Problem> {
    load_model_view(&state, key.team_id, &model_id).await?;
    let rows = queries::models::versions(&state.db, &model_id).await.map_err(|e| Problem::internal(&e))?;
    Ok(Json(rows))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ImageView {
    pub job_id: String,
    pub position: i32,
    /// Presigned URL, valid for the configured lifetime.
    pub url: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ImagePage {
    pub items: Vec<ImageView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Images generated with the model (not yet expired), newest first, as presigned URLs.
#[utoipa::path(get, path = "/api/models/{model_id}/images", tag = "models", operation_id = "listModelImages", params(("model_id" = uuid::Uuid, Path, description = "The custom model's id"), PageQuery),
    responses((status = 200, body = ImagePage)), security(("api_key" = [])))]
async fn images(
    State(state): State<AppState>,
    key: TeamKey,
    Path(model_id): Path<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<ImagePage>, Problem> {
    load_model_view(&state, key.team_id, &model_id).await?;
    let limit = page_limit(query.limit)?;
    let after = parse_cursor("model-images", query.cursor.as_deref())?;
    let rows = queries::models::images(&state.db, key.team_id, &model_id, after, i64::from(limit) + 1)
        .await
        .map_err(|e| Problem::internal(&e))?;
    let (rows, next_cursor) = paginate(rows, limit, |r| make_cursor("model-images", r.created_at, &r.key));
    let mut items = Vec::with_capacity(rows.len());
    for row in rows {
        let url = super::generate::sign(&state, &row.key)?;
        items.push(ImageView { job_id: row.job_id, position: row.position, url, created_at: row.created_at });
    }
    Ok(Json(ImagePage { items, next_cursor }))
}
