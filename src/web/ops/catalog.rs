//! `/ops/catalog`: every reference model (retired ones too) with its preview, who
//! changed it last and why; an admin adds one (with a preview image), and on a model's
//! page edits its name, description, traits or preview, retires it (no longer offered
//! for new custom models; models made from it keep working) or restores it. Each action
//! requires a reason and goes through `OperatorActions`; the rules are its value types'.

use std::time::Duration;

use application::operator_actions::ReasonRule;
use askama::Template;
use axum::extract::{Path, Query, Request, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use domain::catalog::{NewReference, ReferenceEdit, Traits, COMPLEXITY_MILLI_MAX, COMPLEXITY_MILLI_MIN};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::layout::OpsLayout;
use super::session::OpsSession;
use crate::multipart;
use crate::queries::catalog::{self, Category, ReferenceModel};
use crate::state::AppState;
use crate::web::errors::{Notice, WebError};
use crate::web::form::PageForm;
use crate::web::layout::time_opt;
use crate::web::paging::q;

/// Models a page lists.
const PER_PAGE: u32 = 50;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ops/catalog", get(page).post(add))
        .route("/ops/catalog/{id}", get(model_page).post(edit))
        .route("/ops/catalog/{id}/retire", post(retire))
        .route("/ops/catalog/{id}/restore", post(restore))
}

/// What the page says after an action (`?done=…`).
fn done_notice(done: Option<&str>) -> Option<Notice> {
    let (title, detail) = match done? {
        "add" => ("Reference model added", "It is offered for new custom models now; the addition and your reason are in the audit."),
        "edit" => ("Reference model saved", "Teams see the new text and preview now; the change and your reason are in the audit."),
        "retire" => ("Reference model retired", "It is no longer offered for new custom models; models made from it keep working."),
        "restore" => ("Reference model restored", "It is offered for new custom models again."),
        _ => return None,
    };
    Some(Notice::new(title, detail))
}

struct ModelLine {
    id: String,
    name: String,
    description: String,
    category: &'static str,
    complexity: String,
    active: bool,
    /// "style: editorial\nsetting: studio", one trait a line (the edit form's text).
    traits: String,
    preview_url: Option<String>,
    changed: String,
    changed_by: String,
    change_reason: String,
}

fn line(state: &AppState, model: &ReferenceModel) -> Result<ModelLine, WebError> {
    let ttl = Duration::from_secs(state.url_ttl_secs);
    let preview_url = match model.preview_keys.first() {
        Some(key) => Some(state.objects.signed_url(key, ttl, state.credits.now()).map_err(|e| WebError::internal(&e))?),
        None => None,
    };
    let traits = model
        .characteristics
        .as_object()
        .map(|fields| fields.iter().filter_map(|(name, value)| value.as_str().map(|v| format!("{name}: {v}"))).collect::<Vec<_>>().join("\n"))
        .unwrap_or_default();
    Ok(ModelLine {
        id: model.id.clone(),
        name: model.name.clone(),
        description: model.description.clone(),
        category: model.category.as_str(),
        complexity: format!("{:.2}", model.complexity_factor_milli as f64 / 1000.0),
        active: model.active,
        traits,
        preview_url,
        changed: time_opt(model.changed_at),
        changed_by: model.changed_by.clone().unwrap_or_else(|| "seed".into()),
        change_reason: model.change_reason.clone().unwrap_or_default(),
    })
}

#[derive(Template)]
#[template(path = "ops/catalog.html")]
struct CatalogPage {
    layout: OpsLayout,
    notice: Option<Notice>,
    search: String,
    models: Vec<ModelLine>,
    next: Option<String>,
    categories: Vec<&'static str>,
    complexity_min: i64,
    complexity_max: i64,
}

#[derive(Template)]
#[template(path = "ops/reference.html")]
struct ReferencePage {
    layout: OpsLayout,
    notice: Option<Notice>,
    model: ModelLine,
}

#[derive(Deserialize, Default)]
struct CatalogQuery {
    q: Option<String>,
    cursor: Option<String>,
    done: Option<String>,
}

fn catalog_error(error: catalog::CatalogError) -> WebError {
    match error {
        catalog::CatalogError::InvalidCursor => WebError::BadForm("That page link is not valid any more: start from the first page.".into()),
        other => WebError::internal(&other),
    }
}

