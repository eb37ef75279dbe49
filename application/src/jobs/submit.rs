//! Submission use cases: the rules for spending credits on a job (and for calling one
//! off), whichever door the request came through (the REST API, the dashboard, a CLI). Each one prices the job
//! from the current price configuration, checks the request (prompt, image count, the
//! model's readiness, the reference model) and the team's queue depth, then accepts the
//! job: `JobQueued`, the model's request and `CreditsReserved` in one append
//! (`JobsService::submit`). Estimates run the same checks and spend nothing.
//!
//! Adapters parse their input, call one method and map `SubmitError` once: to
//! problem+json for REST, to a message on the page for the web. No rule lives in them.

use std::sync::Arc;

use async_trait::async_trait;
use domain::jobs::{GenerationJob, JobError, JobInput, JobOutput, JobStatus, IMAGES_PER_JOB_MAX};
use domain::operators::OperatorAct;
use domain::models::{trigger_word, ModelCommand, ModelError};
use domain::pricing::PricingError;
use domain::text::{self, Description, ModelName, Prompt, TextError, REFERENCE_MODEL_ID_CHARS_MAX};
use domain::{IdempotencyKey, JobId, ModelId, Plan, PriceRequest, PricingConfig, Quote, TeamCreditsError, TeamId};
use uuid::Uuid;

use super::index::JobIndex;
use super::steps::{self, TrainingImage, Upload};
use crate::storage::{model_asset_key, stored_output};
use super::{Ending, JobsError, JobsService, NewJob};
use crate::provider::Provider;
use crate::aggregate_store::CommandError;
use crate::event_store::EventStoreError;

/// Default image options when a request names none.
pub const RESOLUTION_DEFAULT: &str = "1024x1024";
pub const QUALITY_DEFAULT: &str = "standard";

/// The price-configuration port: the newest version of `credit_pricing_config`.
/// Implemented in `infrastructure::pricing`.
#[async_trait]
pub trait PriceList: Send + Sync + 'static {
    /// The newest version in effect at `now`.
    async fn current(&self, now: chrono::DateTime<chrono::Utc>) -> Result<PricingConfig, EventStoreError>;
    /// The newest version stored, in effect or still ahead (0: none).
    async fn latest_version(&self) -> Result<i64, EventStoreError>;
}

