//! The job engine's use cases. Every change that moves credits is one append across the
//! streams it touches: accepting a job records `JobQueued` (+ the model's request) and
//! `CreditsReserved`; completion records `JobCompleted` (+ the model's new version) and
//! `CreditsDeducted`; failure and cancel record the ending and `CreditsRefunded`. The
//! reservation ends exactly once, so a duplicate or racing ending changes nothing.

pub mod index;
pub mod lease;
pub mod steps;
pub mod submit;
pub mod worker;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use domain::jobs::{GenerationJob, JobCommand, JobError, JobInput, JobOutput, JobStatus};
use domain::models::{CustomModel, ModelCommand, ModelError};
use domain::operators::OperatorAct;
use domain::{Credits, JobId, ReservationState, TeamCredits, TeamCreditsCommand, TeamCreditsError, TeamId};
use serde_json::{json, Value};

use crate::aggregate_store::{AggregateStore, CommandError, Loaded};
use crate::clock::Clock;
use crate::credits::{CreditsError, CreditsService};
use crate::event_store::{EventStoreError, StreamAppend};
use crate::storage::ObjectStore;
use self::steps::TrainingConfig;

/// How often an ending is re-decided after losing a race on the job's own stream.
const ENDING_ATTEMPTS_MAX: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error(transparent)]
    Credits(CreditsError),
    #[error(transparent)]
    Job(#[from] JobError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Store(#[from] EventStoreError),
    #[error("not found")]
    NotFound,
    #[error("object store: {0}")]
    Storage(String),
    #[error("the team already has {queued} queued jobs (at most {max})")]
    QueueFull { queued: i64, max: i64 },
    #[error("changed concurrently; retry the request")]
    Conflict,
}

impl JobsError {
    /// The database could not be reached (or answered from a server that cannot take
    /// writes now): the same call may well succeed in a moment, and whether a write that
    /// failed this way was committed is not known (decide again on the state as it is).
    pub fn is_unavailable(&self) -> bool {
        match self {
            JobsError::Store(error) | JobsError::Credits(CommandError::Store(error)) => error.is_unavailable(),
            _ => false,
        }
    }
}

impl From<CreditsError> for JobsError {
    fn from(error: CreditsError) -> Self {
        JobsError::Credits(error)
    }
}

impl<E: std::error::Error> From<CommandError<E>> for JobsError
where
    JobsError: From<E>,
{
    fn from(error: CommandError<E>) -> Self {
        match error {
            CommandError::Rejected(rejection) => JobsError::from(rejection),
            CommandError::Store(store) => JobsError::Store(store),
            CommandError::Contention { .. } => JobsError::Conflict,
        }
    }
}

/// A job the engine accepted, or found already accepted under the same id.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub job: GenerationJob,
    /// False when the same job id was submitted before (an idempotent repeat).
    pub created: bool,
}

/// A job to accept: what it does, what it costs (and under which price version), and the
/// model's side of it (a creation or refinement request), if any.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub team: TeamId,
    pub job_id: JobId,
    pub input: JobInput,
    pub cost: Credits,
    pub price_version: i64,
    pub model_change: Option<StreamAppend>,
    /// Training images sent with a model job, already stored (its `uploads` step).
    pub uploads: Vec<JobOutput>,
}

/// How a job ended when asked to end it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// This call recorded the ending.
    Recorded,
    /// The job had already ended this way (a duplicate).
    AlreadyDone,
}

#[derive(Clone)]
pub struct JobsService {
    aggregates: AggregateStore,
    credits: CreditsService,
    clock: Arc<dyn Clock>,
    /// Where model jobs write their steps' objects (deleted when such a job fails or is
    /// cancelled); `None` in set-ups without model jobs' storage.
    objects: Option<Arc<dyn ObjectStore>>,
    training: TrainingConfig,
}

fn metadata(actor: &str) -> Value {
    json!({ "actor": actor })
}

