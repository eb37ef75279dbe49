//! `/jobs/{id}`: one job — live status through its event stream, its images once done
//! (an expired image says so), the cancel button while it can be cancelled, and the
//! credits it reserved and what became of them.

use std::convert::Infallible;
use std::time::Duration;

use application::jobs::steps::{self, Step};
use application::jobs::submit::Requester;
use askama::Template;
use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use domain::jobs::{GenerationJob, JobInput, JobStatus, Timeline};
use serde::Deserialize;
use domain::JobId;
use futures::StreamExt;

use super::errors::{Notice, WebError};
use super::form::PageForm;
use super::layout::{duration_opt, is_final, kind_label, shortened, time, time_opt, Layout};
use super::session::Session;
use crate::state::AppState;
use crate::queries;
use crate::queries::jobs::{JobListItem, JobView};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/jobs/{job_id}", get(page))
        .route("/jobs/{job_id}/cancel", get(confirm_cancel).post(cancel))
        .route("/jobs/{job_id}/images.zip", get(super::job_zip::download))
        .route("/jobs/{job_id}/events", get(events))
}

/// A job in a list.
pub struct JobRow {
    pub job_id: String,
    pub kind: &'static str,
    pub status: String,
    pub model_id: String,
    /// The model's name (its id's end when its row is gone).
    pub model: String,
    /// The prompt, shortened to fit a row; the whole of it in `prompt_full`.
    pub prompt: String,
    pub prompt_full: String,
    pub cost: i64,
    pub queued_at: String,
    /// From queued to its end ("—" until it ends).
    pub duration: String,
    pub error: String,
    /// Not ended: the page follows it live.
    pub live: bool,
}

/// How much of a prompt a row shows.
const ROW_PROMPT_CHARS: usize = 60;

impl From<&JobListItem> for JobRow {
    fn from(item: &JobListItem) -> Self {
        let job = &item.job;
        let short_id: String = job.model_id.chars().rev().take(8).collect::<Vec<_>>().into_iter().rev().collect();
        let prompt_full = item.prompt.clone().unwrap_or_default();
        JobRow {
            job_id: job.job_id.clone(),
            kind: kind_label(&job.kind),
            status: job.status.clone(),
            model_id: job.model_id.clone(),
            model: item.model_name.clone().unwrap_or_else(|| format!("model …{short_id}")),
            prompt: shortened(&prompt_full, ROW_PROMPT_CHARS),
            prompt_full,
            cost: job.cost_credits,
            queued_at: time(job.queued_at),
            duration: duration_opt(item.duration()),
            error: job.error.as_deref().filter(|_| job.status == "failed" || job.status == "cancelled").map(|e| shortened(e, ROW_PROMPT_CHARS)).unwrap_or_default(),
            live: !is_final(&job.status),
        }
    }
}

pub struct EntryRow {
    pub entry_type: String,
    pub amount: i64,
    pub available_after: i64,
    pub occurred_at: String,
}

