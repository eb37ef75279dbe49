//! The reference-model catalog (`reference_models`): the models a custom model is
//! created from. Seeded by `kiln seed` ([`seed`], idempotent); read by the doors through
//! `kiln::queries::catalog` (the types are here, with the seed that writes them).
//!
//! `popularity` and `active` are operational state: seeding sets them on insert and
//! leaves them alone afterwards; everything else is refreshed from the seed data, unless
//! an operator changed the model (`changed_at` set): operators' changes are events of
//! the `CatalogEntry` streams (`domain::catalog`), projected into the same table by
//! `projections::reference_models`, and a later seed leaves those rows alone.

mod data;

use std::str::FromStr;

use application::storage::{ObjectStore, StorageError};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use data::{seed_models, SeedModel};

use crate::db::Database;
use crate::provider::render::{render_png, seed_of, RenderError};
use crate::db_execute;

/// Largest page of a catalog listing.
pub const PAGE_LIMIT_MAX: u32 = 100;
/// Side of a rendered preview, in pixels.
pub const PREVIEW_SIDE_PIXELS: u32 = 384;

/// The category rule is the domain's (`domain::catalog`), shared by every door.
pub use domain::catalog::{Category, UnknownCategory};

/// The orders a catalog listing offers (the API's `sort`, the catalog page's control).
/// Ties are broken by id, so every order is total and a cursor names one place in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CatalogSort {
    /// Most popular first.
    #[default]
    Popularity,
    /// By name, A to Z (byte order, the same on both databases).
    Name,
    /// Most recently added first.
    Newest,
}

impl CatalogSort {
    pub const ALL: [CatalogSort; 3] = [CatalogSort::Popularity, CatalogSort::Name, CatalogSort::Newest];

    pub const fn as_str(self) -> &'static str {
        match self {
            CatalogSort::Popularity => "popularity",
            CatalogSort::Name => "name",
            CatalogSort::Newest => "newest",
        }
    }
}

/// A sort no listing offers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown sort {0:?} (expected popularity, name or newest)")]
pub struct UnknownSort(pub String);

impl FromStr for CatalogSort {
    type Err = UnknownSort;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        CatalogSort::ALL.into_iter().find(|s| s.as_str() == text).ok_or_else(|| UnknownSort(text.to_string()))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceModel {
    /// A slug, e.g. `fashion-editorial-01`.
    pub id: String,
    pub name: String,
    /// Empty for the seed models.
    pub description: String,
    pub category: Category,
    /// JSON object: `age_range`, `ethnicity`, `gender_presentation`, `style`, `setting`, …
    pub characteristics: serde_json::Value,
    /// Thousandths: 1000 = 1.0.
    pub complexity_factor_milli: i64,
    pub popularity: i64,
    pub active: bool,
    /// Object-store keys of the preview images.
    pub preview_keys: Vec<String>,
    pub created_at: DateTime<Utc>,
    /// The latest operator change: when, by whom, why (`None`: as seeded).
    pub changed_at: Option<DateTime<Utc>>,
    pub changed_by: Option<String>,
    pub change_reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CatalogPage {
    pub items: Vec<ReferenceModel>,
    /// Where the page after this one starts, if there is one.
    pub next_cursor: Option<String>,
    /// Where the page before this one ends, unless this is the first page.
    pub prev_cursor: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SeedReport {
    /// Models in the seed data.
    pub models: usize,
    pub inserted: usize,
    /// Existing rows refreshed from the seed data.
    pub updated: usize,
    /// Previews rendered because they were missing from the store.
    pub previews_rendered: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog query failed")]
    Database(#[from] sqlx::Error),
    #[error("catalog storage failed")]
    Storage(#[from] StorageError),
    #[error("rendering a preview failed")]
    Render(#[from] RenderError),
    #[error("cursor is not one this API issued")]
    InvalidCursor,
    #[error("stored reference model {id} is corrupt: {reason}")]
    Corrupt { id: String, reason: String },
}

/// The object-store key of a model's preview image.
pub fn preview_key(id: &str) -> String {
    format!("reference-models/{id}/preview.png")
}

/// What the catalog lists for `id` (the `CatalogListing` port: operators' catalog
/// commands name it, as a seeded model has no events).
pub struct SqlCatalogListing {
    db: Database,
}

impl SqlCatalogListing {
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

#[async_trait::async_trait]
impl application::catalog::CatalogListing for SqlCatalogListing {
    async fn listed(&self, id: &str) -> Result<domain::catalog::Listed, application::event_store::EventStoreError> {
        let row = crate::db_fetch_optional!(&self.db, (bool,), "SELECT active FROM reference_models WHERE id = $1", id)
            .map_err(crate::event_store::store_error)?;
        Ok(match row {
            None => domain::catalog::Listed::Absent,
            Some((true,)) => domain::catalog::Listed::Active,
            Some((false,)) => domain::catalog::Listed::Retired,
        })
    }
}

/// Inserts the seed catalog, refreshes rows that exist (and no operator changed), and renders previews missing
/// from `objects`. Safe to run any number of times, by several processes at once.
pub async fn seed(db: &Database, objects: &dyn ObjectStore, now: DateTime<Utc>) -> Result<SeedReport, CatalogError> {
    let models = seed_models();
    let mut report = SeedReport { models: models.len(), ..SeedReport::default() };
    for model in models {
        // The preview first: a row never points at an image that is not there.
        let key = preview_key(&model.id);
        if objects.get(&key).await?.is_none() {
            let seed = seed_of(&[b"reference-model", model.id.as_bytes()]);
            let png = tokio::task::spawn_blocking(move || render_png(&seed, PREVIEW_SIDE_PIXELS, PREVIEW_SIDE_PIXELS))
                .await
                .map_err(|e| StorageError::Unavailable(format!("render task failed: {e}")))??;
            objects.put(&key, png, "image/png").await?;
            report.previews_rendered += 1;
        }
        let characteristics = model.characteristics.to_string();
        let preview_keys = serde_json::json!([key]).to_string();
        let inserted = db_execute!(
            db,
            "INSERT INTO reference_models (id, name, category, characteristics, complexity_factor_milli, popularity, \
             active, preview_keys, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING",
            &model.id,
            &model.name,
            model.category.as_str(),
            &characteristics,
            model.complexity_factor_milli,
            model.popularity,
            true,
            &preview_keys,
            now
        )?;
        if inserted == 1 {
            report.inserted += 1;
            continue;
        }
        db_execute!(
            db,
            "UPDATE reference_models SET name = $2, category = $3, characteristics = $4, complexity_factor_milli = $5, \
             preview_keys = $6 WHERE id = $1 AND changed_at IS NULL",
            &model.id,
            &model.name,
            model.category.as_str(),
            &characteristics,
            model.complexity_factor_milli,
            &preview_keys
        )?;
        report.updated += 1;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_and_sorts_parse() {
        for category in Category::ALL {
            assert_eq!(category.as_str().parse::<Category>(), Ok(category));
        }
        assert!("Fashion".parse::<Category>().is_err());
        assert!("sports".parse::<Category>().is_err());
        for sort in CatalogSort::ALL {
            assert_eq!(sort.as_str().parse::<CatalogSort>(), Ok(sort));
        }
        assert!("price".parse::<CatalogSort>().is_err());
        assert!("Name".parse::<CatalogSort>().is_err());
    }
}
