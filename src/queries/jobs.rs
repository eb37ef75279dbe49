//! Jobs as the team sees them: the `jobs` read model, plan usage, and a job's recorded
//! events as a live stream.

use std::time::Duration;

use application::event_store::{EventStore, StoredEvent};
use chrono::{DateTime, Utc};
use domain::TeamId;
use infrastructure::db::Database;
use infrastructure::event_store::SqlEventStore;
use infrastructure::{db_fetch_all, db_fetch_optional};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::QueryError;

/// One job as clients see it. Every job shows its cost.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct JobView {
    pub job_id: String,
    /// model_creation | model_refinement | image_generation
    pub kind: String,
    /// queued | dispatched | running | completed | failed | cancelled
    pub status: String,
    pub model_id: String,
    /// Credits reserved for the job: deducted on completion, refunded on failure or cancel.
    pub cost_credits: i64,
    pub price_version: i64,
    pub attempt: i32,
    pub error: Option<String>,
    pub images_expired: bool,
    pub queued_at: DateTime<Utc>,
    pub dispatched_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

pub const JOB_COLUMNS: &str = "job_id, kind, status, model_id, cost AS cost_credits, price_version, attempt, error, \
     images_expired, queued_at, dispatched_at, finished_at, updated_at";

/// The team's job `job_id`; `None` for an unknown id or another team's job.
pub async fn job(db: &Database, team: TeamId, job_id: &str) -> Result<Option<JobView>, QueryError> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = $1 AND team_id = $2");
    Ok(db_fetch_optional!(db, JobView, &sql, job_id, team.to_string())?)
}

/// Which of the team's jobs a list shows (values already validated by the caller).
#[derive(Debug, Default, Clone)]
pub struct JobFilter<'a> {
    pub status: Option<&'a str>,
    pub kind: Option<&'a str>,
}

/// Up to `rows_max` of the team's jobs, newest first, after `(queued_at, job_id)`.
pub async fn list(
    db: &Database,
    team: TeamId,
    filter: &JobFilter<'_>,
    after: Option<(DateTime<Utc>, String)>,
    rows_max: i64,
) -> Result<Vec<JobView>, QueryError> {
    let (cursor_at, cursor_id) = after.map(|(at, id)| (Some(at), Some(id))).unwrap_or((None, None));
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE team_id = $1 AND ($2 IS NULL OR status = $2) AND ($3 IS NULL OR kind = $3) \
         AND ($4 IS NULL OR queued_at < $4 OR (queued_at = $4 AND job_id < $5)) \
         ORDER BY queued_at DESC, job_id DESC LIMIT $6"
    );
    Ok(db_fetch_all!(db, JobView, &sql, team.to_string(), filter.status, filter.kind, cursor_at, cursor_id, rows_max)?)
}

/// The team's plan and how much of its concurrency it uses.
#[derive(Debug, Clone)]
pub struct PlanUsage {
    pub plan: String,
    /// Jobs the plan runs at once.
    pub limit: i64,
    pub running: i64,
    pub queued: i64,
    /// An operator paused the team's dispatch: jobs wait in the queue until resumed.
    pub paused: bool,
}

pub async fn plan_usage(db: &Database, team: TeamId) -> Result<Option<PlanUsage>, QueryError> {
    let row = db_fetch_optional!(
        db,
        (String, i64, i64, i64, bool),
        "SELECT b.plan, CAST(COALESCE(d.running_limit, 0) AS BIGINT), CAST(COALESCE(d.running, 0) AS BIGINT), \
                CAST(COALESCE(d.queued, 0) AS BIGINT), COALESCE(d.paused, false) \
         FROM team_balances b LEFT JOIN team_dispatch d ON d.team_id = b.team_id WHERE b.team_id = $1",
        team.to_string()
    )?;
    Ok(row.map(|(plan, limit, running, queued, paused)| {
        // While paused the slots read 0: the plan's own limit is what the team has.
        let limit = match plan.parse::<domain::Plan>() {
            Ok(p) if paused => i64::from(p.concurrency_limit()),
            _ => limit,
        };
        PlanUsage { plan, limit, running, queued, paused }
    }))
}

/// Event types after which a job records nothing more.
pub const FINAL_EVENTS: [&str; 3] = ["JobCompleted", "JobFailed", "JobCancelled"];

/// How often the event stream looks for new events when nothing woke it (commits of
/// other processes do not wake it).
const EVENTS_POLL: Duration = Duration::from_millis(500);

/// How long the event stream waits out a database that cannot be reached (a restart, a
/// failover) before it ends; the client then reconnects with `Last-Event-ID`.
const EVENTS_DATABASE_WAIT_MAX: Duration = Duration::from_secs(60);

/// The recorded events of job `job_id` after sequence `after`, then each new one as it
/// is committed; the stream ends after the job's final event. The caller has checked
/// that the job is the team's. A database that cannot be reached for a while (a
/// failover) does not end it: it reads again once the database answers, from where it
/// was, so the client sees each event once and nothing missed.
pub fn event_stream(store: SqlEventStore, job_id: String, after: i64) -> impl futures::Stream<Item = StoredEvent> + Send {
    use futures::StreamExt;
    let commits = store.subscribe_commits();
    futures::stream::unfold((after, false, commits), move |(after, done, mut commits)| {
        let store = store.clone();
        let job_id = job_id.clone();
        async move {
            if done {
                return None;
            }
            let mut unavailable_since: Option<tokio::time::Instant> = None;
            loop {
                let events = match store.load_stream("GenerationJob", &job_id, after).await {
                    Ok(events) => events,
                    Err(error) if error.is_unavailable() => {
                        let since = *unavailable_since.get_or_insert_with(tokio::time::Instant::now);
                        if since.elapsed() >= EVENTS_DATABASE_WAIT_MAX {
                            return None;
                        }
                        tokio::time::sleep(EVENTS_POLL).await;
                        continue;
                    }
                    Err(_) => return None,
                };
                unavailable_since = None;
                if !events.is_empty() {
                    let last = events.last().map(|e| e.sequence).unwrap_or(after);
                    let finished = events.iter().any(|e| FINAL_EVENTS.contains(&e.event_type.as_str()));
                    return Some((futures::stream::iter(events), (last, finished, commits)));
                }
                tokio::select! {
                    _ = commits.changed() => {}
                    _ = tokio::time::sleep(EVENTS_POLL) => {}
                }
            }
        }
    })
    .flatten()
}
