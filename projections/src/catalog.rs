//! Every projection by name, with its tables and where it stands in the log: what
//! `kiln projections list | status`, `/metrics` and the rebuild work from.

use std::sync::Arc;

use application::event_store::{EventStore, EventStoreError, LogPosition};
use infrastructure::db::Database;
use infrastructure::event_store::{InlineProjection, SqlEventStore};
use serde::Serialize;

use crate::{api_keys, balances, dispatch, history, jobs, operators, projector, webhooks, workers};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Written in the append transaction.
    Inline,
    /// Written by the projector behind the log, from a checkpoint.
    Async,
}

#[derive(Clone)]
pub struct ProjectionInfo {
    pub name: &'static str,
    pub kind: Kind,
    /// The tables it owns (and a rebuild replaces).
    pub tables: &'static [&'static str],
    pub projection: Arc<dyn InlineProjection>,
}

/// All projections, inline ones first.
pub fn catalog() -> Vec<ProjectionInfo> {
    let info = |name, kind, tables, projection: Arc<dyn InlineProjection>| ProjectionInfo { name, kind, tables, projection };
    vec![
        info(balances::NAME, Kind::Inline, balances::TABLES, Arc::new(balances::TeamBalances)),
        info(api_keys::NAME, Kind::Inline, api_keys::TABLES, Arc::new(api_keys::ApiKeys)),
        info(operators::NAME, Kind::Inline, operators::TABLES, Arc::new(operators::Operators)),
        info(dispatch::NAME, Kind::Inline, dispatch::TABLES, Arc::new(dispatch::DispatchControl)),
        info(workers::NAME, Kind::Inline, workers::TABLES, Arc::new(workers::WorkerDrains)),
        info(jobs::NAME, Kind::Inline, jobs::TABLES, Arc::new(jobs::Jobs)),
        info(webhooks::ENDPOINTS_NAME, Kind::Inline, webhooks::ENDPOINTS_TABLES, Arc::new(webhooks::WebhookEndpoints)),
        info(history::NAME, Kind::Async, history::TABLES, Arc::new(history::CreditHistory)),
    ]
}

pub fn find(name: &str) -> Option<ProjectionInfo> {
    catalog().into_iter().find(|p| p.name == name)
}

#[derive(Debug, Clone, Serialize)]
pub struct ProjectionStatus {
    pub name: &'static str,
    pub kind: Kind,
    pub tables: &'static [&'static str],
    /// Where the projection stands (inline ones are always at the head).
    pub position: LogPosition,
    pub head: LogPosition,
    /// Events committed after `position`.
    pub lag_events: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Store(#[from] EventStoreError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// Events after `position` in commit order.
pub async fn events_after(db: &Database, position: LogPosition) -> Result<i64, sqlx::Error> {
    let count = match db {
        Database::Postgres(pool) => {
            sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE (transaction_id, position) > ($1::text::xid8, $2)")
                .bind(position.commit_order.to_string())
                .bind(position.position)
                .fetch_one(pool)
                .await?
        }
        Database::Sqlite { read, .. } => {
            sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE position > $1").bind(position.position).fetch_one(read).await?
        }
    };
    Ok(count)
}

/// What the projector runs that no rebuild replaces, so not in [`catalog`]: the webhook
/// deliveries' rows carry their sending state (attempts, next try), which a fold of the
/// log would lose — rebuilt, every notification would be sent again. Shown by `status`.
const NOT_REBUILT: &[(&str, &[&str])] = &[(webhooks::DELIVERIES_NAME, &["webhook_deliveries", "webhook_attempts"])];

/// Where every projection stands: the catalog's, then the projector's that are not rebuilt.
pub async fn status(store: &SqlEventStore) -> Result<Vec<ProjectionStatus>, StatusError> {
    let head = store.head().await?.unwrap_or(LogPosition::START);
    let kinds = catalog().into_iter().map(|info| (info.name, info.kind, info.tables));
    let kinds = kinds.chain(NOT_REBUILT.iter().map(|&(name, tables)| (name, Kind::Async, tables)));
    let mut statuses = Vec::new();
    for (name, kind, tables) in kinds {
        let (position, lag_events) = match kind {
            Kind::Inline => (head, 0),
            Kind::Async => {
                let checkpoint = projector::load_checkpoint(store.database(), name).await?;
                let lag = if checkpoint >= head { 0 } else { events_after(store.database(), checkpoint).await? };
                (checkpoint, lag)
            }
        };
        statuses.push(ProjectionStatus { name, kind, tables, position, head, lag_events });
    }
    Ok(statuses)
}
