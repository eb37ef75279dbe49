//! `/catalog`: the reference models a custom model is created from, by category, with
//! their preview images, a name search, a choice of order (`CatalogSort`) and pages
//! both ways. An unknown category, order or filter in the address is said on the page.

use std::time::Duration;

use askama::Template;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use crate::queries::catalog::{self, CatalogError, CatalogSort, Category, ReferenceModel};

use super::consistency::PageReadToken;
use super::errors::{Notice, WebError};
use super::layout::Layout;
use super::paging::q;
use super::session::Session;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/catalog", get(page))
}

const PER_PAGE: u32 = 12;

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
    notice: Option<Notice>,
    categories: Vec<&'static str>,
    category: String,
    sorts: Vec<(&'static str, &'static str)>,
    sort: &'static str,
    search: String,
    cards: Vec<ReferenceCard>,
    next: Option<String>,
    prev: Option<String>,
}

/// What the page's address asks for, each value parsed by the read side's own rules
/// (`Category`, `CatalogSort`): a value they refuse, or a parameter the page does not
/// know, is said on the page rather than ignored.
struct Asked {
    category: Option<Category>,
    sort: CatalogSort,
    search: String,
    cursor: Option<String>,
    /// Why the address cannot be shown as asked.
    refused: Option<Notice>,
}

fn sort_label(sort: CatalogSort) -> &'static str {
    match sort {
        CatalogSort::Popularity => "Most popular",
        CatalogSort::Name => "Name (A–Z)",
        CatalogSort::Newest => "Newest",
    }
}

fn asked(pairs: Vec<(String, String)>) -> Asked {
    let (mut category, mut sort, mut search, mut cursor) = (None, None, String::new(), None);
    let mut refused: Option<Notice> = None;
    let mut refuse = |title: &str, detail: String| {
        refused.get_or_insert_with(|| Notice::new(title, detail).next("/catalog", "Show the whole catalog"));
    };
    for (name, value) in pairs {
        match name.as_str() {
            // An empty value is the form's "any": all categories, the default order.
            "category" | "sort" | "cursor" if value.is_empty() => {}
            "category" => match value.parse::<Category>() {
                Ok(c) => category = Some(c),
                Err(_) => refuse("Unknown category", format!("There is no category “{value}”. The categories are: {}.", categories().join(", "))),
            },
            "sort" => match value.parse::<CatalogSort>() {
                Ok(s) => sort = Some(s),
                Err(_) => refuse("Unknown order", format!("The catalog cannot be sorted by “{value}”: pick most popular, name or newest.")),
            },
            "q" => search = value,
            "cursor" => cursor = Some(value),
            other => refuse("Unknown filter", format!("The catalog has no filter “{other}”: it filters by category and name.")),
        }
    }
    Asked { category, sort: sort.unwrap_or_default(), search, cursor, refused }
}

fn categories() -> Vec<&'static str> {
    Category::ALL.iter().map(|c| c.as_str()).collect()
}

async fn page(
    State(state): State<AppState>,
    session: Session,
    PageReadToken(token): PageReadToken,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, WebError> {
    let Asked { category, sort, search, cursor, mut refused } = asked(pairs);
    let mut cards = Vec::new();
    let (mut next, mut prev) = (None, None);
    if refused.is_none() {
        let db = crate::queries::read_db(&state.reads, token).await;
        match catalog::search(db, category, Some(&search), sort, PER_PAGE, cursor.as_deref()).await {
            Ok(found) => {
                cards = found.items.iter().map(|m| ReferenceCard::new(&state, m)).collect::<Result<Vec<_>, _>>()?;
                let link = |cursor: String| {
                    let category = category.map(Category::as_str).unwrap_or("");
                    format!("/catalog?category={}&sort={}&q={}&cursor={}", q(category), sort.as_str(), q(&search), q(&cursor))
                };
                next = found.next_cursor.map(link);
                prev = found.prev_cursor.map(link);
            }
            // A stale or edited link: say so, and offer the first page.
            Err(CatalogError::InvalidCursor) => {
                refused = Some(Notice::new("That page link is not valid", "It may be from another order or edited. Start again from the first page.").next("/catalog", "First page"));
            }
            Err(other) => return Err(WebError::internal(&other)),
        }
    }
    let status = if refused.is_some() { StatusCode::UNPROCESSABLE_ENTITY } else { StatusCode::OK };
    let page = CatalogPage {
        layout: Layout::load(&state, &session, "Catalog", "catalog").await?,
        notice: refused,
        categories: categories(),
        category: category.map(Category::as_str).unwrap_or("").to_string(),
        sorts: CatalogSort::ALL.iter().map(|s| (s.as_str(), sort_label(*s))).collect(),
        sort: sort.as_str(),
        search,
        cards,
        next,
        prev,
    };
    Ok((status, Html(page.render()?)).into_response())
}
