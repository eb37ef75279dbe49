//! The operator's read side: across every team (the only queries not scoped to one
//! team — only operators reach them, through the `Operator` extractor or an
//! `OpsSession`). Teams with their money and queue; each list is bounded.

use chrono::{DateTime, Utc};
use infrastructure::{db::Database, db_fetch_all};
use serde::Serialize;
use utoipa::ToSchema;

use super::QueryError;

/// A team as the operator's list shows it.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct TeamRow {
    pub team_id: String,
    pub name: String,
    pub plan: String,
    /// Credits the team can spend now.
    pub available: i64,
    /// Credits held by jobs that have not ended.
    pub reserved: i64,
    /// Jobs dispatched or running now.
    pub running: i64,
    /// Jobs waiting in the queue.
    pub queued: i64,
    /// The team's latest credit event (a grant, reservation, deduction, …).
    pub last_activity_at: DateTime<Utc>,
}

/// Teams whose name contains `search` (any case) or whose id is `search`, in id order
/// (ids are UUIDv7: opening order) after `after`, at most `limit`.
pub async fn teams(db: &Database, search: Option<&str>, after: Option<&str>, limit: i64) -> Result<Vec<TeamRow>, QueryError> {
    let pattern = search.map(super::like_pattern);
    let sql = format!(
        "SELECT b.team_id, b.name, b.plan, b.available, b.reserved, \
                CAST(COALESCE(d.running, 0) AS BIGINT) AS running, CAST(COALESCE(d.queued, 0) AS BIGINT) AS queued, \
                b.updated_at AS last_activity_at \
         FROM team_balances b LEFT JOIN team_dispatch d ON d.team_id = b.team_id \
         WHERE TRUE{}{} ORDER BY b.team_id LIMIT $4",
        super::given(search.is_some(), " AND (LOWER(b.name) LIKE $1 ESCAPE '\\' OR b.team_id = $2)"),
        super::given(after.is_some(), " AND b.team_id > $3"),
    );
    Ok(db_fetch_all!(
        db,
        TeamRow,
        &sql,
        pattern,
        search.map(str::to_string),
        after.map(str::to_string),
        limit
    )?)
}

/// Rows the overview reads per series, at most (a busy hour beyond it shows its latest).
pub const ACTIVITY_ROWS_MAX: i64 = 20_000;

/// A job that ended: when, how, and when it was handed to a worker.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EndedJob {
    pub finished_at: DateTime<Utc>,
    pub status: String,
    pub dispatched_at: Option<DateTime<Utc>>,
}

/// Jobs that ended at or after `since`, newest first.
pub async fn ended_jobs(db: &Database, since: DateTime<Utc>) -> Result<Vec<EndedJob>, QueryError> {
    Ok(db_fetch_all!(
        db,
        EndedJob,
        "SELECT finished_at, status, dispatched_at FROM jobs WHERE finished_at IS NOT NULL AND finished_at >= $1 \
         ORDER BY finished_at DESC LIMIT $2",
        since,
        ACTIVITY_ROWS_MAX
    )?)
}

/// A money movement of a job: reserved, deducted or refunded.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Movement {
    pub occurred_at: DateTime<Utc>,
    pub entry_type: String,
    pub amount: i64,
}

/// Reservations, deductions and refunds that occurred at or after `since` (the credit
/// history, which follows the log), newest first.
pub async fn movements(db: &Database, since: DateTime<Utc>) -> Result<Vec<Movement>, QueryError> {
    Ok(db_fetch_all!(
        db,
        Movement,
        "SELECT occurred_at, entry_type, amount FROM credit_ledger \
         WHERE occurred_at >= $1 AND entry_type IN ('reserved', 'deducted', 'refunded') ORDER BY occurred_at DESC LIMIT $2",
        since,
        ACTIVITY_ROWS_MAX
    )?)
}

/// What one plan's teams hold now: jobs queued, jobs running, and the slots their plans
/// allow in all.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PlanLoad {
    pub plan: String,
    pub queued: i64,
    pub running: i64,
    pub slots: i64,
}

