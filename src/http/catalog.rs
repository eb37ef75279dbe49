//! `/api/reference-models`: the catalog of reference models a custom model is created
//! from, with signed URLs of their preview images. Any team key may read it.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use crate::queries::catalog::{self, CatalogError, CatalogSort, Category, ReferenceModel};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::TeamKey;
use super::consistency::ReadToken;
use super::extract::ApiQuery;
use super::problem::Problem;
use crate::state::AppState;

pub const PAGE_LIMIT_DEFAULT: u32 = 20;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/reference-models", get(list))
        .route("/api/reference-models/{id}", get(get_one))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CatalogQuery {
    /// Only models of this category.
    #[param(schema_with = category_schema)]
    pub category: Option<String>,
    /// `popularity` (the default): most popular first; `name`: A to Z; `newest`: most
    /// recently added first. Ties by id.
    #[param(schema_with = sort_schema)]
    pub sort: Option<String>,
    /// Page size, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// `next_cursor` (or `prev_cursor`) of a page of the same sort.
    pub cursor: Option<String>,
}

fn category_schema() -> utoipa::openapi::schema::Object {
    super::openapi::one_of(Category::ALL.map(|c| c.as_str()))
}

fn sort_schema() -> utoipa::openapi::schema::Object {
    super::openapi::one_of(CatalogSort::ALL.map(|s| s.as_str()))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReferenceModelView {
    /// A slug, e.g. `fashion-editorial-01`.
    pub id: String,
    pub name: String,
    /// What the model is for (empty for the seed models).
    pub description: String,
    /// fashion | fitness | beauty | lifestyle | business
    pub category: String,
    /// Age range, ethnicity, gender presentation, style, setting, lighting, framing, mood.
    #[schema(value_type = Object)]
    pub characteristics: serde_json::Value,
    /// Thousandths (1000 = 1.0); model creation costs grow with it.
    pub complexity_factor_milli: i64,
    pub popularity: i64,
    /// Signed preview image URLs, valid for `url_ttl_secs`.
    pub preview_urls: Vec<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReferenceModelPage {
    pub items: Vec<ReferenceModelView>,
    pub next_cursor: Option<String>,
    /// The page before this one (absent on the first page).
    pub prev_cursor: Option<String>,
}

pub(crate) fn catalog_problem(error: CatalogError) -> Problem {
    match error {
        CatalogError::InvalidCursor => super::cursor::invalid(),
        other => Problem::internal(&other),
    }
}

pub(crate) fn view(state: &AppState, model: ReferenceModel) -> Result<ReferenceModelView, Problem> {
    let (ttl, now) = (Duration::from_secs(state.url_ttl_secs), state.credits.now());
    let preview_urls = model
        .preview_keys
        .iter()
        .map(|key| state.objects.signed_url(key, ttl, now))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Problem::internal(&e))?;
    Ok(ReferenceModelView {
        id: model.id,
        name: model.name,
        description: model.description,
        category: model.category.as_str().to_string(),
        characteristics: model.characteristics,
        complexity_factor_milli: model.complexity_factor_milli,
        popularity: model.popularity,
        preview_urls,
        created_at: model.created_at,
    })
}

/// Active reference models in the chosen order (most popular first by default),
/// optionally of one category; paged both ways.
#[utoipa::path(get, path = "/api/reference-models", tag = "catalog", operation_id = "listReferenceModels", params(CatalogQuery, ReadToken),
    responses((status = 200, body = ReferenceModelPage),
        (status = 422, description = "A bad category, sort, limit or cursor (`/problems/invalid-request`)")),
    security(("api_key" = [])))]
async fn list(
    State(state): State<AppState>,
    _key: TeamKey,
    ReadToken(token): ReadToken,
    ApiQuery(query): ApiQuery<CatalogQuery>,
) -> Result<Json<ReferenceModelPage>, Problem> {
    let category = match query.category.as_deref() {
        Some(text) => Some(text.parse::<Category>().map_err(|e| Problem::invalid(e.to_string()))?),
        None => None,
    };
    let sort = match query.sort.as_deref() {
        Some(text) => text.parse::<CatalogSort>().map_err(|e| Problem::invalid(e.to_string()))?,
        None => CatalogSort::default(),
    };
    let limit = query.limit.unwrap_or(PAGE_LIMIT_DEFAULT);
    if !(1..=catalog::PAGE_LIMIT_MAX).contains(&limit) {
        return Err(Problem::invalid(format!("limit must be 1 to {}", catalog::PAGE_LIMIT_MAX)));
    }
    let position = super::cursor::decode("reference-models", query.cursor.as_deref())?;
    let db = crate::queries::read_db(&state.reads, token).await;
    let page = catalog::list(db, category, sort, limit, position.as_deref()).await.map_err(catalog_problem)?;
    let items = page.items.into_iter().map(|model| view(&state, model)).collect::<Result<Vec<_>, _>>()?;
    let cursor = |position: String| super::cursor::encode("reference-models", &position);
    Ok(Json(ReferenceModelPage { items, next_cursor: page.next_cursor.map(cursor), prev_cursor: page.prev_cursor.map(cursor) }))
}

/// One active reference model.
#[utoipa::path(get, path = "/api/reference-models/{id}", tag = "catalog", operation_id = "getReferenceModel",
    params(("id" = String, Path, description = "reference model id, e.g. fashion-editorial-01"), ReadToken),
    responses((status = 200, body = ReferenceModelView), (status = 404, description = "Unknown or inactive (`/problems/not-found`)")),
    security(("api_key" = [])))]
async fn get_one(
    State(state): State<AppState>,
    _key: TeamKey,
    ReadToken(token): ReadToken,
    Path(id): Path<String>,
) -> Result<Json<ReferenceModelView>, Problem> {
    let db = crate::queries::read_db(&state.reads, token).await;
    let model = catalog::get(db, &id)
        .await
        .map_err(catalog_problem)?
        .filter(|model| model.active)
        .ok_or_else(|| Problem::not_found().detail("no such reference model"))?;
    Ok(Json(view(&state, model)?))
}
