//! Errors as people see them: the page twin of `http::problem`. The same use-case error
//! enums (`JobsError`, `TeamCreditsError`, `ModelError`, `JobError`) are mapped here to
//! a readable message with what to do next, shown on the page the request came from;
//! failures that are not the user's are logged and shown as a short apology, never as
//! raw JSON.

use application::aggregate_store::CommandError;
use application::jobs::submit::SubmitError;
use application::jobs::JobsError;
use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use domain::jobs::JobError;
use domain::models::ModelError;
use domain::TeamCreditsError;

use super::layout::Layout;
use crate::queries::QueryError;

/// A message for the user: what happened, and what to do about it.
#[derive(Debug, Clone)]
pub struct Notice {
    pub title: String,
    pub detail: String,
    /// A link to the next step: (href, label).
    pub next: Option<(String, String)>,
}

impl Notice {
    pub fn new(title: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { title: title.into(), detail: detail.into(), next: None }
    }

    pub fn next(mut self, href: &str, label: &str) -> Self {
        self.next = Some((href.to_string(), label.to_string()));
        self
    }
}

#[derive(Debug)]
pub enum WebError {
    /// No valid session: go and sign in.
    SignedOut,
    /// No valid operator session: go to the console's sign-in.
    OpsSignedOut,
    NotFound,
    Forbidden(String),
    /// A POST without this site's Origin or CSRF token.
    CsrfRefused,
    BadForm(String),
    /// The request was understood and refused for a reason the user can act on.
    Refused(Notice),
    /// Not the user's fault; the cause is logged where this is made.
    Internal,
    /// The database cannot be reached right now (503 with `Retry-After`).
    Unavailable,
}

impl WebError {
    /// Kiln's own failure: a database that cannot be reached anywhere in the error's
    /// causes is [`WebError::Unavailable`] (the API's 503), anything else `Internal`.
    pub fn internal<E: std::error::Error + 'static>(error: &E) -> Self {
        if infrastructure::db::is_unreachable_cause(error) {
            tracing::warn!(%error, "dashboard: database unavailable");
            return WebError::Unavailable;
        }
        tracing::error!(%error, "dashboard: internal error");
        WebError::Internal
    }
}

impl From<QueryError> for WebError {
    fn from(error: QueryError) -> Self {
        WebError::internal(&error)
    }
}

impl From<askama::Error> for WebError {
    fn from(error: askama::Error) -> Self {
        WebError::internal(&error)
    }
}

impl From<TeamCreditsError> for WebError {
    fn from(error: TeamCreditsError) -> Self {
        match error {
            TeamCreditsError::InsufficientCredits { available, requested } => WebError::Refused(
                Notice::new(
                    "Not enough credits",
                    format!("This costs {requested} credits and your team has {available} available."),
                )
                .next("/credits", "Add credits"),
            ),
            TeamCreditsError::PlanDoesNotAllowJobs { plan } => WebError::Refused(
                Notice::new(
                    "Your plan runs no jobs",
                    format!(
                        "The {plan} plan cannot create models or generate images. \
                         Move to the Basic, Pro or Enterprise plan to run jobs."
                    ),
                )
                .next("/credits", "See your plan and credits"),
            ),
            TeamCreditsError::TeamNotFound => WebError::SignedOut,
            TeamCreditsError::InvalidText { .. } | TeamCreditsError::Amount(_) | TeamCreditsError::ExpiryNotInFuture => {
                WebError::BadForm(error.to_string())
            }
            other => WebError::internal(&other),
        }
    }
}

impl From<ModelError> for WebError {
    fn from(error: ModelError) -> Self {
        let refused = |title: &str, detail: &str| WebError::Refused(Notice::new(title, detail).next("/models", "Your models"));
        match error {
            ModelError::NotFound => WebError::NotFound,
            ModelError::NotReady(_) => refused(
                "Model not ready",
                "This model is still training, or its training failed. Wait until its status is ready, or create another model.",
            ),
            ModelError::Archived => refused("Model archived", "An archived model can no longer be refined or used. Pick another model."),
            ModelError::RefinementInProgress => {
                refused("Refinement in progress", "This model is being refined already. Wait for that job to finish, then refine again.")
            }
            ModelError::InvalidText { .. } => WebError::BadForm(error.to_string()),
            other => WebError::internal(&other),
        }
    }
}

impl From<JobError> for WebError {
    fn from(error: JobError) -> Self {
        match error {
            JobError::NotFound => WebError::NotFound,
            JobError::AlreadyFinished(_) => WebError::Refused(Notice::new(
                "The job already finished",
                "A finished job cannot be cancelled; its credits were already deducted or refunded.",
            )),
            other => WebError::Refused(Notice::new("The job changed meanwhile", format!("{other}. Reload the page and try again."))),
        }
    }
}

