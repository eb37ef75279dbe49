//! What operators see of the use cases: one structured log event per job transition and
//! per credit movement, and the matching metrics (through the `metrics` facade: no I/O
//! here; the binary installs the Prometheus exporter).
//!
//! The events are emitted in the caller's task, after the append committed, so they sit
//! inside the caller's span: an HTTP request's `request_id`, or a worker's `job` span
//! (`team_id`, `job_id`). Each event also carries `team_id` and `job_id` itself, so
//! `grep <job_id>` on the log finds every transition and credit movement of a job, and
//! `grep <team_id>` every movement of a team's credits.
//!
//! Metric names (all prefixed `kiln_`) are listed in README's "Metrics" section; the
//! label values are closed sets (operation kinds, event types, outcomes), never ids.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::jobs::GenerationJob;
use domain::{TeamCreditsEvent, TeamId};

use crate::provider::{Provider, ProviderError, ProviderOutcome, ProviderRequest, ProviderStatus, Submission};

/// `metrics` names, shared with the exporter's bucket configuration and the docs.
pub mod names {
    pub const JOBS_SUBMITTED: &str = "kiln_jobs_submitted_total";
    pub const JOBS_DISPATCHED: &str = "kiln_jobs_dispatched_total";
    pub const JOBS_COMPLETED: &str = "kiln_jobs_completed_total";
    pub const JOBS_FAILED: &str = "kiln_jobs_failed_total";
    pub const JOBS_CANCELLED: &str = "kiln_jobs_cancelled_total";
    pub const JOBS_RETRIED: &str = "kiln_jobs_retried_total";
    pub const JOB_QUEUE_WAIT: &str = "kiln_job_queue_wait_seconds";
    pub const JOB_RUN: &str = "kiln_job_run_seconds";
    pub const CREDIT_OPERATIONS: &str = "kiln_credit_operations_total";
    pub const CREDIT_AMOUNT: &str = "kiln_credit_amount_total";
    pub const PROVIDER_CALLS: &str = "kiln_provider_calls_total";
    pub const PROVIDER_ERRORS: &str = "kiln_provider_errors_total";
    pub const PROVIDER_CALL_DURATION: &str = "kiln_provider_call_duration_seconds";
}

/// The span a worker runs one job attempt in: `team_id`, `job_id`, `kind`.
pub fn job_span(job: &GenerationJob) -> tracing::Span {
    tracing::info_span!("job", team_id = %team(job), job_id = %job_id(job), kind = kind(job), attempt = job.attempt)
}

/// A job was accepted (`JobQueued` + `CreditsReserved` committed).
pub fn job_queued(job: &GenerationJob) {
    let kind = kind(job);
    tracing::info!(team_id = %team(job), job_id = %job_id(job), kind, cost = job.cost, price_version = job.price_version, "job queued");
    metrics::counter!(names::JOBS_SUBMITTED, "kind" => kind).increment(1);
}

/// A worker claimed the job (`JobDispatched` committed).
pub fn job_dispatched(job: &GenerationJob, worker: &str) {
    let kind = kind(job);
    let wait = seconds_between(job.queued_at, job.dispatched_at);
    tracing::info!(
        team_id = %team(job), job_id = %job_id(job), kind, attempt = job.attempt, worker,
        provider = job.provider.as_deref().unwrap_or("-"), queue_wait_ms = (wait * 1000.0) as u64,
        "job dispatched"
    );
    metrics::counter!(names::JOBS_DISPATCHED, "kind" => kind).increment(1);
    metrics::histogram!(names::JOB_QUEUE_WAIT, "kind" => kind).record(wait);
}

/// News from the provider: the request it accepted, or the job started running.
pub fn job_progressed(job_id: domain::JobId, provider_request_id: Option<&str>, running: bool) {
    match provider_request_id {
        Some(request) => tracing::info!(%job_id, provider_request_id = request, running, "job sent to the provider"),
        None if running => tracing::info!(%job_id, "job running at the provider"),
        None => tracing::debug!(%job_id, "job progress"),
    }
}

