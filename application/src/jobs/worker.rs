//! The worker: claims queued jobs from the database (fairly, within plan limits), runs
//! them on the provider, stores their outputs, and ends them. Several worker processes
//! may run at once: a claim is an append to the job's stream, so a job is claimed once,
//! and the dispatch read model refuses a claim beyond the team's limit.
//!
//! It also keeps the queue healthy: a heartbeat per worker; jobs of a worker that stopped
//! beating are checked with the provider and retried; jobs with no news for a while are
//! checked with the provider; queued jobs of teams whose plan runs no jobs are cancelled
//! and refunded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Utc};
use domain::jobs::{GenerationJob, JobError, JobInput, JobOutput, JobStatus};
use domain::models::{trigger_word, CustomModel};
use domain::{JobId, ModelId};
use tokio::sync::{watch, Notify, Semaphore};
use tracing::Instrument;

use super::index::{ActiveJob, JobIndex, Lost, WorkerReport};
use super::lease::{durably, Held, HeldJob};
use super::steps::{self, SetFile, Step};
use super::{JobsError, JobsService};
use crate::aggregate_store::Loaded;
use crate::observe::job_span;
use crate::provider::{ProducedFile, Provider, ProviderError, ProviderOutcome, ProviderRequest, ProviderStatus, Submission, Task};
use crate::storage::{image_key, model_asset_key, stored_output, ObjectStore};

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub worker_id: String,
    /// Provider requests this worker has in flight at once (the renders of the local
    /// provider; submissions to fal).
    pub concurrency: usize,
    /// Jobs claimed ahead of a free slot: they wait in the worker, claimed (their teams'
    /// plan slots taken), until a slot frees. Claims are then larger and fewer, and a
    /// slot never waits for a claim's commit. 0 claims only for free slots.
    pub local_queue: usize,
    pub poll_interval: Duration,
    pub heartbeat_interval: Duration,
    /// A worker silent this long is presumed dead; its jobs are checked and retried.
    pub worker_lost_after: Duration,
    /// An active job with a provider request and no news this long is checked with the
    /// provider (there is no timeout: the check only looks).
    pub stale_after: Duration,
    pub attempts_max: u32,
    pub retry_backoff_base: Duration,
    pub retry_backoff_max: Duration,
    /// Store writes tried per output before the attempt counts as a transient failure.
    pub storage_attempts_max: u32,
    /// A held job's lease, renewed with each heartbeat: a job with no provider request
    /// outstanding whose lease lapsed is taken back, even from a live worker.
    pub lease_ttl: Duration,
    /// How long a job's run waits, in all, for an unavailable database to answer one of
    /// its steps before the worker lets the job go (its lease then lapses and the job is
    /// taken back).
    pub database_wait_max: Duration,
}

impl WorkerConfig {
    pub fn new(worker_id: String) -> Self {
        Self {
            worker_id,
            concurrency: 16,
            local_queue: 16,
            poll_interval: Duration::from_millis(100),
            heartbeat_interval: Duration::from_secs(2),
            worker_lost_after: Duration::from_secs(10),
            stale_after: Duration::from_secs(300),
            attempts_max: 5,
            retry_backoff_base: Duration::from_secs(2),
            retry_backoff_max: Duration::from_secs(300),
            storage_attempts_max: 3,
            lease_ttl: Duration::from_secs(10),
            database_wait_max: Duration::from_secs(600),
        }
    }

    /// Jobs a worker holds at most: claimed and waiting, at the provider, or ending.
    pub fn jobs_held_max(&self) -> usize {
        self.concurrency.max(1) + self.local_queue
    }

    /// `base × 2^(attempt−1)`, capped.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(16));
        self.retry_backoff_base.saturating_mul(factor).min(self.retry_backoff_max)
    }
}

/// How long a provider that answers in the call works on a request before its job is
/// recorded as running (see `Worker::submit`).
const RUNNING_AFTER: Duration = Duration::from_millis(200);
/// Maintenance rows handled per pass.
const MAINTENANCE_BATCH_MAX: i64 = 100;
/// Jobs claimed in one append, at most.
pub const CLAIM_BATCH_MAX: usize = 256;
/// Life of the signed URL a trainer downloads the training set from: a request may wait
/// in the provider's queue for a long while.
const TRAINING_SET_URL_TTL: Duration = Duration::from_secs(24 * 3600);
/// Model version artifact keys remembered per worker; the cache starts over when full.
const ARTIFACT_KEYS_CACHED_MAX: usize = 10_000;

/// What a job's requests need besides the job (see [`Worker::context`]).
struct RunContext {
    /// The worker's slots, for a job this worker claimed: each provider request waits
    /// for one. `None` for a result delivered by a webhook (the request already ran).
    slots: Option<Arc<Semaphore>>,
    plan: Vec<Step>,
    model_artifact_key: Option<String>,
    reference: Option<serde_json::Value>,
}

/// The job's first step not recorded; `None` for a job without steps (a generation in
/// one request).
fn current_step<'a>(plan: &'a [Step], job: &GenerationJob) -> Option<&'a Step> {
    plan.iter().find(|step| !job.step_done(&step.name()))
}

/// The request of a generation that fits one: all its images.
fn whole_generation(input: &JobInput) -> Task {
    match input {
        JobInput::ImageGeneration { count, .. } => Task::Images { first: 0, count: *count },
        // A model job always has a step left until its last one ends it.
        _ => Task::Images { first: 0, count: 0 },
    }
}

