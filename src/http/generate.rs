//! `/api/generate/*`: image generation jobs — submit, status, results as presigned URLs,
//! and a price estimate that spends nothing. The rules (pricing, checks, queue depth,
//! acceptance) are `application::jobs::submit`'s; this file parses and maps.

use std::time::Duration;

use application::jobs::submit::{GenerationRequest, Requester};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use domain::jobs::JobStatus;
use domain::{JobId, TeamId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::TeamKey;
use super::extract::{ApiJson, IdempotencyKey};
use super::jobs::{load_job_view, parse_job_id, team_job, JobView};
use super::problem::Problem;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/generate", post(submit))
        .route("/api/generate/estimate", post(estimate))
        .route("/api/generate/{job_id}", get(status))
        .route("/api/generate/{job_id}/images", get(images))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobAccepted {
    pub job: JobView,
    /// False when this request repeated an earlier one (same Idempotency-Key).
    pub created: bool,
}

pub async fn accepted_view(state: &AppState, team: TeamId, job_id: JobId, created: bool) -> Result<JobAccepted, Problem> {
    Ok(JobAccepted { job: load_job_view(state, team, &job_id.to_string()).await?, created })
}

/// Who asks, as the submission use cases record it.
pub fn requester(key: &TeamKey) -> Requester {
    Requester { team: key.team_id, actor: format!("key:{}", key.key_id) }
}

/// 202 for a new job, 200 for a repeat of an earlier request.
pub fn accepted_status(accepted: &JobAccepted) -> StatusCode {
    if accepted.created {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    /// A ready custom model of the team.
    #[schema(format = Uuid)]
    pub model_id: String,
    #[schema(min_length = 1, max_length = 4000)]
    pub prompt: String,
    /// The image size (default 1024x1024; the price list names the ones it prices).
    #[schema(example = "1024x1024")]
    pub resolution: Option<String>,
    /// The quality (default standard; the price list names the ones it prices).
    #[schema(example = "standard")]
    pub quality: Option<String>,
    /// Images to generate, 1 to 8 (default 1).
    #[schema(minimum = 1, maximum = 8)]
    pub count: Option<u32>,
}

impl From<GenerateRequest> for GenerationRequest {
    fn from(body: GenerateRequest) -> Self {
        GenerationRequest { model_id: body.model_id, prompt: body.prompt, resolution: body.resolution, quality: body.quality, count: body.count }
    }
}

/// Generates images with a ready model: queues a generation job and reserves its price.
#[utoipa::path(post, path = "/api/generate", tag = "generation", operation_id = "createGenerationJob",
    request_body(content = GenerateRequest, example = json!({
        "model_id": "01932c4e-8f3a-7b6e-9a41-2f5d8c7e1b09",
        "prompt": "A model in a camel coat on a rainy street, evening light",
        "resolution": "1024x1024",
        "quality": "hd",
        "count": 2
    })),
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[ -~]+$", description = "a retry returns the same job")),
    responses((status = 202, body = JobAccepted), (status = 200, body = JobAccepted, description = "A repeat of an earlier request (same Idempotency-Key): its job"),
        (status = 402, description = "Not enough credits (`/problems/insufficient-credits`)"),
        (status = 403, description = "A read-only key (`/problems/forbidden`), or a plan that runs no jobs (`/problems/plan-does-not-allow-jobs`)"),
        (status = 404, description = "No such model (`/problems/not-found`)"),
        (status = 409, description = "The model is not ready or archived (`/problems/model-not-ready`, `/problems/model-archived`), or the Idempotency-Key names another request"),
        (status = 422, description = "An invalid prompt, count, resolution or quality (`/problems/invalid-request`)"),
        (status = 429, description = "Too many queued jobs (`/problems/queue-full`)")),
    security(("api_key" = [])))]
