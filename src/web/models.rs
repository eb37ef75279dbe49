//! `/models`: the team's custom models. Create one (description + a reference model of
//! the catalog) and refine one (on its page, with its versions) — both through the
//! application's `SubmitService`, with the cost shown before submitting.

use std::time::Duration;

use application::jobs::steps::Upload;
use application::jobs::submit::{ModelCreationRequest, RefinementRequest, Requester};
use askama::Template;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use crate::queries::catalog::{self, CatalogSort};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::consistency::PageReadToken;
use super::errors::{Notice, WebError};
use super::estimate::{request_id, EstimateView};
use super::form::PageForm;
use super::layout::{time, Layout};
use super::paging;
use super::session::Session;
use crate::state::AppState;
use crate::multipart;
use crate::queries;
use crate::queries::models::ModelView;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/models", get(list).post(create).layer(DefaultBodyLimit::max(multipart::UPLOAD_BODY_BYTES_MAX)))
        .route("/models/new", get(new_page))
        .route("/models/new/estimate", post(creation_estimate))
        .route("/models/{model_id}", get(model_page))
        .route("/models/{model_id}/refine", post(refine).layer(DefaultBodyLimit::max(multipart::UPLOAD_BODY_BYTES_MAX)))
        .route("/models/{model_id}/refine/estimate", post(refinement_estimate))
        .route("/models/{model_id}/details", post(update_details))
        .route("/models/{model_id}/archive", post(archive))
}

const MODELS_PER_PAGE: usize = 25;
/// Reference models offered in the creation form's picker, most popular first.
const REFERENCES_MAX: u32 = 100;
/// Latest images shown on a model's page.
const IMAGES_SHOWN: i64 = 12;

pub struct ModelRow {
    pub model_id: String,
    pub name: String,
    pub status: String,
    pub version: String,
    pub reference: String,
    pub created_at: String,
}

impl From<&ModelView> for ModelRow {
    fn from(m: &ModelView) -> Self {
        ModelRow {
            model_id: m.model_id.clone(),
            name: m.name.clone(),
            status: if m.archived { "archived".into() } else { m.status.clone() },
            version: m.current_version.map(|v| v.to_string()).unwrap_or_else(|| "—".into()),
            reference: m.reference_model_id.clone(),
            created_at: time(m.created_at),
        }
    }
}

#[derive(Template)]
#[template(path = "models.html")]
struct ModelsPage {
    layout: Layout,
    models: Vec<ModelRow>,
    next: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ListQuery {
    cursor: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    session: Session,
    PageReadToken(token): PageReadToken,
    Query(query): Query<ListQuery>,
) -> Result<Html<String>, WebError> {
    let after = paging::decode(query.cursor.as_deref());
    let mut models = queries::models::list(queries::read_db(&state.reads, token).await, session.team_id, false, after, MODELS_PER_PAGE as i64 + 1).await?;
    let next = paging::cut(&mut models, MODELS_PER_PAGE)
        .then(|| models.last().map(|m| format!("/models?cursor={}", paging::q(&paging::encode(m.created_at, &m.model_id)))))
        .flatten();
    let page = ModelsPage { layout: Layout::load(&state, &session, "Models", "models").await?, models: models.iter().map(ModelRow::from).collect(), next };
    Ok(Html(page.render()?))
}

#[derive(Debug, Clone, Default, Deserialize)]
struct CreateForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default, alias = "reference")]
    reference_model_id: String,
    action: Option<String>,
    request_id: Option<String>,
}

pub struct ReferenceOption {
    pub id: String,
    pub label: String,
}

#[derive(Template)]
#[template(path = "model_new.html")]
struct NewModelPage {
    layout: Layout,
    notice: Option<Notice>,
    references: Vec<ReferenceOption>,
    name: String,
    description: String,
    reference_model_id: String,
    estimate: EstimateView,
    request_id: String,
}

async fn render_new(state: &AppState, session: &Session, form: CreateForm, notice: Option<Notice>) -> Result<Html<String>, WebError> {
    let found = catalog::list(&state.db, None, CatalogSort::Popularity, REFERENCES_MAX, None).await.map_err(|e| WebError::internal(&e))?;
    let references = found
        .items
        .iter()
        .map(|r| ReferenceOption { id: r.id.clone(), label: format!("{} ({})", r.name, r.category.as_str()) })
        .collect::<Vec<_>>();
    let reference_model_id =
        if form.reference_model_id.is_empty() { references.first().map(|r| r.id.clone()).unwrap_or_default() } else { form.reference_model_id };
    let estimate = EstimateView::from_result(state.submit.estimate_model_creation(session.team_id, &reference_model_id).await)?;
    let page = NewModelPage {
        layout: Layout::load(state, session, "New model", "models").await?,
        notice,
        references,
        name: form.name,
        description: form.description,
        reference_model_id,
        estimate,
        request_id: form.request_id.unwrap_or_else(request_id),
    };
    Ok(Html(page.render()?))
}

