//! Kiln under test: the real application path, wired as the `kiln` binary wires it.
//!
//! `SqlEventStore` with the inline projections (the team balance read model is written in
//! the append transaction), `AggregateStore`, and `CreditsService` with its per-team
//! group-commit writers. An operation is `ReserveCredits` then `DeductCredits` of the same
//! fresh reservation, each through `CreditsService::execute`, exactly as a job would.

use std::sync::Arc;

use anyhow::Context;
use application::aggregate_store::AggregateStore;
use application::clock::SystemClock;
use application::credits::CreditsService;
use domain::{Credits, GrantId, GrantSource, IdempotencyKey, JobId, Operation, Plan, TeamCreditsCommand, TeamId};
use futures::{StreamExt, TryStreamExt};
use infrastructure::db::Database;
use infrastructure::event_store::SqlEventStore;
use serde_json::Value;
use uuid::Uuid;

/// Teams set up at once: enough to be quick, few enough not to queue on the pool.
const SETUP_CONCURRENCY: usize = 32;

pub struct Kiln {
    credits: CreditsService,
    metadata: Value,
}

impl Kiln {
    /// `snapshot_every` as in the binary's `event_store.snapshot_every` setting;
    /// `commits_in_flight` as `CreditsService::with_commits_in_flight`.
    pub fn new(db: &Database, snapshot_every: i64, commits_in_flight: usize) -> Self {
        let store = SqlEventStore::with_inline_projections(db.clone(), projections::inline_projections());
        let aggregates = AggregateStore::new(Arc::new(store), snapshot_every);
        let credits = CreditsService::new(aggregates, Arc::new(SystemClock)).with_commits_in_flight(commits_in_flight);
        Self { credits, metadata: serde_json::json!({}) }
    }

    /// Opens every team and grants it `grant` credits (two commands per team).
    pub async fn setup(&self, teams: &[Uuid], grant: i64) -> anyhow::Result<()> {
        let grant = Credits::parse(grant)?;
        futures::stream::iter(teams.iter().copied())
            .map(|team| self.open_and_grant(team, grant))
            .buffer_unordered(SETUP_CONCURRENCY)
            .try_collect::<()>()
            .await
    }

    async fn open_and_grant(&self, team: Uuid, grant: Credits) -> anyhow::Result<()> {
        let team_id = TeamId::new(team);
        let now = self.credits.now();
        let open = TeamCreditsCommand::OpenTeam { team_id, name: format!("bench {team}"), plan: Plan::Enterprise, now };
        self.credits.execute(team_id, open, &self.metadata).await.context("OpenTeam")?;
        let grant = TeamCreditsCommand::GrantCredits {
            grant_id: GrantId::new(Uuid::now_v7()),
            amount: grant,
            source: GrantSource::Admin,
            // Never expiring: the benchmark must not race the expiry rules.
            expires_at: None,
            key: IdempotencyKey::parse(format!("bench-grant-{team}"))?,
            now,
        };
        self.credits.execute(team_id, grant, &self.metadata).await.context("GrantCredits")?;
        Ok(())
    }

    /// One operation: reserve `amount` for a fresh job, then deduct it.
    pub async fn reserve_and_deduct(&self, team: Uuid, amount: Credits) -> anyhow::Result<()> {
        let team_id = TeamId::new(team);
        let reservation_id = JobId::new(Uuid::now_v7());
        let reserve = TeamCreditsCommand::ReserveCredits {
            reservation_id,
            amount,
            operation: Operation::ImageGeneration,
            price_version: 1,
            now: self.credits.now(),
        };
        self.credits.execute(team_id, reserve, &self.metadata).await.context("ReserveCredits")?;
        let deduct = TeamCreditsCommand::DeductCredits { reservation_id, now: self.credits.now() };
        self.credits.execute(team_id, deduct, &self.metadata).await.context("DeductCredits")?;
        Ok(())
    }
}

/// Total credits deducted over all teams, from the inline balance read model: must equal
/// successful operations × amount, or an operation was lost or applied twice.
pub async fn deducted_total(db: &Database) -> anyhow::Result<i64> {
    let Database::Postgres(pool) = db else { anyhow::bail!("the benchmark runs on PostgreSQL only") };
    Ok(sqlx::query_scalar("SELECT COALESCE(SUM(deducted_total), 0)::bigint FROM team_balances").fetch_one(pool).await?)
}