impl From<JobsError> for WebError {
    fn from(error: JobsError) -> Self {
        match error {
            JobsError::Credits(error) => error.into(),
            JobsError::Job(error) => error.into(),
            JobsError::Model(error) => error.into(),
            JobsError::NotFound => WebError::NotFound,
            JobsError::QueueFull { queued, max } => WebError::Refused(
                Notice::new(
                    "Too many jobs waiting",
                    format!("Your team has {queued} queued jobs and at most {max} may wait. Let some finish, or cancel one, then try again."),
                )
                .next("/history?status=queued", "Queued jobs"),
            ),
            JobsError::Conflict => WebError::Refused(Notice::new("Busy", "Something changed at the same moment. Try again.")),
            JobsError::Store(error) => WebError::internal(&error),
            JobsError::Storage(message) => {
                tracing::warn!(%message, "object store unavailable");
                WebError::Refused(Notice::new("Storage unavailable", "Files cannot be stored just now. Try again in a moment."))
            }
        }
    }
}

impl<E> From<CommandError<E>> for WebError
where
    E: std::error::Error,
    WebError: From<E>,
{
    fn from(error: CommandError<E>) -> Self {
        match error {
            CommandError::Rejected(rejection) => WebError::from(rejection),
            CommandError::Contention { .. } => WebError::Refused(Notice::new("Busy", "Too many changes at once. Try again.")),
            CommandError::Store(store) => WebError::internal(&store),
        }
    }
}

impl From<application::payments::CheckoutError> for WebError {
    fn from(error: application::payments::CheckoutError) -> Self {
        use application::payments::CheckoutError as E;
        let refused = |title: &str, detail: &str| WebError::Refused(Notice::new(title, detail).next("/credits", "Back to credits"));
        match error {
            E::NotConfigured => refused("Payments are not set up", "This Kiln does not sell credits online; ask its operator for a grant."),
            E::UnknownPrice(_) => refused("Unknown credit pack", "That pack is no longer offered. Pick one of the packs listed."),
            E::AlreadySubscribed(_) => {
                refused("Already subscribed", "Your team has a live subscription; change or cancel it at Stripe instead.")
            }
            E::Provider(error) => {
                tracing::error!(%error, "dashboard: Stripe refused or failed a checkout");
                refused("Payment provider unavailable", "Stripe could not start the payment. Nothing was charged; try again in a moment.")
            }
            E::Store(error) => WebError::internal(&error),
        }
    }
}

impl From<domain::keys::ApiKeyError> for WebError {
    fn from(error: domain::keys::ApiKeyError) -> Self {
        match error {
            domain::keys::ApiKeyError::NotFound => WebError::NotFound,
            other => WebError::BadForm(other.to_string()),
        }
    }
}

impl From<application::operator_actions::ActionError> for WebError {
    fn from(error: application::operator_actions::ActionError) -> Self {
        use application::operator_actions::ActionError as E;
        use application::operators::ActError;
        match error {
            E::Act(ActError::ReadOnly(_)) => WebError::Forbidden("Viewers see everything and change nothing. Ask an admin operator.".into()),
            E::Act(ActError::Reason(reason)) => WebError::Refused(Notice::new("Say why", format!("The reason {reason}: every operator action records one."))),
            E::Credits(error) => error.into(),
            E::Key(error) => error.into(),
            E::Jobs(error) => error.into(),
            E::Dispatch(error) => error.into(),
            E::Prices(error) => error.into(),
            E::Submit(error) => error.into(),
            E::Catalog(error) => error.into(),
            E::Drain(error) => error.into(),
        }
    }
}

impl From<application::catalog::CatalogActionError> for WebError {
    fn from(error: application::catalog::CatalogActionError) -> Self {
        use application::catalog::CatalogActionError as E;
        match error {
            E::Reference(error) => error.into(),
            E::Preview(error) => WebError::Refused(Notice::new("Check the preview image", format!("{error}."))),
            E::Storage(error) => {
                tracing::warn!(%error, "object store unavailable");
                WebError::Refused(Notice::new("Storage unavailable", "The image could not be stored and nothing was changed. Try again in a moment."))
            }
        }
    }
}

impl From<domain::catalog::ReferenceError> for WebError {
    fn from(error: domain::catalog::ReferenceError) -> Self {
        use domain::catalog::ReferenceError as E;
        match error {
            E::NotFound => WebError::NotFound,
            E::AlreadyExists | E::Retired => WebError::Refused(Notice::new("The catalog changed", format!("{error}.")).next("/ops/catalog", "Catalog")),
            other => WebError::Refused(Notice::new("Check the reference model", format!("The {other}."))),
        }
    }
}

impl From<domain::workers::WorkerDrainError> for WebError {
    fn from(error: domain::workers::WorkerDrainError) -> Self {
        match error {
            domain::workers::WorkerDrainError::UnknownWorker => WebError::NotFound,
        }
    }
}