async fn new_page(State(state): State<AppState>, session: Session, Query(form): Query<CreateForm>) -> Result<Html<String>, WebError> {
    render_new(&state, &session, CreateForm { request_id: None, ..form }, None).await
}

async fn creation_estimate(State(state): State<AppState>, session: Session, PageForm(form): PageForm<CreateForm>) -> Result<Html<String>, WebError> {
    EstimateView::from_result(state.submit.estimate_model_creation(session.team_id, &form.reference_model_id).await)?.fragment()
}

/// A form as `T` with its training images: multipart when the page sent files (its
/// `enctype`), else urlencoded.
async fn form_and_images<T: DeserializeOwned>(state: &AppState, request: Request) -> Result<(T, Vec<Upload>), WebError> {
    if !multipart::is_upload(request.method(), request.uri().path(), request.headers()) {
        let PageForm(form) = PageForm::<T>::from_request(request, state).await?;
        return Ok((form, Vec::new()));
    }
    let parts = multipart::read(request, state).await.map_err(|e| WebError::BadForm(e.to_string()))?;
    let form = serde_json::from_value(serde_json::Value::Object(parts.fields)).map_err(|e| WebError::BadForm(e.to_string()))?;
    Ok((form, parts.uploads))
}

async fn create(State(state): State<AppState>, session: Session, request: Request) -> Result<Response, WebError> {
    let (form, uploads) = form_and_images::<CreateForm>(&state, request).await?;
    if form.action.as_deref() == Some("estimate") {
        return Ok(render_new(&state, &session, form, None).await?.into_response());
    }
    session.writer()?;
    let who = Requester { team: session.team_id, actor: session.actor() };
    let key = form.request_id.as_deref().and_then(|id| domain::IdempotencyKey::parse(id).ok());
    let request = ModelCreationRequest {
        name: form.name.clone(),
        description: form.description.clone(),
        reference_model_id: form.reference_model_id.clone(),
        uploads,
    };
    match state.submit.create_model(&who, key.as_ref(), request).await {
        Ok(submitted) => Ok(Redirect::to(&format!("/jobs/{}", submitted.job_id)).into_response()),
        Err(error) => match WebError::from(error) {
            WebError::Refused(notice) => {
                let form = CreateForm { request_id: None, ..form };
                Ok((axum::http::StatusCode::UNPROCESSABLE_ENTITY, render_new(&state, &session, form, Some(notice)).await?).into_response())
            }
            other => Err(other),
        },
    }
}

pub struct VersionRow {
    pub version: i32,
    pub job_id: String,
    pub prompt: String,
    pub created_at: String,
}

#[derive(Template)]
#[template(path = "model.html")]
struct ModelPage {
    layout: Layout,
    notice: Option<Notice>,
    model: ModelRow,
    description: String,
    pending_job_id: Option<String>,
    versions: Vec<VersionRow>,
    images: Vec<(String, String)>,
    ready: bool,
    /// Whether the model's details can still change (not archived).
    editable: bool,
    prompt: String,
    estimate: EstimateView,
    request_id: String,
}

async fn render_model(state: &AppState, session: &Session, model_id: &str, prompt: String, notice: Option<Notice>) -> Result<Html<String>, WebError> {
    let model = queries::models::model(&state.db, session.team_id, model_id).await?.ok_or(WebError::NotFound)?;
    let versions = queries::models::versions(&state.db, model_id)
        .await?
        .into_iter()
        .map(|v| VersionRow { version: v.version, job_id: v.job_id, prompt: v.prompt.unwrap_or_default(), created_at: time(v.created_at) })
        .collect();
    let ttl = Duration::from_secs(state.url_ttl_secs);
    let images = queries::models::images(&state.db, session.team_id, model_id, None, IMAGES_SHOWN)
        .await?
        .into_iter()
        .map(|row| Ok((state.objects.signed_url(&row.key, ttl, state.jobs.now()).map_err(|e| WebError::internal(&e))?, row.job_id)))
        .collect::<Result<Vec<_>, WebError>>()?;
    let ready = model.status == "ready" && !model.archived;
    let editable = !model.archived;
    let estimate = EstimateView::from_result(state.submit.estimate_refinement(session.team_id, model_id).await)?;
    let page = ModelPage {
        layout: Layout::load(state, session, &model.name, "models").await?,
        notice,
        description: model.description.clone(),
        pending_job_id: model.pending_job_id.clone(),
        model: ModelRow::from(&model),
        versions,
        images,
        ready,
        editable,
        prompt,
        estimate,
        request_id: request_id(),
    };
    Ok(Html(page.render()?))
}

