//! `/catalog`: the reference models a custom model is created from, by category, with
//! their preview images, a name search and pages.

use std::time::Duration;

use askama::Template;
use axum::extract::{Query, State};
use axum::response::Html;
use axum::routing::get;
use axum::Router;
use crate::queries::catalog::{self, CatalogError, CatalogSort, Category, ReferenceModel};
use serde::Deserialize;

use super::consistency::PageReadToken;
use super::errors::WebError;
use super::layout::Layout;
use super::paging::q;
use super::session::Session;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/catalog", get(page))
}

const PER_PAGE: u32 = 12;

#[derive(Debug, Default, Deserialize)]
struct CatalogQuery {
    category: Option<String>,
    q: Option<String>,
    cursor: Option<String>,
}

pub struct ReferenceCard {
    pub id: String,
    pub name: String,
    /// The operator's description (empty for the seed models).
    pub description: String,
    pub category: &'static str,
    /// "style: editorial · setting: studio · …"
    pub traits: String,
    pub complexity: String,
    pub preview_url: Option<String>,
}

impl ReferenceCard {
    pub fn new(state: &AppState, model: &ReferenceModel) -> Result<Self, WebError> {
        let ttl = Duration::from_secs(state.url_ttl_secs);
        let preview_url = match model.preview_keys.first() {
            Some(key) => Some(state.objects.signed_url(key, ttl, state.jobs.now()).map_err(|e| WebError::internal(&e))?),
            None => None,
        };
        let traits = model
            .characteristics
            .as_object()
            .map(|fields| {
                fields
                    .iter()
                    .filter_map(|(name, value)| value.as_str().map(|v| format!("{}: {v}", name.replace('_', " "))))
                    .collect::<Vec<_>>()
                    .join(" · ")
            })
            .unwrap_or_default();
        Ok(Self {
            id: model.id.clone(),
            name: model.name.clone(),
            description: model.description.clone(),
            category: model.category.as_str(),
            traits,
            complexity: format!("{:.1}", model.complexity_factor_milli as f64 / 1000.0),
            preview_url,
        })
    }
}

#[derive(Template)]
#[template(path = "catalog.html")]
struct CatalogPage {
    layout: Layout,
    categories: Vec<&'static str>,
    category: String,
    search: String,
    cards: Vec<ReferenceCard>,
    next: Option<String>,
}

fn catalog_error(error: CatalogError) -> WebError {
    match error {
        // A stale or edited cursor: the page shows nothing rather than failing.
        CatalogError::InvalidCursor => WebError::BadForm("That page link is not valid any more: start from the first page.".into()),
        other => WebError::internal(&other),
    }
}

async fn page(
    State(state): State<AppState>,
    session: Session,
    PageReadToken(token): PageReadToken,
    Query(query): Query<CatalogQuery>,
) -> Result<Html<String>, WebError> {
    let category = query.category.as_deref().and_then(|c| c.parse::<Category>().ok());
    let search = query.q.unwrap_or_default();
    let found = catalog::search(crate::queries::read_db(&state.reads, token).await, category, Some(&search), CatalogSort::Popularity, PER_PAGE, query.cursor.as_deref())
        .await
        .map_err(catalog_error)?;
    let cards = found.items.iter().map(|m| ReferenceCard::new(&state, m)).collect::<Result<Vec<_>, _>>()?;
    let category = category.map(Category::as_str).unwrap_or("").to_string();
    let next = found.next_cursor.map(|cursor| format!("/catalog?category={}&q={}&cursor={}", q(&category), q(&search), q(&cursor)));
    let page = CatalogPage {
        layout: Layout::load(&state, &session, "Catalog", "catalog").await?,
        categories: Category::ALL.iter().map(|c| c.as_str()).collect(),
        category,
        search,
        cards,
        next,
    };
    Ok(Html(page.render()?))
}