async fn page(State(state): State<AppState>, session: OpsSession, Query(query): Query<CatalogQuery>) -> Result<Html<String>, WebError> {
    let search = query.q.unwrap_or_default();
    let found = catalog::search_all(&state.db, Some(&search), PER_PAGE, query.cursor.as_deref()).await.map_err(catalog_error)?;
    let models = found.items.iter().map(|m| line(&state, m)).collect::<Result<Vec<_>, _>>()?;
    let next = found.next_cursor.map(|cursor| format!("/ops/catalog?q={}&cursor={}", q(&search), q(&cursor)));
    let page = CatalogPage {
        layout: OpsLayout::new(&session, "Catalog", "catalog"),
        notice: done_notice(query.done.as_deref()),
        search,
        models,
        next,
        categories: Category::ALL.iter().map(|c| c.as_str()).collect(),
        complexity_min: COMPLEXITY_MILLI_MIN,
        complexity_max: COMPLEXITY_MILLI_MAX,
    };
    Ok(Html(page.render()?))
}

async fn model_page(State(state): State<AppState>, session: OpsSession, Path(id): Path<String>, Query(query): Query<CatalogQuery>) -> Result<Html<String>, WebError> {
    let model = catalog::get(&state.db, &id).await.map_err(catalog_error)?.ok_or(WebError::NotFound)?;
    let page = ReferencePage { layout: OpsLayout::new(&session, &model.name, "catalog"), notice: done_notice(query.done.as_deref()), model: line(&state, &model)? };
    Ok(Html(page.render()?))
}

/// A console form with its preview image: the forms that carry a file are multipart.
async fn form_and_preview<T: DeserializeOwned>(state: &AppState, request: Request) -> Result<(T, Option<Vec<u8>>), WebError> {
    let parts = multipart::read(request, state).await.map_err(|e| WebError::BadForm(e.to_string()))?;
    let form = serde_json::from_value(serde_json::Value::Object(parts.fields)).map_err(|e| WebError::BadForm(format!("The form could not be read: {e}")))?;
    Ok((form, parts.uploads.into_iter().next().map(|upload| upload.bytes)))
}

/// Traits as the form's text (`name: value` a line), as (name, value) pairs.
fn trait_pairs(text: &str) -> Result<Vec<(String, String)>, WebError> {
    let traits = Traits::parse_lines(text).map_err(WebError::from)?;
    Ok(traits.into_map().into_iter().collect())
}

#[derive(Deserialize)]
struct AddForm {
    id: String,
    name: String,
    #[serde(default)]
    description: String,
    category: String,
    complexity: String,
    #[serde(default)]
    traits: String,
    reason: String,
}

async fn add(State(state): State<AppState>, session: OpsSession, request: Request) -> Result<Response, WebError> {
    let (form, preview) = form_and_preview::<AddForm>(&state, request).await?;
    let complexity_factor_milli = form.complexity.trim().parse::<i64>().map_err(|_| {
        WebError::Refused(Notice::new("Check the reference model", format!("The complexity must be a whole number of thousandths, {COMPLEXITY_MILLI_MIN} to {COMPLEXITY_MILLI_MAX}.")))
    })?;
    let raw = NewReference { id: form.id, name: form.name, description: form.description, category: form.category, traits: trait_pairs(&form.traits)?, complexity_factor_milli };
    let id = state.operator_actions.add_reference(&session.operator, raw, preview, Some(&form.reason), ReasonRule::Required).await?;
    Ok(Redirect::to(&format!("/ops/catalog/{id}?done=add")).into_response())
}

#[derive(Deserialize)]
struct EditForm {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    traits: String,
    reason: String,
}

async fn edit(State(state): State<AppState>, session: OpsSession, Path(id): Path<String>, request: Request) -> Result<Response, WebError> {
    let (form, preview) = form_and_preview::<EditForm>(&state, request).await?;
    let raw = ReferenceEdit { name: Some(form.name), description: Some(form.description), traits: Some(trait_pairs(&form.traits)?) };
    state.operator_actions.edit_reference(&session.operator, &id, raw, preview, Some(&form.reason), ReasonRule::Required).await?;
    Ok(Redirect::to(&format!("/ops/catalog/{id}?done=edit")).into_response())
}

#[derive(Deserialize)]
struct ReasonForm {
    reason: String,
}

async fn retire(State(state): State<AppState>, session: OpsSession, Path(id): Path<String>, PageForm(form): PageForm<ReasonForm>) -> Result<Response, WebError> {
    state.operator_actions.retire_reference(&session.operator, &id, Some(&form.reason), ReasonRule::Required).await?;
    Ok(Redirect::to(&format!("/ops/catalog/{id}?done=retire")).into_response())
}

async fn restore(State(state): State<AppState>, session: OpsSession, Path(id): Path<String>, PageForm(form): PageForm<ReasonForm>) -> Result<Response, WebError> {
    state.operator_actions.restore_reference(&session.operator, &id, Some(&form.reason), ReasonRule::Required).await?;
    Ok(Redirect::to(&format!("/ops/catalog/{id}?done=restore")).into_response())
}
