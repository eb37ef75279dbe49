//! The credit-expiry sweeper: finds teams holding credits in blocks past their expiry
//! and records `CreditsExpired` for them (through the team's writer, like any command).
//! Runs periodically inside `kiln serve`; one pass is also callable directly. Each pass
//! also forgets idempotency keys past their retention window.

use std::time::Duration;

use domain::{TeamCreditsCommand, TeamId};
use infrastructure::db_fetch_all;
use serde_json::json;
use tokio::sync::watch;

use crate::state::AppState;

/// Teams handled per pass, at most; the next pass takes the rest.
pub const TEAMS_PER_PASS_MAX: i64 = 1_000;

/// One pass: returns how many teams had credits expired.
pub async fn expire_credits_once(state: &AppState) -> anyhow::Result<usize> {
    let now = state.credits.now();
    let teams: Vec<(String,)> = db_fetch_all!(
        &state.db,
        (String,),
        "SELECT DISTINCT team_id FROM credit_grants WHERE expires_at <= $1 AND remaining > 0 LIMIT $2",
        now,
        TEAMS_PER_PASS_MAX
    )?;
    let mut expired = 0;
    for (team,) in teams {
        let Ok(team) = team.parse::<TeamId>() else {
            tracing::warn!(%team, "credit_grants row with an unparsable team id");
            continue;
        };
        let outcome = state
            .credits
            .execute(team, TeamCreditsCommand::ExpireCredits { now }, &json!({"actor": "expiry-sweeper"}))
            .await?;
        if !outcome.events.is_empty() {
            expired += 1;
        }
    }
    if expired > 0 {
        tracing::info!(teams = expired, "expired credits");
    }
    Ok(expired)
}

/// Runs a pass every `interval` until `stop` flips to true.
pub async fn run(state: AppState, interval: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        if let Err(error) = expire_credits_once(&state).await {
            tracing::error!(error = %format!("{error:#}"), "credit expiry pass failed");
        }
        // Idempotency keys past their retention window go with the same pass.
        match infrastructure::idempotency::forget_expired(&state.db, state.credits.now()).await {
            Ok(0) => {}
            Ok(forgotten) => tracing::info!(forgotten, "idempotency keys past retention forgotten"),
            Err(error) => tracing::warn!(%error, "idempotency key cleanup failed"),
        }
        tokio::select! {
            _ = stop.changed() => {}
            _ = tokio::time::sleep(interval) => {}
        }
        if *stop.borrow() {
            return;
        }
    }
}
