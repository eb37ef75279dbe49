//! `/api/generate/*`: image generation jobs — submit, status, results as presigned URLs,
//! and a price estimate that spends nothing. Also the job-acceptance path shared with
//! model creation and refinement.

use std::time::Duration;

use application::jobs::{JobsError, NewJob};
use application::event_store::StreamAppend;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use domain::jobs::{JobInput, JobStatus, IMAGES_PER_JOB_MAX, PROMPT_CHARS_MAX};
use domain::{JobId, ModelId, PriceRequest, PricingConfig, TeamId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::auth::TeamKey;
use super::extract::{ApiJson, IdempotencyKey};
use super::jobs::{load_job_view, parse_job_id, team_job, JobView};
use super::models::team_model;
use super::problem::Problem;
use crate::app::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/generate", post(submit))
        .route("/api/generate/estimate", post(estimate))
        .route("/api/generate/{job_id}", get(status))
        .route("/api/generate/{job_id}/images", get(images))
}

/// Namespace of ids derived from a team's idempotency keys (UUIDv5).
const ID_NAMESPACE: Uuid = Uuid::from_u128(0x6b69_6c6e_6a6f_6273_2d69_6465_6d70_6f74);

/// The job id (and, for creations, the model id) of a request: derived from the
/// `Idempotency-Key` when there is one, so a retry names the same job; fresh otherwise.
pub fn derive_ids(team: TeamId, scope: &str, key: Option<&domain::IdempotencyKey>) -> (JobId, Option<Uuid>) {
    match key {
        Some(key) => {
            let base = format!("{team}:{scope}:{}", key.as_str());
            let job = Uuid::new_v5(&ID_NAMESPACE, format!("{base}:job").as_bytes());
            let other = Uuid::new_v5(&ID_NAMESPACE, format!("{base}:model").as_bytes());
            (JobId::new(job), Some(other))
        }
        None => (JobId::new(Uuid::now_v7()), None),
    }
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

async fn pricing(state: &AppState) -> Result<PricingConfig, Problem> {
    infrastructure::pricing::current(&state.db).await.map_err(|e| Problem::internal(&e))
}

fn quote(config: &PricingConfig, request: &PriceRequest) -> Result<domain::Quote, Problem> {
    config.quote(request).map_err(|e| Problem::invalid(e.to_string()))
}

/// Prices, checks the queue depth, and accepts a job (recording it and reserving its
/// price in one append).
pub async fn accept_job(
    state: &AppState,
    key: TeamKey,
    job_id: JobId,
    input: JobInput,
    price: &PriceRequest,
    model_change: Option<StreamAppend>,
) -> Result<JobAccepted, Problem> {
    if let Ok(existing) = state.jobs.job(job_id).await {
        if existing.team_id == Some(key.team_id) {
            return accepted_view(state, key.team_id, job_id, false).await;
        }
    }
    let quote = quote(&pricing(state).await?, price)?;
    let queued = state.job_index.queued_count(key.team_id).await.map_err(|e| Problem::internal(&e))?;
    if queued >= state.queue_depth_max {
        return Err(JobsError::QueueFull { queued, max: state.queue_depth_max }.into());
    }
    let actor = format!("key:{}", key.key_id);
    let job = NewJob { team: key.team_id, job_id, input, cost: quote.amount, price_version: quote.price_version, model_change };
    let accepted = state.jobs.submit(job, &actor).await?;
    accepted_view(state, key.team_id, job_id, accepted.created).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    pub model_id: String,
    pub prompt: String,
    /// 512x512 | 768x768 | 1024x1024 (default 1024x1024)
    pub resolution: Option<String>,
    /// standard | hd (default standard)
    pub quality: Option<String>,
    /// 1 to 8 (default 1)
    pub count: Option<u32>,
}

struct Generation {
    model_id: ModelId,
    model_version: u32,
    price: PriceRequest,
    prompt: String,
}

async fn validate(state: &AppState, team: TeamId, request: &GenerateRequest) -> Result<Generation, Problem> {
    let model_id: ModelId = request.model_id.parse().map_err(|_| Problem::not_found().detail("no such model"))?;
    let model = team_model(state, team, model_id).await?;
    let version = model.usable()?.version;
    let count = request.count.unwrap_or(1);
    if !(1..=IMAGES_PER_JOB_MAX).contains(&count) {
        return Err(Problem::invalid(format!("count must be 1 to {IMAGES_PER_JOB_MAX}")));
    }
    let prompt = request.prompt.trim().to_string();
    if prompt.is_empty() || prompt.chars().count() > PROMPT_CHARS_MAX {
        return Err(Problem::invalid(format!("prompt must be 1 to {PROMPT_CHARS_MAX} characters")));
    }
    let price = PriceRequest::ImageGeneration {
        resolution: request.resolution.clone().unwrap_or_else(|| "1024x1024".into()),
        quality: request.quality.clone().unwrap_or_else(|| "standard".into()),
        model_complexity_milli: model.complexity_milli,
        count,
    };
    Ok(Generation { model_id, model_version: version, price, prompt })
}

/// Generates images with a ready model: queues a generation job and reserves its price.
#[utoipa::path(post, path = "/api/generate", tag = "generation", request_body = GenerateRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "a retry returns the same job")),
    responses((status = 202, body = JobAccepted), (status = 402, description = "insufficient credits"),
        (status = 403, description = "plan runs no jobs"), (status = 409, description = "model not ready"),
        (status = 422), (status = 429, description = "queue full")),
    security(("api_key" = [])))]
