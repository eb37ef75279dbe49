//! The credit-expiry pass's view of `credit_grants`: the `DueGrants` port in SQL.

use application::credits::DueGrants;
use application::event_store::EventStoreError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::TeamId;

use crate::db::Database;
use crate::db_fetch_all;
use crate::event_store::store_error;

pub struct SqlDueGrants(pub Database);

#[async_trait]
impl DueGrants for SqlDueGrants {
    async fn teams_with_expired_credits(&self, now: DateTime<Utc>, limit: i64) -> Result<Vec<TeamId>, EventStoreError> {
        let teams: Vec<(String,)> = db_fetch_all!(
            &self.0,
            (String,),
            "SELECT DISTINCT team_id FROM credit_grants WHERE expires_at <= $1 AND remaining > 0 LIMIT $2",
            now,
            limit
        )
        .map_err(store_error)?;
        Ok(teams
            .into_iter()
            .filter_map(|(team,)| {
                let parsed = team.parse::<TeamId>();
                if parsed.is_err() {
                    tracing::warn!(%team, "credit_grants row with an unparsable team id");
                }
                parsed.ok()
            })
            .collect())
    }
}