#[derive(Template)]
#[template(path = "job.html")]
struct JobPage {
    layout: Layout,
    notice: Option<Notice>,
    job: JobView,
    kind: &'static str,
    /// What the job was asked for, in words.
    request: Vec<(&'static str, String)>,
    is_final: bool,
    money: String,
    entries: Vec<EntryRow>,
    images: Vec<String>,
    queued_at: String,
    finished_at: String,
    /// A model job's steps (none for image generation).
    steps: Vec<StepRow>,
    /// From the job's events: time in the queue, running, and in all.
    waited: String,
    ran: String,
    elapsed: String,
    /// Why it failed or was cancelled, in words.
    failure: Option<String>,
    /// The generate form with this job's settings (image generation only).
    again: Option<String>,
    /// All images as one zip.
    zip: Option<String>,
}

/// One step of a model job as the page lists it.
pub struct StepRow {
    /// The recorded name (`training-images-1`, …), matched by the live `step` events.
    pub name: String,
    pub label: String,
    /// done | running | waiting | not run
    pub state: &'static str,
    /// How long it took (or has run so far); "—" when not run or unknown.
    pub took: String,
}

/// A model job's steps (or a split generation's parts) with where each stands.
fn step_rows(job: &GenerationJob, plan: &[Step], timeline: &Timeline, now: DateTime<Utc>) -> Vec<StepRow> {
    let batches = plan.iter().filter(|s| matches!(s, Step::TrainingImages { .. })).count();
    let status = job.status.unwrap_or(JobStatus::Queued);
    let mut current_found = false;
    plan.iter()
        .map(|step| {
            let name = step.name();
            let label = match step {
                Step::TrainingImages { batch, count, .. } => format!("Training images: batch {batch} of {batches} ({count} images)"),
                Step::Uploads { count } => format!("Training images sent with the job: {count}"),
                Step::TrainingSet => "Training set: images and captions zipped".to_string(),
                Step::Training => "Training the new version".to_string(),
                Step::Images { part, first, count, .. } => {
                    format!("Images {}–{}: request {part} of {}", first + 1, first + count, plan.len())
                }
            };
            let last = matches!(step, Step::Training | Step::Images { last: true, .. });
            let done = job.step_done(&name) || (last && status == JobStatus::Completed);
            let state = if done {
                "done"
            } else if status.is_final() {
                "not run"
            } else if !current_found && status.is_active() {
                current_found = true;
                "running"
            } else {
                current_found = true;
                "waiting"
            };
            // A recorded step's own time; the last one (its result completed the job)
            // and the one running now run from the step before.
            let took = match timeline.step(&name) {
                Some(recorded) => recorded.duration(),
                None if state == "running" || (state == "done" && last) => timeline.current(now),
                None => None,
            };
            StepRow { name, label, state, took: duration_opt(took) }
        })
        .collect()
}

fn describe(input: &JobInput) -> Vec<(&'static str, String)> {
    match input {
        JobInput::ModelCreation { description, reference_model_id, .. } => {
            vec![("Description", description.clone()), ("Reference model", reference_model_id.clone())]
        }
        JobInput::ModelRefinement { prompt, from_version, .. } => {
            vec![("Refinement", prompt.clone()), ("From version", from_version.to_string())]
        }
        JobInput::ImageGeneration { prompt, resolution, quality, count, model_version, .. } => vec![
            ("Prompt", prompt.clone()),
            ("Images", format!("{count} × {resolution}, {quality}")),
            ("Model version", model_version.to_string()),
        ],
    }
}

/// What became of the reservation, from the job's status: a reservation ends exactly
/// once, deducted with the completion or refunded with the failure or cancel.
fn money(job: &JobView) -> String {
    let cost = job.cost_credits;
    match job.status.as_str() {
        "completed" => format!("{cost} credits reserved, then deducted when the job completed."),
        "failed" | "cancelled" => format!("{cost} credits reserved, then refunded when the job was {}.", job.status),
        _ => format!("{cost} credits reserved: deducted if the job completes, refunded if it fails or is cancelled."),
    }
}

/// Why the job ended without a result, in words, with what became of its credits.
fn failure(job: &JobView) -> Option<String> {
    let reason = job.error.as_deref().map(str::trim).filter(|r| !r.is_empty());
    let why = |fallback: &str| {
        let mut chars = reason.unwrap_or(fallback).chars();
        chars.next().map(|first| first.to_lowercase().chain(chars).collect::<String>()).unwrap_or_default()
    };
    match job.status.as_str() {
        "failed" => Some(format!(
            "This job failed: {}. Its {} credits were refunded; nothing was charged.",
            why("the provider gave no reason").trim_end_matches('.'),
            job.cost_credits
        )),
        "cancelled" => Some(format!(
            "This job was cancelled ({}). Its {} credits were refunded; nothing was charged.",
            why("no reason recorded").trim_end_matches('.'),
            job.cost_credits
        )),
        _ => None,
    }
}

async fn render(state: &AppState, session: &Session, job_id: &str, notice: Option<Notice>) -> Result<Html<String>, WebError> {
    let job = queries::jobs::job(&state.db, session.team_id, job_id).await?.ok_or(WebError::NotFound)?;
    let id: JobId = job_id.parse().map_err(|_| WebError::NotFound)?;
    let aggregate = state.jobs.job(id).await?;
    let request = aggregate.input.as_ref().map(describe).unwrap_or_default();
    let uploaded = steps::uploaded_images(&aggregate);
    let plan = aggregate.input.as_ref().map(|input| steps::plan(input, None, state.jobs.training(), uploaded, state.provider.images_per_request_max())).unwrap_or_default();
    let now = state.jobs.now();
    let timeline = queries::jobs::timeline(&state.store, job_id).await.map_err(|e| WebError::internal(&e))?;
    let steps = step_rows(&aggregate, &plan, &timeline, now);
    let ran = timeline.first_dispatched_at.map(|start| timeline.ended_at.unwrap_or(now) - start);
    let mut images = Vec::new();
    if job.status == "completed" && job.kind == "image_generation" && !job.images_expired {
        let ttl = Duration::from_secs(state.url_ttl_secs);
        for output in &aggregate.outputs {
            images.push(state.objects.signed_url(&output.key, ttl, state.jobs.now()).map_err(|e| WebError::internal(&e))?);
        }
    }
    let entries = queries::credits::entries_of_job(&state.db, session.team_id, job_id)
        .await?
        .into_iter()
        .map(|e| EntryRow { entry_type: e.entry_type, amount: e.amount, available_after: e.available_after, occurred_at: time(e.occurred_at) })
        .collect();
    let page = JobPage {
        layout: Layout::load(state, session, "Job", "history").await?,
        notice,
        kind: kind_label(&job.kind),
        request,
        is_final: is_final(&job.status),
        money: money(&job),
        entries,
        queued_at: time(job.queued_at),
        finished_at: time_opt(job.finished_at),
        steps,
        waited: duration_opt(timeline.waited(now)),
        ran: duration_opt(ran),
        elapsed: duration_opt(timeline.elapsed(now)),
        failure: failure(&job),
        again: (job.kind == domain::Operation::ImageGeneration.as_str()).then(|| format!("/generate?again={}", job.job_id)),
        zip: (!images.is_empty()).then(|| format!("/jobs/{}/images.zip", job.job_id)),
        images,
        job,
    };
    Ok(Html(page.render()?))
}

async fn page(State(state): State<AppState>, session: Session, Path(job_id): Path<String>) -> Result<Html<String>, WebError> {
    render(&state, &session, &job_id, None).await
}

#[derive(Template)]
#[template(path = "job_cancel.html")]
struct CancelPage {
    layout: Layout,
    job: JobView,
    kind: &'static str,
}

/// The cancel's confirmation step: what cancelling does, and the button that does it
/// (a page of its own, so it works without a script and with the keyboard alone).
async fn confirm_cancel(State(state): State<AppState>, session: Session, Path(job_id): Path<String>) -> Result<Response, WebError> {
    let job = queries::jobs::job(&state.db, session.team_id, &job_id).await?.ok_or(WebError::NotFound)?;
    if is_final(&job.status) {
        return Ok(Redirect::to(&format!("/jobs/{job_id}")).into_response());
    }
    let page = CancelPage { layout: Layout::load(&state, &session, "Cancel the job?", "history").await?, kind: kind_label(&job.kind), job };
    Ok(Html(page.render()?).into_response())
}

#[derive(Debug, Deserialize)]
struct CancelForm {
    /// `yes` from the confirmation step's button; anything else asks first.
    confirm: Option<String>,
}

/// Cancels the job through the same use case as `DELETE /api/jobs/{id}`
/// (`SubmitService::cancel`): the reservation is refunded, and a request the provider
/// holds is cancelled there too. Only with the confirmation step's `confirm=yes`.
async fn cancel(State(state): State<AppState>, session: Session, Path(job_id): Path<String>, PageForm(form): PageForm<CancelForm>) -> Result<Response, WebError> {
    session.writer()?;
    if form.confirm.as_deref() != Some("yes") {
        return Ok(Redirect::to(&format!("/jobs/{job_id}/cancel")).into_response());
    }
    let id: JobId = job_id.parse().map_err(|_| WebError::NotFound)?;
    let who = Requester { team: session.team_id, actor: session.actor() };
    match state.submit.cancel(&who, id).await {
        Ok(_) => Ok(Redirect::to(&format!("/jobs/{job_id}")).into_response()),
        Err(error) => match WebError::from(error) {
            WebError::Refused(notice) => Ok(render(&state, &session, &job_id, Some(notice)).await?.into_response()),
            other => Err(other),
        },
    }
}

/// The status a job has after an event of this type (the page's live status).
fn status_after(event_type: &str) -> Option<&'static str> {
    Some(match event_type {
        "JobQueued" | "JobRetryScheduled" => "queued",
        "JobDispatched" => "dispatched",
        "JobProgressed" => "running",
        "JobCompleted" => "completed",
        "JobFailed" => "failed",
        "JobCancelled" => "cancelled",
        _ => return None,
    })
}

