//! The CustomModel aggregate (id = model id): created from a description and a reference
//! model by a creation job, refined by refinement jobs (each success is a new version),
//! renamed, archived. Only a ready, non-archived model can be refined or generate images.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::ids::{JobId, ModelId, TeamId};
use crate::text::{Description, ModelName, Prompt, TextError};

pub use crate::text::MODEL_NAME_CHARS_MAX;

/// The word a model's LoRA is trained with (in every caption of its training set) and
/// prompted with: `kiln` and the first 8 letters or digits of its id.
pub fn trigger_word(model_id: ModelId) -> String {
    let short: String = model_id.to_string().chars().filter(|c| c.is_ascii_alphanumeric()).take(8).collect();
    format!("kiln{short}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelStatus {
    /// The creation job has not finished.
    Training,
    /// Has at least one version.
    Ready,
    /// The creation job failed; the model never got a version.
    Failed,
}

impl ModelStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            ModelStatus::Training => "training",
            ModelStatus::Ready => "ready",
            ModelStatus::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelVersion {
    pub version: u32,
    pub artifact_key: String,
    pub job_id: JobId,
    /// The refinement prompt that made it (none for version 1).
    pub prompt: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModelCommand {
    RequestCreation {
        model_id: ModelId,
        team_id: TeamId,
        name: String,
        description: String,
        reference_model_id: String,
        complexity_milli: i64,
        job_id: JobId,
        now: DateTime<Utc>,
    },
    RequestRefinement { job_id: JobId, prompt: String, now: DateTime<Utc> },
    /// The job `job_id` produced `artifact_key` (creation or refinement).
    RecordVersion { job_id: JobId, artifact_key: String, now: DateTime<Utc> },
    /// The job `job_id` (creation or refinement) failed or was cancelled.
    RecordJobFailure { job_id: JobId, reason: String, now: DateTime<Utc> },
    UpdateDetails { name: Option<String>, description: Option<String>, now: DateTime<Utc> },
    Archive { now: DateTime<Utc> },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ModelEvent {
    ModelCreationRequested {
        model_id: ModelId,
        team_id: TeamId,
        name: String,
        description: String,
        reference_model_id: String,
        complexity_milli: i64,
        job_id: JobId,
        occurred_at: DateTime<Utc>,
    },
    ModelTrained { job_id: JobId, version: u32, artifact_key: String, occurred_at: DateTime<Utc> },
    ModelCreationFailed { job_id: JobId, reason: String, occurred_at: DateTime<Utc> },
    ModelRefinementRequested { job_id: JobId, prompt: String, iteration: u32, from_version: u32, occurred_at: DateTime<Utc> },
    ModelRefined { job_id: JobId, version: u32, artifact_key: String, occurred_at: DateTime<Utc> },
    ModelRefinementFailed { job_id: JobId, reason: String, occurred_at: DateTime<Utc> },
    ModelDetailsUpdated { name: String, description: String, occurred_at: DateTime<Utc> },
    ModelArchived { occurred_at: DateTime<Utc> },
}

impl ModelEvent {
    pub const fn name(&self) -> &'static str {
        match self {
            ModelEvent::ModelCreationRequested { .. } => "ModelCreationRequested",
            ModelEvent::ModelTrained { .. } => "ModelTrained",
            ModelEvent::ModelCreationFailed { .. } => "ModelCreationFailed",
            ModelEvent::ModelRefinementRequested { .. } => "ModelRefinementRequested",
            ModelEvent::ModelRefined { .. } => "ModelRefined",
            ModelEvent::ModelRefinementFailed { .. } => "ModelRefinementFailed",
            ModelEvent::ModelDetailsUpdated { .. } => "ModelDetailsUpdated",
            ModelEvent::ModelArchived { .. } => "ModelArchived",
        }
    }
}

impl DomainEvent for ModelEvent {
    fn event_type(&self) -> String {
        self.name().to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("model not found")]
    NotFound,
    #[error("model already exists")]
    AlreadyExists,
    #[error("model is archived")]
    Archived,
    #[error("model is {0}, not ready")]
    NotReady(&'static str),
    #[error("a refinement of this model is already in progress")]
    RefinementInProgress,
    /// A text field breaks the text rule (`crate::text`).
    #[error("{field} {reason}")]
    InvalidText { field: &'static str, reason: TextError },
    #[error("job {0} is not this model's pending job")]
    UnknownJob(JobId),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomModel {
    pub model_id: Option<ModelId>,
    pub team_id: Option<TeamId>,
    pub name: String,
    pub description: String,
    pub reference_model_id: String,
    pub complexity_milli: i64,
    pub status: Option<ModelStatus>,
    pub archived: bool,
    pub versions: Vec<ModelVersion>,
    /// The creation or refinement job not yet finished, with its prompt (refinements).
    pub pending_job: Option<(JobId, Option<String>)>,
    /// Refinements requested so far (pricing uses the next one's number).
    pub refinements_requested: u32,
    pub created_at: Option<DateTime<Utc>>,
}

/// A text field checked by its value type (`crate::text`), the refusal naming the field.
fn text<T: Into<String>>(field: &'static str, parsed: Result<T, TextError>) -> Result<String, ModelError> {
    parsed.map(Into::into).map_err(|reason| ModelError::InvalidText { field, reason })
}

impl CustomModel {
    pub fn current_version(&self) -> Option<&ModelVersion> {
        self.versions.last()
    }

    /// Ready, not archived: may be refined or generate images.
    pub fn usable(&self) -> Result<&ModelVersion, ModelError> {
        let status = self.status.ok_or(ModelError::NotFound)?;
        if self.archived {
            return Err(ModelError::Archived);
        }
        match (status, self.current_version()) {
            (ModelStatus::Ready, Some(version)) => Ok(version),
            _ => Err(ModelError::NotReady(status.as_str())),
        }
    }

    pub fn decide(&self, command: ModelCommand) -> Result<Vec<ModelEvent>, ModelError> {
        use ModelCommand as C;
        use ModelEvent as E;
        Ok(match command {
            C::RequestCreation { model_id, team_id, name, description, reference_model_id, complexity_milli, job_id, now } => {
                let name = text("name", ModelName::parse(&name))?;
                let description = text("description", Description::parse(&description))?;
                if self.status.is_some() {
                    return Err(ModelError::AlreadyExists);
                }
                vec![E::ModelCreationRequested {
                    model_id,
                    team_id,
                    name,
                    description,
                    reference_model_id,
                    complexity_milli,
                    job_id,
                    occurred_at: now,
                }]
            }
            C::RequestRefinement { job_id, prompt, now } => {
                // The request's own fault first: a bad prompt is refused whatever the
                // model's state.
                let prompt = text("prompt", Prompt::parse(&prompt))?;
                let current = self.usable()?;
                if self.pending_job.is_some() {
                    return Err(ModelError::RefinementInProgress);
                }
                vec![E::ModelRefinementRequested {
                    job_id,
                    prompt,
                    iteration: self.refinements_requested + 1,
                    from_version: current.version,
                    occurred_at: now,
                }]
            }
            C::RecordVersion { job_id, artifact_key, now } => {
                if self.versions.iter().any(|v| v.job_id == job_id) {
                    return Ok(Vec::new());
                }
                match &self.pending_job {
                    Some((pending, _)) if *pending == job_id => {}
                    _ => return Err(ModelError::UnknownJob(job_id)),
                }
                let version = self.versions.len() as u32 + 1;
                if version == 1 {
                    vec![E::ModelTrained { job_id, version, artifact_key, occurred_at: now }]
                } else {
                    vec![E::ModelRefined { job_id, version, artifact_key, occurred_at: now }]
                }
            }
            C::RecordJobFailure { job_id, reason, now } => match &self.pending_job {
                Some((pending, _)) if *pending == job_id => {
                    if self.versions.is_empty() {
                        vec![E::ModelCreationFailed { job_id, reason, occurred_at: now }]
                    } else {
                        vec![E::ModelRefinementFailed { job_id, reason, occurred_at: now }]
                    }
                }
                _ => Vec::new(),
            },
            C::UpdateDetails { name, description, now } => {
                self.status.ok_or(ModelError::NotFound)?;
                if self.archived {
                    return Err(ModelError::Archived);
                }
                let name = match name {
                    Some(name) => text("name", ModelName::parse(&name))?,
                    None => self.name.clone(),
                };
                let description = match description {
                    Some(description) => text("description", Description::parse(&description))?,
                    None => self.description.clone(),
                };
                if name == self.name && description == self.description {
                    return Ok(Vec::new());
                }
                vec![E::ModelDetailsUpdated { name, description, occurred_at: now }]
            }
            C::Archive { now } => {
                self.status.ok_or(ModelError::NotFound)?;
                if self.archived {
                    Vec::new()
                } else {
                    vec![E::ModelArchived { occurred_at: now }]
                }
            }
        })
    }
}

impl Aggregate for CustomModel {
    const TYPE: &'static str = "CustomModel";
    type Command = ModelCommand;
    type Event = ModelEvent;
    type Error = ModelError;
    type Services = ();

    async fn handle(&mut self, command: ModelCommand, _: &(), sink: &EventSink<Self>) -> Result<(), ModelError> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: ModelEvent) {
        use ModelEvent as E;
        match event {
            E::ModelCreationRequested { model_id, team_id, name, description, reference_model_id, complexity_milli, job_id, occurred_at } => {
                self.model_id = Some(model_id);
                self.team_id = Some(team_id);
                self.name = name;
                self.description = description;
                self.reference_model_id = reference_model_id;
                self.complexity_milli = complexity_milli;
                self.status = Some(ModelStatus::Training);
                self.pending_job = Some((job_id, None));
                self.created_at = Some(occurred_at);
            }
            E::ModelTrained { job_id, version, artifact_key, occurred_at }
            | E::ModelRefined { job_id, version, artifact_key, occurred_at } => {
                let prompt = self.pending_job.take().and_then(|(_, prompt)| prompt);
                self.versions.push(ModelVersion { version, artifact_key, job_id, prompt, created_at: occurred_at });
                self.status = Some(ModelStatus::Ready);
            }
            E::ModelCreationFailed { .. } => {
                self.pending_job = None;
                self.status = Some(ModelStatus::Failed);
            }
            E::ModelRefinementRequested { job_id, prompt, .. } => {
                self.pending_job = Some((job_id, Some(prompt)));
                self.refinements_requested += 1;
            }
            E::ModelRefinementFailed { .. } => self.pending_job = None,
            E::ModelDetailsUpdated { name, description, .. } => {
                self.name = name;
                self.description = description;
            }
            E::ModelArchived { .. } => self.archived = true,
        }
    }
}
