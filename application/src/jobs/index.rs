//! The job index port: queries over the job read model that the dispatcher and the
//! subscription policy need. Implemented in `infrastructure::job_index` (same SQL on
//! PostgreSQL and SQLite).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::{JobId, TeamId};

use crate::event_store::EventStoreError;

/// A job a worker holds (or held) that may need attention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveJob {
    pub job_id: JobId,
    pub team_id: TeamId,
    pub worker: Option<String>,
    pub provider_request_id: Option<String>,
}

/// What [`JobIndex::pick`] holds for its caller until released (or dropped, which also
/// ends it, a little later): the dispatch turn; other pickers wait for it meanwhile.
#[async_trait]
pub trait PickHold: Send {
    async fn release(self: Box<Self>);
}

/// A job picked for a claim: its team, and its share tag (the team's virtual time after
/// it, recorded with the claim: see `domain::share`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PickedJob {
    pub job_id: JobId,
    pub team_id: TeamId,
    pub share_tag: i64,
}

/// Jobs picked for one claim, and the hold on the dispatch turn.
pub struct Picked {
    pub jobs: Vec<PickedJob>,
    pub hold: Box<dyn PickHold>,
}

/// What makes an active job lost (see [`JobIndex::orphaned`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lost {
    pub now: DateTime<Utc>,
    /// A worker silent since then is gone.
    pub heartbeat_before: DateTime<Utc>,
    /// A job claimed (or last changed) before then whose lease was never renewed.
    pub unleased_before: DateTime<Utc>,
}

/// What a worker reports with each heartbeat: jobs it completed since it started, and
/// the last error one of its jobs met (with when).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerReport {
    pub jobs_done: u64,
    pub last_error: Option<(String, DateTime<Utc>)>,
}

/// What a heartbeat answers the worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerOrders {
    /// An operator drained the worker: it claims nothing new, finishes what it holds.
    pub draining: bool,
}

#[async_trait]
pub trait JobIndex: Send + Sync + 'static {
    /// Up to `limit` jobs to claim, in the order of [`JobIndex::dispatchable`], under the
    /// dispatch turn: one picker of any process at a time, until the caller releases the
    /// hold after its claim committed, so the next pick sees that claim and every pick
    /// ranks all ready teams together. Fairness and saved collisions only: plan limits
    /// and single claims hold without it (the claim's append checks both). Workers claim
    /// ahead of their free slots, so a turn hands out many jobs.
    async fn pick(&self, now: DateTime<Utc>, limit: i64) -> Result<Picked, EventStoreError>;

    /// Up to `limit` queued jobs that may start now, in plan-weighted fair order
    /// (`domain::share`: each ready team's share of the jobs proportional to its plan's
    /// weight, ties to the team served least recently, each team's jobs in their order),
    /// and only as many per team as its plan has free slots.
    async fn dispatchable(&self, now: DateTime<Utc>, limit: i64) -> Result<Vec<PickedJob>, EventStoreError>;

    /// The team's jobs that are still queued.
    async fn queued_of_team(&self, team: TeamId) -> Result<Vec<JobId>, EventStoreError>;

    /// How many of the team's jobs are queued.
    async fn queued_count(&self, team: TeamId) -> Result<i64, EventStoreError>;

    /// Queued jobs of teams whose plan runs no jobs (limit 0), at most `limit`.
    async fn queued_without_plan(&self, limit: i64) -> Result<Vec<(JobId, TeamId)>, EventStoreError>;

    /// Active (dispatched or running) jobs that nobody works on, at most `limit`: those
    /// whose worker has not beaten its heart since `lost.heartbeat_before`, and those with
    /// no provider request outstanding whose lease lapsed (renewed last before
    /// `lost.now`, or never renewed and unchanged since `lost.unleased_before`), even
    /// while their worker lives.
    async fn orphaned(&self, lost: Lost, limit: i64) -> Result<Vec<ActiveJob>, EventStoreError>;

    /// Renews `worker`'s lease on each of `held` (job, attempt) until `until`, and drops
    /// its leases on any other job (it let them go).
    async fn renew_leases(&self, worker: &str, held: &[(JobId, u32)], until: DateTime<Utc>) -> Result<(), EventStoreError>;

    /// Active jobs with a provider request and no news since `updated_before`.
    async fn without_news(&self, updated_before: DateTime<Utc>, limit: i64) -> Result<Vec<ActiveJob>, EventStoreError>;

    /// Records that `worker` is alive at `now`.
    async fn heartbeat(&self, worker: &str, now: DateTime<Utc>) -> Result<(), EventStoreError>;

    /// A heartbeat with the worker's report; answers whether it is drained.
    async fn report(&self, worker: &str, now: DateTime<Utc>, report: &WorkerReport) -> Result<WorkerOrders, EventStoreError>;

    /// Whether `worker` has ever sent a heartbeat.
    async fn worker_seen(&self, worker: &str) -> Result<bool, EventStoreError>;

    /// A reference model's characteristics (JSON), for model creation requests.
    async fn reference_characteristics(&self, reference_model_id: &str) -> Result<Option<serde_json::Value>, EventStoreError>;

    /// An active reference model's complexity factor (milli-units), for pricing model
    /// creation; `None` for an unknown or inactive one.
    async fn reference_complexity(&self, reference_model_id: &str) -> Result<Option<i64>, EventStoreError>;

    /// The job that a provider request belongs to.
    async fn job_of_request(&self, provider_request_id: &str) -> Result<Option<JobId>, EventStoreError>;
}
