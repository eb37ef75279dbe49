//! The **fal.ai provider** (`"fal"`): jobs run on fal's queue API; results arrive by
//! signed webhook (`POST /api/webhooks/fal`, verified by [`webhook`]) or, when a webhook
//! is missed, by the worker polling [`Provider::status`].
//!
//! - [`settings`]: the `[fal]` section (key, URLs, app id per operation, limits);
//! - [`client`]: the HTTP calls, with bounded retries of transient failures;
//! - [`mapping`]: pure translation of jobs to fal inputs and of results to files;
//! - [`webhook`]: ED25519 verification against fal's JWKS.
//!
//! Model creation and refinement are steps (see `application::jobs::steps`): training
//! images from the text-to-image app, then the LoRA trainer on a signed URL of the zipped
//! set; the version's artifact is the LoRA weights (`lora.safetensors`) plus a
//! `model.json` pointer naming them (the version's `artifact_key`). Generation sends a
//! signed URL of those weights as the LoRA.

pub mod client;
pub mod mapping;
pub mod settings;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use application::clock::Clock;
use application::provider::{
    ProducedFile, Provider, ProviderError, ProviderOutcome, ProviderRequest, ProviderStatus, Submission, Task,
};
use application::storage::ObjectStore;
use async_trait::async_trait;
use domain::jobs::JobInput;
use secrecy::SecretString;
use serde_json::Value;

use self::client::{CancelAnswer, FalClient, FalError};
use self::mapping::{queue_app, FileRef, QueueStatus, ResultFiles, LORA_FILE, MODEL_POINTER_FILE};
pub use self::settings::{FalSettings, TRAINER_STEPS_RANGE};
pub use self::webhook::{FalWebhookVerifier, VerifyError, WebhookHeaders};

/// The name recorded on `JobDispatched`.
pub const PROVIDER_NAME: &str = "fal";
const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";
/// The shortest life of a LoRA URL handed to fal: a request may wait in fal's queue for
/// a long while before it downloads the weights.
const LORA_URL_TTL_MIN: Duration = Duration::from_secs(24 * 3600);

/// Everything Kiln needs of fal: the provider and the webhook verifier.
pub struct Fal {
    pub provider: Arc<FalProvider>,
    pub webhooks: FalWebhookVerifier,
}

impl Fal {
    /// fal when `settings.key` is set, else `None`. `webhook_base_url` is Kiln's public
    /// URL (used when `settings.webhook_base_url` is unset).
    pub fn from_settings(
        settings: &FalSettings,
        webhook_base_url: &str,
        objects: Arc<dyn ObjectStore>,
        clock: Arc<dyn Clock>,
        url_ttl: Duration,
    ) -> Result<Option<Self>, reqwest::Error> {
        let Some(key) = settings.key.clone() else { return Ok(None) };
        let base = settings.webhook_base_url.as_deref().unwrap_or(webhook_base_url).trim_end_matches('/');
        let webhook_url = format!("{base}/api/webhooks/fal");
        let provider = FalProvider::new(settings, key, Some(webhook_url), objects, clock, url_ttl)?;
        Ok(Some(Self { provider: Arc::new(provider), webhooks: FalWebhookVerifier::new(settings)? }))
    }
}

pub struct FalProvider {
    client: FalClient,
    creation_app: String,
    refinement_app: String,
    generation_app: String,
    training_images_app: String,
    trainer_steps: u32,
    webhook_url: Option<String>,
    /// Where model artifacts are read (pointers) and signed (LoRA weights for fal).
    objects: Arc<dyn ObjectStore>,
    clock: Arc<dyn Clock>,
    /// Lifetime of the signed URLs fal downloads weights from.
    url_ttl: Duration,
}

