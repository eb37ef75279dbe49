//! `/api/jobs/*`: the team's jobs — list, one with its events, cancel, live events (SSE),
//! and concurrency usage. Also the job view and the job-engine error mapping shared by
//! the model and generation endpoints.

use std::convert::Infallible;

use application::event_store::EventStore;
use application::jobs::submit::SubmitError;
use application::jobs::JobsError;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use domain::jobs::{GenerationJob, JobError};
use domain::models::ModelError;
use domain::{JobId, TeamCreditsError, TeamId};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::TeamKey;
use super::consistency::ReadToken;
use super::extract::ApiQuery;
use super::problem::Problem;
use crate::state::AppState;
use crate::queries;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/jobs", get(list))
        .route("/api/jobs/concurrency", get(concurrency))
        .route("/api/jobs/{job_id}", get(get_one).delete(cancel))
        .route("/api/jobs/{job_id}/events", get(events))
}

impl From<JobsError> for Problem {
    fn from(error: JobsError) -> Self {
        match error {
            JobsError::Credits(error) => Problem::from(error),
            JobsError::Job(error) => Problem::from(error),
            JobsError::Model(error) => Problem::from(error),
            JobsError::Store(error) => Problem::internal(&error),
            JobsError::NotFound => Problem::not_found().detail("no such job"),
            JobsError::QueueFull { queued, max } => {
                Problem::new(StatusCode::TOO_MANY_REQUESTS, "queue-full", "Too many queued jobs")
                    .detail(format!("the team has {queued} queued jobs; at most {max} may wait"))
                    .with("queued", queued)
                    .with("queue_depth_max", max)
            }
            JobsError::Conflict => Problem::new(StatusCode::CONFLICT, "conflict", "Changed concurrently").detail("retry the request"),
            JobsError::Storage(message) => {
                tracing::warn!(%message, "object store unavailable");
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, "storage-unavailable", "Storage unavailable")
                    .detail("the object store cannot be written now; try again later")
                    .retry_after(5)
            }
        }
    }
}

impl From<SubmitError> for Problem {
    fn from(error: SubmitError) -> Self {
        match error {
            SubmitError::ModelNotFound => Problem::not_found().detail("no such model"),
            SubmitError::ModelNotUsable(error) => Problem::from(error),
            SubmitError::UnknownReferenceModel => {
                Problem::invalid("unknown or inactive reference_model_id").with("field", "reference_model_id")
            }
            SubmitError::Invalid { field, reason } => Problem::invalid(format!("{field} {reason}")).with("field", field),
            SubmitError::QueueFull { queued, max } => Problem::from(JobsError::QueueFull { queued, max }),
            SubmitError::InsufficientCredits { available, requested } => {
                Problem::from(TeamCreditsError::InsufficientCredits { available, requested })
            }
            SubmitError::PlanRunsNoJobs { plan } => Problem::from(TeamCreditsError::PlanDoesNotAllowJobs { plan }),
            SubmitError::TeamNotFound => Problem::not_found().detail("no such team"),
            SubmitError::JobNotFound => Problem::not_found().detail("no such job"),
            SubmitError::JobAlreadyEnded(_) => {
                Problem::new(StatusCode::CONFLICT, "job-already-finished", "Job already finished").detail(error.to_string())
            }
            SubmitError::NotRetryable(why) => Problem::new(StatusCode::CONFLICT, "job-not-retryable", "Job cannot be retried").detail(why),
            SubmitError::Jobs(error) => Problem::from(error),
        }
    }
}

impl From<JobError> for Problem {
    fn from(error: JobError) -> Self {
        match error {
            JobError::NotFound => Problem::not_found().detail("no such job"),
            JobError::AlreadyFinished(_) => {
                Problem::new(StatusCode::CONFLICT, "job-already-finished", "Job already finished").detail(error.to_string())
            }
            JobError::AlreadyExists | JobError::NotQueued(_) | JobError::NotInProgress(_) | JobError::StaleAttempt { .. } => {
                Problem::new(StatusCode::CONFLICT, "job-state", "Job is in another state").detail(error.to_string())
            }
        }
    }
}

