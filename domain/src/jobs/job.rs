//! The GenerationJob aggregate (id = job id): queued → dispatched → running →
//! completed | failed | cancelled, with retries back to queued. There is no timeout:
//! a job ends only by a result, a failure or a cancel.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use super::input::{JobInput, JobOutput};
use crate::amount::Credits;
use crate::ids::{JobId, TeamId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Dispatched,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Dispatched => "dispatched",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub const fn is_final(self) -> bool {
        matches!(self, JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled)
    }

    /// Holding one of the team's concurrency slots.
    pub const fn is_active(self) -> bool {
        matches!(self, JobStatus::Dispatched | JobStatus::Running)
    }

    pub fn parse(text: &str) -> Option<JobStatus> {
        [Self::Queued, Self::Dispatched, Self::Running, Self::Completed, Self::Failed, Self::Cancelled]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobCommand {
    /// Accepts the job; `uploads` are training images the team sent with a model job,
    /// already stored: recorded as the job's first step ([`UPLOADS_STEP`]).
    Queue { job_id: JobId, team_id: TeamId, input: JobInput, cost: Credits, price_version: i64, uploads: Vec<JobOutput>, now: DateTime<Utc> },
    /// A worker claimed the job for its next attempt. `share_tag`: the team's virtual
    /// time after this job in dispatch's weighted fair queuing (see `JobEvent::JobDispatched`).
    Dispatch { provider: String, worker: String, share_tag: Option<i64>, now: DateTime<Utc> },
    /// News of the current request. `attempt` (as for `Complete`, `Fail`, `ScheduleRetry`)
    /// fences the command: the attempt the caller works for, refused with `StaleAttempt`
    /// once the job has moved on to another attempt (its claim was taken back) or
    /// `NotInProgress` while it waits in the queue for that one; `None` acts on whatever
    /// attempt is current (an operator, a provider webhook matched by its request id).
    Progress {
        provider_request_id: Option<String>,
        queue_position: Option<u32>,
        logs: Vec<String>,
        running: bool,
        attempt: Option<u32>,
        now: DateTime<Utc>,
    },
    Complete { outputs: Vec<JobOutput>, attempt: Option<u32>, now: DateTime<Utc> },
    Fail { reason: String, attempt: Option<u32>, now: DateTime<Utc> },
    /// Never fenced: a team or an operator may cancel whatever attempt runs.
    Cancel { reason: String, now: DateTime<Utc> },
    ScheduleRetry { reason: String, retry_at: DateTime<Utc>, attempt: Option<u32>, now: DateTime<Utc> },
    ExpireImages { now: DateTime<Utc> },
    /// A step of a multi-step job (a model's training images, its training set) is done,
    /// with the objects it stored. A step already recorded records nothing.
    /// `attempt` is the attempt that ran the step: an earlier one (its worker was taken
    /// for lost and the job retried) records nothing.
    CompleteStep { step: String, outputs: Vec<JobOutput>, attempt: u32, now: DateTime<Utc> },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum JobEvent {
    JobQueued {
        job_id: JobId,
        team_id: TeamId,
        input: JobInput,
        cost: Credits,
        price_version: i64,
        occurred_at: DateTime<Utc>,
    },
    JobDispatched {
        provider: String,
        worker: String,
        attempt: u32,
        /// Dispatch's bookkeeping of plan priority: the team's virtual time after this
        /// job (weighted fair queuing: each job of a team adds the plan's stride, the
        /// inverse of its weight). Recorded with the claim so the dispatch read model is a
        /// function of the log; absent on claims recorded before plan priority existed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        share_tag: Option<i64>,
        occurred_at: DateTime<Utc>,
    },
    JobProgressed {
        provider_request_id: Option<String>,
        queue_position: Option<u32>,
        logs: Vec<String>,
        running: bool,
        occurred_at: DateTime<Utc>,
    },
    JobCompleted { outputs: Vec<JobOutput>, occurred_at: DateTime<Utc> },
    JobFailed { reason: String, occurred_at: DateTime<Utc> },
    JobCancelled { reason: String, occurred_at: DateTime<Utc> },
    JobRetryScheduled { attempt: u32, reason: String, retry_at: DateTime<Utc>, occurred_at: DateTime<Utc> },
    ImagesExpired { keys: Vec<String>, occurred_at: DateTime<Utc> },
    /// One step of a multi-step job finished; the next one starts from here, on this
    /// attempt or a later one (a resumed job never repeats a recorded step).
    JobStepCompleted { step: String, outputs: Vec<JobOutput>, occurred_at: DateTime<Utc> },
}

impl JobEvent {
    pub const fn name(&self) -> &'static str {
        match self {
            JobEvent::JobQueued { .. } => "JobQueued",
            JobEvent::JobDispatched { .. } => "JobDispatched",
            JobEvent::JobProgressed { .. } => "JobProgressed",
            JobEvent::JobCompleted { .. } => "JobCompleted",
            JobEvent::JobFailed { .. } => "JobFailed",
            JobEvent::JobCancelled { .. } => "JobCancelled",
            JobEvent::JobRetryScheduled { .. } => "JobRetryScheduled",
            JobEvent::ImagesExpired { .. } => "ImagesExpired",
            JobEvent::JobStepCompleted { .. } => "JobStepCompleted",
        }
    }
}

impl DomainEvent for JobEvent {
    fn event_type(&self) -> String {
        self.name().to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    #[error("job not found")]
    NotFound,
    #[error("job already exists")]
    AlreadyExists,
    #[error("job is {0}, not queued")]
    NotQueued(&'static str),
    #[error("job is {0}, not in progress")]
    NotInProgress(&'static str),
    #[error("job already {0}")]
    AlreadyFinished(&'static str),
    #[error("attempt {attempt} of the job was superseded by attempt {current}")]
    StaleAttempt { attempt: u32, current: u32 },
}

/// What a job knows about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationJob {
    pub job_id: Option<JobId>,
    pub team_id: Option<TeamId>,
    pub input: Option<JobInput>,
    pub cost: i64,
    pub price_version: i64,
    pub status: Option<JobStatus>,
    /// Attempts started so far (the current one, while dispatched or running).
    pub attempt: u32,
    pub provider: Option<String>,
    pub provider_request_id: Option<String>,
    pub outputs: Vec<JobOutput>,
    pub error: Option<String>,
    pub images_expired: bool,
    /// The recorded steps of a multi-step job, in order (none for image generation).
    /// `default`: snapshots written before steps existed still load.
    #[serde(default)]
    pub steps: Vec<CompletedStep>,
    pub queued_at: Option<DateTime<Utc>>,
    /// When the current (or last) attempt was claimed; the start of its run time.
    /// `default`: snapshots written before the field existed still load.
    #[serde(default)]
    pub dispatched_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
}

/// The step a model job starts with when the team sent training images: recorded with
/// the job's acceptance, its outputs the stored images and their captions.
pub const UPLOADS_STEP: &str = "uploads";

/// A finished step of a multi-step job and the objects it stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletedStep {
    pub step: String,
    pub outputs: Vec<JobOutput>,
}

impl GenerationJob {
    /// Whether `step` is recorded as done.
    pub fn step_done(&self, step: &str) -> bool {
        self.steps.iter().any(|s| s.step == step)
    }

    /// Every object the job's steps stored, oldest first.
    pub fn step_output_keys(&self) -> Vec<String> {
        self.steps.iter().flat_map(|s| s.outputs.iter().map(|o| o.key.clone())).collect()
    }

    pub fn status(&self) -> Option<JobStatus> {
        self.status
    }

    fn existing(&self) -> Result<JobStatus, JobError> {
        self.status.ok_or(JobError::NotFound)
    }

    /// The job's status, for a command made by `attempt` (`None`: any attempt). A
    /// command of an attempt that is no longer the job's is refused: the job was taken
    /// back from that attempt's worker (its lease lapsed) and queued or claimed again,
    /// so whatever that worker still holds is not this job's to record. An ended job is
    /// answered as such (an ending repeated by the same attempt records nothing).
    fn fenced(&self, attempt: Option<u32>) -> Result<JobStatus, JobError> {
        let status = self.existing()?;
        match attempt {
            Some(attempt) if !status.is_final() && attempt != self.attempt => {
                Err(JobError::StaleAttempt { attempt, current: self.attempt })
            }
            Some(_) if status == JobStatus::Queued => Err(JobError::NotInProgress(status.as_str())),
            _ => Ok(status),
        }
    }

    /// Pure decision: the events `command` leads to. Repeating an ending that already
    /// happened (complete twice, cancel twice) records nothing.
    pub fn decide(&self, command: JobCommand) -> Result<Vec<JobEvent>, JobError> {
        use JobCommand as C;
        use JobEvent as E;
        Ok(match command {
            C::Queue { job_id, team_id, input, cost, price_version, uploads, now } => {
                if self.status.is_some() {
                    return Err(JobError::AlreadyExists);
                }
                let mut events = vec![E::JobQueued { job_id, team_id, input, cost, price_version, occurred_at: now }];
                if !uploads.is_empty() {
                    events.push(E::JobStepCompleted { step: UPLOADS_STEP.into(), outputs: uploads, occurred_at: now });
                }
                events
            }
            C::Dispatch { provider, worker, share_tag, now } => match self.existing()? {
                JobStatus::Queued => vec![E::JobDispatched { provider, worker, attempt: self.attempt + 1, share_tag, occurred_at: now }],
                other => return Err(JobError::NotQueued(other.as_str())),
            },
            C::Progress { provider_request_id, queue_position, logs, running, attempt, now } => {
                let status = self.fenced(attempt)?;
                if !status.is_active() {
                    return Err(JobError::NotInProgress(status.as_str()));
                }
                vec![E::JobProgressed { provider_request_id, queue_position, logs, running, occurred_at: now }]
            }
            C::Complete { outputs, attempt, now } => match self.fenced(attempt)? {
                JobStatus::Completed => Vec::new(),
                s if s.is_active() => vec![E::JobCompleted { outputs, occurred_at: now }],
                s if s.is_final() => return Err(JobError::AlreadyFinished(s.as_str())),
                s => return Err(JobError::NotInProgress(s.as_str())),
            },
            C::Fail { reason, attempt, now } => match self.fenced(attempt)? {
                JobStatus::Failed => Vec::new(),
                s if s.is_final() => return Err(JobError::AlreadyFinished(s.as_str())),
                _ => vec![E::JobFailed { reason, occurred_at: now }],
            },
            C::Cancel { reason, now } => match self.existing()? {
                JobStatus::Cancelled => Vec::new(),
                s if s.is_final() => return Err(JobError::AlreadyFinished(s.as_str())),
                _ => vec![E::JobCancelled { reason, occurred_at: now }],
            },
            C::ScheduleRetry { reason, retry_at, attempt, now } => match self.fenced(attempt)? {
                s if s.is_active() => vec![E::JobRetryScheduled { attempt: self.attempt, reason, retry_at, occurred_at: now }],
                s => return Err(JobError::NotInProgress(s.as_str())),
            },
            C::CompleteStep { step, outputs, attempt, now } => match self.existing()? {
                _ if self.step_done(&step) => Vec::new(),
                s if s.is_active() && attempt != self.attempt => {
                    return Err(JobError::StaleAttempt { attempt, current: self.attempt })
                }
                s if s.is_active() => vec![E::JobStepCompleted { step, outputs, occurred_at: now }],
                s if s.is_final() => return Err(JobError::AlreadyFinished(s.as_str())),
                s => return Err(JobError::NotInProgress(s.as_str())),
            },
            C::ExpireImages { now } => {
                self.existing()?;
                let keys: Vec<String> = self.outputs.iter().map(|o| o.key.clone()).filter(|k| k.starts_with("generated-images/")).collect();
                if self.images_expired || keys.is_empty() {
                    Vec::new()
                } else {
                    vec![E::ImagesExpired { keys, occurred_at: now }]
                }
            }
        })
    }
}

impl Aggregate for GenerationJob {
    const TYPE: &'static str = "GenerationJob";
    type Command = JobCommand;
    type Event = JobEvent;
    type Error = JobError;
    type Services = ();

    async fn handle(&mut self, command: JobCommand, _: &(), sink: &EventSink<Self>) -> Result<(), JobError> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: JobEvent) {
        use JobEvent as E;
        match event {
            E::JobQueued { job_id, team_id, input, cost, price_version, occurred_at } => {
                self.job_id = Some(job_id);
                self.team_id = Some(team_id);
                self.input = Some(input);
                self.cost = cost.get();
                self.price_version = price_version;
                self.status = Some(JobStatus::Queued);
                self.queued_at = Some(occurred_at);
                self.updated_at = Some(occurred_at);
            }
            E::JobDispatched { provider, attempt, occurred_at, .. } => {
                self.status = Some(JobStatus::Dispatched);
                self.provider = Some(provider);
                self.provider_request_id = None;
                self.attempt = attempt;
                self.dispatched_at = Some(occurred_at);
                self.updated_at = Some(occurred_at);
            }
            E::JobProgressed { provider_request_id, running, occurred_at, .. } => {
                if provider_request_id.is_some() {
                    self.provider_request_id = provider_request_id;
                }
                if running {
                    self.status = Some(JobStatus::Running);
                }
                self.updated_at = Some(occurred_at);
            }
            E::JobCompleted { outputs, occurred_at } => {
                self.status = Some(JobStatus::Completed);
                self.outputs = outputs;
                self.updated_at = Some(occurred_at);
            }
            E::JobFailed { reason, occurred_at } => {
                self.status = Some(JobStatus::Failed);
                self.error = Some(reason);
                self.updated_at = Some(occurred_at);
            }
            E::JobCancelled { reason, occurred_at } => {
                self.status = Some(JobStatus::Cancelled);
                self.error = Some(reason);
                self.updated_at = Some(occurred_at);
            }
            E::JobRetryScheduled { reason, occurred_at, .. } => {
                self.status = Some(JobStatus::Queued);
                self.error = Some(reason);
                self.updated_at = Some(occurred_at);
            }
            E::ImagesExpired { occurred_at, .. } => {
                self.images_expired = true;
                self.updated_at = Some(occurred_at);
            }
            E::JobStepCompleted { step, outputs, occurred_at } => {
                self.steps.push(CompletedStep { step, outputs });
                // The step's request is over: the next step records its own.
                self.provider_request_id = None;
                self.updated_at = Some(occurred_at);
            }
        }
    }
}