/// A step of a multi-step job is recorded.
pub fn job_step_completed(job_id: domain::JobId, step: &str) {
    tracing::info!(%job_id, step, "job step completed");
}

/// The attempt ended without a result; the job goes back to the queue.
pub fn job_retry_scheduled(job_id: domain::JobId, reason: &str, retry_at: DateTime<Utc>) {
    tracing::warn!(%job_id, reason, %retry_at, "job retry scheduled");
    metrics::counter!(names::JOBS_RETRIED).increment(1);
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobEnd {
    Completed,
    Failed,
    Cancelled,
}

/// A job ended (`JobCompleted` / `JobFailed` / `JobCancelled` committed with the credit
/// change). `before` is the job as it stood before the ending.
pub fn job_ended(before: &GenerationJob, end: JobEnd, reason: Option<&str>, actor: &str, now: DateTime<Utc>) {
    let kind = kind(before);
    let (team_id, job_id) = (team(before), job_id(before));
    // Run time counts from the claim; a job cancelled while queued never ran.
    let run = before.dispatched_at.map(|from| seconds_between(Some(from), Some(now)));
    let run_ms = run.map(|s| (s * 1000.0) as u64);
    let (name, outcome) = match end {
        JobEnd::Completed => {
            tracing::info!(%team_id, %job_id, kind, run_ms, "job completed");
            (names::JOBS_COMPLETED, "completed")
        }
        JobEnd::Failed => {
            tracing::warn!(%team_id, %job_id, kind, run_ms, reason, "job failed");
            (names::JOBS_FAILED, "failed")
        }
        JobEnd::Cancelled => {
            tracing::info!(%team_id, %job_id, kind, run_ms, reason, actor, "job cancelled");
            (names::JOBS_CANCELLED, "cancelled")
        }
    };
    metrics::counter!(name, "kind" => kind).increment(1);
    if let Some(run) = run {
        metrics::histogram!(names::JOB_RUN, "kind" => kind, "outcome" => outcome).record(run);
    }
}

/// Credit movements (and plan changes) a committed team command recorded. `available`
/// is the team's balance after them.
pub fn credits_recorded(team_id: TeamId, events: &[TeamCreditsEvent], available: i64) {
    use TeamCreditsEvent as E;
    for event in events {
        let kind = event.name();
        let amount = match event {
            E::TeamOpened { name, plan, .. } => {
                tracing::info!(%team_id, team_name = name.as_str(), plan = plan.as_str(), "team opened");
                None
            }
            E::PlanChanged { from, to, .. } => {
                tracing::info!(%team_id, from = from.as_str(), to = to.as_str(), "plan changed");
                None
            }
            E::SubscriptionExpired { from, .. } => {
                tracing::info!(%team_id, from = from.as_str(), "subscription expired");
                None
            }
            E::CreditsGranted { grant_id, amount, source, expires_at, .. } => {
                let expires_at = expires_at.map(|t| t.to_rfc3339());
                tracing::info!(%team_id, %grant_id, amount = amount.get(), source = ?source, expires_at, available, "credits granted");
                Some(amount.get())
            }
            E::CreditsReserved { reservation_id, amount, operation, price_version, .. } => {
                tracing::info!(%team_id, job_id = %reservation_id, amount = amount.get(), kind = operation.as_str(), price_version, available, "credits reserved");
                Some(amount.get())
            }
            E::CreditsDeducted { reservation_id, amount, .. } => {
                tracing::info!(%team_id, job_id = %reservation_id, amount = amount.get(), available, "credits deducted");
                Some(amount.get())
            }
            E::CreditsRefunded { reservation_id, amount, .. } => {
                tracing::info!(%team_id, job_id = %reservation_id, amount = amount.get(), available, "credits refunded");
                Some(amount.get())
            }
            E::CreditsAdjusted { adjustment_id, amount, reason, actor, .. } => {
                tracing::info!(%team_id, %adjustment_id, amount = amount.get(), reason = reason.as_str(), actor = actor.as_str(), available, "credits adjusted");
                Some(amount.get().abs())
            }
            E::CreditsExpired { grant_id, amount, .. } => {
                tracing::info!(%team_id, %grant_id, amount = amount.get(), available, "credits expired");
                Some(amount.get())
            }
            E::DispatchPaused { .. } => {
                tracing::info!(%team_id, "dispatch paused");
                None
            }
            E::DispatchResumed { .. } => {
                tracing::info!(%team_id, "dispatch resumed");
                None
            }
            E::OperatorActed { act, action, subject, .. } => {
                let reason = act.reason.as_deref().unwrap_or("");
                tracing::info!(%team_id, operator_id = %act.operator_id, operator = act.operator.as_str(), action = action.as_str(), subject = subject.as_deref(), reason, "operator acted");
                None
            }
        };
        if let Some(amount) = amount {
            metrics::counter!(names::CREDIT_OPERATIONS, "type" => kind).increment(1);
            metrics::counter!(names::CREDIT_AMOUNT, "type" => kind).increment(amount.unsigned_abs());
        }
    }
}

/// A provider whose every call is counted and timed (`kiln_provider_calls_total`,
/// `kiln_provider_errors_total`, `kiln_provider_call_duration_seconds`, by provider,
/// call and outcome). Wraps whichever provider is configured.
pub struct MeteredProvider(pub Arc<dyn Provider>);

impl MeteredProvider {
    fn observe<T>(&self, call: &'static str, started: Instant, result: &Result<T, ProviderError>) {
        let provider = self.0.name();
        let outcome = match result {
            Ok(_) => "ok",
            Err(ProviderError::Transient(_)) => "transient_error",
            Err(ProviderError::Permanent(_)) => "permanent_error",
        };
        metrics::counter!(names::PROVIDER_CALLS, "provider" => provider, "call" => call, "outcome" => outcome).increment(1);
        if let Err(error) = result {
            tracing::warn!(provider, call, %error, "provider call failed");
            metrics::counter!(names::PROVIDER_ERRORS, "provider" => provider, "call" => call, "outcome" => outcome).increment(1);
        }
        metrics::histogram!(names::PROVIDER_CALL_DURATION, "provider" => provider, "call" => call).record(started.elapsed().as_secs_f64());
    }
}

#[async_trait]
impl Provider for MeteredProvider {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn works_in_call(&self) -> bool {
        self.0.works_in_call()
    }

    fn images_per_request_max(&self) -> Option<u32> {
        self.0.images_per_request_max()
    }

    async fn submit(&self, request: ProviderRequest) -> Result<Submission, ProviderError> {
        let started = Instant::now();
        let result = self.0.submit(request).await;
        self.observe("submit", started, &result);
        if let Ok(Submission::Finished(ProviderOutcome::Failed { message })) = &result {
            tracing::warn!(provider = self.0.name(), message = message.as_str(), "provider refused the job");
        }
        result
    }

    async fn status(&self, request_id: &str) -> Result<ProviderStatus, ProviderError> {
        let started = Instant::now();
        let result = self.0.status(request_id).await;
        self.observe("status", started, &result);
        result
    }

    async fn cancel(&self, request_id: &str) -> Result<(), ProviderError> {
        let started = Instant::now();
        let result = self.0.cancel(request_id).await;
        self.observe("cancel", started, &result);
        result
    }
}

fn kind(job: &GenerationJob) -> &'static str {
    job.input.as_ref().map_or("unknown", |input| input.operation().as_str())
}

fn team(job: &GenerationJob) -> String {
    job.team_id.map_or_else(|| "-".to_string(), |t| t.to_string())
}

fn job_id(job: &GenerationJob) -> String {
    job.job_id.map_or_else(|| "-".to_string(), |j| j.to_string())
}

fn seconds_between(from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> f64 {
    match (from, to) {
        (Some(from), Some(to)) => ((to - from).num_milliseconds().max(0) as f64) / 1000.0,
        _ => 0.0,
    }
}