impl From<ModelError> for Problem {
    fn from(error: ModelError) -> Self {
        let conflict = |slug: &str, title: &'static str| Problem::new(StatusCode::CONFLICT, slug, title).detail(error.to_string());
        match error {
            ModelError::NotFound => Problem::not_found().detail("no such model"),
            ModelError::Archived => conflict("model-archived", "Model archived"),
            ModelError::NotReady(_) => conflict("model-not-ready", "Model not ready"),
            ModelError::RefinementInProgress => conflict("refinement-in-progress", "Refinement in progress"),
            ModelError::AlreadyExists | ModelError::UnknownJob(_) => conflict("model-state", "Model is in another state"),
            ModelError::InvalidText { .. } => Problem::invalid(error.to_string()),
        }
    }
}

pub use crate::queries::jobs::{JobView, JOB_COLUMNS};

/// The caller's job, or 404 (also for another team's job).
pub async fn load_job_view(state: &AppState, team: TeamId, job_id: &str) -> Result<JobView, Problem> {
    queries::jobs::job(&state.db, team, job_id)
        .await
        .map_err(|e| Problem::internal(&e))?
        .ok_or_else(|| Problem::not_found().detail("no such job"))
}

pub fn parse_job_id(text: &str) -> Result<JobId, Problem> {
    text.parse().map_err(|_| Problem::not_found().detail("no such job"))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobsQuery {
    /// Only jobs in this status.
    #[param(schema_with = status_schema)]
    pub status: Option<String>,
    /// Only jobs of this kind.
    #[param(schema_with = kind_schema)]
    pub kind: Option<String>,
    /// Only jobs of this custom model.
    #[param(value_type = Option<String>, format = Uuid)]
    pub model_id: Option<String>,
    /// Only jobs whose prompt (a model creation's description) contains this text, in any case.
    pub q: Option<String>,
    /// Only jobs queued on or after this day (UTC).
    #[param(value_type = Option<String>, format = Date, example = "2026-12-01")]
    pub from: Option<String>,
    /// Only jobs queued on or before this day (UTC).
    #[param(value_type = Option<String>, format = Date, example = "2026-12-31")]
    pub to: Option<String>,
    /// Page size, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// `next_cursor` (older jobs) or `prev_cursor` (newer jobs) of another page.
    pub cursor: Option<String>,
}

fn status_schema() -> utoipa::openapi::schema::Object {
    use domain::jobs::JobStatus::*;
    super::openapi::one_of([Queued, Dispatched, Running, Completed, Failed, Cancelled].map(|s| s.as_str()))
}

fn kind_schema() -> utoipa::openapi::schema::Object {
    super::openapi::one_of(domain::Operation::ALL.map(|o| o.as_str()))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobPage {
    /// Newest first, each with its model's name and its prompt.
    pub items: Vec<queries::jobs::JobListItem>,
    /// The page of older jobs; none on the last page.
    pub next_cursor: Option<String>,
    /// The page of newer jobs; none on the first page.
    pub prev_cursor: Option<String>,
}

pub const PAGE_LIMIT_MAX: u32 = 200;

/// Page size from a query, validated.
pub fn page_limit(limit: Option<u32>) -> Result<u32, Problem> {
    let limit = limit.unwrap_or(50);
    if (1..=PAGE_LIMIT_MAX).contains(&limit) {
        Ok(limit)
    } else {
        Err(Problem::invalid(format!("limit must be 1 to {PAGE_LIMIT_MAX}")))
    }
}

/// The position of a cursor of `list` (see `cursor`): `{rfc3339}|{id}` of the last item
/// of the previous page.
pub fn parse_cursor(list: &str, cursor: Option<&str>) -> Result<Option<(DateTime<Utc>, String)>, Problem> {
    let Some(position) = super::cursor::decode(list, cursor)? else { return Ok(None) };
    let (at, id) = position.split_once('|').ok_or_else(super::cursor::invalid)?;
    let at = DateTime::parse_from_rfc3339(at).map_err(|_| super::cursor::invalid())?.with_timezone(&Utc);
    Ok(Some((at, id.to_string())))
}

pub fn make_cursor(list: &str, at: DateTime<Utc>, id: &str) -> String {
    super::cursor::encode(list, &format!("{}|{id}", at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)))
}

/// Lists fetch one row more than the page: if it came, it is cut off and the page's last
/// item names the cursor of the next page.
pub fn paginate<T>(mut items: Vec<T>, limit: u32, cursor_of: impl Fn(&T) -> String) -> (Vec<T>, Option<String>) {
    if items.len() <= limit as usize {
        return (items, None);
    }
    items.truncate(limit as usize);
    let next = items.last().map(cursor_of);
    (items, next)
}

/// The team's jobs, newest first, filtered by status, kind, model, prompt text and the
/// day they were queued; paged both ways.
#[utoipa::path(get, path = "/api/jobs", tag = "jobs", operation_id = "listJobs", params(JobsQuery, ReadToken),
    responses((status = 200, body = JobPage),
        (status = 422, description = "A filter that cannot be read, named in `field` (`/problems/invalid-request`), or a cursor not issued for this list (`/problems/invalid-cursor`)")),
    security(("api_key" = [])))]
