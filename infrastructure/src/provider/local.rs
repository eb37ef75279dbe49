//! The **offline local provider** (`"local"`): renders deterministic images in-process so
//! the whole system works with no network and no fal.ai key. Its images are abstract
//! gradients and shapes, not generated photos; every artifact says `"provider": "local"`.
//!
//! It answers synchronously (`Submission::Finished`):
//! - image generation: `count` PNGs `0.png`, `1.png`, … at the requested `WxH`, image `i`
//!   rendered from `SHA-256(model_id, model_version, prompt, quality, i)`;
//! - training images of a model job: `count` 512×512 PNGs of the step's prompt;
//! - training of a model job: a `model.json` artifact (version 1, or `from_version + 1`).
//!
//! Knobs for tests and benchmarks ([`LocalProviderConfig`]):
//! - `latency`: sleep before answering;
//! - `failure_rate`: each attempt draws `SHA-256(job_id, attempt)`; the first 8 bytes as a
//!   fraction of 2⁶⁴ below the rate mean the attempt fails. An odd draw fails transiently
//!   (`Err(ProviderError::Transient)`: the job is retried), an even one for good
//!   (`Finished(Failed)`: the job fails and is refunded). Same job and attempt, same fate;
//! - `fail_prompts_containing`: a job whose prompt or description contains this text fails
//!   for good, every attempt.

use std::sync::Arc;
use std::time::Duration;

use application::provider::{
    ProducedFile, Provider, ProviderError, ProviderOutcome, ProviderRequest, ProviderStatus, Submission, Task,
};
use application::storage::ObjectStore;
use async_trait::async_trait;
use domain::jobs::{JobInput, IMAGES_PER_JOB_MAX};
use domain::JobId;
use serde::{Deserialize, Serialize};

pub use super::render::{parse_resolution, render_png, seed_of, RenderError};
use crate::config::ProviderSettings;

/// The name recorded on `JobDispatched`.
pub const PROVIDER_NAME: &str = "local";
/// The artifact file name of model creation and refinement.
pub const MODEL_ARTIFACT_FILE: &str = "model.json";
/// Side of the square training images it renders.
const TRAINING_IMAGE_SIDE: u32 = 512;
/// Refinement prompts kept in an artifact; older ones are dropped (bounded growth).
const ARTIFACT_PROMPTS_MAX: usize = 100;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct LocalProviderConfig {
    /// Sleep before answering; zero = none.
    pub latency: Duration,
    /// Share of attempts that fail, 0.0–1.0 (see the module docs).
    pub failure_rate: f64,
    /// Jobs whose prompt or description contains this fail for good.
    pub fail_prompts_containing: Option<String>,
}

impl From<&ProviderSettings> for LocalProviderConfig {
    fn from(settings: &ProviderSettings) -> Self {
        Self {
            latency: Duration::from_millis(settings.local_latency_ms),
            failure_rate: settings.local_failure_rate,
            fail_prompts_containing: settings.local_fail_prompts_containing.clone(),
        }
    }
}

/// What `model.json` holds. The local provider reads the previous version's artifact
/// (when it was given a store) to carry the description and prompts forward.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelArtifact {
    pub provider: String,
    pub model_id: String,
    pub version: u32,
    pub reference_model_id: Option<String>,
    /// The reference model's characteristics at creation.
    pub reference: Option<serde_json::Value>,
    pub description: Option<String>,
    /// Refinement prompts so far, oldest first.
    pub prompts: Vec<String>,
    /// Lower-case hex; derived from the previous version's seed and this version's input.
    pub seed: String,
}

#[derive(Clone, Default)]
pub struct LocalProvider {
    config: LocalProviderConfig,
    /// Where earlier model artifacts are read from, to accumulate refinements.
    artifacts: Option<Arc<dyn ObjectStore>>,
}

impl LocalProvider {
    pub fn new(config: LocalProviderConfig) -> Self {
        Self { config, artifacts: None }
    }

    /// Lets refinements read the artifact they build on (prompts accumulate).
    pub fn with_artifacts(mut self, objects: Arc<dyn ObjectStore>) -> Self {
        self.artifacts = Some(objects);
        self
    }

    pub fn config(&self) -> &LocalProviderConfig {
        &self.config
    }