pub async fn load_by_plan(db: &Database) -> Result<Vec<PlanLoad>, QueryError> {
    Ok(db_fetch_all!(
        db,
        PlanLoad,
        "SELECT b.plan, CAST(COALESCE(SUM(d.queued), 0) AS BIGINT) AS queued, CAST(COALESCE(SUM(d.running), 0) AS BIGINT) AS running, \
                CAST(COALESCE(SUM(d.running_limit), 0) AS BIGINT) AS slots \
         FROM team_balances b LEFT JOIN team_dispatch d ON d.team_id = b.team_id GROUP BY b.plan ORDER BY b.plan"
    )?)
}

/// Whether dispatch is paused for everyone, and the last change (by whom, why).
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct DispatchState {
    pub paused: bool,
    pub changed_at: Option<DateTime<Utc>>,
    pub changed_by: Option<String>,
    pub reason: Option<String>,
}

pub async fn dispatch_state(db: &Database) -> Result<DispatchState, QueryError> {
    let row = infrastructure::db_fetch_optional!(
        db,
        DispatchState,
        "SELECT paused, changed_at, changed_by, reason FROM dispatch_control WHERE id = $1",
        domain::dispatch::GLOBAL
    )?;
    Ok(row.unwrap_or(DispatchState { paused: false, changed_at: None, changed_by: None, reason: None }))
}

/// Teams whose own dispatch an operator paused (at most `limit`).
pub async fn paused_teams(db: &Database, limit: i64) -> Result<Vec<TeamRow>, QueryError> {
    Ok(db_fetch_all!(
        db,
        TeamRow,
        "SELECT b.team_id, b.name, b.plan, b.available, b.reserved, \
                CAST(d.running AS BIGINT) AS running, CAST(d.queued AS BIGINT) AS queued, b.updated_at AS last_activity_at \
         FROM team_dispatch d JOIN team_balances b ON b.team_id = d.team_id WHERE d.paused ORDER BY b.team_id LIMIT $1",
        limit
    )?)
}

/// Whether the team's own dispatch is paused.
pub async fn team_paused(db: &Database, team: domain::TeamId) -> Result<bool, QueryError> {
    let row = infrastructure::db_fetch_optional!(db, (bool,), "SELECT paused FROM team_dispatch WHERE team_id = $1", team.to_string())?;
    Ok(row.is_some_and(|(paused,)| paused))
}

/// A job as the operator's lists show it, with its team.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct OpsJobRow {
    pub job_id: String,
    pub team_id: String,
    pub team_name: String,
    pub kind: String,
    pub status: String,
    pub attempt: i32,
    pub cost: i64,
    pub error: Option<String>,
    /// The worker that holds (or last held) it.
    pub worker: Option<String>,
    pub queued_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Which jobs the operator's list shows (values validated by the caller).
#[derive(Debug, Default, Clone)]
pub struct OpsJobFilter<'a> {
    pub status: Option<&'a str>,
    pub kind: Option<&'a str>,
    pub team: Option<&'a str>,
    /// Queued before this instant (older than an age).
    pub queued_before: Option<DateTime<Utc>>,
    /// Part of the error text (any case).
    pub error: Option<&'a str>,
    /// Only stuck jobs: active and not updated since this instant, or held by a worker
    /// whose last heartbeat is older than `gone_before`.
    pub stuck: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

/// Jobs of every team, newest first, at most `limit`.
pub async fn jobs(db: &Database, filter: &OpsJobFilter<'_>, limit: i64) -> Result<Vec<OpsJobRow>, QueryError> {
    let (stale_before, gone_before) = filter.stuck.map(|(s, g)| (Some(s), Some(g))).unwrap_or((None, None));
    let sql = format!(
        "SELECT j.job_id, j.team_id, b.name AS team_name, j.kind, j.status, j.attempt, j.cost, j.error, j.worker, j.queued_at, j.updated_at \
         FROM jobs j JOIN team_balances b ON b.team_id = j.team_id \
         WHERE TRUE{}{}{}{}{}{} ORDER BY j.queued_at DESC, j.job_id DESC LIMIT $8",
        super::given(filter.status.is_some(), " AND j.status = $1"),
        super::given(filter.kind.is_some(), " AND j.kind = $2"),
        super::given(filter.team.is_some(), " AND j.team_id = $3"),
        super::given(filter.queued_before.is_some(), " AND j.queued_at < $4"),
        super::given(filter.error.is_some(), " AND LOWER(j.error) LIKE $5 ESCAPE '\\'"),
        super::given(
            filter.stuck.is_some(),
            " AND j.status IN ('dispatched', 'running') AND (j.updated_at < $6 \
              OR EXISTS (SELECT 1 FROM workers w WHERE w.worker_id = j.worker AND w.heartbeat_at < $7))"
        ),
    );
    Ok(db_fetch_all!(
        db,
        OpsJobRow,
        &sql,
        filter.status,
        filter.kind,
        filter.team,
        filter.queued_before,
        filter.error.map(super::like_pattern),
        stale_before,
        gone_before,
        limit
    )?)
}