#[derive(Clone)]
pub struct Worker {
    jobs: JobsService,
    index: Arc<dyn JobIndex>,
    provider: Arc<dyn Provider>,
    objects: Arc<dyn ObjectStore>,
    config: Arc<WorkerConfig>,
    /// One per job this worker holds ([`WorkerConfig::jobs_held_max`]). Taken by the
    /// claim, given back when the job is done.
    held: Arc<Semaphore>,
    /// One per provider request in flight: `concurrency`.
    slots: Arc<Semaphore>,
    artifacts: Arc<Mutex<HashMap<(ModelId, u32), String>>>,
    /// Signalled when one of this worker's jobs lets its slot go: the dispatch loop tries
    /// again at once instead of waiting out its poll interval.
    slot_freed: Arc<Notify>,
    /// The jobs this worker holds, whose leases it renews (see [`super::lease`]).
    leases: Arc<Held>,
    /// Set when the worker stops: a job's run no longer waits for the database.
    stopping: Arc<AtomicBool>,
    /// What it reports with its heartbeats, and whether an operator drained it.
    stats: Arc<WorkerStats>,
}

/// A worker's own record for the console: jobs it completed since it started, the last
/// error one of its jobs met, and whether it was drained (as its last heartbeat heard).
#[derive(Default)]
struct WorkerStats {
    jobs_done: std::sync::atomic::AtomicU64,
    last_error: Mutex<Option<(String, DateTime<Utc>)>>,
    draining: AtomicBool,
}

/// Longest error a worker reports (the full one is in its log).
const REPORTED_ERROR_CHARS_MAX: usize = 500;

impl WorkerStats {
    fn report(&self) -> WorkerReport {
        let last_error = self.last_error.lock().map(|e| e.clone()).unwrap_or_default();
        WorkerReport { jobs_done: self.jobs_done.load(Ordering::Relaxed), last_error }
    }

    fn error(&self, message: &str, at: DateTime<Utc>) {
        let message: String = message.chars().take(REPORTED_ERROR_CHARS_MAX).collect();
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some((message, at));
        }
    }
}

impl Worker {
    pub fn new(
        jobs: JobsService,
        index: Arc<dyn JobIndex>,
        provider: Arc<dyn Provider>,
        objects: Arc<dyn ObjectStore>,
        config: WorkerConfig,
    ) -> Self {
        let held = Arc::new(Semaphore::new(config.jobs_held_max()));
        let slots = Arc::new(Semaphore::new(config.concurrency.max(1)));
        Self {
            jobs,
            index,
            provider,
            objects,
            config: Arc::new(config),
            held,
            slots,
            artifacts: Arc::default(),
            slot_freed: Arc::default(),
            leases: Arc::default(),
            stopping: Arc::default(),
            stats: Arc::default(),
        }
    }

    /// Renews the lease of every job this worker holds, and drops its leases on jobs it
    /// let go.
    async fn renew_leases(&self) -> Result<(), JobsError> {
        let until = self.now() + chrono::Duration::from_std(self.config.lease_ttl).unwrap_or(chrono::Duration::seconds(10));
        Ok(self.index.renew_leases(&self.config.worker_id, &self.leases.all(), until).await?)
    }

    /// Holds `job_id` (for `attempt`) while the returned value lives, renewing the leases
    /// of this worker's jobs meanwhile from a task of its own: for a run that does not
    /// start from this worker's claim (a webhook's or a status check's result that goes
    /// on to the job's next step), which the dispatch loop's heartbeat may not renew — the
    /// webhook's worker has no dispatch loop.
    fn hold_and_renew(&self, job_id: JobId, attempt: u32) -> (HeldJob, tokio::task::AbortHandle) {
        let held = self.leases.hold(job_id, attempt);
        let worker = self.clone();
        let renewing = tokio::spawn(async move {
            loop {
                if let Err(error) = worker.renew_leases().await {
                    tracing::warn!(%error, "renewing job leases failed");
                }
                tokio::time::sleep(worker.config.heartbeat_interval).await;
            }
        });
        (held, renewing.abort_handle())
    }