async fn list(
    State(state): State<AppState>,
    key: TeamKey,
    ReadToken(token): ReadToken,
    ApiQuery(query): ApiQuery<JobsQuery>,
) -> Result<Json<JobPage>, Problem> {
    let input = queries::jobs::JobFilterInput {
        status: query.status.as_deref(),
        kind: query.kind.as_deref(),
        model_id: query.model_id.as_deref(),
        search: query.q.as_deref(),
        from: query.from.as_deref(),
        to: query.to.as_deref(),
    };
    let filter = queries::jobs::JobFilter::parse(&input).map_err(|e| Problem::invalid_field(e.field, e.to_string()))?;
    let limit = page_limit(query.limit)?;
    let page = match super::cursor::decode("jobs", query.cursor.as_deref())? {
        None => queries::jobs::Page::First,
        Some(text) => queries::jobs::Page::from_text(&text).ok_or_else(super::cursor::invalid)?,
    };
    let db = queries::read_db(&state.reads, token).await;
    let found = queries::jobs::page(db, key.team_id, &filter, &page, limit as usize).await.map_err(|e| Problem::internal(&e))?;
    let cursor = |page: Option<queries::jobs::Page>| page.and_then(|p| p.to_text()).map(|text| super::cursor::encode("jobs", &text));
    let (next_cursor, prev_cursor) = (cursor(found.older_page()), cursor(found.newer_page()));
    Ok(Json(JobPage { items: found.items, next_cursor, prev_cursor }))
}

/// One recorded event of a job.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobEventView {
    pub sequence: i64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub recorded_at: DateTime<Utc>,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobDetail {
    #[serde(flatten)]
    pub job: JobView,
    /// What the job was asked to do.
    #[schema(value_type = Object)]
    pub input: serde_json::Value,
    pub events: Vec<JobEventView>,
}

/// One job with its cost and its events.
#[utoipa::path(get, path = "/api/jobs/{job_id}", tag = "jobs", operation_id = "getJob", params(("job_id" = uuid::Uuid, Path, description = "The job's id")),
    responses((status = 200, body = JobDetail)), security(("api_key" = [])))]
async fn get_one(State(state): State<AppState>, key: TeamKey, Path(job_id): Path<String>) -> Result<Json<JobDetail>, Problem> {
    let job = load_job_view(&state, key.team_id, &job_id).await?;
    let stored = state.store.load_stream("GenerationJob", &job.job_id, 0).await.map_err(|e| Problem::internal(&e))?;
    let input = stored.first().map(|e| e.payload["input"].clone()).unwrap_or_default();
    let events = stored
        .into_iter()
        .map(|e| JobEventView { sequence: e.sequence, event_type: e.event_type, recorded_at: e.recorded_at, data: e.payload })
        .collect();
    Ok(Json(JobDetail { job, input, events }))
}

/// Cancels a job in any non-final state; its credits are refunded. A running job is
/// cancelled at the provider too.
#[utoipa::path(delete, path = "/api/jobs/{job_id}", tag = "jobs", operation_id = "cancelJob", params(("job_id" = uuid::Uuid, Path, description = "The job's id")),
    responses((status = 200, body = JobView), (status = 403, description = "A read-only key (`/problems/forbidden`)"),
        (status = 409, description = "The job has already ended (`/problems/job-already-finished`)")),
    security(("api_key" = [])))]