async fn submit(
    State(state): State<AppState>,
    key: TeamKey,
    idempotency: IdempotencyKey,
    ApiJson(body): ApiJson<GenerateRequest>,
) -> Result<(StatusCode, Json<JobAccepted>), Problem> {
    let key = key.writer()?;
    let (job_id, _) = derive_ids(key.team_id, "generate", idempotency.0.as_ref());
    if let Ok(existing) = state.jobs.job(job_id).await {
        if existing.team_id == Some(key.team_id) {
            return Ok((StatusCode::OK, Json(accepted_view(&state, key.team_id, job_id, false).await?)));
        }
    }
    let generation = validate(&state, key.team_id, &body).await?;
    let PriceRequest::ImageGeneration { resolution, quality, count, .. } = generation.price.clone() else {
        unreachable!("validate builds an image generation price");
    };
    let input = JobInput::ImageGeneration {
        model_id: generation.model_id,
        model_version: generation.model_version,
        prompt: generation.prompt,
        resolution,
        quality,
        count,
    };
    let accepted = accept_job(&state, key, job_id, input, &generation.price, None).await?;
    let status = if accepted.created { StatusCode::ACCEPTED } else { StatusCode::OK };
    Ok((status, Json(accepted)))
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
#[utoipa::path(post, path = "/api/generate/estimate", tag = "generation", request_body = GenerateRequest,
    responses((status = 200, body = Estimate), (status = 404), (status = 422)), security(("api_key" = [])))]
async fn estimate(State(state): State<AppState>, key: TeamKey, ApiJson(body): ApiJson<GenerateRequest>) -> Result<Json<Estimate>, Problem> {
    let generation = validate(&state, key.team_id, &body).await?;
    let quote = quote(&pricing(&state).await?, &generation.price)?;
    let balance = super::credits::load_balance(&state, key.team_id).await?.ok_or_else(Problem::not_found)?;
    Ok(Json(Estimate {
        cost_credits: quote.amount.get(),
        unit_price: quote.unit_price.get(),
        units: quote.units,
        price_version: quote.price_version,
        available: balance.available,
        affordable: balance.available >= quote.amount.get(),
    }))
}

/// A generation job's status.
#[utoipa::path(get, path = "/api/generate/{job_id}", tag = "generation",
    responses((status = 200, body = JobView), (status = 404)), security(("api_key" = [])))]
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
#[utoipa::path(get, path = "/api/generate/{job_id}/images", tag = "generation",
    responses((status = 200, body = GeneratedImages), (status = 404), (status = 410, description = "images expired")),
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
