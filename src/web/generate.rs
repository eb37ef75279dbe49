//! `/generate`: pick a ready model, write a prompt, choose the options, see the cost,
//! submit — then the job's page. Submission and estimate are the application's
//! `SubmitService` use cases, the same the REST API calls.

use application::jobs::submit::{GenerationRequest, Requester, QUALITY_DEFAULT, RESOLUTION_DEFAULT};
use askama::Template;
use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use domain::jobs::{JobInput, IMAGES_PER_JOB_MAX};
use serde::Deserialize;

use super::errors::{Notice, WebError};
use super::estimate::{request_id, EstimateView};
use super::form::PageForm;
use super::layout::Layout;
use super::session::Session;
use crate::state::AppState;
use crate::queries;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/generate", get(page).post(submit))
        .route("/generate/estimate", post(estimate))
}

/// Ready models offered in the picker (newest first).
const MODELS_MAX: i64 = 200;

/// The form's first values: a model (from its page), or all the settings of one of the
/// team's generation jobs (its "generate again" link; by id, since a prompt is longer
/// than an address's values may be).
#[derive(Debug, Default, Deserialize)]
struct PageQuery {
    model: Option<String>,
    again: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct GenerateForm {
    #[serde(default)]
    model_id: String,
    #[serde(default)]
    prompt: String,
    resolution: Option<String>,
    quality: Option<String>,
    /// As sent: read in [`GenerateForm::request`], so that a value that is not a number
    /// of images is a message on the form, not a rejected body.
    count: Option<String>,
    /// `estimate` (the no-script "Show cost" button) or absent (submit).
    action: Option<String>,
    request_id: Option<String>,
}

impl GenerateForm {
    /// The use case's request, or the message for a field the page cannot read as what
    /// it is (a count that is not a whole number). The rules — the count's and the
    /// prompt's bounds, the text rule — are the use case's.
    fn request(&self) -> Result<GenerationRequest, Notice> {
        let count = match self.count.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(text) => Some(text.parse::<u32>().map_err(|_| {
                Notice::new(
                    "Check the number of images",
                    format!("The number of images must be a whole number from 1 to {IMAGES_PER_JOB_MAX}."),
                )
            })?),
        };
        Ok(GenerationRequest {
            model_id: self.model_id.clone(),
            prompt: self.prompt.clone(),
            resolution: self.resolution.clone(),
            quality: self.quality.clone(),
            count,
        })
    }

    /// The count to show as chosen (1 when the one sent cannot be read).
    fn count_shown(&self) -> u32 {
        self.count.as_deref().and_then(|c| c.trim().parse().ok()).unwrap_or(1)
    }
}

pub struct ModelOption {
    pub model_id: String,
    pub label: String,
}

#[derive(Template)]
#[template(path = "generate.html")]
struct GeneratePage {
    layout: Layout,
    notice: Option<Notice>,
    /// The plan's limit, when it makes this job wait or refuses it.
    plan_note: Option<String>,
    models: Vec<ModelOption>,
    model_id: String,
    prompt: String,
    resolution: String,
    quality: String,
    count: u32,
    counts: Vec<u32>,
    /// From the current price list: what can be priced can be asked for.
    resolutions: Vec<String>,
    qualities: Vec<String>,
    estimate: EstimateView,
    request_id: String,
}

async fn render(state: &AppState, session: &Session, form: GenerateForm, notice: Option<Notice>) -> Result<Html<String>, WebError> {
    let models = queries::models::list(&state.db, session.team_id, false, None, MODELS_MAX)
        .await?
        .into_iter()
        .filter(|m| m.status == "ready")
        .map(|m| ModelOption { label: format!("{} (version {})", m.name, m.current_version.unwrap_or(1)), model_id: m.model_id })
        .collect::<Vec<_>>();
    let model_id = if form.model_id.is_empty() { models.first().map(|m| m.model_id.clone()).unwrap_or_default() } else { form.model_id.clone() };
    let usage = queries::jobs::plan_usage(&state.db, session.team_id).await?.ok_or(WebError::SignedOut)?;
    let plan_note = if usage.limit == 0 {
        Some(format!("The {} plan runs no jobs: submissions are refused until the team moves to a paid plan.", usage.plan))
    } else if usage.running >= usage.limit {
        Some(format!("Your plan runs {} jobs at once and {} are running: this one will wait in the queue.", usage.limit, usage.running))
    } else {
        None
    };
    let estimate = estimate_view(state, session, &form, &model_id).await?;
    let count = form.count_shown();
    let prices = state.submit.prices().await?.image_generation;
    let page = GeneratePage {
        layout: Layout::load(state, session, "Generate", "generate").await?,
        notice,
        plan_note,
        models,
        model_id,
        prompt: form.prompt,
        resolution: form.resolution.unwrap_or_else(|| RESOLUTION_DEFAULT.into()),
        quality: form.quality.unwrap_or_else(|| QUALITY_DEFAULT.into()),
        count,
        counts: (1..=IMAGES_PER_JOB_MAX).collect(),
        resolutions: prices.resolutions(),
        qualities: prices.qualities(),
        estimate,
        request_id: form.request_id.unwrap_or_else(request_id),
    };
    Ok(Html(page.render()?))
}

