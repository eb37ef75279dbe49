//! The jobs a worker holds, and its leases on them.
//!
//! A worker holds a job from its claim until its run lets it go: ended, put back in the
//! queue, or handed to the provider (a request recorded: from then on the provider's
//! answer — a webhook, a status poll — moves the job, not this worker). While it holds a
//! job it renews the job's lease with each heartbeat ([`JobIndex::renew_leases`]); a job
//! it stopped holding without letting it go properly (a lost connection it could not wait
//! out, a task that died) stops being renewed, and once the lease lapses any worker's
//! upkeep takes the job back — even while this worker lives. What this worker might still
//! try to record for it afterwards names its attempt and is refused (`StaleAttempt`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use domain::JobId;

use super::JobsError;

/// The jobs one worker holds, each with the attempt it holds it for.
#[derive(Debug, Default)]
pub struct Held {
    jobs: Mutex<HashMap<JobId, u32>>,
}

/// One held job; dropping it lets the job go.
#[derive(Debug)]
pub struct HeldJob {
    held: Arc<Held>,
    job_id: JobId,
    attempt: u32,
}

impl Held {
    fn jobs(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, u32>> {
        self.jobs.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Holds `job_id` for `attempt` until the returned value is dropped.
    pub fn hold(self: &Arc<Self>, job_id: JobId, attempt: u32) -> HeldJob {
        self.jobs().insert(job_id, attempt);
        HeldJob { held: self.clone(), job_id, attempt }
    }

    /// Every held job with its attempt, to renew their leases.
    pub fn all(&self) -> Vec<(JobId, u32)> {
        self.jobs().iter().map(|(job, attempt)| (*job, *attempt)).collect()
    }

    pub fn contains(&self, job_id: JobId) -> bool {
        self.jobs().contains_key(&job_id)
    }

    pub fn len(&self) -> usize {
        self.jobs().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for HeldJob {
    fn drop(&mut self) {
        let mut jobs = self.held.jobs();
        // A newer hold of the same job (a later attempt) is not this one's to end.
        if jobs.get(&self.job_id) == Some(&self.attempt) {
            jobs.remove(&self.job_id);
        }
    }
}

/// Runs `op`, one database step of a job's run, again while the database is unavailable
/// (a lost connection, a server restarting or failing over), with jittered exponential
/// backoff for at most `wait_max` in all, so the worker keeps the job — and what it holds
/// for it: a provider request id, stored outputs — until the database answers, instead of
/// dropping it. Every step so retried is decided again on the state as it then is, so one
/// whose commit outcome was lost records nothing twice. Gives up at once when `stopping`.
pub async fn durably<T, Fut>(
    what: &'static str,
    wait_max: Duration,
    stopping: &AtomicBool,
    op: impl FnMut() -> Fut,
) -> Result<T, JobsError>
where
    Fut: Future<Output = Result<T, JobsError>>,
{
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .with_total_delay(Some(wait_max))
        .without_max_times();
    op.retry(backoff)
        .when(|error: &JobsError| error.is_unavailable() && !stopping.load(Ordering::Relaxed))
        .notify(|error, delay| tracing::warn!(%error, ?delay, what, "database unavailable; the job is kept and the step tried again"))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_is_held_until_its_hold_is_dropped_and_a_newer_hold_survives_an_older_drop() {
        let held = Arc::new(Held::default());
        let job = JobId::new(uuid::Uuid::from_u128(7));
        let first = held.hold(job, 1);
        assert_eq!(held.all(), vec![(job, 1)]);
        let second = held.hold(job, 2);
        drop(first);
        assert!(held.contains(job), "the second attempt still holds it");
        drop(second);
        assert!(held.is_empty());
    }
}