impl From<domain::price_book::PriceBookError> for WebError {
    fn from(error: domain::price_book::PriceBookError) -> Self {
        WebError::Refused(Notice::new("Check the new prices", format!("{error}.")).next("/ops/pricing", "Pricing"))
    }
}

impl From<domain::dispatch::DispatchError> for WebError {
    fn from(never: domain::dispatch::DispatchError) -> Self {
        match never {}
    }
}

impl From<SubmitError> for WebError {
    fn from(error: SubmitError) -> Self {
        match error {
            SubmitError::ModelNotFound => WebError::Refused(
                Notice::new("Pick one of your models", "That model does not exist in your team.").next("/models", "Your models"),
            ),
            SubmitError::ModelNotUsable(error) => error.into(),
            SubmitError::UnknownReferenceModel => WebError::Refused(
                Notice::new("Pick a reference model", "That reference model is not in the catalog (any more).").next("/catalog", "Catalog"),
            ),
            SubmitError::Invalid { field, reason } => {
                WebError::Refused(Notice::new(format!("Check the {}", field.replace('_', " ")), format!("The {field} {reason}.")))
            }
            SubmitError::QueueFull { queued, max } => JobsError::QueueFull { queued, max }.into(),
            SubmitError::InsufficientCredits { available, requested } => {
                TeamCreditsError::InsufficientCredits { available, requested }.into()
            }
            SubmitError::PlanRunsNoJobs { plan } => TeamCreditsError::PlanDoesNotAllowJobs { plan }.into(),
            SubmitError::TeamNotFound => WebError::SignedOut,
            SubmitError::JobNotFound => WebError::NotFound,
            SubmitError::JobAlreadyEnded(status) => WebError::Refused(Notice::new(
                "The job already ended",
                format!("It is {status}: a job that has ended cannot be cancelled, and its credits were already deducted or refunded."),
            )),
            SubmitError::NotRetryable(why) => WebError::Refused(Notice::new("This job cannot be retried", format!("{why}."))),
            SubmitError::Jobs(error) => error.into(),
        }
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    layout: Layout,
    notice: Notice,
}

/// An error page's message, kept on its response so a door with a frame of its own (the
/// operator console: `web::ops::frame`) can draw the same message in that frame.
#[derive(Debug, Clone)]
pub struct ErrorShown(pub Notice);

fn error_page(status: StatusCode, notice: Notice) -> Response {
    let shown = ErrorShown(notice.clone());
    let page = ErrorPage { layout: Layout::bare(&notice.title), notice };
    match page.render() {
        Ok(html) => {
            let mut response = (status, Html(html)).into_response();
            response.extensions_mut().insert(shown);
            response
        }
        Err(error) => {
            tracing::error!(%error, "dashboard: the error page did not render");
            (status, "Something went wrong.").into_response()
        }
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        match self {
            WebError::SignedOut => Redirect::to("/sign-in").into_response(),
            WebError::OpsSignedOut => Redirect::to("/ops/sign-in").into_response(),
            WebError::NotFound => error_page(
                StatusCode::NOT_FOUND,
                Notice::new("Not found", "There is no such page, or it belongs to another team.").next("/", "Overview"),
            ),
            WebError::Forbidden(detail) => error_page(StatusCode::FORBIDDEN, Notice::new("Not allowed", detail).next("/", "Overview")),
            WebError::CsrfRefused => error_page(
                StatusCode::FORBIDDEN,
                Notice::new(
                    "Form refused",
                    "This form was not sent from a page of this site, or it expired. Go back, reload the page and send it again.",
                )
                .next("/", "Overview"),
            ),
            WebError::BadForm(detail) => error_page(StatusCode::UNPROCESSABLE_ENTITY, Notice::new("Check the form", detail)),
            WebError::Refused(notice) => error_page(StatusCode::CONFLICT, notice),
            WebError::Internal => error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                Notice::new("Something went wrong on our side", "It has been logged. Try again in a moment.").next("/", "Overview"),
            ),
            WebError::Unavailable => {
                let mut page = error_page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Notice::new("Kiln is briefly unavailable", "Its database cannot be reached right now. Nothing was lost; try again in a moment.")
                        .next("/", "Overview"),
                );
                page.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(application::event_store::UNAVAILABLE_RETRY_AFTER_SECS));
                page
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use application::event_store::EventStoreError;

    #[test]
    fn a_database_that_cannot_be_reached_is_a_503_page_that_says_when_to_come_back() {
        let lost = EventStoreError::Unavailable("terminating connection due to administrator command".into());
        let response = WebError::internal(&lost).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[axum::http::header::RETRY_AFTER], "5");
        let other = EventStoreError::Database("duplicate key value violates unique constraint".into());
        assert_eq!(WebError::internal(&other).into_response().status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
