//! The cost of a job, shown before it is submitted: the estimate use case's quote and
//! the balance it would leave. Drawn into forms on first render (and on "Show cost"
//! without JavaScript) and as a fragment the script fetches while the form changes.

use application::jobs::submit::{Estimate, SubmitError};
use askama::Template;
use axum::response::Html;
use rand::RngCore;

use super::errors::{Notice, WebError};

#[derive(Template)]
#[template(path = "estimate.html")]
pub struct EstimateView {
    pub cost: i64,
    pub available: i64,
    pub after: i64,
    pub affordable: bool,
    /// The team's plan runs no jobs (the free plan): the price is shown, and that the
    /// plan must change first, not a balance after a job that cannot run.
    pub no_jobs_plan: Option<String>,
    /// Why no price can be given yet (e.g. no model picked, a refused field).
    pub problem: Option<Notice>,
}

impl EstimateView {
    pub fn from_result(result: Result<Estimate, SubmitError>) -> Result<Self, WebError> {
        match result {
            Ok(estimate) => {
                let cost = estimate.quote.amount.get();
                let no_jobs_plan = (!estimate.plan.runs_jobs()).then(|| estimate.plan.as_str().to_string());
                let (available, affordable) = (estimate.available, estimate.affordable());
                Ok(Self { cost, available, after: available - cost, affordable, no_jobs_plan, problem: None })
            }
            Err(error) => match WebError::from(error) {
                WebError::Refused(notice) => Ok(Self::problem(notice)),
                WebError::NotFound => Ok(Self::problem(Notice::new("Pick a model", "Choose one of your ready models to see the price."))),
                other => Err(other),
            },
        }
    }

    pub fn problem(notice: Notice) -> Self {
        Self { cost: 0, available: 0, after: 0, affordable: false, no_jobs_plan: None, problem: Some(notice) }
    }

    /// The fragment alone, for the script.
    pub fn fragment(self) -> Result<Html<String>, WebError> {
        Ok(Html(self.render()?))
    }
}

/// A fresh id for a form: sent back with it as the submission's idempotency key, so a
/// double click or a resent form queues one job, not two.
pub fn request_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("web-{}", hex::encode(bytes))
}