    /// [`durably`] with this worker's bounds.
    async fn durably<T, Fut>(&self, what: &'static str, op: impl FnMut() -> Fut) -> Result<T, JobsError>
    where
        Fut: std::future::Future<Output = Result<T, JobsError>>,
    {
        durably(what, self.config.database_wait_max, &self.stopping, op).await
    }

    fn now(&self) -> DateTime<Utc> {
        self.jobs.now()
    }

    /// Runs until `stop` flips to true, then waits for the jobs it started.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut last_heartbeat: Option<std::time::Instant> = None;
        loop {
            if last_heartbeat.is_none_or(|at| at.elapsed() >= self.config.heartbeat_interval) {
                match self.index.report(&self.config.worker_id, self.now(), &self.stats.report()).await {
                    Ok(orders) => {
                        if self.stats.draining.swap(orders.draining, Ordering::Relaxed) != orders.draining {
                            tracing::info!(draining = orders.draining, "an operator changed this worker's drain");
                        }
                    }
                    Err(error) => tracing::warn!(%error, "heartbeat failed"),
                }
                if let Err(error) = self.renew_leases().await {
                    tracing::warn!(%error, "renewing job leases failed");
                }
                if let Err(error) = self.maintain().await {
                    tracing::warn!(%error, "queue maintenance failed");
                }
                last_heartbeat = Some(std::time::Instant::now());
            }
            // Drained: claim nothing new; the jobs held run to their end.
            let draining = self.stats.draining.load(Ordering::Relaxed);
            let asked = if draining { 0 } else { self.held.available_permits().min(CLAIM_BATCH_MAX) };
            let started = if draining {
                0
            } else {
                match self.dispatch_once().await {
                    Ok(started) => started,
                    Err(error) => {
                        tracing::warn!(%error, "dispatch failed");
                        0
                    }
                }
            };
            // Fewer jobs than asked: nothing more is dispatchable now. Nothing to ask:
            // nothing to do until a job ends. Either way wait for a job to be let go, a
            // stop, or the poll interval (for jobs submitted or released elsewhere).
            if started == 0 || started < asked || self.held.available_permits() == 0 {
                let freed = tokio::select! {
                    _ = stop.changed() => false,
                    _ = self.slot_freed.notified() => true,
                    _ = tokio::time::sleep(self.config.poll_interval) => false,
                };
                if freed {
                    // Endings committed together are answered together: let their jobs
                    // give back their slots before claiming, so they are claimed again
                    // in one batch rather than one claim each.
                    tokio::task::yield_now().await;
                }
            }
            if *stop.borrow() {
                break;
            }
        }
        // A job still waiting for the database is handed back rather than waited for.
        self.stopping.store(true, Ordering::Relaxed);
        // Wait for held jobs: every permit back means every job ended or was handed on.
        let _ = self.held.acquire_many(self.config.jobs_held_max() as u32).await;
    }

    /// Claims as many dispatchable jobs as this worker may hold more of (free slots plus
    /// its local queue, at most [`CLAIM_BATCH_MAX`]), in one append, and starts them:
    /// each waits for a slot before its provider request. Returns how many started.
    ///
    /// The dispatch turn is held from the pick until the claim committed, so the next
    /// pick (of any process) sees this claim: claims rarely collide (if one does, the
    /// append's checks still decide).
    pub async fn dispatch_once(&self) -> Result<usize, JobsError> {
        let free = self.held.available_permits().min(CLAIM_BATCH_MAX);
        if free == 0 {
            return Ok(0);
        }
        let Ok(permits) = self.held.clone().try_acquire_many_owned(free as u32) else { return Ok(0) };
        let picked = self.index.pick(self.now(), free as i64).await?;
        let claimed = if picked.jobs.is_empty() {
            Ok(Vec::new())
        } else {
            let picks: Vec<(JobId, Option<i64>)> = picked.jobs.iter().map(|job| (job.job_id, Some(job.share_tag))).collect();
            self.jobs.dispatch_many(&picks, self.provider.name(), &self.config.worker_id).await
        };
        // The claim has committed (or failed): the turn goes back while this worker
        // starts what it claimed (the next picker waits for the release, not for us).
        tokio::spawn(picked.hold.release());
        let claimed = claimed?;
        let started = claimed.len();
        self.prefetch_artifact_keys(&claimed).await;
        let mut permits = permits;
        for job in claimed {
            // One permit per started job; the unused rest go back when `permits` drops.
            let permit = permits.split(1).unwrap_or_else(|| unreachable!("one permit per claimed job was taken"));
            let Some(job_id) = job.aggregate.job_id else { continue };
            let held = self.leases.hold(job_id, job.aggregate.attempt);
            let attempt = job.aggregate.attempt;
            let worker = self.clone();
            // The job's span: every line of its run (provider calls, ending, credit
            // movements) carries its ids.
            let span = job_span(&job.aggregate);
            tokio::spawn(
                async move {
                    if let Err(error) = worker.execute(job).await {
                        worker.let_go(job_id, attempt, &error).await;
                    }
                    drop(held);
                    drop(permit);
                    worker.slot_freed.notify_one();
                }
                .instrument(span),
            );
        }
        Ok(started)
    }

    /// Runs one claimed attempt of a job: from its first step not recorded until it waits
    /// on the provider, ends, or is put back for a retry.
    async fn execute(&self, claimed: Loaded<GenerationJob>) -> Result<(), JobsError> {
        let job = claimed.aggregate.clone();
        let context = self.durably("reading the job's context", || self.context(&job)).await?;
        let context = RunContext { slots: Some(self.slots.clone()), ..context };
        self.run_steps(job, Some(claimed), &context).await
    }

    /// A job's run failed with `error` and the worker lets the job go. Unless the error
    /// says the job moved on without this attempt, it is handed back to the queue at once
    /// (a retry of this attempt); if even that cannot be recorded (the database is still
    /// away), its lease lapses and any worker's upkeep takes it back.
    async fn let_go(&self, job_id: JobId, attempt: u32, error: &JobsError) {
        if matches!(error, JobsError::Job(JobError::StaleAttempt { .. } | JobError::NotInProgress(_) | JobError::AlreadyFinished(_))) {
            tracing::info!(%job_id, %error, "the job moved on without this attempt");
            return;
        }
        tracing::error!(%job_id, %error, "job run failed; handing the job back");
        let reason = format!("the worker's run failed: {error}");
        self.stats.error(&reason, self.now());
        if let Err(error) = self.jobs.retry_later(job_id, Some(attempt), &reason, self.now()).await {
            tracing::warn!(%job_id, %error, "the job was not handed back; its lease will lapse");
        }
    }

