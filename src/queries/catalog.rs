//! The reference-model catalog as the doors read it (`reference_models`): pages of
//! active models in one of the `CatalogSort` orders, paged both ways by cursor, a name
//! search, one model. The API and the catalog page share it, and the parsing of its
//! filters (`Category`, `CatalogSort`: an unknown value is an error, never ignored). The types and the seed are
//! `infrastructure::catalog`'s.

use chrono::{DateTime, Utc};
pub use infrastructure::catalog::{CatalogError, CatalogPage, CatalogSort, Category, ReferenceModel, UnknownCategory, UnknownSort, PAGE_LIMIT_MAX};
use serde::{Deserialize, Serialize};
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

/// Which way a cursor pages: the page after its position, or the one before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Direction {
    After,
    Before,
}

/// A place in one order of the catalog: the sort's key and the id of a model, and which
/// way to page from it. The cursor text is this, as JSON (the API wraps it in its own
/// opaque cursor; the page puts it in its links).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Position {
    #[serde(rename = "d")]
    direction: Direction,
    /// The sort the position belongs to (`CatalogSort::as_str`).
    #[serde(rename = "s")]
    sort: String,
    /// The sort key of the model: its popularity, name or creation time (RFC 3339).
    #[serde(rename = "k")]
    key: String,
    id: String,
}

/// A sort key, typed for the query.
enum Key {
    Popularity(i64),
    Name(String),
    Newest(DateTime<Utc>),
}

impl Position {
    fn of(direction: Direction, sort: CatalogSort, model: &ReferenceModel) -> String {
        let key = match sort {
            CatalogSort::Popularity => model.popularity.to_string(),
            CatalogSort::Name => model.name.clone(),
            CatalogSort::Newest => model.created_at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        };
        Position { direction, sort: sort.as_str().to_string(), key, id: model.id.clone() }.text()
    }