fn model_appends(decided: Option<StreamAppend>) -> Vec<StreamAppend> {
    decided.into_iter().filter(|a| !a.events.is_empty()).collect()
}

impl JobsService {
    pub fn new(aggregates: AggregateStore, credits: CreditsService, clock: Arc<dyn Clock>) -> Self {
        Self { aggregates, credits, clock, objects: None, training: TrainingConfig::default() }
    }

    /// The store model jobs write their training sets to, and how large those sets are.
    pub fn with_training(mut self, objects: Arc<dyn ObjectStore>, training: TrainingConfig) -> Self {
        self.objects = Some(objects);
        self.training = training;
        self
    }

    pub fn training(&self) -> &TrainingConfig {
        &self.training
    }

    /// The store model jobs write to, when there is one.
    pub fn objects(&self) -> Option<&Arc<dyn ObjectStore>> {
        self.objects.as_ref()
    }

    pub fn credits(&self) -> &CreditsService {
        &self.credits
    }

    pub fn aggregates(&self) -> &AggregateStore {
        &self.aggregates
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    pub async fn job(&self, job_id: JobId) -> Result<GenerationJob, JobsError> {
        let job = self.aggregates.load::<GenerationJob>(&job_id.to_string()).await?.aggregate;
        if job.status.is_none() {
            return Err(JobsError::NotFound);
        }
        Ok(job)
    }

    pub async fn model(&self, model_id: domain::ModelId) -> Result<crate::aggregate_store::Loaded<CustomModel>, JobsError> {
        Ok(self.aggregates.load::<CustomModel>(&model_id.to_string()).await?)
    }

    /// The append that records `command` on a model, decided on its current state.
    pub async fn decide_model(&self, model_id: domain::ModelId, command: ModelCommand, actor: &str) -> Result<StreamAppend, JobsError> {
        let loaded = self.model(model_id).await?;
        let decided = self.aggregates.decide(loaded, command, &(), &metadata(actor)).await?;
        Ok(decided.append)
    }

    /// Accepts a job: records it (with `model_change`, the model's side of it) and reserves
    /// its cost in one append. A repeat of the same job id returns the job as it is.
    pub async fn submit(&self, job: NewJob, actor: &str) -> Result<Accepted, JobsError> {
        self.submit_as(job, actor, None).await
    }

    /// [`submit`](Self::submit) by an operator (a retry): `by` is recorded on the team's
    /// ledger with the reservation, in the same append.
    pub async fn submit_as(&self, job: NewJob, actor: &str, by: Option<OperatorAct>) -> Result<Accepted, JobsError> {
        let NewJob { team, job_id, input, cost, price_version, model_change, uploads } = job;
        // Decided on an empty stream without loading it first: a repeat either finds the
        // reservation already made (nothing is recorded, the extras are dropped) or
        // collides on the job stream's first sequence; both end in `existing` below.
        let loaded = Loaded { id: job_id.to_string(), aggregate: GenerationJob::default(), sequence: 0, snapshot_sequence: 0 };
        let now = self.clock.now();
        let operation = input.operation();
        let queue = JobCommand::Queue { job_id, team_id: team, input, cost, price_version, uploads, now };
        let job = self.aggregates.decide(loaded, queue, &(), &metadata(actor)).await?;
        let mut extras = vec![job.append];
        extras.extend(model_appends(model_change));
        let build = move |credits: &TeamCredits| {
            let plan = credits.plan();
            if credits.is_open() && !plan.runs_jobs() {
                return Err(CommandError::Rejected(TeamCreditsError::PlanDoesNotAllowJobs { plan }));
            }
            let reserve = TeamCreditsCommand::ReserveCredits { reservation_id: job_id, amount: cost, operation, price_version, now };
            let command = match &by {
                Some(act) => TeamCreditsCommand::ByOperator { act: act.clone(), subject: Some(job_id.to_string()), command: Box::new(reserve) },
                None => reserve,
            };
            Ok((command, extras.clone()))
        };
        match self.credits.execute_with(team, &metadata(actor), Box::new(build)).await {
            Ok(outcome) if !outcome.events.is_empty() => {
                crate::observe::job_queued(&job.state.aggregate);
                Ok(Accepted { job: job.state.aggregate, created: true })
            }
            // The reservation (or the job stream) existed: a repeat that raced the first.
            Ok(_) | Err(CommandError::Store(EventStoreError::Conflict { .. })) if self.job(job_id).await.is_ok() => {
                self.existing(team, self.job(job_id).await?)
            }
            Ok(_) => Err(JobsError::Conflict),
            Err(CommandError::Store(EventStoreError::Conflict { .. })) => Err(JobsError::Conflict),
            Err(error) => Err(error.into()),
        }
    }

    fn existing(&self, team: TeamId, job: GenerationJob) -> Result<Accepted, JobsError> {
        if job.team_id != Some(team) {
            // Another team's job id: never reveal it.
            return Err(JobsError::NotFound);
        }
        Ok(Accepted { job, created: false })
    }

    /// Claims several queued jobs for `worker` in one append (one transaction). A job
    /// that someone else claimed first, or that is no longer queued, is left out, and so
    /// are a team's newest claims beyond its free slots (as the dispatch projection
    /// refuses them); the rest are claimed. Returns the claimed jobs as they now stand (state and sequence), so
    /// their endings need not load them again.
    ///
    /// Each job comes with its share tag, when the pick made one (see `domain::share`),
    /// recorded on its `JobDispatched`.
    pub async fn dispatch_many(&self, picks: &[(JobId, Option<i64>)], provider: &str, worker: &str) -> Result<Vec<Loaded<GenerationJob>>, JobsError> {
        let now = self.clock.now();
        // All the streams in one read (a job's stream is a handful of events).
        let ids: Vec<String> = picks.iter().map(|(job_id, _)| job_id.to_string()).collect();
        let mut loaded_all: HashMap<String, Loaded<GenerationJob>> =
            self.aggregates.load_many::<GenerationJob>(&ids).await?.into_iter().map(|loaded| (loaded.id.clone(), loaded)).collect();
        // Each claim's job as it will stand, and its append (the same position in both).
        let mut claimed: Vec<Loaded<GenerationJob>> = Vec::with_capacity(picks.len());
        let mut appends: Vec<StreamAppend> = Vec::with_capacity(picks.len());
        // In the order picked, each a microsecond after the one before: a team's turn is
        // its latest claim's time, so of the teams served by one claim, those whose last
        // job came later in the pick's order wait longer for the next turn (with one time
        // for the whole claim, ties would go by team id, always to the same teams).
        for (nth, (id, (_, share_tag))) in ids.iter().zip(picks).enumerate() {
            let Some(loaded) = loaded_all.remove(id) else { continue };
            let now = now + chrono::Duration::microseconds(nth as i64);
            let command = JobCommand::Dispatch { provider: provider.to_string(), worker: worker.to_string(), share_tag: *share_tag, now };
            match self.aggregates.decide(loaded, command, &(), &metadata(worker)).await {
                Ok(claim) => {
                    claimed.push(claim.state);
                    appends.push(claim.append);
                }
                Err(CommandError::Rejected(JobError::NotQueued(_) | JobError::NotFound)) => {}
                Err(error) => return Err(error.into()),
            }
        }
        // Each failed attempt leaves out at least one job, so this ends; the bound only
        // caps the work of a pathological round (the jobs stay queued for the next one).
        for _ in 0..CLAIM_ATTEMPTS_MAX {
            if claimed.is_empty() {
                break;
            }
            let before = claimed.len();
            let left_out = match self.aggregates.commit(&appends).await {
                Ok(_) => {
                    claimed.iter().for_each(|job| crate::observe::job_dispatched(&job.aggregate, worker));
                    return Ok(claimed);
                }
                Err(EventStoreError::Conflict { aggregate_id, .. }) => claimed.iter().position(|job| job.id == aggregate_id),
                Err(EventStoreError::Projection { reason, .. }) if reason.contains(LIMIT_REACHED) => {
                    // The team has fewer free slots than claims here: leave out its
                    // newest claim and try the rest again.
                    let team = team_at_limit(&reason);
                    claimed.iter().rposition(|job| job.aggregate.team_id.map(|t| t.to_string()) == team)
                }
                Err(error) => return Err(error.into()),
            };
            if let Some(n) = left_out {
                claimed.remove(n);
                appends.remove(n);
            }
            if claimed.len() == before {
                return Err(JobsError::Conflict);
            }
        }
        Ok(Vec::new())
    }

    /// Records news from the provider (its request id, queue position, logs, start) for
    /// `attempt` (`None`: whichever attempt is current; see `JobCommand::Progress`).
    pub async fn progress(
        &self,
        job_id: JobId,
        attempt: Option<u32>,
        provider_request_id: Option<String>,
        queue_position: Option<u32>,
        logs: Vec<String>,
        running: bool,
    ) -> Result<(), JobsError> {
        let request = provider_request_id.clone();
        let command = JobCommand::Progress { provider_request_id, queue_position, logs, running, attempt, now: self.clock.now() };
        self.aggregates.execute::<GenerationJob>(&job_id.to_string(), command, &(), &metadata("provider")).await?;
        crate::observe::job_progressed(job_id, request.as_deref(), running);
        Ok(())
    }

    /// Records a finished step of a multi-step job, run by `attempt`, with the objects it
    /// stored; returns the job as it now stands, and whether this call recorded the step
    /// (false: it was recorded already). A job that ended meanwhile refuses
    /// (`AlreadyFinished`: the caller deletes what it stored), and so does one that was
    /// put back in the queue or retried since (`NotInProgress`, `StaleAttempt`: the step
    /// is the newer attempt's to run, over the same objects).
    pub async fn complete_step(&self, job_id: JobId, attempt: u32, step: &str, outputs: Vec<JobOutput>) -> Result<(GenerationJob, bool), JobsError> {
        let command = JobCommand::CompleteStep { step: step.to_string(), outputs, attempt, now: self.clock.now() };
        let decided = self.aggregates.execute::<GenerationJob>(&job_id.to_string(), command, &(), &metadata("worker")).await?;
        let recorded = !decided.events.is_empty();
        if recorded {
            crate::observe::job_step_completed(job_id, step);
        }
        Ok((decided.state.aggregate, recorded))
    }

    /// Deletes what a failed or cancelled job's steps wrote, or may have written before a
    /// crash (a model job's training images, captions and set; a split generation's
    /// images): its version was never made, its images never shown, so nothing else
    /// points at them. Best effort: a failure is logged.
    async fn discard_steps(&self, job: &GenerationJob) {
        let (Some(objects), Some(team), Some(input), Some(job_id)) = (&self.objects, job.team_id, &job.input, job.job_id) else { return };
        // Planned as if nothing was sent (the most images a model plan can draw) and one
        // image per request (every image a generation's parts can store, whatever the
        // provider's limit).
        let mut keys = steps::step_keys(team, input, job_id, &steps::plan(input, None, &self.training, 0, Some(1)));
        keys.extend(job.step_output_keys());
        keys.sort_unstable();
        keys.dedup();
        if keys.is_empty() {
            return;
        }
        match objects.delete_many(&keys).await {
            Ok(()) => tracing::info!(job_id = ?job.job_id, objects = keys.len(), "the ended job's training set was deleted"),
            Err(error) => tracing::warn!(job_id = ?job.job_id, %error, "the ended job's training set was not deleted"),
        }
    }

    /// Puts an active job back in the queue, to start again at `retry_at` (only while
    /// `attempt`, when given, is still the job's current attempt).
    pub async fn retry_later(&self, job_id: JobId, attempt: Option<u32>, reason: &str, retry_at: DateTime<Utc>) -> Result<(), JobsError> {
        let command = JobCommand::ScheduleRetry { reason: reason.to_string(), retry_at, attempt, now: self.clock.now() };
        self.aggregates.execute::<GenerationJob>(&job_id.to_string(), command, &(), &metadata("worker")).await?;
        crate::observe::job_retry_scheduled(job_id, reason, retry_at);
        Ok(())
    }

    /// Completes a job with its stored outputs and deducts its reservation, atomically.
    /// Fails with `AlreadyFinished` if the job was cancelled or failed meanwhile (the
    /// outputs are then not the team's to keep), and with `StaleAttempt` /
    /// `NotInProgress` if `attempt` (when given) is no longer the job's (it was taken
    /// back from this attempt's worker: the outputs belong to no ending).
    pub async fn complete(&self, job_id: JobId, attempt: Option<u32>, outputs: Vec<JobOutput>) -> Result<Ending, JobsError> {
        self.end(job_id, EndKind::Complete { outputs, attempt }, "worker").await
    }

    /// `complete`, decided first on the job as its claim left it (no load); if the job
    /// moved since (progress, a cancel), its stream's sequence check refuses that and the
    /// ending is decided again on the loaded job.
    pub async fn complete_claimed(&self, claimed: Loaded<GenerationJob>, outputs: Vec<JobOutput>) -> Result<Ending, JobsError> {
        let job_id = claimed.aggregate.job_id.ok_or(JobsError::NotFound)?;
        let attempt = Some(claimed.aggregate.attempt);
        self.end_from(job_id, Some(claimed), EndKind::Complete { outputs, attempt }, "worker").await
    }

    /// Fails a job and refunds its reservation, atomically (fenced by `attempt` as
    /// [`complete`](Self::complete) is).
    pub async fn fail(&self, job_id: JobId, attempt: Option<u32>, reason: &str) -> Result<Ending, JobsError> {
        self.end(job_id, EndKind::Fail { reason: reason.to_string(), attempt }, "worker").await
    }

    /// Cancels a job of `team` in any non-final state and refunds it, atomically.
    /// Returns the job as it was before (its provider request may need cancelling).
    pub async fn cancel(&self, team: TeamId, job_id: JobId, reason: &str, actor: &str) -> Result<(GenerationJob, Ending), JobsError> {
        self.cancel_as(team, job_id, reason, actor, None).await
    }

    /// [`cancel`](Self::cancel) by an operator: `by` (who, why) is recorded on the team's
    /// ledger in the same append as the refund.
    pub async fn cancel_as(&self, team: TeamId, job_id: JobId, reason: &str, actor: &str, by: Option<OperatorAct>) -> Result<(GenerationJob, Ending), JobsError> {
        let before = self.job(job_id).await?;
        if before.team_id != Some(team) {
            return Err(JobsError::NotFound);
        }
        let ending = self.end(job_id, EndKind::Cancel { reason: reason.to_string(), by }, actor).await?;
        Ok((before, ending))
    }

    async fn end(&self, job_id: JobId, kind: EndKind, actor: &str) -> Result<Ending, JobsError> {
        self.end_from(job_id, None, kind, actor).await
    }

    async fn end_from(&self, job_id: JobId, mut known: Option<Loaded<GenerationJob>>, kind: EndKind, actor: &str) -> Result<Ending, JobsError> {
        for _ in 0..ENDING_ATTEMPTS_MAX {
            let (loaded, as_claimed) = match known.take() {
                Some(loaded) => (loaded, true),
                None => (self.aggregates.load::<GenerationJob>(&job_id.to_string()).await?, false),
            };
            let job = &loaded.aggregate;
            let (Some(team), Some(input)) = (job.team_id, job.input.clone()) else {
                return Err(JobsError::NotFound);
            };
            if matches!(kind, EndKind::CancelQueued(_)) && job.status != Some(JobStatus::Queued) {
                return Ok(Ending::AlreadyDone);
            }
            let command = kind.job_command(self.clock.now());
            let before = loaded.aggregate.clone();
            let decided = self.aggregates.decide(loaded, command, &(), &metadata(actor)).await?;
            if decided.events.is_empty() {
                return Ok(Ending::AlreadyDone);
            }
            let model_change = match kind.model_command(job_id, &input, team, self.clock.now()) {
                Some(command) => match self.decide_model(input.model_id(), command, actor).await {
                    Ok(append) => Some(append),
                    // Decided on the job as its claim left it, while it was cancelled or
                    // failed meanwhile (the model no longer waits for it): decide again
                    // on the job as it is, which refuses with how it ended.
                    Err(JobsError::Model(_)) if as_claimed => continue,
                    Err(error) => return Err(error),
                },
                None => None,
            };
            let mut extras = vec![decided.append];
            extras.extend(model_appends(model_change));
            let credit_command = kind.credit_command(job_id, self.clock.now());
            let build = move |_: &TeamCredits| Ok((credit_command.clone(), extras.clone()));
            match self.credits.execute_with(team, &metadata(actor), Box::new(build)).await {
                Ok(outcome) => {
                    let state = outcome.reservation.map(|r| r.state);
                    return match (kind.reservation_end(), state) {
                        (wanted, Some(actual)) if wanted == actual && !outcome.events.is_empty() => {
                            kind.observe(&before, actor, self.clock.now());
                            if wanted == ReservationState::Refunded {
                                self.discard_steps(&before).await;
                            }
                            Ok(Ending::Recorded)
                        }
                        // The reservation ended the other way first: the job ended with it.
                        (_, Some(ReservationState::Deducted)) => Err(JobError::AlreadyFinished("completed").into()),
                        (_, Some(ReservationState::Refunded)) => Err(JobError::AlreadyFinished("ended").into()),
                        _ => Err(JobsError::Conflict),
                    };
                }
                // The job or model stream moved (progress, a racing ending): decide again.
                Err(CommandError::Store(EventStoreError::Conflict { .. })) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Err(JobsError::Conflict)
    }

    /// Subscription expiry: the team's plan becomes Free; running jobs finish and are
    /// charged as usual, queued jobs are cancelled and refunded, new submissions are
    /// refused (the plan runs no jobs). `metadata` names who did it (`actor`) and why.
    pub async fn expire_subscription(
        &self,
        team: TeamId,
        effective_at: DateTime<Utc>,
        key: domain::IdempotencyKey,
        queued: &dyn index::JobIndex,
        metadata: &Value,
    ) -> Result<usize, JobsError> {
        let command = TeamCreditsCommand::ExpireSubscription { effective_at, key, now: self.clock.now() };
        let outcome = self.credits.execute(team, command, metadata).await?;
        let actor = metadata.get("actor").and_then(Value::as_str).unwrap_or("system");
        // Gated on the plan now, not on this call having recorded the expiry: a stale
        // expiry (a newer plan already applies) cancels nothing, and a retry after a crash
        // between the two steps still cancels.
        if outcome.plan.concurrency_limit() > 0 {
            return Ok(0);
        }
        self.cancel_queued(team, queued, "subscription expired", actor).await
    }

    /// Cancels and refunds every queued job of `team`; returns how many.
    pub async fn cancel_queued(&self, team: TeamId, queued: &dyn index::JobIndex, reason: &str, actor: &str) -> Result<usize, JobsError> {
        let mut cancelled = 0;
        for job_id in queued.queued_of_team(team).await? {
            // Only jobs still queued: one that a worker claimed meanwhile runs to its end.
            if self.job(job_id).await?.status != Some(JobStatus::Queued) {
                continue;
            }
            match self.end(job_id, EndKind::CancelQueued(reason.to_string()), actor).await {
                Ok(Ending::Recorded) => cancelled += 1,
                Ok(Ending::AlreadyDone) | Err(JobsError::Job(_)) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(cancelled)
    }
}

/// Marker in the dispatch projection's refusal, matched by `dispatch`; the refusal ends
/// with `(team {id})`.
pub const LIMIT_REACHED: &str = "team at its concurrency limit";

/// Claim appends tried per `dispatch_many` call, at most (each failed one leaves out a
/// job; callers offer a team no more jobs than its free slots, so refusals are rare).
const CLAIM_ATTEMPTS_MAX: u32 = 16;

/// The team named in a dispatch refusal (`… (team {id})`).
fn team_at_limit(reason: &str) -> Option<String> {
    let (_, tail) = reason.rsplit_once("(team ")?;
    Some(tail.trim_end_matches(')').to_string())
}

#[derive(Debug, Clone)]
enum EndKind {
    /// `attempt`: the attempt that made the outputs (see `JobCommand::Complete`).
    Complete { outputs: Vec<JobOutput>, attempt: Option<u32> },
    Fail { reason: String, attempt: Option<u32> },
    /// `by`: the operator who cancelled it (recorded on the team's ledger with the refund).
    Cancel { reason: String, by: Option<OperatorAct> },
    /// Cancel only if still queued (subscription expiry never stops a running job).
    CancelQueued(String),
}

impl EndKind {
    fn job_command(&self, now: DateTime<Utc>) -> JobCommand {
        match self {
            EndKind::Complete { outputs, attempt } => JobCommand::Complete { outputs: outputs.clone(), attempt: *attempt, now },
            EndKind::Fail { reason, attempt } => JobCommand::Fail { reason: reason.clone(), attempt: *attempt, now },
            EndKind::Cancel { reason, .. } | EndKind::CancelQueued(reason) => JobCommand::Cancel { reason: reason.clone(), now },
        }
    }

    /// Logs the ending and counts it (see `crate::observe`).
    fn observe(&self, before: &GenerationJob, actor: &str, now: DateTime<Utc>) {
        use crate::observe::{job_ended, JobEnd};
        match self {
            EndKind::Complete { .. } => job_ended(before, JobEnd::Completed, None, actor, now),
            EndKind::Fail { reason, .. } => job_ended(before, JobEnd::Failed, Some(reason), actor, now),
            EndKind::Cancel { reason, .. } | EndKind::CancelQueued(reason) => job_ended(before, JobEnd::Cancelled, Some(reason), actor, now),
        }
    }

    fn credit_command(&self, job_id: JobId, now: DateTime<Utc>) -> TeamCreditsCommand {
        match self {
            EndKind::Complete { .. } => TeamCreditsCommand::DeductCredits { reservation_id: job_id, now },
            EndKind::Cancel { by: Some(act), .. } => TeamCreditsCommand::ByOperator {
                act: act.clone(),
                subject: Some(job_id.to_string()),
                command: Box::new(TeamCreditsCommand::RefundCredits { reservation_id: job_id, now }),
            },
            _ => TeamCreditsCommand::RefundCredits { reservation_id: job_id, now },
        }
    }

    fn reservation_end(&self) -> ReservationState {
        match self {
            EndKind::Complete { .. } => ReservationState::Deducted,
            _ => ReservationState::Refunded,
        }
    }

    /// The model's side of the ending, for model jobs.
    fn model_command(&self, job_id: JobId, input: &JobInput, _team: TeamId, now: DateTime<Utc>) -> Option<ModelCommand> {
        if matches!(input, JobInput::ImageGeneration { .. }) {
            return None;
        }
        Some(match self {
            EndKind::Complete { outputs, .. } => {
                let artifact_key = outputs.iter().find(|o| o.key.ends_with("model.json")).or(outputs.first())?.key.clone();
                ModelCommand::RecordVersion { job_id, artifact_key, now }
            }
            EndKind::Fail { reason, .. } | EndKind::Cancel { reason, .. } | EndKind::CancelQueued(reason) => {
                ModelCommand::RecordJobFailure { job_id, reason: reason.clone(), now }
            }
        })
    }
}