impl FalProvider {
    pub fn new(
        settings: &FalSettings,
        key: SecretString,
        webhook_url: Option<String>,
        objects: Arc<dyn ObjectStore>,
        clock: Arc<dyn Clock>,
        url_ttl: Duration,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            client: FalClient::new(settings, key)?,
            creation_app: settings.model_creation_app.clone(),
            refinement_app: settings.model_refinement_app.clone(),
            generation_app: settings.image_generation_app.clone(),
            training_images_app: settings.training_images_app.clone(),
            // Checked when the configuration loads; settings built in code are held to it too.
            trainer_steps: settings.trainer_steps.clamp(*TRAINER_STEPS_RANGE.start(), *TRAINER_STEPS_RANGE.end()),
            webhook_url,
            objects,
            clock,
            url_ttl: url_ttl.max(LORA_URL_TTL_MIN),
        })
    }

    fn app_of(&self, request: &ProviderRequest) -> &str {
        match (&request.task, &request.input) {
            (Task::Images { .. }, _) => &self.generation_app,
            (Task::TrainingImages { .. }, _) => &self.training_images_app,
            (Task::Training { .. }, JobInput::ModelRefinement { .. }) => &self.refinement_app,
            (Task::Training { .. }, _) => &self.creation_app,
        }
    }

    /// The queue apps a request id may belong to. A request id alone does not name its
    /// app, and fal's status and cancel URLs need it: each app is asked in turn (a
    /// wrong one answers 404). Generation first: it is asked about most.
    fn queue_apps(&self) -> Vec<String> {
        let mut apps: Vec<String> = Vec::with_capacity(4);
        for app in [&self.generation_app, &self.training_images_app, &self.creation_app, &self.refinement_app] {
            let app = queue_app(app);
            if !apps.contains(&app) {
                apps.push(app);
            }
        }
        apps
    }

    /// A signed URL of the LoRA weights beside the `model.json` pointer at `pointer_key`;
    /// `None` when the model version has none (made by the local provider).
    async fn lora_url(&self, pointer_key: Option<&str>) -> Result<Option<String>, ProviderError> {
        let Some(pointer_key) = pointer_key else { return Ok(None) };
        let bytes = self.objects.get(pointer_key).await.map_err(|e| ProviderError::Transient(e.to_string()))?;
        let Some(pointer) = bytes.and_then(|b| serde_json::from_slice::<Value>(&b).ok()) else { return Ok(None) };
        let weights = pointer.get("weights").and_then(Value::as_str).filter(|w| !w.contains('/'));
        let (Some(weights), Some((folder, _))) = (weights, pointer_key.rsplit_once('/')) else { return Ok(None) };
        let key = format!("{folder}/{weights}");
        let url = self.objects.signed_url(&key, self.url_ttl, self.clock.now()).map_err(|e| ProviderError::Permanent(e.to_string()))?;
        Ok(Some(url))
    }

    /// The outcome of a successful result `payload`: its files downloaded. Transient
    /// download failures are errors (try again later); anything else fails the job.
    pub async fn outcome_of(&self, request_id: Option<&str>, payload: &Value) -> Result<ProviderOutcome, ProviderError> {
        let files = match mapping::result_files(payload) {
            Ok(files) => files,
            Err(message) => return Ok(ProviderOutcome::Failed { message: format!("fal result unusable: {message}") }),
        };
        let produced = match files {
            ResultFiles::Images(images) => {
                let mut produced = Vec::with_capacity(images.len());
                for image in images {
                    let bytes = match self.fetch(&image).await? {
                        Ok(bytes) => bytes,
                        Err(failed) => return Ok(failed),
                    };
                    if !bytes.starts_with(PNG_MAGIC) {
                        let message = format!("fal returned {} that is not a PNG", image.name);
                        return Ok(ProviderOutcome::Failed { message });
                    }
                    produced.push(ProducedFile { name: image.name, content_type: image.content_type, bytes });
                }
                produced
            }
            ResultFiles::Lora(lora) => {
                let bytes = match self.fetch(&lora).await? {
                    Ok(bytes) => bytes,
                    Err(failed) => return Ok(failed),
                };
                let pointer = mapping::model_pointer(request_id, &lora, payload);
                let pointer = serde_json::to_vec_pretty(&pointer).map_err(|e| ProviderError::Permanent(e.to_string()))?;
                vec![
                    ProducedFile { name: LORA_FILE.into(), content_type: lora.content_type, bytes },
                    ProducedFile { name: MODEL_POINTER_FILE.into(), content_type: "application/json".into(), bytes: pointer },
                ]
            }
        };
        Ok(ProviderOutcome::Completed(produced))
    }

    /// A file's bytes; `Ok(Err(failed))` when it can never be fetched.
    async fn fetch(&self, file: &FileRef) -> Result<Result<Vec<u8>, ProviderOutcome>, ProviderError> {
        match self.client.download(&file.url).await {
            Ok(bytes) => Ok(Ok(bytes)),
            Err(FalError::Transient(message)) => Err(ProviderError::Transient(format!("downloading {}: {message}", file.name))),
            Err(error) => Ok(Err(ProviderOutcome::Failed { message: format!("downloading {}: {error}", file.name) })),
        }
    }

    async fn status_in(&self, app: &str, request_id: &str, status: QueueStatus) -> Result<ProviderStatus, ProviderError> {
        match status.status.as_str() {
            "IN_QUEUE" => Ok(ProviderStatus::Queued { position: status.queue_position }),
            "IN_PROGRESS" => Ok(ProviderStatus::Running { logs: status.log_messages() }),
            "COMPLETED" => {
                if let Some(error) = status.error.as_ref().filter(|e| !e.is_null()) {
                    let message = mapping::failure_message(Some(error), None);
                    return Ok(ProviderStatus::Finished(ProviderOutcome::Failed { message }));
                }
                match self.client.result(app, request_id, status.response_url.as_deref()).await {
                    Ok(payload) => Ok(ProviderStatus::Finished(self.outcome_of(Some(request_id), &payload).await?)),
                    // A failed request's result is its error (fal answers it with a 4xx).
                    Err(FalError::Rejected { message, .. }) => Ok(ProviderStatus::Finished(ProviderOutcome::Failed { message })),
                    Err(FalError::NotFound) => Ok(ProviderStatus::Unknown),
                    Err(FalError::Transient(message)) => Err(ProviderError::Transient(message)),
                }
            }
            other => Err(ProviderError::Transient(format!("fal reported an unknown status {other:?}"))),
        }
    }
}