    /// What a job's requests need besides the job: its plan (see [`steps`]), the model
    /// artifact it builds on and the reference model's characteristics.
    async fn context(&self, job: &GenerationJob) -> Result<RunContext, JobsError> {
        let input = job.input.as_ref().ok_or(JobsError::NotFound)?;
        let model_artifact_key = match input.base_version() {
            Some(version) => self.artifact_key(input.model_id(), version).await?,
            None => None,
        };
        let reference = match input {
            JobInput::ModelCreation { reference_model_id, .. } => self.index.reference_characteristics(reference_model_id).await?,
            JobInput::ModelRefinement { model_id, .. } => {
                let reference_model_id = self.jobs.model(*model_id).await?.aggregate.reference_model_id;
                self.index.reference_characteristics(&reference_model_id).await?
            }
            JobInput::ImageGeneration { .. } => None,
        };
        let plan = steps::plan(input, reference.as_ref(), self.jobs.training(), steps::uploaded_images(job), self.provider.images_per_request_max());
        Ok(RunContext { slots: None, plan, model_artifact_key, reference })
    }

    /// The loop of [`execute`](Self::execute): each pass runs the job's current step; a
    /// step that finishes at once is recorded and the next one runs.
    async fn run_steps(&self, mut job: GenerationJob, mut claimed: Option<Loaded<GenerationJob>>, context: &RunContext) -> Result<(), JobsError> {
        let (Some(job_id), Some(team_id), Some(input)) = (job.job_id, job.team_id, job.input.clone()) else {
            return Err(JobsError::NotFound);
        };
        let mut running = job.status == Some(JobStatus::Running);
        loop {
            let step = current_step(&context.plan, &job).cloned();
            let task = match &step {
                None => whole_generation(&input),
                Some(Step::Images { first, count, .. }) => Task::Images { first: *first, count: *count },
                // Recorded with the job's acceptance: never the step to run.
                Some(Step::Uploads { .. }) => return self.fail(job_id, job.attempt, "the training images sent with the job were not recorded").await,
                Some(Step::TrainingImages { prompt, count, .. }) => Task::TrainingImages { prompt: prompt.clone(), count: *count },
                Some(Step::TrainingSet) => {
                    let outputs = match self.zip_training_set(job_id, &job).await {
                        Ok(outputs) => outputs,
                        Err(message) => return self.retry_or_fail(job_id, job.attempt, &message).await,
                    };
                    match self.record_step(job_id, job.attempt, steps::TRAINING_SET_STEP, outputs).await? {
                        Some(next) => (job, claimed) = (next, None),
                        None => return Ok(()),
                    }
                    continue;
                }
                Some(Step::Training) => match self.training_task(&job, context) {
                    Ok(task) => task,
                    Err(message) => return self.retry_or_fail(job_id, job.attempt, &message).await,
                },
            };
            let request = ProviderRequest {
                job_id,
                team_id,
                attempt: job.attempt,
                input: input.clone(),
                task,
                model_artifact_key: context.model_artifact_key.clone(),
                reference: context.reference.clone(),
            };
            let submitted = {
                // A slot for the request only: storing what it made and ending the job
                // run outside it (bounded by the jobs held), so a slot never waits on a
                // commit.
                let _slot = match &context.slots {
                    None => None,
                    Some(slots) => match slots.clone().try_acquire_owned() {
                        Ok(slot) => Some(slot),
                        Err(_) => {
                            let slot = slots.clone().acquire_owned().await.ok();
                            // It waited in the local queue: if it was cancelled meanwhile,
                            // the provider is not asked (the ending refunded it already).
                            // Not known (a failed read): it is sent; its ending decides.
                            match self.jobs.job(job_id).await {
                                Ok(now) if !now.status.is_some_and(|s| s.is_active()) => {
                                    tracing::info!(%job_id, "job ended while it waited for a slot; not sent to the provider");
                                    return Ok(());
                                }
                                _ => slot,
                            }
                        }
                    },
                };
                self.submit(job_id, job.attempt, &mut running, request).await
            };
            match submitted {
                Ok(Submission::Finished(outcome)) => match self.apply_outcome(job_id, &job, step.as_ref(), claimed.take(), outcome).await? {
                    Some(next) => job = next,
                    None => return Ok(()),
                },
                Ok(Submission::Accepted { request_id }) => return self.accepted(job_id, job.attempt, request_id).await,
                Err(ProviderError::Transient(message)) => return self.retry_or_fail(job_id, job.attempt, &message).await,
                Err(ProviderError::Permanent(message)) => return self.fail(job_id, job.attempt, &message).await,
            }
        }
    }

    /// Sends a request to the provider. The job is recorded as running once the provider
    /// has its first request: an asynchronous provider's acceptance records it with the
    /// request id ([`accepted`](Self::accepted)); for a provider that answers in the call
    /// (the local renderer), once it has worked on the request for [`RUNNING_AFTER`] — a
    /// render answered sooner ends the job (or records its step) with no event of its own.
    async fn submit(&self, job_id: JobId, attempt: u32, running: &mut bool, request: ProviderRequest) -> Result<Submission, ProviderError> {
        let submit = self.provider.submit(request);
        if *running || !self.provider.works_in_call() {
            return submit.await;
        }
        tokio::pin!(submit);
        tokio::select! {
            biased;
            submitted = &mut submit => return submitted,
            () = tokio::time::sleep(RUNNING_AFTER) => {}
        }
        *running = true;
        if let Err(error) = self.jobs.progress(job_id, Some(attempt), None, None, Vec::new(), true).await {
            // Only the status shown meanwhile is behind; the run goes on.
            tracing::debug!(%job_id, %error, "the job was not recorded as running");
        }
        submit.await
    }