/// The job's status changes as server-sent events (`event: status`, data the status;
/// `event: attempt` when a claim starts an attempt; `event: step` when a step is done),
/// for the page's `EventSource`: the same stream as `GET /api/jobs/{id}/events`,
/// authenticated by the session cookie instead of a Bearer key (browsers' `EventSource`
/// cannot send headers).
async fn events(
    State(state): State<AppState>,
    session: Session,
    Path(job_id): Path<String>,
) -> Result<Sse<impl futures::Stream<Item = Result<Event, Infallible>>>, WebError> {
    let job = queries::jobs::job(&state.db, session.team_id, &job_id).await?.ok_or(WebError::NotFound)?;
    let stream = queries::jobs::event_stream(state.store.clone(), job.job_id, 0).flat_map(|event| {
        let id = event.sequence.to_string();
        let mut out = Vec::new();
        if event.event_type == "JobStepCompleted" {
            if let Some(step) = event.payload.get("step").and_then(|s| s.as_str()) {
                out.push(Ok(Event::default().event("step").id(id.clone()).data(step)));
            }
        }
        // A claim starts the next attempt (counted from 1, as on the page and in the API).
        if let Some(attempt) = event.payload.get("attempt").and_then(|a| a.as_u64()).filter(|_| event.event_type == "JobDispatched") {
            out.push(Ok(Event::default().event("attempt").id(id.clone()).data(attempt.to_string())));
        }
        if let Some(status) = status_after(&event.event_type) {
            out.push(Ok(Event::default().event("status").id(id).data(status)));
        }
        futures::stream::iter(out)
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(status: &str, error: Option<&str>) -> JobView {
        let at = chrono::DateTime::from_timestamp(1_790_000_000, 0).expect("instant");
        JobView {
            job_id: "j".into(),
            kind: "image_generation".into(),
            status: status.into(),
            model_id: "m".into(),
            cost_credits: 12,
            price_version: 1,
            attempt: 1,
            error: error.map(str::to_string),
            images_expired: false,
            queued_at: at,
            dispatched_at: None,
            finished_at: None,
            updated_at: at,
        }
    }

    #[test]
    fn an_ended_job_says_why_in_words_and_what_became_of_its_credits() {
        let failed = failure(&job("failed", Some("Provider error: the prompt was refused."))).expect("words");
        assert_eq!(failed, "This job failed: provider error: the prompt was refused. Its 12 credits were refunded; nothing was charged.");
        let silent = failure(&job("failed", None)).expect("words");
        assert!(silent.contains("the provider gave no reason"), "{silent}");
        let cancelled = failure(&job("cancelled", Some("cancelled by the team"))).expect("words");
        assert_eq!(cancelled, "This job was cancelled (cancelled by the team). Its 12 credits were refunded; nothing was charged.");
        // A queued job may carry the last attempt's error while it waits to retry: not a failure.
        assert_eq!(failure(&job("queued", Some("busy, retrying"))), None);
        assert_eq!(failure(&job("completed", None)), None);
    }
}