    async fn produce(&self, request: &ProviderRequest) -> Result<ProviderOutcome, ProviderError> {
        match (&request.task, &request.input) {
            (Task::Images { first, count }, JobInput::ImageGeneration { model_id, model_version, prompt, resolution, quality, .. }) => {
                let Some((width, height)) = parse_resolution(resolution) else {
                    return Ok(failed(format!("unsupported resolution {resolution:?} (expected WxH, e.g. 512x512)")));
                };
                if *count == 0 || *count > IMAGES_PER_JOB_MAX {
                    return Ok(failed(format!("count must be 1 to {IMAGES_PER_JOB_MAX}")));
                }
                // Seeded by the image's place in the job: a part renders the images it names.
                let seeds: Vec<[u8; 32]> =
                    (*first..first + count).map(|i| image_seed(&model_id.to_string(), *model_version, prompt, quality, i)).collect();
                render_images(seeds, width, height).await
            }
            (Task::TrainingImages { prompt, count }, input) => {
                let model = input.model_id().to_string();
                let version = input.base_version().unwrap_or(0);
                let seeds: Vec<[u8; 32]> = (0..*count).map(|i| image_seed(&model, version, prompt, "training", i)).collect();
                render_images(seeds, TRAINING_IMAGE_SIDE, TRAINING_IMAGE_SIDE).await
            }
            (Task::Training { .. }, JobInput::ModelCreation { model_id, description, reference_model_id }) => {
                let seed = seed_of(&[b"model", model_id.to_string().as_bytes(), description.as_bytes(), reference_model_id.as_bytes()]);
                let artifact = ModelArtifact {
                    provider: PROVIDER_NAME.into(),
                    model_id: model_id.to_string(),
                    version: 1,
                    reference_model_id: Some(reference_model_id.clone()),
                    reference: request.reference.clone(),
                    description: Some(description.clone()),
                    prompts: Vec::new(),
                    seed: hex::encode(seed),
                };
                artifact_file(&artifact)
            }
            (Task::Training { .. }, JobInput::ModelRefinement { model_id, prompt, from_version, .. }) => {
                let previous = self.previous_artifact(request.model_artifact_key.as_deref()).await;
                match refine(previous, &model_id.to_string(), *from_version, prompt) {
                    Ok(artifact) => artifact_file(&artifact),
                    Err(message) => Ok(failed(message)),
                }
            }
            (task, input) => Ok(failed(format!("the local provider cannot do {task:?} for a {} job", input.operation().as_str()))),
        }
    }

    /// The artifact a refinement builds on, if a store was given and holds it.
    async fn previous_artifact(&self, key: Option<&str>) -> Option<ModelArtifact> {
        let (objects, key) = (self.artifacts.as_ref()?, key?);
        match objects.get(key).await {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes).ok(),
            Ok(None) => None,
            Err(error) => {
                // A refinement without history is still a valid refinement.
                tracing::warn!(%error, key, "cannot read the previous model artifact");
                None
            }
        }
    }
}

/// The seed of image `index` of a generation request.
pub fn image_seed(model_id: &str, model_version: u32, prompt: &str, quality: &str, index: u32) -> [u8; 32] {
    seed_of(&[
        model_id.as_bytes(),
        &model_version.to_le_bytes(),
        prompt.as_bytes(),
        quality.as_bytes(),
        &index.to_le_bytes(),
    ])
}

/// Whether attempt `attempt` of `job` fails under `failure_rate`, and how (see module docs).
pub fn failure_draw(job: JobId, attempt: u32, failure_rate: f64) -> Option<ProviderError> {
    if failure_rate <= 0.0 {
        return None;
    }
    let digest = seed_of(&[job.as_uuid().as_bytes(), &attempt.to_le_bytes()]);
    let draw = u64::from_le_bytes(digest[..8].try_into().unwrap_or([0; 8]));
    let fraction = draw as f64 / 2f64.powi(64);
    if fraction >= failure_rate {
        return None;
    }
    Some(if draw % 2 == 1 {
        ProviderError::Transient(format!("simulated outage (local provider, attempt {attempt})"))
    } else {
        ProviderError::Permanent(format!("simulated failure (local provider, attempt {attempt})"))
    })
}

