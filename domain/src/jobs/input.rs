//! What a job is asked to do and what it produced.

use serde::{Deserialize, Serialize};

use crate::ids::ModelId;

pub use crate::text::PROMPT_CHARS_MAX;
/// Most images one generation job may ask for.
pub const IMAGES_PER_JOB_MAX: u32 = 8;

/// The request of a job, by kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobInput {
    ModelCreation {
        model_id: ModelId,
        description: String,
        reference_model_id: String,
    },
    ModelRefinement {
        model_id: ModelId,
        prompt: String,
        /// The refinement's number for this model (1 for the first).
        iteration: u32,
        /// The model version being refined.
        from_version: u32,
    },
    ImageGeneration {
        model_id: ModelId,
        /// The model version used.
        model_version: u32,
        prompt: String,
        resolution: String,
        quality: String,
        count: u32,
    },
}

impl JobInput {
    pub fn model_id(&self) -> ModelId {
        match self {
            JobInput::ModelCreation { model_id, .. }
            | JobInput::ModelRefinement { model_id, .. }
            | JobInput::ImageGeneration { model_id, .. } => *model_id,
        }
    }

    /// The model version the job starts from (whose artifact the provider gets): the
    /// refined version, or the one generating; none for a model's creation.
    pub fn base_version(&self) -> Option<u32> {
        match self {
            JobInput::ModelCreation { .. } => None,
            JobInput::ModelRefinement { from_version, .. } => Some(*from_version),
            JobInput::ImageGeneration { model_version, .. } => Some(*model_version),
        }
    }

    pub fn operation(&self) -> crate::Operation {
        match self {
            JobInput::ModelCreation { .. } => crate::Operation::ModelCreation,
            JobInput::ModelRefinement { .. } => crate::Operation::ModelRefinement,
            JobInput::ImageGeneration { .. } => crate::Operation::ImageGeneration,
        }
    }
}

/// One stored result of a job: an image, or a model artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobOutput {
    /// Object-store key, e.g. `generated-images/{team}/{job}/0.png`.
    pub key: String,
    pub content_type: String,
    pub bytes: u64,
    /// Lower-case hex SHA-256 of the content.
    pub sha256: String,
}