    /// Records the request id of an accepted submission (waiting out a database outage:
    /// the id is all that ties the paid request to its job); the job is running.
    async fn accepted(&self, job_id: JobId, attempt: u32, request_id: String) -> Result<(), JobsError> {
        let recorded = self
            .durably("recording the provider request", || {
                self.jobs.progress(job_id, Some(attempt), Some(request_id.clone()), None, Vec::new(), true)
            })
            .await;
        match recorded {
            // Cancelled while the submission was in flight, or taken back from this
            // attempt: the request has no job to report to, so stop it at the provider
            // (best effort).
            Err(JobsError::Job(JobError::NotInProgress(_) | JobError::StaleAttempt { .. })) => {
                tracing::info!(%job_id, %request_id, "job ended during submission; cancelling the provider request");
                if let Err(error) = self.provider.cancel(&request_id).await {
                    tracing::warn!(%job_id, %error, "provider cancel failed");
                }
                Ok(())
            }
            other => other,
        }
    }

    /// Acts on the outcome of the job's request for `step`: a training-images step's images
    /// are stored with their captions and the step recorded (the job as it now stands is
    /// returned, to go on); the last request's outcome, or any failure, ends the job.
    async fn apply_outcome(
        &self,
        job_id: JobId,
        job: &GenerationJob,
        step: Option<&Step>,
        claimed: Option<Loaded<GenerationJob>>,
        outcome: ProviderOutcome,
    ) -> Result<Option<GenerationJob>, JobsError> {
        match (step, outcome) {
            // A part of a split generation before the last: its images are stored where
            // the job's numbering puts them and the part recorded; the next part goes on.
            (Some(step @ Step::Images { first, last: false, .. }), ProviderOutcome::Completed(files)) => {
                match self.store_outputs(job_id, job, files, *first).await {
                    Ok(outputs) => self.record_step(job_id, job.attempt, &step.name(), outputs).await,
                    Err(message) => self.retry_or_fail(job_id, job.attempt, &message).await.map(|()| None),
                }
            }
            (Some(step @ Step::TrainingImages { batch, caption, .. }), ProviderOutcome::Completed(files)) => {
                match self.store_training_images(job_id, job, *batch, caption, files).await {
                    Ok(outputs) => self.record_step(job_id, job.attempt, &step.name(), outputs).await,
                    Err(message) => self.retry_or_fail(job_id, job.attempt, &message).await.map(|()| None),
                }
            }
            // No request is out while the worker zips: a result now is an earlier step's,
            // already recorded (its request id was cleared with it).
            (Some(Step::TrainingSet), _) => {
                tracing::warn!(%job_id, "a provider result arrived while the training set is made; ignored");
                Ok(None)
            }
            (step, outcome) => {
                let first = match step {
                    Some(Step::Images { first, .. }) => *first,
                    _ => 0,
                };
                self.finish_claimed(job_id, job, claimed, outcome, first).await.map(|()| None)
            }
        }
    }

