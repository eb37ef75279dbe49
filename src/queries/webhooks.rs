//! A team's webhook endpoints and their delivery log (`webhook_endpoints`,
//! `webhook_deliveries`, `webhook_attempts`, `webhook_endpoint_health`). Every query
//! names the team: another team's endpoint or delivery is not found.

use chrono::{DateTime, Utc};
use domain::TeamId;
use infrastructure::db::Database;
use infrastructure::{db_fetch_all, db_fetch_optional};
use serde::Serialize;
use utoipa::ToSchema;

use super::QueryError;

/// An endpoint, as its team sees it (never its secret).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EndpointView {
    pub id: String,
    pub url: String,
    pub event_types: Vec<String>,
    /// `credits.low` fires when available credits fall below this.
    pub credits_low_threshold: Option<i64>,
    pub enabled: bool,
    /// `manual`, or `failing` when Kiln disabled it after failing for days.
    pub disabled_reason: Option<String>,
    /// Until when the secret before the last rotation is still sent too.
    pub previous_secret_until: Option<DateTime<Utc>>,
    /// Since when every attempt failed (`null`: the last one succeeded, or none yet).
    pub failing_since: Option<DateTime<Utc>>,
    pub last_success_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

type EndpointRow = (String, String, String, Option<i64>, bool, Option<String>, Option<DateTime<Utc>>, Option<DateTime<Utc>>, Option<DateTime<Utc>>, DateTime<Utc>, DateTime<Utc>);

const ENDPOINT_COLUMNS: &str = "SELECT e.endpoint_id, e.url, e.event_types, e.credits_low_threshold, e.enabled, e.disabled_reason, \
     e.previous_until, h.failing_since, h.last_success_at, e.created_at, e.updated_at \
     FROM webhook_endpoints e LEFT JOIN webhook_endpoint_health h ON h.endpoint_id = e.endpoint_id";

fn endpoint(row: EndpointRow) -> EndpointView {
    let (id, url, types, credits_low_threshold, enabled, disabled_reason, previous_secret_until, failing_since, last_success_at, created_at, updated_at) =
        row;
    EndpointView {
        id,
        url,
        event_types: types.split(',').filter(|t| !t.is_empty()).map(str::to_string).collect(),
        credits_low_threshold,
        enabled,
        disabled_reason,
        previous_secret_until,
        failing_since,
        last_success_at,
        created_at,
        updated_at,
    }
}


/// The team's endpoints, oldest first, after `after` (`created_at`, id) when given.
pub async fn endpoints(db: &Database, team: TeamId, after: Option<(DateTime<Utc>, String)>, limit: i64) -> Result<Vec<EndpointView>, QueryError> {
    let (at, id) = after.unwrap_or((DateTime::<Utc>::UNIX_EPOCH, String::new()));
    let sql = format!(
        "{ENDPOINT_COLUMNS} WHERE e.team_id = $1 AND e.deleted_at IS NULL AND (e.created_at > $2 OR (e.created_at = $2 AND e.endpoint_id > $3) OR $3 = '') \
         ORDER BY e.created_at, e.endpoint_id LIMIT $4"
    );
    let rows = db_fetch_all!(db, EndpointRow, &sql, team.to_string(), at, id, limit)?;
    Ok(rows.into_iter().map(endpoint).collect())
}

pub async fn endpoint_of(db: &Database, team: TeamId, endpoint_id: &str) -> Result<Option<EndpointView>, QueryError> {
    let sql = format!("{ENDPOINT_COLUMNS} WHERE e.team_id = $1 AND e.endpoint_id = $2 AND e.deleted_at IS NULL");
    Ok(db_fetch_optional!(db, EndpointRow, &sql, team.to_string(), endpoint_id)?.map(endpoint))
}

/// One delivery: an event to one endpoint, with its `webhook-id`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeliveryView {
    /// The `webhook-id` header of every attempt.
    pub id: String,
    pub endpoint_id: String,
    pub event_type: String,
    /// `pending` (waiting for its next attempt), `delivered` or `failed` (given up).
    pub state: String,
    pub attempts: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The last answer's HTTP status.
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// The body sent (JSON text).
    pub payload: String,
}

type DeliveryRow = (String, String, String, String, i32, DateTime<Utc>, Option<i32>, Option<String>, Option<DateTime<Utc>>, DateTime<Utc>, String);

const DELIVERY_COLUMNS: &str = "SELECT delivery_id, endpoint_id, event_type, state, attempts, next_attempt_at, last_status, \
     last_error, delivered_at, created_at, payload FROM webhook_deliveries";

fn delivery(row: DeliveryRow) -> DeliveryView {
    let (id, endpoint_id, event_type, state, attempts, next, last_status, last_error, delivered_at, created_at, payload) = row;
    let next_attempt_at = (state == "pending").then_some(next);
    DeliveryView { id, endpoint_id, event_type, state, attempts, next_attempt_at, last_status, last_error, delivered_at, created_at, payload }
}

/// The endpoint's deliveries, newest first, after the cursor `(created_at, id)`.
pub async fn deliveries(
    db: &Database,
    team: TeamId,
    endpoint_id: &str,
    after: Option<(DateTime<Utc>, String)>,
    limit: i64,
) -> Result<Vec<DeliveryView>, QueryError> {
    let (at, id) = after.unwrap_or((DateTime::<Utc>::MAX_UTC, String::new()));
    let sql = format!(
        "{DELIVERY_COLUMNS} WHERE team_id = $1 AND endpoint_id = $2 AND (created_at < $3 OR (created_at = $3 AND delivery_id < $4) OR $4 = '') \
         ORDER BY created_at DESC, delivery_id DESC LIMIT $5"
    );
    let rows = db_fetch_all!(db, DeliveryRow, &sql, team.to_string(), endpoint_id, at, id, limit)?;
    Ok(rows.into_iter().map(delivery).collect())
}

/// One attempt of a delivery.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AttemptView {
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    pub status_code: Option<i32>,
    pub latency_ms: i64,
    /// The start of the answer's body, or why there was no answer.
    pub excerpt: String,
    pub succeeded: bool,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeliveryDetail {
    #[serde(flatten)]
    pub delivery: DeliveryView,
    pub attempt_log: Vec<AttemptView>,
}

/// Attempts shown per delivery (a delivery makes at most a few dozen).
const ATTEMPTS_SHOWN: i64 = 100;

pub async fn delivery_of(db: &Database, team: TeamId, endpoint_id: &str, delivery_id: &str) -> Result<Option<DeliveryDetail>, QueryError> {
    let sql = format!("{DELIVERY_COLUMNS} WHERE team_id = $1 AND endpoint_id = $2 AND delivery_id = $3");
    let Some(row) = db_fetch_optional!(db, DeliveryRow, &sql, team.to_string(), endpoint_id, delivery_id)? else {
        return Ok(None);
    };
    let attempts = db_fetch_all!(
        db,
        (i32, DateTime<Utc>, Option<i32>, i64, String, bool),
        "SELECT attempt, started_at, status_code, latency_ms, excerpt, succeeded FROM webhook_attempts \
         WHERE delivery_id = $1 ORDER BY attempt LIMIT $2",
        delivery_id,
        ATTEMPTS_SHOWN
    )?;
    let attempt_log = attempts
        .into_iter()
        .map(|(attempt, started_at, status_code, latency_ms, excerpt, succeeded)| AttemptView { attempt, started_at, status_code, latency_ms, excerpt, succeeded })
        .collect();
    Ok(Some(DeliveryDetail { delivery: delivery(row), attempt_log }))
}
