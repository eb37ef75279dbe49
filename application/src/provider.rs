//! The provider port: who generates. Implementations: `infrastructure::provider::local`
//! (deterministic images rendered in-process; the default) and fal.ai.

use async_trait::async_trait;
use domain::jobs::JobInput;
use domain::{JobId, TeamId};

/// What a provider is asked to do for one job attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderRequest {
    pub job_id: JobId,
    pub team_id: TeamId,
    pub attempt: u32,
    pub input: JobInput,
    /// For refinement and generation: the model artifact the job builds on.
    pub model_artifact_key: Option<String>,
    /// For model creation: the reference model's characteristics (JSON).
    pub reference: Option<serde_json::Value>,
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

    async fn submit(&self, request: ProviderRequest) -> Result<Submission, ProviderError>;

    async fn status(&self, request_id: &str) -> Result<ProviderStatus, ProviderError>;

    /// Asks the provider to stop working on the request; best effort.
    async fn cancel(&self, request_id: &str) -> Result<(), ProviderError>;
}
