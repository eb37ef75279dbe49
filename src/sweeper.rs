//! The credit-expiry sweeper: runs `CreditsService::expire_due` periodically inside
//! `kiln serve` (one pass is also callable directly), and with each pass forgets
//! idempotency keys past their retention window.

use std::time::Duration;

use tokio::sync::watch;

use crate::state::AppState;

/// One pass: returns how many teams had credits expired.
pub async fn expire_credits_once(state: &AppState) -> anyhow::Result<usize> {
    Ok(state.credits.expire_due(state.due_grants.as_ref()).await?)
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