fn failed(message: String) -> ProviderOutcome {
    ProviderOutcome::Failed { message }
}

/// The next version's artifact: carries the previous description, reference and prompts.
fn refine(previous: Option<ModelArtifact>, model_id: &str, from_version: u32, prompt: &str) -> Result<ModelArtifact, String> {
    let version = from_version.checked_add(1).ok_or("model version overflow")?;
    let mut artifact = previous.unwrap_or_else(|| ModelArtifact {
        provider: PROVIDER_NAME.into(),
        model_id: model_id.into(),
        version: from_version,
        reference_model_id: None,
        reference: None,
        description: None,
        prompts: Vec::new(),
        seed: hex::encode(seed_of(&[b"model", model_id.as_bytes(), &from_version.to_le_bytes()])),
    });
    let seed = seed_of(&[artifact.seed.as_bytes(), prompt.as_bytes(), &version.to_le_bytes()]);
    artifact.prompts.push(prompt.to_string());
    if artifact.prompts.len() > ARTIFACT_PROMPTS_MAX {
        let excess = artifact.prompts.len() - ARTIFACT_PROMPTS_MAX;
        artifact.prompts.drain(..excess);
    }
    artifact.model_id = model_id.into();
    artifact.version = version;
    artifact.seed = hex::encode(seed);
    Ok(artifact)
}

fn artifact_file(artifact: &ModelArtifact) -> Result<ProviderOutcome, ProviderError> {
    let bytes = serde_json::to_vec_pretty(artifact).map_err(|e| ProviderError::Permanent(e.to_string()))?;
    Ok(ProviderOutcome::Completed(vec![ProducedFile {
        name: MODEL_ARTIFACT_FILE.into(),
        content_type: "application/json".into(),
        bytes,
    }]))
}

/// Renders off the async threads: a 1024² image is milliseconds of CPU.
async fn render_images(seeds: Vec<[u8; 32]>, width: u32, height: u32) -> Result<ProviderOutcome, ProviderError> {
    let rendered = tokio::task::spawn_blocking(move || {
        seeds.iter().map(|seed| render_png(seed, width, height)).collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|e| ProviderError::Transient(format!("render task failed: {e}")))?;
    let images = rendered.map_err(|e| ProviderError::Permanent(e.to_string()))?;
    Ok(ProviderOutcome::Completed(
        images
            .into_iter()
            .enumerate()
            .map(|(i, bytes)| ProducedFile { name: format!("{i}.png"), content_type: "image/png".into(), bytes })
            .collect(),
    ))
}

fn text_of(input: &JobInput) -> &str {
    match input {
        JobInput::ModelCreation { description, .. } => description,
        JobInput::ModelRefinement { prompt, .. } | JobInput::ImageGeneration { prompt, .. } => prompt,
    }
}

#[async_trait]
impl Provider for LocalProvider {
    fn name(&self) -> &'static str {
        PROVIDER_NAME
    }

    fn works_in_call(&self) -> bool {
        true
    }

    async fn submit(&self, request: ProviderRequest) -> Result<Submission, ProviderError> {
        if !self.config.latency.is_zero() {
            tokio::time::sleep(self.config.latency).await;
        }
        if let Some(needle) = self.config.fail_prompts_containing.as_deref().filter(|n| !n.is_empty()) {
            if text_of(&request.input).contains(needle) {
                return Ok(Submission::Finished(failed(format!("prompt rejected by the local provider (contains {needle:?})"))));
            }
        }
        match failure_draw(request.job_id, request.attempt, self.config.failure_rate) {
            Some(ProviderError::Permanent(message)) => return Ok(Submission::Finished(failed(message))),
            Some(transient) => return Err(transient),
            None => {}
        }
        self.produce(&request).await.map(Submission::Finished)
    }

    /// Nothing is ever pending here: a request finishes inside `submit`, so an id asked
    /// about later belongs to a process that is gone.
    async fn status(&self, _request_id: &str) -> Result<ProviderStatus, ProviderError> {
        Ok(ProviderStatus::Unknown)
    }

    async fn cancel(&self, _request_id: &str) -> Result<(), ProviderError> {
        Ok(())
    }
}

#[cfg(test)]
#[path = "local_tests.rs"]
mod tests;