    /// The cursor text.
    fn text(&self) -> String {
        // Serializing four plain strings cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The position a cursor names, if it is one of `sort`'s.
    fn parse(cursor: &str, sort: CatalogSort) -> Result<(Direction, Key, String), CatalogError> {
        let position: Position = serde_json::from_str(cursor).map_err(|_| CatalogError::InvalidCursor)?;
        if position.sort != sort.as_str() || position.id.is_empty() {
            return Err(CatalogError::InvalidCursor);
        }
        let key = match sort {
            CatalogSort::Popularity => Key::Popularity(position.key.parse().map_err(|_| CatalogError::InvalidCursor)?),
            CatalogSort::Name => Key::Name(position.key),
            CatalogSort::Newest => Key::Newest(
                DateTime::parse_from_rfc3339(&position.key).map_err(|_| CatalogError::InvalidCursor)?.with_timezone(&Utc),
            ),
        };
        Ok((position.direction, key, position.id))
    }
}

/// A page of active models, optionally of one category, in `sort` order. `limit` is
/// clamped to 1..=[`PAGE_LIMIT_MAX`]; `cursor` is a page's `next_cursor` or `prev_cursor`.
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
    let pattern = name_contains.map(str::trim).filter(|t| !t.is_empty()).map(super::like_pattern);
    let limit = limit.clamp(1, PAGE_LIMIT_MAX);
    let position = cursor.map(|c| Position::parse(c, sort)).transpose()?;
    let direction = position.as_ref().map_or(Direction::After, |(d, _, _)| *d);
    // Names compare byte by byte on both databases (PostgreSQL would otherwise use the
    // database's collation, SQLite always compares bytes).
    let collate = match db {
        Database::Postgres(_) => " COLLATE \"C\"",
        Database::Sqlite { .. } => "",
    };
    // Each order as (key column, descending?); ties by id ascending. Paging backwards
    // walks the reversed order and turns the rows round afterwards.
    let (column, descending) = match sort {
        CatalogSort::Popularity => ("popularity".to_string(), true),
        CatalogSort::Name => (format!("name{collate}"), false),
        CatalogSort::Newest => ("created_at".to_string(), true),
    };
    let forward = direction == Direction::After;
    let (key_order, id_order) = match (descending, forward) {
        (true, true) | (false, false) => ("DESC", "ASC"),
        (false, true) | (true, false) => ("ASC", "DESC"),
    };
    // Rows strictly beyond the position in the walked order.
    let key_beyond = if key_order == "DESC" { "<" } else { ">" };
    let id_beyond = if id_order == "ASC" { ">" } else { "<" };
    let beyond = if position.is_some() { format!("AND ({column} {key_beyond} $5 OR ({column} = $5 AND id {id_beyond} $6))") } else { String::new() };
    let sql = format!(
        "SELECT {COLUMNS} FROM reference_models WHERE TRUE{}{}{} {beyond} \
         ORDER BY {column} {key_order}, id {id_order} LIMIT $4",
        super::given(active.is_some(), " AND active = $1"),
        super::given(category.is_some(), " AND category = $2"),
        super::given(pattern.is_some(), " AND LOWER(name) LIKE $3 ESCAPE '\\'"),
    );
    let (category, fetched) = (category.map(Category::as_str), i64::from(limit) + 1);
    let rows = match position {
        None => db_fetch_all!(db, Row, &sql, active, category, pattern, fetched)?,
        Some((_, Key::Popularity(key), id)) => db_fetch_all!(db, Row, &sql, active, category, pattern, fetched, key, id)?,
        Some((_, Key::Name(key), id)) => db_fetch_all!(db, Row, &sql, active, category, pattern, fetched, key, id)?,
        Some((_, Key::Newest(key), id)) => db_fetch_all!(db, Row, &sql, active, category, pattern, fetched, key, id)?,
    };
    let mut items = rows.into_iter().map(ReferenceModel::try_from).collect::<Result<Vec<_>, _>>()?;
    // One row beyond the page says whether another page follows in the walked direction.
    let more = items.len() > limit as usize;
    items.truncate(limit as usize);
    let (next_cursor, prev_cursor) = if forward {
        let next = if more { items.last() } else { None };
        // A page reached through a cursor has a page before it.
        let prev = if cursor.is_some() { items.first() } else { None };
        (next.map(|m| Position::of(Direction::After, sort, m)), prev.map(|m| Position::of(Direction::Before, sort, m)))
    } else {
        items.reverse();
        let prev = if more { items.first() } else { None };
        (items.last().map(|m| Position::of(Direction::After, sort, m)), prev.map(|m| Position::of(Direction::Before, sort, m)))
    };
    Ok(CatalogPage { items, next_cursor, prev_cursor })
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
    fn cursors_round_trip_within_their_sort_and_reject_garbage() {
        let created_at = DateTime::from_timestamp(1_790_000_000, 123_000).expect("instant");
        let keys = [
            (CatalogSort::Popularity, "1234".to_string()),
            (CatalogSort::Name, "Ava: editorial".to_string()),
            (CatalogSort::Newest, created_at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
        ];
        for (sort, key) in keys {
            for direction in [Direction::After, Direction::Before] {
                let cursor = Position { direction, sort: sort.as_str().into(), key: key.clone(), id: "fashion-editorial-01".into() }.text();
                let (d, parsed, id) = Position::parse(&cursor, sort).expect("valid");
                assert_eq!((d, id.as_str()), (direction, "fashion-editorial-01"));
                match parsed {
                    Key::Popularity(p) => assert_eq!((sort, p), (CatalogSort::Popularity, 1234)),
                    Key::Name(n) => assert_eq!((sort, n.as_str()), (CatalogSort::Name, "Ava: editorial")),
                    Key::Newest(at) => assert_eq!((sort, at), (CatalogSort::Newest, created_at)),
                }
                let other = CatalogSort::ALL.into_iter().find(|s| *s != sort).expect("another sort");
                assert!(Position::parse(&cursor, other).is_err(), "a {sort:?} cursor is not a {other:?} one");
            }
        }
        for bad in ["", "1234:x", r#"{"d":"after","s":"popularity","k":"x","id":"a"}"#, r#"{"d":"after","s":"popularity","k":"1","id":""}"#, r#"{"d":"up","s":"name","k":"a","id":"a"}"#] {
            assert!(Position::parse(bad, CatalogSort::Popularity).is_err() && Position::parse(bad, CatalogSort::Name).is_err(), "{bad:?}");
        }
    }
}