async fn submit(
    State(state): State<AppState>,
    key: TeamKey,
    idempotency: IdempotencyKey,
    ApiJson(body): ApiJson<GenerateRequest>,
) -> Result<(StatusCode, Json<JobAccepted>), Problem> {
    let key = key.writer()?;
    let submitted = state.submit.submit_generation(&requester(&key), idempotency.0.as_ref(), body.into()).await?;
    let accepted = accepted_view(&state, key.team_id, submitted.job_id, submitted.created).await?;
    Ok((accepted_status(&accepted), Json(accepted)))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Estimate {
    /// What the job would reserve.
    pub cost_credits: i64,
    pub unit_price: i64,
    pub units: u32,
    pub price_version: i64,
    /// Spendable now.
    pub available: i64,
    pub affordable: bool,
}

/// The cost of a generation request, in credits; nothing is spent or recorded.
#[utoipa::path(post, path = "/api/generate/estimate", tag = "generation", operation_id = "estimateGeneration",
    request_body(content = GenerateRequest, example = json!({
        "model_id": "01932c4e-8f3a-7b6e-9a41-2f5d8c7e1b09",
        "prompt": "A model in a camel coat on a rainy street, evening light",
        "resolution": "1024x1024",
        "quality": "standard",
        "count": 4
    })),
    responses((status = 200, body = Estimate), (status = 404, description = "No such model (`/problems/not-found`)"),
        (status = 409, description = "The model is not ready or archived (`/problems/model-not-ready`, `/problems/model-archived`)"),
        (status = 422, description = "An invalid prompt, count, resolution or quality (`/problems/invalid-request`)")),
    security(("api_key" = [])))]
async fn estimate(State(state): State<AppState>, key: TeamKey, ApiJson(body): ApiJson<GenerateRequest>) -> Result<Json<Estimate>, Problem> {
    let estimate = state.submit.estimate_generation(key.team_id, &body.into()).await?;
    Ok(Json(Estimate::from(estimate)))
}

impl From<application::jobs::submit::Estimate> for Estimate {
    fn from(estimate: application::jobs::submit::Estimate) -> Self {
        Estimate {
            cost_credits: estimate.quote.amount.get(),
            unit_price: estimate.quote.unit_price.get(),
            units: estimate.quote.units,
            price_version: estimate.quote.price_version,
            available: estimate.available,
            affordable: estimate.affordable(),
        }
    }
}

/// A generation job's status.
#[utoipa::path(get, path = "/api/generate/{job_id}", tag = "generation", operation_id = "getGenerationJob", params(("job_id" = uuid::Uuid, Path, description = "The job's id")),
    responses((status = 200, body = JobView)), security(("api_key" = [])))]
async fn status(State(state): State<AppState>, key: TeamKey, Path(job_id): Path<String>) -> Result<Json<JobView>, Problem> {
    Ok(Json(load_job_view(&state, key.team_id, &job_id).await?))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GeneratedImage {
    pub position: u32,
    /// Presigned URL, valid until `expires_in_secs` from now.
    pub url: String,
    pub content_type: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GeneratedImages {
    pub job_id: String,
    pub status: String,
    pub expires_in_secs: u64,
    /// Empty until the job completes.
    pub images: Vec<GeneratedImage>,
}

/// A presigned URL for `key`, valid for the configured lifetime.
pub fn sign(state: &AppState, key: &str) -> Result<String, Problem> {
    state
        .objects
        .signed_url(key, Duration::from_secs(state.url_ttl_secs), state.jobs.now())
        .map_err(|e| Problem::internal(&e))
}

/// A generation job's images as presigned URLs. 410 once the images have expired.
#[utoipa::path(get, path = "/api/generate/{job_id}/images", tag = "generation", operation_id = "getGenerationImages", params(("job_id" = uuid::Uuid, Path, description = "The job's id")),
    responses((status = 200, body = GeneratedImages), (status = 410, description = "The images have expired (`/problems/images-expired`)")),
    security(("api_key" = [])))]
async fn images(State(state): State<AppState>, key: TeamKey, Path(job_id): Path<String>) -> Result<Json<GeneratedImages>, Problem> {
    let id = parse_job_id(&job_id)?;
    let job = team_job(&state, key.team_id, id).await?;
    if job.images_expired {
        return Err(Problem::new(StatusCode::GONE, "images-expired", "Images expired")
            .detail("generated images are kept for the retention period, then deleted"));
    }
    let mut images = Vec::new();
    if job.status == Some(JobStatus::Completed) {
        for (position, output) in job.outputs.iter().enumerate() {
            images.push(GeneratedImage {
                position: position as u32,
                url: sign(&state, &output.key)?,
                content_type: output.content_type.clone(),
                bytes: output.bytes,
                sha256: output.sha256.clone(),
            });
        }
    }
    let status = job.status.map(|s| s.as_str()).unwrap_or("queued").to_string();
    Ok(Json(GeneratedImages { job_id, status, expires_in_secs: state.url_ttl_secs, images }))
}
