//! The provider port: who generates. Implementations: `infrastructure::provider::local`
//! (deterministic images rendered in-process; the default) and fal.ai.

use async_trait::async_trait;
use domain::jobs::JobInput;
use domain::{JobId, TeamId};

/// What a provider is asked to do for one job attempt: the job's input, and which of its
/// steps this request is (see `crate::jobs::steps`).
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderRequest {
    pub job_id: JobId,
    pub team_id: TeamId,
    pub attempt: u32,
    pub input: JobInput,
    pub task: Task,
    /// For refinement and generation: the model artifact the job builds on.
    pub model_artifact_key: Option<String>,
    /// For model jobs: the reference model's characteristics (JSON, with its `category`).
    pub reference: Option<serde_json::Value>,
}

/// The request's part of its job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Task {
    /// Images `first..first + count` of an image generation job: all of them in one
    /// request, or one part of a generation larger than the provider draws per request
    /// ([`Provider::images_per_request_max`]; see `crate::jobs::steps::image_parts`).
    Images { first: u32, count: u32 },
    /// Training images for a model job: `count` images of `prompt` (square), made with
    /// the LoRA of `model_artifact_key` when refining. Files named `0.png`, `1.png`, …
    TrainingImages { prompt: String, count: u32 },
    /// Training the model's new version on the zip of images and captions at `images_url`
    /// (a signed URL); the trainer's result is the version's artifact.
    Training { images_url: String, trigger_word: String, is_style: bool },
}

/// One produced file, not yet stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducedFile {
    /// File name within the job's folder, e.g. `0.png` or `model.json`.
    pub name: String,
    pub content_type: String,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderOutcome {
    Completed(Vec<ProducedFile>),
    /// The provider refused or failed the request for good (e.g. invalid input).
    Failed { message: String },
}

/// The answer to a submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submission {
    /// A synchronous provider finished already.
    Finished(ProviderOutcome),
    /// An asynchronous provider accepted the request; its result comes later (webhook or
    /// status polling).
    Accepted { request_id: String },
}

/// Where an accepted request stands at the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderStatus {
    Queued { position: Option<u32> },
    Running { logs: Vec<String> },
    Finished(ProviderOutcome),
    /// The provider does not know the request (lost with a crashed process, or expired).
    Unknown,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ProviderError {
    /// Worth retrying later: connection errors, 429, 5xx, a simulated outage.
    #[error("provider temporarily unavailable: {0}")]
    Transient(String),
    #[error("provider error: {0}")]
    Permanent(String),
}

#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// A stable name recorded on `JobDispatched`.
    fn name(&self) -> &'static str;

    /// True for a provider that does the work inside [`submit`](Self::submit) and answers
    /// `Finished` (the local renderer); false for one that accepts a request and answers
    /// later (fal): its acceptance is when the job starts running.
    fn works_in_call(&self) -> bool {
        false
    }

    /// Most images one request may ask for; `None`: no limit (the local renderer). A
    /// generation of more is sent as several requests, each recorded as a step of its job.
    fn images_per_request_max(&self) -> Option<u32> {
        None
    }

    async fn submit(&self, request: ProviderRequest) -> Result<Submission, ProviderError>;

    async fn status(&self, request_id: &str) -> Result<ProviderStatus, ProviderError>;

    /// Asks the provider to stop working on the request; best effort.
    async fn cancel(&self, request_id: &str) -> Result<(), ProviderError>;
}
