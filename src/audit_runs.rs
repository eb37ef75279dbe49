//! Whole-log audit verifications started from the console (`/ops/audit`): at most one
//! runs at a time in this process, in the background, its progress readable while it
//! runs (`projections::audit::Progress`) and its last result kept. In memory: another
//! `kiln serve` process behind the same load balancer keeps its own (a run only reads).

use std::sync::{Arc, Mutex};

use application::clock::Clock;
use chrono::{DateTime, Utc};
use infrastructure::db::Database;
use projections::audit::{Progress, VerifyReport};

/// A run in progress.
#[derive(Clone)]
pub struct Running {
    pub started_at: DateTime<Utc>,
    /// The operator who started it.
    pub by: String,
    pub progress: Arc<Progress>,
}

/// The last run that ended.
#[derive(Clone)]
pub struct Finished {
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub by: String,
    /// The report, or why the run failed (logged in full).
    pub outcome: Result<VerifyReport, String>,
}

/// Where the console's verification stands: one running, the last one ended, or both.
#[derive(Clone, Default)]
pub struct RunsView {
    pub running: Option<Running>,
    pub last: Option<Finished>,
}

#[derive(Default)]
pub struct AuditRuns {
    state: Mutex<RunsView>,
}

impl AuditRuns {
    pub fn view(&self) -> RunsView {
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Starts a whole-log verification unless one runs; returns whether it started.
    pub fn start(self: &Arc<Self>, db: Database, clock: Arc<dyn Clock>, by: &str) -> bool {
        let progress = Arc::new(Progress::default());
        let running = Running { started_at: clock.now(), by: by.to_string(), progress: progress.clone() };
        {
            let Ok(mut state) = self.state.lock() else { return false };
            if state.running.is_some() {
                return false;
            }
            state.running = Some(running.clone());
        }
        let runs = self.clone();
        tokio::spawn(async move {
            let outcome = projections::audit::verify_observed(&db, None, Some(progress)).await.map_err(|error| {
                tracing::error!(%error, "the console's audit verification failed");
                error.to_string()
            });
            let finished = Finished { started_at: running.started_at, finished_at: clock.now(), by: running.by, outcome };
            if let Ok(mut state) = runs.state.lock() {
                state.running = None;
                state.last = Some(finished);
            }
        });
        true
    }
}
