//! The team's custom models: the `custom_models`, `model_versions` and `images` read
//! models.

use chrono::{DateTime, Utc};
use domain::TeamId;
use infrastructure::db::Database;
use infrastructure::{db_fetch_all, db_fetch_optional};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::QueryError;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct ModelView {
    pub model_id: String,
    pub name: String,
    pub description: String,
    pub reference_model_id: String,
    /// training | ready | failed
    pub status: String,
    pub archived: bool,
    pub current_version: Option<i32>,
    /// The creation or refinement job still running, if any.
    pub pending_job_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const MODEL_COLUMNS: &str =
    "model_id, name, description, reference_model_id, status, archived, current_version, pending_job_id, created_at, updated_at";

/// The team's model `model_id`; `None` for an unknown id or another team's model.
pub async fn model(db: &Database, team: TeamId, model_id: &str) -> Result<Option<ModelView>, QueryError> {
    let sql = format!("SELECT {MODEL_COLUMNS} FROM custom_models WHERE model_id = $1 AND team_id = $2");
    Ok(db_fetch_optional!(db, ModelView, &sql, model_id, team.to_string())?)
}

/// Up to `rows_max` of the team's models, newest first, after `(created_at, model_id)`.
pub async fn list(
    db: &Database,
    team: TeamId,
    include_archived: bool,
    after: Option<(DateTime<Utc>, String)>,
    rows_max: i64,
) -> Result<Vec<ModelView>, QueryError> {
    let (cursor_at, cursor_id) = after.map(|(a, i)| (Some(a), Some(i))).unwrap_or((None, None));
    let sql = format!(
        "SELECT {MODEL_COLUMNS} FROM custom_models WHERE team_id = $1{}{} ORDER BY created_at DESC, model_id DESC LIMIT $6",
        super::given(!include_archived, " AND archived = $3"),
        super::given(cursor_at.is_some(), " AND (created_at < $4 OR (created_at = $4 AND model_id < $5))"),
    );
    Ok(db_fetch_all!(db, ModelView, &sql, team.to_string(), include_archived, false, cursor_at, cursor_id, rows_max)?)
}

#[derive(Debug, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct VersionView {
    pub version: i32,
    pub job_id: String,
    /// The refinement prompt that made it (none for version 1).
    pub prompt: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// The versions of a model, oldest first. The caller has checked the model is the team's.
pub async fn versions(db: &Database, model_id: &str) -> Result<Vec<VersionView>, QueryError> {
    Ok(db_fetch_all!(
        db,
        VersionView,
        "SELECT version, job_id, prompt, created_at FROM model_versions WHERE model_id = $1 ORDER BY version",
        model_id
    )?)
}

/// A stored image generated with a model.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ImageRow {
    /// Object-store key.
    pub key: String,
    pub job_id: String,
    pub position: i32,
    pub created_at: DateTime<Utc>,
}

/// Up to `rows_max` of the images (not yet expired) generated with the team's model,
/// newest first, after `(created_at, key)`.
pub async fn images(
    db: &Database,
    team: TeamId,
    model_id: &str,
    after: Option<(DateTime<Utc>, String)>,
    rows_max: i64,
) -> Result<Vec<ImageRow>, QueryError> {
    let (cursor_at, cursor_key) = after.map(|(a, k)| (Some(a), Some(k))).unwrap_or((None, None));
    let sql = format!(
        "SELECT key, job_id, position, created_at FROM images WHERE model_id = $1 AND team_id = $2{} \
         ORDER BY created_at DESC, key DESC LIMIT $5",
        super::given(cursor_at.is_some(), " AND (created_at < $3 OR (created_at = $3 AND key < $4))"),
    );
    Ok(db_fetch_all!(
        db,
        ImageRow,
        &sql,
        model_id,
        team.to_string(),
        cursor_at,
        cursor_key,
        rows_max
    )?)
}