async fn page(State(state): State<AppState>, session: Session, Query(query): Query<PageQuery>) -> Result<Html<String>, WebError> {
    let mut form = GenerateForm {
        model_id: query.model.unwrap_or_default(),
        prompt: String::new(),
        resolution: None,
        quality: None,
        count: None,
        action: None,
        request_id: None,
    };
    if let Some(job_id) = query.again.as_deref().and_then(|id| id.parse::<domain::JobId>().ok()) {
        let job = state.jobs.job(job_id).await?;
        // Another team's job prefills nothing (and says nothing of it).
        if let (Some(JobInput::ImageGeneration { model_id, prompt, resolution, quality, count, .. }), true) = (job.input, job.team_id == Some(session.team_id)) {
            form = GenerateForm {
                model_id: model_id.to_string(),
                prompt,
                resolution: Some(resolution),
                quality: Some(quality),
                count: Some(count.to_string()),
                ..form
            };
        }
    }
    render(&state, &session, form, None).await
}

/// Why a team cannot generate yet: it has no ready model.
fn no_model() -> Notice {
    Notice::new("No ready model yet", "Images are generated with one of your custom models: create one, and once its training completes you can generate with it.")
        .next("/models/new", "Create a model")
}

/// The price of the form as it stands. The price does not depend on the prompt: an
/// empty one (a fresh form, before anything is typed) still gets a price rather than
/// "check the prompt"; the submission checks it.
async fn estimate_view(state: &AppState, session: &Session, form: &GenerateForm, model_id: &str) -> Result<EstimateView, WebError> {
    if model_id.trim().is_empty() {
        return Ok(EstimateView::problem(no_model()));
    }
    let prompt = if form.prompt.trim().is_empty() { "(prompt)".to_string() } else { form.prompt.clone() };
    match form.request() {
        Ok(request) => {
            let request = GenerationRequest { model_id: model_id.to_string(), prompt, ..request };
            EstimateView::from_result(state.submit.estimate_generation(session.team_id, &request).await)
        }
        Err(notice) => Ok(EstimateView::problem(notice)),
    }
}

async fn estimate(State(state): State<AppState>, session: Session, PageForm(form): PageForm<GenerateForm>) -> Result<Html<String>, WebError> {
    estimate_view(&state, &session, &form, &form.model_id).await?.fragment()
}

async fn submit(State(state): State<AppState>, session: Session, PageForm(form): PageForm<GenerateForm>) -> Result<Response, WebError> {
    if form.action.as_deref() == Some("estimate") {
        return Ok(render(&state, &session, form, None).await?.into_response());
    }
    session.writer()?;
    let who = Requester { team: session.team_id, actor: session.actor() };
    let key = form.request_id.as_deref().and_then(|id| domain::IdempotencyKey::parse(id).ok());
    if form.model_id.trim().is_empty() {
        return refused(&state, &session, form, no_model()).await;
    }
    let request = match form.request() {
        Ok(request) => request,
        Err(notice) => return refused(&state, &session, form, notice).await,
    };
    match state.submit.submit_generation(&who, key.as_ref(), request).await {
        Ok(submitted) => Ok(Redirect::to(&format!("/jobs/{}", submitted.job_id)).into_response()),
        Err(error) => match WebError::from(error) {
            WebError::Refused(notice) => refused(&state, &session, form, notice).await,
            other => Err(other),
        },
    }
}

/// The form again, as it was filled in, with why it was refused (nothing recorded).
async fn refused(state: &AppState, session: &Session, form: GenerateForm, notice: Notice) -> Result<Response, WebError> {
    // A fresh request id: the refused attempt recorded nothing.
    let form = GenerateForm { request_id: None, ..form };
    Ok((axum::http::StatusCode::UNPROCESSABLE_ENTITY, render(state, session, form, Some(notice)).await?).into_response())
}