async fn model_page(State(state): State<AppState>, session: Session, Path(model_id): Path<String>) -> Result<Html<String>, WebError> {
    render_model(&state, &session, &model_id, String::new(), None).await
}

#[derive(Debug, Deserialize)]
struct RefineForm {
    #[serde(default)]
    prompt: String,
    request_id: Option<String>,
}

async fn refinement_estimate(State(state): State<AppState>, session: Session, Path(model_id): Path<String>) -> Result<Html<String>, WebError> {
    EstimateView::from_result(state.submit.estimate_refinement(session.team_id, &model_id).await)?.fragment()
}

async fn refine(State(state): State<AppState>, session: Session, Path(model_id): Path<String>, request: Request) -> Result<Response, WebError> {
    let (form, uploads) = form_and_images::<RefineForm>(&state, request).await?;
    session.writer()?;
    let who = Requester { team: session.team_id, actor: session.actor() };
    let key = form.request_id.as_deref().and_then(|id| domain::IdempotencyKey::parse(id).ok());
    let request = RefinementRequest { model_id: model_id.clone(), prompt: form.prompt.clone(), uploads };
    match state.submit.refine_model(&who, key.as_ref(), request).await {
        Ok(submitted) => Ok(Redirect::to(&format!("/jobs/{}", submitted.job_id)).into_response()),
        Err(error) => match WebError::from(error) {
            WebError::Refused(notice) => {
                Ok((axum::http::StatusCode::UNPROCESSABLE_ENTITY, render_model(&state, &session, &model_id, form.prompt, Some(notice)).await?).into_response())
            }
            other => Err(other),
        },
    }
}

#[derive(Debug, Deserialize)]
struct DetailsForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    description: String,
}

/// The model page's answer to a refused edit: the page again, with the reason on it.
async fn refused(state: &AppState, session: &Session, model_id: &str, error: WebError) -> Result<Response, WebError> {
    let notice = match error {
        WebError::Refused(notice) => notice,
        WebError::BadForm(detail) => Notice::new("Check the details", format!("The model's {detail}.")),
        other => return Err(other),
    };
    Ok((axum::http::StatusCode::UNPROCESSABLE_ENTITY, render_model(state, session, model_id, String::new(), Some(notice)).await?).into_response())
}

/// Renames a model and edits its description (`application::models::update_details`,
/// as `PATCH /api/models/{id}`).
async fn update_details(
    State(state): State<AppState>,
    session: Session,
    Path(model_id): Path<String>,
    PageForm(form): PageForm<DetailsForm>,
) -> Result<Response, WebError> {
    session.writer()?;
    let id: domain::ModelId = model_id.parse().map_err(|_| WebError::NotFound)?;
    let change = application::models::DetailsChange { name: Some(form.name), description: Some(form.description) };
    let clock = state.credits.clock().as_ref();
    match application::models::update_details(&state.aggregates, clock, session.team_id, id, change, &session.actor()).await {
        Ok(()) => Ok(Redirect::to(&format!("/models/{model_id}")).into_response()),
        Err(error) => refused(&state, &session, &model_id, error.into()).await,
    }
}

/// Archives a model (`application::models::archive`, as `DELETE /api/models/{id}`).
async fn archive(State(state): State<AppState>, session: Session, Path(model_id): Path<String>) -> Result<Response, WebError> {
    session.writer()?;
    let id: domain::ModelId = model_id.parse().map_err(|_| WebError::NotFound)?;
    match application::models::archive(&state.aggregates, state.credits.clock().as_ref(), session.team_id, id, &session.actor()).await {
        Ok(()) => Ok(Redirect::to(&format!("/models/{model_id}")).into_response()),
        Err(error) => refused(&state, &session, &model_id, error.into()).await,
    }
}