/// Why a submission (or its estimate) was refused. Every variant a user can cause is
/// its own case, so each door maps it to its own words once.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("no such model")]
    ModelNotFound,
    /// The model exists but cannot take this job (training, failed, archived, or a
    /// refinement already in progress).
    #[error(transparent)]
    ModelNotUsable(ModelError),
    #[error("unknown or inactive reference model")]
    UnknownReferenceModel,
    /// A field outside its bounds (prompt length, image count, resolution, quality, …).
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("the team already has {queued} queued jobs (at most {max})")]
    QueueFull { queued: i64, max: i64 },
    #[error("{requested} credits requested, {available} available")]
    InsufficientCredits { available: i64, requested: i64 },
    #[error("the {plan} plan runs no jobs")]
    PlanRunsNoJobs { plan: Plan },
    #[error("no such team")]
    TeamNotFound,
    #[error("no such job")]
    JobNotFound,
    /// Cancelling a job that has already ended (completed, failed or cancelled).
    #[error("the job has already ended ({0})")]
    JobAlreadyEnded(&'static str),
    /// Retrying a job that has not failed or been cancelled, or that no retry can
    /// repeat (model jobs: their model moved on).
    #[error("the job cannot be retried: {0}")]
    NotRetryable(&'static str),
    /// Anything else the engine refused or failed with (store unavailable, contention).
    #[error(transparent)]
    Jobs(JobsError),
}

impl From<JobsError> for SubmitError {
    fn from(error: JobsError) -> Self {
        match error {
            JobsError::Credits(CommandError::Rejected(rejection)) => SubmitError::from(rejection),
            JobsError::Model(ModelError::NotFound) => SubmitError::ModelNotFound,
            JobsError::Model(ModelError::InvalidText { field, reason }) => invalid_text(field, reason),
            JobsError::Model(rejection) => SubmitError::ModelNotUsable(rejection),
            JobsError::QueueFull { queued, max } => SubmitError::QueueFull { queued, max },
            JobsError::NotFound | JobsError::Job(JobError::NotFound) => SubmitError::JobNotFound,
            JobsError::Job(JobError::AlreadyFinished(status)) => SubmitError::JobAlreadyEnded(status),
            other => SubmitError::Jobs(other),
        }
    }
}

impl From<TeamCreditsError> for SubmitError {
    fn from(error: TeamCreditsError) -> Self {
        match error {
            TeamCreditsError::InsufficientCredits { available, requested } => SubmitError::InsufficientCredits { available, requested },
            TeamCreditsError::PlanDoesNotAllowJobs { plan } => SubmitError::PlanRunsNoJobs { plan },
            TeamCreditsError::TeamNotFound => SubmitError::TeamNotFound,
            other => SubmitError::Jobs(JobsError::Credits(CommandError::Rejected(other))),
        }
    }
}

impl From<EventStoreError> for SubmitError {
    fn from(error: EventStoreError) -> Self {
        SubmitError::Jobs(JobsError::Store(error))
    }
}

/// Who asks: the team, and the actor recorded in the events' metadata (`key:{id}`).
#[derive(Debug, Clone)]
pub struct Requester {
    pub team: TeamId,
    pub actor: String,
}

/// Images with a ready model. Options left out take their defaults.
#[derive(Debug, Clone, Default)]
pub struct GenerationRequest {
    pub model_id: String,
    pub prompt: String,
    pub resolution: Option<String>,
    pub quality: Option<String>,
    pub count: Option<u32>,
}

/// A new model from a description and a reference model of the catalog.
#[derive(Debug, Clone, Default)]
pub struct ModelCreationRequest {
    pub name: String,
    pub description: String,
    pub reference_model_id: String,
    /// Training images the team sends (images, or zips of images and captions); they
    /// count towards the training set, and only the rest is generated.
    pub uploads: Vec<Upload>,
}

/// A new version of a ready model, from a prompt.
#[derive(Debug, Clone, Default)]
pub struct RefinementRequest {
    pub model_id: String,
    pub prompt: String,
    /// As for a creation: training images added to the new version's set.
    pub uploads: Vec<Upload>,
}

/// What a job would cost and what the team can spend: nothing is recorded.
#[derive(Debug, Clone)]
pub struct Estimate {
    pub quote: Quote,
    /// Spendable credits now.
    pub available: i64,
    /// The team's plan: one that runs no jobs refuses the submission whatever it costs.
    pub plan: domain::Plan,
}

impl Estimate {
    pub fn affordable(&self) -> bool {
        self.available >= self.quote.amount.get()
    }
}

/// An accepted job (or, for a repeated idempotency key, the one accepted first).
#[derive(Debug, Clone)]
pub struct Submitted {
    pub job_id: JobId,
    /// The model the job creates or refines, or generates with.
    pub model_id: ModelId,
    /// False when the request repeated an earlier one (same idempotency key).
    pub created: bool,
}

/// Namespace of ids derived from a team's idempotency keys (UUIDv5). Unchanged since
/// the rules lived in the HTTP layer: a retry after an upgrade names the same job.
const ID_NAMESPACE: Uuid = Uuid::from_u128(0x6b69_6c6e_6a6f_6273_2d69_6465_6d70_6f74);

/// The job id and the id of a model it creates: derived from the idempotency key when
/// there is one (so a retry names the same job and model), fresh otherwise.
pub fn derive_ids(team: TeamId, scope: &str, key: Option<&IdempotencyKey>) -> (JobId, ModelId) {
    match key {
        Some(key) => {
            let base = format!("{team}:{scope}:{}", key.as_str());
            let job = Uuid::new_v5(&ID_NAMESPACE, format!("{base}:job").as_bytes());
            let model = Uuid::new_v5(&ID_NAMESPACE, format!("{base}:model").as_bytes());
            (JobId::new(job), ModelId::new(model))
        }
        None => (JobId::new(Uuid::now_v7()), ModelId::new(Uuid::now_v7())),
    }
}

/// Asks the provider to stop the request a cancelled job (as it was before the cancel)
/// holds, if any. The refund is recorded: a result that still arrives is discarded.
pub async fn stop_at_provider(provider: &dyn Provider, before: &GenerationJob, job_id: JobId) {
    if let Some(request_id) = before.provider_request_id.as_deref() {
        if let Err(error) = provider.cancel(request_id).await {
            tracing::warn!(%job_id, %error, "provider cancel failed; the result will be discarded when it arrives");
        }
    }
}

/// The submission use cases over the job engine and its read-side ports.
#[derive(Clone)]
pub struct SubmitService {
    jobs: JobsService,
    index: Arc<dyn JobIndex>,
    prices: Arc<dyn PriceList>,
    /// Told to stop a cancelled job's request.
    provider: Arc<dyn Provider>,
    /// Queued jobs a team may have waiting; beyond it submissions are refused.
    queue_depth_max: i64,
}

/// A checked job, priced, not yet accepted.
struct Priced {
    job_id: JobId,
    model_id: ModelId,
    input: JobInput,
    quote: Quote,
    model_change: Option<crate::event_store::StreamAppend>,
    /// Checked training images the team sent, to store before the job is accepted.
    uploads: Vec<TrainingImage>,
    /// The operator who submitted it (a retry), recorded with its reservation.
    by: Option<OperatorAct>,
}

/// The team's training images, checked before anything is stored or reserved.
fn checked_uploads(uploads: Vec<Upload>) -> Result<Vec<TrainingImage>, SubmitError> {
    steps::training_images(uploads).map_err(|reason| SubmitError::Invalid { field: "images", reason })
}

impl SubmitService {
    pub fn new(
        jobs: JobsService,
        index: Arc<dyn JobIndex>,
        prices: Arc<dyn PriceList>,
        provider: Arc<dyn Provider>,
        queue_depth_max: i64,
    ) -> Self {
        Self { jobs, index, prices, provider, queue_depth_max }
    }

    /// Cancels one of the team's jobs in any state that has not ended, refunds its
    /// reservation (one append), and asks the provider to stop a request it holds.
    /// A job that has already ended (cancelled included) is `JobAlreadyEnded`.
    pub async fn cancel(&self, who: &Requester, job_id: JobId) -> Result<GenerationJob, SubmitError> {
        let (before, ending) = self.jobs.cancel(who.team, job_id, "cancelled by the team", &who.actor).await?;
        if ending == Ending::AlreadyDone {
            let status = before.status.map(|s| s.as_str()).unwrap_or("cancelled");
            return Err(SubmitError::JobAlreadyEnded(status));
        }
        stop_at_provider(self.provider.as_ref(), &before, job_id).await;
        Ok(before)
    }

    pub fn queue_depth_max(&self) -> i64 {
        self.queue_depth_max
    }

    /// The current price configuration (shown before anything is spent).
    pub async fn prices(&self) -> Result<PricingConfig, SubmitError> {
        Ok(self.prices.current(self.jobs.now()).await?)
    }

    async fn quote(&self, request: &PriceRequest) -> Result<Quote, SubmitError> {
        let config = self.prices.current(self.jobs.now()).await?;
        config.quote(request).map_err(|e| SubmitError::Invalid { field: price_field(&e), reason: e.to_string() })
    }

    async fn estimate(&self, team: TeamId, quote: Quote) -> Result<Estimate, SubmitError> {
        let credits = self.jobs.credits().state(team).await.map_err(|e| SubmitError::from(JobsError::Credits(e)))?;
        if !credits.is_open() {
            return Err(SubmitError::TeamNotFound);
        }
        Ok(Estimate { quote, available: credits.spendable_at(self.jobs.now()), plan: credits.plan() })
    }

    /// The team's model, usable for a new job, or why not.
    async fn usable_model(&self, team: TeamId, model_id: &str) -> Result<(ModelId, domain::models::CustomModel), SubmitError> {
        let id: ModelId = model_id.trim().parse().map_err(|_| SubmitError::ModelNotFound)?;
        let model = self.jobs.model(id).await?.aggregate;
        if model.team_id != Some(team) {
            // Another team's model: never reveal it.
            return Err(SubmitError::ModelNotFound);
        }
        model.usable().map_err(|e| SubmitError::from(JobsError::Model(e)))?;
        Ok((id, model))
    }

    /// The request's own checks (prompt, count), made before anything about the model
    /// is looked at: a fault the caller can fix comes before a state conflict.
    fn checked_generation(request: &GenerationRequest) -> Result<(Prompt, u32), SubmitError> {
        let prompt = checked_prompt(&request.prompt)?;
        let count = request.count.unwrap_or(1);
        if !(1..=IMAGES_PER_JOB_MAX).contains(&count) {
            return Err(SubmitError::Invalid { field: "count", reason: format!("must be 1 to {IMAGES_PER_JOB_MAX}") });
        }
        Ok((prompt, count))
    }

    fn generation_price(request: &GenerationRequest, count: u32, complexity_milli: i64) -> PriceRequest {
        PriceRequest::ImageGeneration {
            resolution: request.resolution.clone().unwrap_or_else(|| RESOLUTION_DEFAULT.into()),
            quality: request.quality.clone().unwrap_or_else(|| QUALITY_DEFAULT.into()),
            model_complexity_milli: complexity_milli,
            count,
        }
    }

    /// What generating `request` would cost; nothing is spent.
    pub async fn estimate_generation(&self, team: TeamId, request: &GenerationRequest) -> Result<Estimate, SubmitError> {
        let (_, count) = Self::checked_generation(request)?;
        let (_, model) = self.usable_model(team, &request.model_id).await?;
        let price = Self::generation_price(request, count, model.complexity_milli);
        let quote = self.quote(&price).await?;
        self.estimate(team, quote).await
    }

    /// Queues an image generation job with a ready model and reserves its price.
    pub async fn submit_generation(
        &self,
        who: &Requester,
        key: Option<&IdempotencyKey>,
        request: GenerationRequest,
    ) -> Result<Submitted, SubmitError> {
        self.generation_by(who, key, request, None).await
    }

    /// An operator's retry of an ended (failed or cancelled) image generation of the
    /// team: a new job with the same model, prompt and options, priced at the prices in
    /// effect now and reserving its own credits, its reservation recorded with `by`. A
    /// job is retried once: retrying it again returns the same new job. Model jobs are
    /// not retried (their model has moved on; the team submits again).
    pub async fn retry_generation(&self, who: &Requester, job_id: JobId, by: OperatorAct) -> Result<Submitted, SubmitError> {
        let job = self.jobs.job(job_id).await?;
        if job.team_id != Some(who.team) {
            return Err(SubmitError::JobNotFound);
        }
        if !matches!(job.status, Some(JobStatus::Failed | JobStatus::Cancelled)) {
            return Err(SubmitError::NotRetryable("only a failed or cancelled job is retried"));
        }
        let Some(JobInput::ImageGeneration { model_id, prompt, resolution, quality, count, .. }) = job.input else {
            return Err(SubmitError::NotRetryable("only image generations are retried"));
        };
        let request = GenerationRequest { model_id: model_id.to_string(), prompt, resolution: Some(resolution), quality: Some(quality), count: Some(count) };
        let key = IdempotencyKey::parse(format!("retry-of:{job_id}")).map_err(|_| SubmitError::JobNotFound)?;
        self.generation_by(who, Some(&key), request, Some(by)).await
    }

    async fn generation_by(&self, who: &Requester, key: Option<&IdempotencyKey>, request: GenerationRequest, by: Option<OperatorAct>) -> Result<Submitted, SubmitError> {
        let (job_id, _) = derive_ids(who.team, "generate", key);
        if let Some(repeat) = self.repeat(who.team, job_id).await? {
            return Ok(repeat);
        }
        let (prompt, count) = Self::checked_generation(&request)?;
        let (model_id, model) = self.usable_model(who.team, &request.model_id).await?;
        let version = model.usable().map_err(|e| SubmitError::from(JobsError::Model(e)))?.version;
        let price = Self::generation_price(&request, count, model.complexity_milli);
        let quote = self.quote(&price).await?;
        let PriceRequest::ImageGeneration { resolution, quality, count, .. } = price else {
            unreachable!("generation_price builds an image generation price");
        };
        let input = JobInput::ImageGeneration { model_id, model_version: version, prompt: prompt.into_string(), resolution, quality, count };
        self.accept(who, Priced { job_id, model_id, input, quote, model_change: None, uploads: Vec::new(), by }).await
    }

    /// The active reference model's complexity factor (milli-units). An id the text
    /// rule refuses names no reference model, and is not looked up.
    async fn reference_complexity(&self, reference_model_id: &str) -> Result<i64, SubmitError> {
        let id = reference_model_id.trim();
        if text::check(id, REFERENCE_MODEL_ID_CHARS_MAX).is_err() {
            return Err(SubmitError::UnknownReferenceModel);
        }
        self.index.reference_complexity(id).await?.ok_or(SubmitError::UnknownReferenceModel)
    }

    /// What creating a model from `reference_model_id` would cost; nothing is spent.
    pub async fn estimate_model_creation(&self, team: TeamId, reference_model_id: &str) -> Result<Estimate, SubmitError> {
        let complexity_factor_milli = self.reference_complexity(reference_model_id).await?;
        let quote = self.quote(&PriceRequest::ModelCreation { complexity_factor_milli }).await?;
        self.estimate(team, quote).await
    }

    /// Creates a model: records its request, queues its creation job and reserves the
    /// price, in one append.
    pub async fn create_model(
        &self,
        who: &Requester,
        key: Option<&IdempotencyKey>,
        request: ModelCreationRequest,
    ) -> Result<Submitted, SubmitError> {
        let (job_id, derived_model) = derive_ids(who.team, "model", key);
        if let Some(repeat) = self.repeat(who.team, job_id).await? {
            return Ok(repeat);
        }
        let uploads = checked_uploads(request.uploads)?;
        // The request's own text first (the model aggregate holds the same rule).
        let name = ModelName::parse(&request.name).map_err(|e| invalid_text("name", e))?;
        let description = Description::parse(&request.description).map_err(|e| invalid_text("description", e))?;
        let reference_model_id = request.reference_model_id.trim().to_string();
        let complexity_milli = self.reference_complexity(&reference_model_id).await?;
        let quote = self.quote(&PriceRequest::ModelCreation { complexity_factor_milli: complexity_milli }).await?;
        let model_id = derived_model;
        let command = ModelCommand::RequestCreation {
            model_id,
            team_id: who.team,
            name: name.into_string(),
            description: description.as_str().to_string(),
            reference_model_id: reference_model_id.clone(),
            complexity_milli,
            job_id,
            now: self.jobs.now(),
        };
        // A repeat that raced the first finds the model already requested: accepting the
        // job then returns the first one.
        let model_change = match self.jobs.decide_model(model_id, command, &who.actor).await {
            Ok(append) => Some(append),
            Err(JobsError::Model(ModelError::AlreadyExists)) => None,
            Err(error) => return Err(error.into()),
        };
        let input = JobInput::ModelCreation { model_id, description: description.into_string(), reference_model_id };
        self.accept(who, Priced { job_id, model_id, input, quote, model_change, uploads, by: None }).await
    }

    fn refinement_price(model: &domain::models::CustomModel) -> PriceRequest {
        PriceRequest::ModelRefinement { iteration_count: i64::from(model.refinements_requested + 1) }
    }

    /// What refining the model would cost; nothing is spent.
    pub async fn estimate_refinement(&self, team: TeamId, model_id: &str) -> Result<Estimate, SubmitError> {
        let (_, model) = self.usable_model(team, model_id).await?;
        let quote = self.quote(&Self::refinement_price(&model)).await?;
        self.estimate(team, quote).await
    }

    /// Refines a ready model: records the request, queues the refinement job and
    /// reserves the price, in one append.
    pub async fn refine_model(
        &self,
        who: &Requester,
        key: Option<&IdempotencyKey>,
        request: RefinementRequest,
    ) -> Result<Submitted, SubmitError> {
        let (job_id, _) = derive_ids(who.team, "refine", key);
        if let Some(repeat) = self.repeat(who.team, job_id).await? {
            return Ok(repeat);
        }
        let uploads = checked_uploads(request.uploads)?;
        let prompt = checked_prompt(&request.prompt)?;
        let (model_id, model) = self.usable_model(who.team, &request.model_id).await?;
        let from_version = model.usable().map_err(|e| SubmitError::from(JobsError::Model(e)))?.version;
        let iteration = model.refinements_requested + 1;
        let quote = self.quote(&Self::refinement_price(&model)).await?;
        let command = ModelCommand::RequestRefinement { job_id, prompt: prompt.as_str().to_string(), now: self.jobs.now() };
        let model_change = self.jobs.decide_model(model_id, command, &who.actor).await?;
        let input = JobInput::ModelRefinement { model_id, prompt: prompt.into_string(), iteration, from_version };
        self.accept(who, Priced { job_id, model_id, input, quote, model_change: Some(model_change), uploads, by: None }).await
    }

    /// The job accepted earlier under this id, if it is the team's: a repeated request.
    async fn repeat(&self, team: TeamId, job_id: JobId) -> Result<Option<Submitted>, SubmitError> {
        match self.jobs.job(job_id).await {
            Ok(job) if job.team_id == Some(team) => {
                let model_id = job.input.as_ref().map(JobInput::model_id).ok_or(SubmitError::Jobs(JobsError::NotFound))?;
                Ok(Some(Submitted { job_id, model_id, created: false }))
            }
            Ok(_) | Err(JobsError::NotFound) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// Checks the queue depth and accepts the priced job (job, model request and
    /// reservation in one append).
    async fn accept(&self, who: &Requester, priced: Priced) -> Result<Submitted, SubmitError> {
        let queued = self.index.queued_count(who.team).await?;
        if queued >= self.queue_depth_max {
            return Err(SubmitError::QueueFull { queued, max: self.queue_depth_max });
        }
        let Priced { job_id, model_id, input, quote, model_change, uploads, by } = priced;
        let uploads = self.store_uploads(who.team, &input, uploads).await?;
        let stored: Vec<String> = uploads.iter().map(|o| o.key.clone()).collect();
        let job = NewJob {
            team: who.team,
            job_id,
            input,
            cost: quote.amount,
            price_version: quote.price_version,
            model_change,
            uploads,
        };
        match self.jobs.submit_as(job, &who.actor, by).await {
            Ok(accepted) => Ok(Submitted { job_id, model_id, created: accepted.created }),
            Err(error) => {
                // Not accepted: the images stored for it belong to no job.
                if let (Some(objects), false) = (self.jobs.objects(), stored.is_empty()) {
                    if let Err(delete) = objects.delete_many(&stored).await {
                        tracing::warn!(%job_id, error = %delete, "training images of a refused job were not deleted");
                    }
                }
                Err(error.into())
            }
        }
    }

    /// Stores the team's training images beside the version the job makes, each with its
    /// caption (the team's, or the description or prompt, after the model's trigger word).
    async fn store_uploads(&self, team: TeamId, input: &JobInput, uploads: Vec<TrainingImage>) -> Result<Vec<JobOutput>, SubmitError> {
        if uploads.is_empty() {
            return Ok(Vec::new());
        }
        let unsupported = || SubmitError::Invalid { field: "images", reason: "this server keeps no training images".into() };
        let objects = self.jobs.objects().ok_or_else(unsupported)?;
        let version = steps::version_made(input).ok_or_else(unsupported)?;
        let trigger = trigger_word(input.model_id());
        let subject = match input {
            JobInput::ModelCreation { description, .. } => description.trim(),
            JobInput::ModelRefinement { prompt, .. } => prompt.trim(),
            JobInput::ImageGeneration { .. } => return Err(unsupported()),
        };
        let (team, model) = (team.to_string(), input.model_id().to_string());
        let mut outputs = Vec::with_capacity(uploads.len() * 2);
        for (index, image) in uploads.into_iter().enumerate() {
            let caption = match image.caption {
                Some(caption) if caption.contains(&trigger) => caption,
                Some(caption) => format!("{trigger}, {caption}"),
                None => format!("{trigger}, {subject}"),
            };
            let name = format!("training/upload-{index}");
            let files = [
                (format!("{name}.{}", image.extension), image.bytes, image.content_type),
                (format!("{name}.txt"), caption.into_bytes(), "text/plain; charset=utf-8"),
            ];
            for (file, bytes, content_type) in files {
                let key = model_asset_key(&team, &model, version, &file);
                let output = stored_output(&key, content_type, &bytes);
                objects.put(&key, bytes, content_type).await.map_err(|e| SubmitError::Jobs(JobsError::Storage(e.to_string())))?;
                outputs.push(output);
            }
        }
        Ok(outputs)
    }
}

/// The request field a pricing refusal is about.
fn price_field(error: &PricingError) -> &'static str {
    match error {
        PricingError::UnknownResolution(_) => "resolution",
        PricingError::UnknownQuality(_) => "quality",
        PricingError::ZeroCount => "count",
        PricingError::Negative { field, .. } => field,
        _ => "price",
    }
}

/// A text field the rule refused, as the submission's refusal naming it.
fn invalid_text(field: &'static str, reason: TextError) -> SubmitError {
    SubmitError::Invalid { field, reason: reason.to_string() }
}

/// The prompt as its value type (trimmed, bounded, no control characters).
fn checked_prompt(prompt: &str) -> Result<Prompt, SubmitError> {
    Prompt::parse(prompt).map_err(|e| invalid_text("prompt", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_derive_from_the_key_and_differ_by_scope_and_team() {
        let team = TeamId::new(Uuid::from_u128(1));
        let other = TeamId::new(Uuid::from_u128(2));
        let key = IdempotencyKey::parse("k-1").expect("valid key");
        assert_eq!(derive_ids(team, "generate", Some(&key)), derive_ids(team, "generate", Some(&key)));
        assert_ne!(derive_ids(team, "generate", Some(&key)).0, derive_ids(team, "refine", Some(&key)).0);
        assert_ne!(derive_ids(team, "generate", Some(&key)).0, derive_ids(other, "generate", Some(&key)).0);
        assert_ne!(derive_ids(team, "generate", None).0, derive_ids(team, "generate", None).0);
    }

    #[test]
    fn prompts_are_refused_naming_the_field() {
        assert_eq!(checked_prompt("  a cat ").expect("valid").as_str(), "a cat");
        for bad in ["   ".to_string(), "a\u{0}b".into(), "x".repeat(domain::text::PROMPT_CHARS_MAX + 1)] {
            let error = checked_prompt(&bad).expect_err("refused");
            assert!(matches!(error, SubmitError::Invalid { field: "prompt", .. }), "{error}");
        }
    }
}
