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

/// A [`JobView`] from [`JOBS_FROM`]: whether its images expired, and when (then its last
/// change), from its row of `job_image_expiries`, if any.
pub const JOB_COLUMNS: &str = "jobs.job_id, jobs.kind, jobs.status, jobs.model_id, jobs.cost AS cost_credits, \
     jobs.price_version, jobs.attempt, jobs.error, x.job_id IS NOT NULL AS images_expired, \
     jobs.queued_at, jobs.dispatched_at, jobs.finished_at, COALESCE(x.expired_at, jobs.updated_at) AS updated_at";

/// What [`JOB_COLUMNS`] are read from: each job with its expiry (one key look-up).
pub const JOBS_FROM: &str = "jobs LEFT JOIN job_image_expiries x ON x.job_id = jobs.job_id";

/// The team's job `job_id`; `None` for an unknown id or another team's job.
pub async fn job(db: &Database, team: TeamId, job_id: &str) -> Result<Option<JobView>, QueryError> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM {JOBS_FROM} WHERE jobs.job_id = $1 AND jobs.team_id = $2");
    Ok(db_fetch_optional!(db, JobView, &sql, job_id, team.to_string())?)
}

#[path = "jobs_filter.rs"]
mod filter;
pub use filter::{FilterError, JobFilter, JobFilterInput, JobsPage, Page, Position};

/// One job in a list: the job, and what a person finds it by — its model's name and
/// its prompt (a model creation's description).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct JobListItem {
    #[serde(flatten)]
    #[sqlx(flatten)]
    pub job: JobView,
    /// The custom model's name (none once its row is gone).
    pub model_name: Option<String>,
    /// The prompt of a generation or refinement, the description of a model creation.
    pub prompt: Option<String>,
}

impl JobListItem {
    /// From queued to its end; `None` while it has not ended.
    pub fn duration(&self) -> Option<chrono::Duration> {
        self.job.finished_at.map(|end| end - self.job.queued_at)
    }
}

/// The prompt of a job's stored input, in the store's own JSON dialect.
fn prompt_sql(db: &Database) -> &'static str {
    match db.backend() {
        infrastructure::db::Backend::Postgres => {
            "COALESCE(CAST(input AS jsonb) ->> 'prompt', CAST(input AS jsonb) ->> 'description')"
        }
        infrastructure::db::Backend::Sqlite => "COALESCE(json_extract(input, '$.prompt'), json_extract(input, '$.description'))",
    }
}

/// The columns of a [`JobListItem`], from `jobs`.
fn select_items(db: &Database) -> String {
    format!(
        "SELECT {JOB_COLUMNS}, (SELECT m.name FROM custom_models m WHERE m.model_id = jobs.model_id) AS model_name, \
         {} AS prompt FROM {JOBS_FROM}",
        prompt_sql(db)
    )
}

/// Most jobs [`items`] reads at once.
pub const ITEMS_MAX: usize = 100;

/// The team's jobs among `job_ids` (at most [`ITEMS_MAX`]; another team's are left out).
pub async fn items(db: &Database, team: TeamId, job_ids: &[String]) -> Result<Vec<JobListItem>, QueryError> {
    let ids = serde_json::to_string(&job_ids[..job_ids.len().min(ITEMS_MAX)]).unwrap_or_else(|_| "[]".into());
    let listed = match db.backend() {
        infrastructure::db::Backend::Postgres => "SELECT jsonb_array_elements_text(CAST($2 AS jsonb))",
        infrastructure::db::Backend::Sqlite => "SELECT value FROM json_each($2)",
    };
    let sql = format!("{} WHERE jobs.team_id = $1 AND jobs.job_id IN ({listed})", select_items(db));
    Ok(db_fetch_all!(db, JobListItem, &sql, team.to_string(), ids)?)
}

/// One page of the team's jobs that `filter` lets through, newest first: the first
/// page, the `rows` older than a position, or the `rows` newer than one. Says whether
/// there are older and newer rows beyond it, and where they start.
pub async fn page(db: &Database, team: TeamId, filter: &JobFilter, page: &Page, rows: usize) -> Result<JobsPage, QueryError> {
    let prompt = prompt_sql(db);
    let (newer, position) = match page {
        Page::First => (false, None),
        Page::Older(position) => (false, Some(position)),
        Page::Newer(position) => (true, Some(position)),
    };
    let (cursor_at, cursor_id) = position.map(|p| (Some(p.at), Some(p.job_id.clone()))).unwrap_or((None, None));
    let (compare, order) = if newer { (">", "ASC") } else { ("<", "DESC") };
    let select = select_items(db);
    let (like, from, until) = (filter.like_pattern(), filter.from_instant(), filter.until_instant());
    let prompt_like = format!(" AND LOWER({prompt}) LIKE $5 ESCAPE '\\'");
    let beyond = format!(" AND (queued_at {compare} $8 OR (queued_at = $8 AND jobs.job_id {compare} $9))");
    let sql = format!(
        "{select} WHERE team_id = $1{}{}{}{}{}{}{} ORDER BY queued_at {order}, jobs.job_id {order} LIMIT $10",
        super::given(filter.status.is_some(), " AND status = $2"),
        super::given(filter.kind.is_some(), " AND kind = $3"),
        super::given(filter.model_id.is_some(), " AND model_id = $4"),
        super::given(like.is_some(), &prompt_like),
        super::given(from.is_some(), " AND queued_at >= $6"),
        super::given(until.is_some(), " AND queued_at < $7"),
        super::given(cursor_at.is_some(), &beyond),
    );
    let mut items = db_fetch_all!(
        db,
        JobListItem,
        &sql,
        team.to_string(),
        filter.status.map(|s| s.as_str()),
        filter.kind.map(|k| k.as_str()),
        filter.model_id.as_deref(),
        like,
        from,
        until,
        cursor_at,
        cursor_id,
        rows as i64 + 1
    )?;
    let more = items.len() > rows;
    items.truncate(rows);
    if newer {
        items.reverse();
    }
    let first = items.first().map(|i| Position::of(&i.job));
    let last = items.last().map(|i| Position::of(&i.job));
    // Rows exist on the side the page came from (the position's own row at least).
    let (older, newer) = match page {
        Page::First => (more.then_some(last).flatten(), None),
        Page::Older(_) => (more.then_some(last).flatten(), first),
        Page::Newer(_) => (last, more.then_some(first).flatten()),
    };
    Ok(JobsPage { items, older, newer })
}

/// Up to `rows_max` of the team's jobs, newest first, after `(queued_at, job_id)`.
pub async fn list(
    db: &Database,
    team: TeamId,
    filter: &JobFilter,
    after: Option<(DateTime<Utc>, String)>,
    rows_max: i64,
) -> Result<Vec<JobView>, QueryError> {
    let at = after.map(|(at, job_id)| Page::Older(Position { at, job_id })).unwrap_or(Page::First);
    let page = page(db, team, filter, &at, rows_max.max(0) as usize).await?;
    Ok(page.items.into_iter().map(|item| item.job).collect())
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

/// When job `job_id`'s phases happened, from its recorded events (the caller has
/// checked that the job is the team's).
pub async fn timeline(store: &SqlEventStore, job_id: &str) -> Result<domain::jobs::Timeline, application::event_store::EventStoreError> {
    let stored = store.load_stream("GenerationJob", job_id, 0).await?;
    // Every stored event decodes (the store refuses to load what does not).
    let events: Vec<domain::jobs::JobEvent> = stored.into_iter().filter_map(|e| serde_json::from_value(e.payload).ok()).collect();
    Ok(domain::jobs::Timeline::of(&events))
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
