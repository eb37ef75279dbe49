//! Generation jobs: the [`GenerationJob`] aggregate, its input and outputs.

pub mod input;
pub mod job;
pub mod timeline;

pub use input::{JobInput, JobOutput, IMAGES_PER_JOB_MAX, PROMPT_CHARS_MAX};
pub use job::{CompletedStep, GenerationJob, JobCommand, JobError, JobEvent, JobStatus, UPLOADS_STEP};
pub use timeline::{StepTime, Timeline};