async fn cancel(State(state): State<AppState>, key: TeamKey, Path(job_id): Path<String>) -> Result<Json<JobView>, Problem> {
    let key = key.writer()?;
    let id = parse_job_id(&job_id)?;
    state.submit.cancel(&super::generate::requester(&key), id).await?;
    Ok(Json(load_job_view(&state, key.team_id, &job_id).await?))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Concurrency {
    pub plan: String,
    /// Jobs the plan runs at once.
    pub limit: i64,
    pub running: i64,
    pub queued: i64,
    /// Queued jobs allowed to wait; beyond it submissions get 429.
    pub queue_depth_max: i64,
    /// An operator paused the team's dispatch: jobs are accepted and reserved but none
    /// starts until it resumes.
    pub dispatch_paused: bool,
}

/// Running, queued and the plan's limit for the caller's team.
#[utoipa::path(get, path = "/api/jobs/concurrency", tag = "jobs", operation_id = "getJobConcurrency",
    responses((status = 200, body = Concurrency)), security(("api_key" = [])))]
async fn concurrency(State(state): State<AppState>, key: TeamKey) -> Result<Json<Concurrency>, Problem> {
    let usage = queries::jobs::plan_usage(&state.db, key.team_id).await.map_err(|e| Problem::internal(&e))?;
    let queries::jobs::PlanUsage { plan, limit, running, queued, paused } = usage.ok_or_else(|| Problem::not_found().detail("no such team"))?;
    Ok(Json(Concurrency { plan, limit, running, queued, queue_depth_max: state.submit.queue_depth_max(), dispatch_paused: paused }))
}


/// Server-sent events of the job's progress: its public events (`event:` is the type,
/// see `job_events`; `id:` the job stream's sequence), from the start or after
/// `Last-Event-ID`; the stream ends after the job's final event, and at once when
/// `Last-Event-ID` is at or past it.
#[utoipa::path(get, path = "/api/jobs/{job_id}/events", tag = "jobs", operation_id = "streamJobEvents",
    params(("job_id" = uuid::Uuid, Path, description = "The job's id"),
        ("Last-Event-ID" = Option<i64>, Header, minimum = 0, description = "the `id:` of the last event received: the stream resumes after it")),
    responses((status = 200, content_type = "text/event-stream", body = ref("#/components/schemas/JobStreamEvent"),
        description = "Server-sent events, one per public job event (schema `JobStreamEvent`: `event`, `id`, and `data`, the \
            event as JSON, schema `PublicJobEvent`). The stream ends after the final event (`completed`, `failed` or \
            `cancelled`); comments keep it alive meanwhile.")),
    security(("api_key" = [])))]
async fn events(
    State(state): State<AppState>,
    key: TeamKey,
    Path(job_id): Path<String>,
    headers: axum::http::HeaderMap,
) -> Result<Sse<impl futures::Stream<Item = Result<Event, Infallible>>>, Problem> {
    let job = load_job_view(&state, key.team_id, &job_id).await?;
    let after: i64 = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok()).unwrap_or(0).max(0);
    let store = state.store.clone();
    // A client that has seen the final event (or claims to be past it) gets an empty,
    // closed stream, not one that waits for events that will never come.
    let recorded = store.load_stream("GenerationJob", &job.job_id, 0).await.map_err(|e| Problem::internal(&e))?;
    let ended_at = recorded.iter().find(|e| super::job_events::is_final_record(e)).map(|e| e.sequence);
    let recorded = if ended_at.is_some_and(|last| after >= last) {
        futures::stream::empty().boxed()
    } else {
        // The same stream as the dashboard's live status, cut to the public events.
        crate::queries::jobs::event_stream(store, job.job_id.clone(), after).boxed()
    };
    let job_id = job.job_id;
    let stream = recorded
        .filter_map(move |stored| {
            let public = super::job_events::PublicJobEvent::of(&job_id, &stored).map(|public| (stored.sequence, public));
            futures::future::ready(public)
        })
        // Nothing after the final public event.
        .scan(false, |ended, (sequence, public)| {
            if *ended {
                return futures::future::ready(None);
            }
            *ended = public.is_final();
            let data = serde_json::to_string(&public).unwrap_or_default();
            let event = Event::default().event(public.event_type()).id(sequence.to_string()).data(data);
            futures::future::ready(Some(Ok::<_, Infallible>(event)))
        });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// The job aggregate of the caller's team, or 404.
pub async fn team_job(state: &AppState, team: TeamId, job_id: JobId) -> Result<GenerationJob, Problem> {
    let job = state.jobs.job(job_id).await?;
    if job.team_id != Some(team) {
        return Err(Problem::not_found().detail("no such job"));
    }
    Ok(job)
}