    /// Records a step run by `attempt`; `None` when the job ended meanwhile (what the step
    /// stored is deleted: the ending deleted what was there before) or was retried (the
    /// newer attempt runs the step again, over the same keys: they are left to it), or when
    /// another delivery of the same result recorded the step first (fal may deliver a
    /// webhook twice at once, and a status check may race it): that one goes on to the
    /// next step, so the next request is made, and paid, once.
    async fn record_step(&self, job_id: JobId, attempt: u32, step: &str, outputs: Vec<JobOutput>) -> Result<Option<GenerationJob>, JobsError> {
        // A try after one whose outcome was lost (the database went away) may find the
        // step recorded by that try: it is still this call's to go on from.
        let tried = AtomicBool::new(false);
        let recorded = self
            .durably("recording a step", || {
                let retried = tried.swap(true, Ordering::Relaxed);
                let outputs = outputs.clone();
                async move { self.jobs.complete_step(job_id, attempt, step, outputs).await.map(|(job, recorded)| (job, recorded || retried)) }
            })
            .await;
        match recorded {
            Ok((job, true)) => Ok(Some(job)),
            Ok((_, false)) => {
                tracing::info!(%job_id, step, "the step was recorded by another delivery of its result; that one goes on");
                Ok(None)
            }
            // Completed meanwhile (another delivery went on and finished it): the step's
            // keys are the recorded ones; keep them.
            Err(JobsError::Job(JobError::AlreadyFinished("completed"))) => {
                tracing::info!(%job_id, step, "the job was completed by another delivery; nothing to do");
                Ok(None)
            }
            Err(JobsError::Job(JobError::AlreadyFinished(status))) => {
                tracing::info!(%job_id, step, status, "job ended while its step ran; deleting what the step stored");
                let keys: Vec<String> = outputs.into_iter().map(|o| o.key).collect();
                if let Err(error) = self.objects.delete_many(&keys).await {
                    tracing::warn!(%job_id, %error, "the step's objects were not deleted");
                }
                Ok(None)
            }
            Err(JobsError::Job(error @ (JobError::NotInProgress(_) | JobError::StaleAttempt { .. }))) => {
                tracing::info!(%job_id, step, %error, "the job was retried while this attempt's step ran; the newer attempt goes on");
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }

    /// Stores a batch of training images, each with its caption (`.txt` of the same name).
    async fn store_training_images(
        &self,
        job_id: JobId,
        job: &GenerationJob,
        batch: u32,
        caption: &str,
        files: Vec<ProducedFile>,
    ) -> Result<Vec<JobOutput>, String> {
        let (Some(team), Some(input)) = (job.team_id, job.input.as_ref()) else {
            return Err("job has no team".into());
        };
        if files.is_empty() {
            return Err("the provider made no training images".into());
        }
        let mut outputs = Vec::with_capacity(files.len() * 2);
        for (index, file) in files.into_iter().enumerate() {
            let key = |ext| steps::training_image_key(team, input, batch, index as u32, ext).ok_or("not a model job");
            outputs.push(self.put(job_id, &key("png")?, file.bytes, &file.content_type).await?);
            outputs.push(self.put(job_id, &key("txt")?, caption.as_bytes().to_vec(), "text/plain; charset=utf-8").await?);
        }
        Ok(outputs)
    }

    /// Zips the job's training images and captions (after the set of the version a
    /// refinement builds on) and stores the zip beside the new version.
    async fn zip_training_set(&self, job_id: JobId, job: &GenerationJob) -> Result<Vec<JobOutput>, String> {
        let (Some(team), Some(input)) = (job.team_id, job.input.as_ref()) else {
            return Err("job has no team".into());
        };
        let version = steps::version_made(input).ok_or("not a model job")?;
        let mut files = Vec::new();
        for output in job.steps.iter().flat_map(|s| &s.outputs) {
            let bytes = self.objects.get(&output.key).await.map_err(|e| format!("reading {}: {e}", output.key))?;
            let bytes = bytes.ok_or_else(|| format!("training file {} is missing", output.key))?;
            let file = output.key.rsplit('/').next().unwrap_or(&output.key);
            files.push(SetFile { name: format!("v{version}-{file}"), bytes });
        }
        if !files.iter().any(|f| f.name.ends_with(".png")) {
            return Err("no training images were recorded".into());
        }
        let previous = match input {
            JobInput::ModelRefinement { from_version, .. } => {
                let key = steps::training_set_key(team, input, *from_version);
                // A version made before training sets existed has none: train on the new images.
                self.objects.get(&key).await.map_err(|e| format!("reading {key}: {e}"))?
            }
            _ => None,
        };
        let zip = tokio::task::spawn_blocking(move || steps::zip_training_set(previous.as_deref(), &files))
            .await
            .map_err(|e| format!("zipping the training set: {e}"))??;
        let key = steps::training_set_key(team, input, version);
        Ok(vec![self.put(job_id, &key, zip, "application/zip").await?])
    }

    /// The trainer's task: a signed URL of the recorded training set.
    fn training_task(&self, job: &GenerationJob, context: &RunContext) -> Result<Task, String> {
        let set = job.steps.iter().find(|s| s.step == steps::TRAINING_SET_STEP).and_then(|s| s.outputs.first());
        let set = set.ok_or("no training set was recorded")?;
        let images_url = self.objects.signed_url(&set.key, TRAINING_SET_URL_TTL, self.now()).map_err(|e| e.to_string())?;
        let model_id = job.input.as_ref().map(JobInput::model_id).ok_or("job has no input")?;
        Ok(Task::Training { images_url, trigger_word: trigger_word(model_id), is_style: steps::is_style(context.reference.as_ref()) })
    }

    /// The artifact of a model's version. A version, once recorded, never changes, so
    /// found keys are remembered (bounded) instead of loading the model for every job.
    async fn artifact_key(&self, model_id: ModelId, version: u32) -> Result<Option<String>, JobsError> {
        let cached = self.artifacts.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(&(model_id, version)).cloned();
        if cached.is_some() {
            return Ok(cached);
        }
        let model = self.jobs.model(model_id).await?.aggregate;
        let key = model.versions.iter().find(|v| v.version == version).map(|v| v.artifact_key.clone());
        if let Some(key) = &key {
            self.remember_artifacts(vec![((model_id, version), key.clone())]);
        }
        Ok(key)
    }

    /// Adds found artifact keys to the bounded memory (it starts over when they would not
    /// fit).
    fn remember_artifacts(&self, found: Vec<((ModelId, u32), String)>) {
        let mut artifacts = self.artifacts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if artifacts.len() + found.len() > ARTIFACT_KEYS_CACHED_MAX {
            artifacts.clear();
        }
        artifacts.extend(found);
    }

    /// Loads, in one query, the models of a claim batch whose version artifacts this
    /// worker does not know yet, and remembers their keys: one read per batch instead of
    /// one per model. Best effort: a job whose key is still unknown loads its model itself.
    async fn prefetch_artifact_keys(&self, claimed: &[Loaded<GenerationJob>]) {
        let wanted: Vec<(ModelId, u32)> = {
            let artifacts = self.artifacts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let mut wanted: Vec<(ModelId, u32)> = claimed
                .iter()
                .filter_map(|job| job.aggregate.input.as_ref())
                .filter_map(|input| Some((input.model_id(), input.base_version()?)))
                .filter(|wanted| !artifacts.contains_key(wanted))
                .collect();
            wanted.sort_unstable();
            wanted.dedup();
            wanted
        };
        let mut ids: Vec<String> = wanted.iter().map(|(model, _)| model.to_string()).collect();
        ids.dedup();
        if ids.is_empty() {
            return;
        }
        let models = match self.jobs.aggregates().load_many::<CustomModel>(&ids).await {
            Ok(models) => models,
            Err(error) => {
                tracing::debug!(%error, "artifact keys not prefetched; jobs load their models");
                return;
            }
        };
        let found = models
            .iter()
            .filter_map(|model| Some((model.aggregate.model_id?, &model.aggregate.versions)))
            .flat_map(|(model_id, versions)| versions.iter().map(move |v| ((model_id, v.version), v.artifact_key.clone())))
            .filter(|(wanted_key, _)| wanted.binary_search(wanted_key).is_ok())
            .collect();
        self.remember_artifacts(found);
    }

    /// Acts on the outcome of the job's current request (a webhook, a status check): the
    /// last one ends the job with its files; a step's result is recorded and the job goes
    /// on to its next step.
    pub async fn finish(&self, job_id: JobId, job: &GenerationJob, outcome: ProviderOutcome) -> Result<(), JobsError> {
        // Held (and its lease renewed) while its result is stored and recorded, and any
        // next step runs.
        let (_held, renewing) = self.hold_and_renew(job_id, job.attempt);
        let _stop_renewing = AbortOnDrop(renewing);
        // A generation in one request: its outcome ends it, with no plan to look up.
        if let Some(JobInput::ImageGeneration { count, .. }) = &job.input {
            if steps::image_parts(*count, self.provider.images_per_request_max()).is_empty() {
                return self.finish_claimed(job_id, job, None, outcome, 0).await;
            }
        }
        let context = self.durably("reading the job's context", || self.context(job)).await?;
        let step = current_step(&context.plan, job).cloned();
        match self.apply_outcome(job_id, job, step.as_ref(), None, outcome).await? {
            Some(next) => self.run_steps(next, None, &context).await,
            None => Ok(()),
        }
    }

    /// `finish`, with the job as this worker's claim left it when known (its ending is
    /// then decided without loading it first). `first`: the number of the request's
    /// first image in its job (the last part of a split generation).
    async fn finish_claimed(
        &self,
        job_id: JobId,
        job: &GenerationJob,
        claimed: Option<Loaded<GenerationJob>>,
        outcome: ProviderOutcome,
        first: u32,
    ) -> Result<(), JobsError> {
        match outcome {
            ProviderOutcome::Failed { message } => self.fail(job_id, job.attempt, &message).await,
            ProviderOutcome::Completed(files) => {
                let stored = match self.store_outputs(job_id, job, files, first).await {
                    Ok(outputs) => outputs,
                    Err(message) => return self.retry_or_fail(job_id, job.attempt, &message).await,
                };
                // A split generation completes with the images of every part, in order.
                let outputs: Vec<JobOutput> = match &job.input {
                    Some(JobInput::ImageGeneration { .. }) => {
                        job.steps.iter().flat_map(|s| s.outputs.iter().cloned()).chain(stored.iter().cloned()).collect()
                    }
                    _ => stored.clone(),
                };
                let attempt = Some(job.attempt);
                let completed = match claimed {
                    // Decided on the claim's state first; a retry after an outage loads it.
                    Some(claimed) => match self.jobs.complete_claimed(claimed, outputs.clone()).await {
                        Err(error) if error.is_unavailable() => {
                            self.durably("completing the job", || self.jobs.complete(job_id, attempt, outputs.clone())).await
                        }
                        other => other,
                    },
                    None => self.durably("completing the job", || self.jobs.complete(job_id, attempt, outputs.clone())).await,
                };
                match completed {
                    Ok(_) => {
                        self.stats.jobs_done.fetch_add(1, Ordering::Relaxed);
                        Ok(())
                    }
                    // Completed by another delivery of the same result (a webhook racing a
                    // status check): it stored the same keys and recorded them; keep them.
                    Err(JobsError::Job(domain::jobs::JobError::AlreadyFinished("completed"))) => {
                        tracing::info!(%job_id, "another delivery of the result completed the job; nothing to do");
                        Ok(())
                    }
                    Err(JobsError::Job(domain::jobs::JobError::AlreadyFinished(how))) => {
                        // Cancelled (or failed) while it ran: the outputs are not kept (the
                        // ending deleted the recorded parts' images).
                        tracing::info!(%job_id, how, "job ended before its result arrived; discarding outputs");
                        let keys: Vec<String> = stored.into_iter().map(|o| o.key).collect();
                        let _ = self.objects.delete_many(&keys).await;
                        Ok(())
                    }
                    // Taken back from this attempt (its lease lapsed): the newer attempt writes
                    // the same keys, so nothing is deleted, and nothing is recorded.
                    Err(JobsError::Job(error @ (JobError::StaleAttempt { .. } | JobError::NotInProgress(_)))) => {
                        tracing::info!(%job_id, %error, "the job was taken back from this attempt; its result is not recorded");
                        Ok(())
                    }
                    Err(error) => Err(error),
                }
            }
        }
    }

    /// Fails the job for `attempt` and refunds it (waiting out a database outage); an
    /// attempt taken back meanwhile records nothing.
    async fn fail(&self, job_id: JobId, attempt: u32, reason: &str) -> Result<(), JobsError> {
        self.stats.error(reason, self.now());
        match self.durably("failing the job", || self.jobs.fail(job_id, Some(attempt), reason)).await {
            Ok(_) | Err(JobsError::Job(JobError::StaleAttempt { .. } | JobError::NotInProgress(_))) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Writes every file (retrying each a few times) before the job may complete: a job
    /// never completes pointing at an object that was not written. A generation's images
    /// are numbered from `first` (a part's place in its job).
    async fn store_outputs(&self, job_id: JobId, job: &GenerationJob, files: Vec<ProducedFile>, first: u32) -> Result<Vec<JobOutput>, String> {
        let (Some(team), Some(input)) = (job.team_id, job.input.as_ref()) else {
            return Err("job has no team".into());
        };
        let (team, job_text) = (team.to_string(), job_id.to_string());
        let mut outputs = Vec::with_capacity(files.len());
        for (index, file) in files.into_iter().enumerate() {
            let key = match input {
                JobInput::ImageGeneration { .. } => image_key(&team, &job_text, first + index as u32),
                JobInput::ModelCreation { model_id, .. } => model_asset_key(&team, &model_id.to_string(), 1, &file.name),
                JobInput::ModelRefinement { model_id, from_version, .. } => {
                    model_asset_key(&team, &model_id.to_string(), from_version + 1, &file.name)
                }
            };
            outputs.push(self.put(job_id, &key, file.bytes, &file.content_type).await?);
        }
        Ok(outputs)
    }

    /// Writes one object (retrying a few times) and describes it as an output.
    async fn put(&self, job_id: JobId, key: &str, bytes: Vec<u8>, content_type: &str) -> Result<JobOutput, String> {
        let output = stored_output(key, content_type, &bytes);
        let retries = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_times(self.config.storage_attempts_max.saturating_sub(1) as usize);
        (|| self.objects.put(key, bytes.clone(), content_type))
            .retry(retries)
            .notify(|error, delay| tracing::warn!(%job_id, %key, %error, ?delay, "storing output failed; retrying"))
            .await
            .map_err(|error| format!("storing {key} failed: {error}"))?;
        Ok(output)
    }

    async fn retry_or_fail(&self, job_id: JobId, attempt: u32, message: &str) -> Result<(), JobsError> {
        if attempt >= self.config.attempts_max {
            let reason = format!("gave up after {attempt} attempts: {message}");
            return self.fail(job_id, attempt, &reason).await;
        }
        let delay = chrono::Duration::from_std(self.config.backoff(attempt)).unwrap_or(chrono::Duration::seconds(1));
        tracing::info!(%job_id, attempt, %message, "transient failure; retrying later");
        self.stats.error(message, self.now());
        let retry = || self.jobs.retry_later(job_id, Some(attempt), message, self.now() + delay);
        match self.durably("scheduling a retry", retry).await {
            // Ended or taken back meanwhile: nothing left for this attempt to do.
            Err(JobsError::Job(JobError::StaleAttempt { .. } | JobError::NotInProgress(_))) => Ok(()),
            other => other,
        }
    }

    /// One pass of queue upkeep.
    pub async fn maintain(&self) -> Result<(), JobsError> {
        let now = self.now();
        let ago = |d: Duration| now - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::seconds(10));
        let lost = Lost { now, heartbeat_before: ago(self.config.worker_lost_after), unleased_before: ago(self.config.lease_ttl) };
        for job in self.index.orphaned(lost, MAINTENANCE_BATCH_MAX).await? {
            if self.leases.contains(job.job_id) {
                // This worker holds it (its lease renewal just failed, say): not lost.
                continue;
            }
            let span = tracing::info_span!("job", job_id = %job.job_id);
            self.check_with_provider(&job, "its worker stopped or let it go").instrument(span).await?;
        }
        let quiet = now - chrono::Duration::from_std(self.config.stale_after).unwrap_or(chrono::Duration::seconds(300));
        for job in self.index.without_news(quiet, MAINTENANCE_BATCH_MAX).await? {
            let span = tracing::info_span!("job", job_id = %job.job_id);
            self.check_with_provider(&job, "no news").instrument(span).await?;
        }
        for (job_id, team) in self.index.queued_without_plan(MAINTENANCE_BATCH_MAX).await? {
            let _ = self.jobs.cancel(team, job_id, "the team's plan runs no jobs", "dispatcher").await;
        }
        Ok(())
    }

    /// Asks the provider where a job stands and acts on the answer.
    async fn check_with_provider(&self, active: &ActiveJob, why: &str) -> Result<(), JobsError> {
        let job = self.jobs.job(active.job_id).await?;
        if !job.status.is_some_and(|s| s.is_active()) {
            return Ok(());
        }
        if active.provider_request_id.is_some() && active.provider_request_id != job.provider_request_id {
            // The job moved on (a step recorded) since the index was read.
            return Ok(());
        }
        let status = match &active.provider_request_id {
            Some(request_id) => self.provider.status(request_id).await,
            None => Ok(ProviderStatus::Unknown),
        };
        match status {
            Ok(ProviderStatus::Finished(outcome)) => self.finish(active.job_id, &job, outcome).await,
            Ok(ProviderStatus::Running { logs }) => self.jobs.progress(active.job_id, Some(job.attempt), None, None, logs, true).await,
            Ok(ProviderStatus::Queued { position }) => {
                self.jobs.progress(active.job_id, Some(job.attempt), None, position, Vec::new(), false).await
            }
            Ok(ProviderStatus::Unknown) => {
                let lost = if active.provider_request_id.is_some() { "the provider lost the request" } else { "no provider request was recorded" };
                tracing::warn!(job_id = %active.job_id, why, lost, "taking the job back; retrying it");
                self.retry_or_fail(active.job_id, job.attempt, &format!("{why}; {lost}")).await
            }
            Err(error) => {
                tracing::warn!(job_id = %active.job_id, %error, "provider status check failed");
                Ok(())
            }
        }
    }
}

/// Aborts a task when dropped (the lease renewal of a run that is over).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