/// A worker process as its heartbeats, leases and drain show it.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct WorkerRow {
    pub worker_id: String,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    /// Jobs it holds now (claimed ahead, at the provider, ending): its leases.
    pub jobs_held: i64,
    /// Jobs it completed since it started, and the last error one of its jobs met, as
    /// its last heartbeat reported them (the worker counts: `jobs.worker` has no index,
    /// and one would cost every dispatch its HOT update).
    pub jobs_done: i64,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    /// An operator drained it: it claims nothing new and finishes what it holds.
    pub draining: bool,
    /// Who drained it (or let it claim again) last, and why.
    pub drain_changed_by: Option<String>,
    pub drain_reason: Option<String>,
}

/// Every worker that has sent a heartbeat, latest heartbeat first, at most `limit`.
pub async fn workers(db: &Database, limit: i64) -> Result<Vec<WorkerRow>, QueryError> {
    Ok(db_fetch_all!(
        db,
        WorkerRow,
        "SELECT w.worker_id, w.started_at, w.heartbeat_at, \
                (SELECT CAST(COUNT(*) AS BIGINT) FROM job_leases l WHERE l.worker_id = w.worker_id) AS jobs_held, \
                w.jobs_done, w.last_error, w.last_error_at, COALESCE(d.draining, $2) AS draining, \
                d.changed_by AS drain_changed_by, d.reason AS drain_reason \
         FROM workers w LEFT JOIN worker_drains d ON d.worker_id = w.worker_id ORDER BY w.heartbeat_at DESC LIMIT $1",
        limit,
        false
    )?)
}

/// One recorded event of a job, as its timeline shows it.
#[derive(Debug, Clone)]
pub struct TimelineEntry {
    pub sequence: i64,
    pub event_type: String,
    pub occurred_at: Option<DateTime<Utc>>,
    pub worker: Option<String>,
    pub attempt: Option<i64>,
    pub provider_request_id: Option<String>,
    pub step: Option<String>,
    /// A failure's, cancel's or retry's reason.
    pub reason: Option<String>,
    /// Who recorded it (`actor` of the metadata: a key, an operator, a worker).
    pub actor: Option<String>,
}

/// Job `job_id`'s whole event timeline, oldest first (the caller checked the job is the
/// team's it names).
pub async fn job_timeline(store: &infrastructure::event_store::SqlEventStore, job_id: &str) -> Result<Vec<TimelineEntry>, application::event_store::EventStoreError> {
    use application::event_store::EventStore;
    let events = store.load_stream("GenerationJob", job_id, 0).await?;
    let text = |v: &serde_json::Value, key: &str| v.get(key).and_then(|x| x.as_str()).map(str::to_string);
    Ok(events
        .into_iter()
        .map(|e| TimelineEntry {
            sequence: e.sequence,
            occurred_at: text(&e.payload, "occurred_at").and_then(|t| DateTime::parse_from_rfc3339(&t).ok()).map(|t| t.with_timezone(&Utc)),
            worker: text(&e.payload, "worker"),
            attempt: e.payload.get("attempt").and_then(|a| a.as_i64()),
            provider_request_id: text(&e.payload, "provider_request_id"),
            step: text(&e.payload, "step"),
            reason: text(&e.payload, "reason"),
            actor: text(&e.metadata, "actor"),
            event_type: e.event_type,
        })
        .collect())
}
