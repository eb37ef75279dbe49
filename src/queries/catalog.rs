//! The reference-model catalog as the doors read it (`reference_models`): pages of
//! active models by popularity, a name search, one model. The types and the seed are
//! `infrastructure::catalog`'s.

use chrono::{DateTime, Utc};
pub use infrastructure::catalog::{CatalogError, CatalogPage, CatalogSort, Category, ReferenceModel, UnknownCategory, PAGE_LIMIT_MAX};
use infrastructure::db::Database;
use infrastructure::{db_fetch_all, db_fetch_optional};

#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    name: String,
    description: String,
    category: String,
    characteristics: String,
    complexity_factor_milli: i64,
    popularity: i64,
    active: bool,
    preview_keys: String,
    created_at: DateTime<Utc>,
    changed_at: Option<DateTime<Utc>>,
    changed_by: Option<String>,
    change_reason: Option<String>,
}

const COLUMNS: &str = "id, name, description, category, characteristics, complexity_factor_milli, popularity, active, preview_keys, \
     created_at, changed_at, changed_by, change_reason";

impl TryFrom<Row> for ReferenceModel {
    type Error = CatalogError;

    fn try_from(row: Row) -> Result<Self, CatalogError> {
        let corrupt = |reason: String| CatalogError::Corrupt { id: row.id.clone(), reason };
        let category = row.category.parse().map_err(|e: UnknownCategory| corrupt(e.to_string()))?;
        let characteristics = serde_json::from_str(&row.characteristics).map_err(|e| corrupt(e.to_string()))?;
        let preview_keys = serde_json::from_str(&row.preview_keys).map_err(|e| corrupt(e.to_string()))?;
        Ok(ReferenceModel {
            id: row.id,
            name: row.name,
            description: row.description,
            category,
            characteristics,
            complexity_factor_milli: row.complexity_factor_milli,
            popularity: row.popularity,
            active: row.active,
            preview_keys,
            created_at: row.created_at,
            changed_at: row.changed_at,
            changed_by: row.changed_by,
            change_reason: row.change_reason,
        })
    }
}

/// `{popularity}:{id}` of the last item of a page.
fn popularity_cursor(model: &ReferenceModel) -> String {
    format!("{}:{}", model.popularity, model.id)
}

fn parse_popularity_cursor(cursor: &str) -> Result<(i64, String), CatalogError> {
    let (popularity, id) = cursor.split_once(':').ok_or(CatalogError::InvalidCursor)?;
    let popularity = popularity.parse().map_err(|_| CatalogError::InvalidCursor)?;
    if id.is_empty() {
        return Err(CatalogError::InvalidCursor);
    }
    Ok((popularity, id.to_string()))
}

/// A page of active models, optionally of one category, in `sort` order. `limit` is
/// clamped to 1..=[`PAGE_LIMIT_MAX`]; `cursor` is a previous page's `next_cursor`.
pub async fn list(
    db: &Database,
    category: Option<Category>,
    sort: CatalogSort,
    limit: u32,
    cursor: Option<&str>,
) -> Result<CatalogPage, CatalogError> {
    search(db, category, None, sort, limit, cursor).await
}

/// Like [`list`], keeping only models whose name contains `name_contains` (any case).
pub async fn search(
    db: &Database,
    category: Option<Category>,
    name_contains: Option<&str>,
    sort: CatalogSort,
    limit: u32,
    cursor: Option<&str>,
) -> Result<CatalogPage, CatalogError> {
    find(db, Some(true), category, name_contains, sort, limit, cursor).await
}

/// Like [`search`], retired models included: the operators' view.
pub async fn search_all(db: &Database, name_contains: Option<&str>, limit: u32, cursor: Option<&str>) -> Result<CatalogPage, CatalogError> {
    find(db, None, None, name_contains, CatalogSort::Popularity, limit, cursor).await
}

/// Models that are `active` (any when `None`), of `category`, whose name contains
/// `name_contains`, in `sort` order.
async fn find(
    db: &Database,
    active: Option<bool>,
    category: Option<Category>,
    name_contains: Option<&str>,
    sort: CatalogSort,
    limit: u32,
    cursor: Option<&str>,
) -> Result<CatalogPage, CatalogError> {
    let pattern = name_contains.map(str::trim).filter(|t| !t.is_empty()).map(like_pattern);
    let limit = limit.clamp(1, PAGE_LIMIT_MAX);
    let CatalogSort::Popularity = sort;
    let after = cursor.map(parse_popularity_cursor).transpose()?;
    let (after_popularity, after_id) = after.map_or((None, None), |(p, id)| (Some(p), Some(id)));
    let sql = format!(
        "SELECT {COLUMNS} FROM reference_models WHERE ($1 IS NULL OR active = $1) AND ($2 IS NULL OR category = $2) \
         AND ($3 IS NULL OR popularity < $3 OR (popularity = $3 AND id > $4)) \
         AND ($6 IS NULL OR LOWER(name) LIKE $6 ESCAPE '\\') \
         ORDER BY popularity DESC, id LIMIT $5"
    );
    let rows = db_fetch_all!(
        db,
        Row,
        &sql,
        active,
        category.map(Category::as_str),
        after_popularity,
        after_id,
        i64::from(limit) + 1,
        pattern
    )?;
    let mut items = rows.into_iter().map(ReferenceModel::try_from).collect::<Result<Vec<_>, _>>()?;
    // One row beyond the page says whether another page follows.
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(popularity_cursor)
    } else {
        None
    };
    Ok(CatalogPage { items, next_cursor })
}

/// `%text%` in lower case, with LIKE's wildcards in `text` escaped.
fn like_pattern(text: &str) -> String {
    let escaped = text.to_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
    format!("%{escaped}%")
}

/// One model, active or not; `None` if there is no such id.
pub async fn get(db: &Database, id: &str) -> Result<Option<ReferenceModel>, CatalogError> {
    let sql = format!("SELECT {COLUMNS} FROM reference_models WHERE id = $1");
    let row = db_fetch_optional!(db, Row, &sql, id)?;
    row.map(ReferenceModel::try_from).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let (popularity, id) = parse_popularity_cursor("1234:fashion-editorial-01").expect("valid");
        assert_eq!((popularity, id.as_str()), (1234, "fashion-editorial-01"));
        for bad in ["", "1234", "x:id", "12:", ":id"] {
            assert!(parse_popularity_cursor(bad).is_err(), "{bad:?}");
        }
    }
}