fn provider_error(error: FalError) -> ProviderError {
    match error {
        FalError::Transient(message) => ProviderError::Transient(message),
        FalError::NotFound => ProviderError::Permanent("fal does not know the app or request".into()),
        FalError::Rejected { status, message } => ProviderError::Permanent(format!("fal refused the request ({status}): {message}")),
    }
}

#[async_trait]
impl Provider for FalProvider {
    fn name(&self) -> &'static str {
        PROVIDER_NAME
    }

    fn images_per_request_max(&self) -> Option<u32> {
        Some(mapping::IMAGES_PER_REQUEST_MAX)
    }

    async fn submit(&self, request: ProviderRequest) -> Result<Submission, ProviderError> {
        let lora = match (&request.task, &request.input) {
            (Task::Training { .. }, _) | (_, JobInput::ModelCreation { .. }) => None,
            _ => self.lora_url(request.model_artifact_key.as_deref()).await?,
        };
        let input = match mapping::request_body(&request, lora.as_deref(), self.trainer_steps) {
            Ok(input) => input,
            Err(message) => return Ok(Submission::Finished(ProviderOutcome::Failed { message })),
        };
        let app = self.app_of(&request);
        let queued = self.client.submit(app, &input, self.webhook_url.as_deref()).await.map_err(provider_error)?;
        tracing::info!(job_id = %request.job_id, request_id = %queued.request_id, app, "submitted to fal");
        Ok(Submission::Accepted { request_id: queued.request_id })
    }

    async fn status(&self, request_id: &str) -> Result<ProviderStatus, ProviderError> {
        for app in self.queue_apps() {
            match self.client.status(&app, request_id).await {
                Ok(status) => return self.status_in(&app, request_id, status).await,
                Err(FalError::NotFound) => continue,
                Err(error) => return Err(provider_error(error)),
            }
        }
        Ok(ProviderStatus::Unknown)
    }

    async fn cancel(&self, request_id: &str) -> Result<(), ProviderError> {
        for app in self.queue_apps() {
            match self.client.cancel(&app, request_id).await.map_err(provider_error)? {
                CancelAnswer::Requested => {
                    tracing::info!(request_id, "fal request cancelled");
                    return Ok(());
                }
                CancelAnswer::AlreadyCompleted => {
                    tracing::info!(request_id, "fal request had completed; its result will be discarded");
                    return Ok(());
                }
                CancelAnswer::NotFound => continue,
            }
        }
        Ok(())
    }
}
