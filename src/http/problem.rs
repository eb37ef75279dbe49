//! Errors as `application/problem+json` (RFC 9457). Each kind has a stable `type` URI
//! (`/problems/{slug}`) that clients may match on; `detail` is for humans.
//!
//! This is the one place errors become responses: domain and store errors map here
//! (`From` impls, [`Problem::internal`], which turns an unreachable database into a 503
//! with `Retry-After`), and [`problem_responses`] rewrites the few error responses that
//! axum and tower build themselves (405 with its `Allow`, 413 from the body limit, a
//! path that is not UTF-8) into problems, so no error leaves without one.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use application::aggregate_store::CommandError;
use domain::keys::ApiKeyError;
use domain::TeamCreditsError;
use serde::Serialize;
use serde_json::{Map, Value};

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: &'static str,
    #[serde(serialize_with = "serialize_status")]
    pub status: StatusCode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Extension members (e.g. `available`, `requested`).
    #[serde(flatten)]
    pub extensions: Map<String, Value>,
    /// Sent as `Retry-After` (seconds) when set.
    #[serde(skip)]
    pub retry_after_secs: Option<u64>,
}

/// What a client is told to wait before retrying while the database is unreachable.
pub use application::event_store::UNAVAILABLE_RETRY_AFTER_SECS as DATABASE_RETRY_AFTER_SECS;
/// The same, after too much contention on one stream.
pub const CONTENTION_RETRY_AFTER_SECS: u64 = 1;

fn serialize_status<S: serde::Serializer>(status: &StatusCode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u16(status.as_u16())
}

impl Problem {
    pub fn new(status: StatusCode, slug: &str, title: &'static str) -> Self {
        Self { type_uri: format!("/problems/{slug}"), title, status, detail: None, extensions: Map::new(), retry_after_secs: None }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extensions.insert(key.to_string(), value.into());
        self
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    /// The problem for a bare status (the responses axum builds itself, extractor
    /// rejections): one stable type per status.
    pub fn for_status(status: StatusCode) -> Self {
        let (slug, title) = match status {
            StatusCode::BAD_REQUEST => ("bad-request", "Bad request"),
            StatusCode::UNAUTHORIZED => ("unauthorized", "Unauthorized"),
            StatusCode::FORBIDDEN => ("forbidden", "Forbidden"),
            StatusCode::NOT_FOUND => ("not-found", "Not found"),
            StatusCode::METHOD_NOT_ALLOWED => ("method-not-allowed", "Method not allowed"),
            StatusCode::NOT_ACCEPTABLE => ("not-acceptable", "Not acceptable"),
            StatusCode::REQUEST_TIMEOUT => ("request-timeout", "Request timeout"),
            StatusCode::PAYLOAD_TOO_LARGE => ("payload-too-large", "Payload too large"),
            StatusCode::URI_TOO_LONG => ("uri-too-long", "URI too long"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported-media-type", "Unsupported media type"),
            StatusCode::UNPROCESSABLE_ENTITY => ("invalid-request", "Invalid request"),
            StatusCode::TOO_MANY_REQUESTS => ("too-many-requests", "Too many requests"),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => ("headers-too-large", "Request headers too large"),
            StatusCode::SERVICE_UNAVAILABLE => ("unavailable", "Service unavailable"),
            status if status.is_server_error() => ("internal", "Internal error"),
            _ => ("bad-request", "Bad request"),
        };
        Self::new(status, slug, title)
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found")
    }

    /// A request that parsed but is not acceptable (422).
    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-request", "Invalid request").detail(detail)
    }

    /// A 422 naming the field (JSON path, query parameter or header) at fault.
    pub fn invalid_field(field: &str, detail: impl Into<String>) -> Self {
        Self::invalid(detail).with("field", field)
    }

    /// The database cannot be reached right now: 503, come back later.
    pub fn database_unavailable() -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "database-unavailable", "Database unavailable")
            .detail("the database cannot be reached right now; retry after the delay in Retry-After")
            .retry_after(DATABASE_RETRY_AFTER_SECS)
    }

    pub fn unauthorized(detail: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized").detail(detail)
    }

    pub fn forbidden(detail: &str) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden").detail(detail)
    }

    pub fn not_ready(detail: &str) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "not-ready", "Not ready").detail(detail)
    }

    /// The 500 path: the cause is logged here, the client gets a generic body. A cause
    /// anywhere in the chain that says the database is unreachable (pool timeout, lost
    /// connection, server shutting down) is a 503 with `Retry-After` instead: the request
    /// may well succeed in a moment.
    pub fn internal<E: std::error::Error + 'static>(error: &E) -> Self {
        if database_unreachable(error) {
            tracing::warn!(error = %error_chain(error), "database unavailable");
            return Self::database_unavailable();
        }
        Self::internal_message(&error_chain(error))
    }

    /// The 500 path for a failure that is not an error value.
    pub fn internal_message(message: &str) -> Self {
        tracing::error!(error = message, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error")
    }
}

/// True when `error` or one of its causes says the database cannot be reached.
fn database_unreachable(error: &(dyn std::error::Error + 'static)) -> bool {
    infrastructure::db::is_unreachable_cause(error)
}

/// `error: cause: cause…` on one line, for the log.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        text.push_str(": ");
        text.push_str(&error.to_string());
        cause = error.source();
    }
    text
}

impl From<TeamCreditsError> for Problem {
    fn from(error: TeamCreditsError) -> Self {
        match error {
            TeamCreditsError::TeamNotFound => Problem::not_found().detail("no such team"),
            TeamCreditsError::TeamAlreadyOpened => {
                Problem::new(StatusCode::CONFLICT, "team-exists", "Team already exists").detail(error.to_string())
            }
            TeamCreditsError::InsufficientCredits { available, requested } => {
                Problem::new(StatusCode::PAYMENT_REQUIRED, "insufficient-credits", "Insufficient credits")
                    .detail(format!("{requested} credits requested, {available} available"))
                    .with("available", available)
                    .with("requested", requested)
            }
            TeamCreditsError::ReservationNotFound(_) => Problem::not_found().detail(error.to_string()),
            TeamCreditsError::IdempotencyConflict { .. } => {
                Problem::new(StatusCode::CONFLICT, "idempotency-conflict", "Idempotency key reused")
                    .detail(error.to_string())
            }
            TeamCreditsError::InvalidText { .. } | TeamCreditsError::ExpiryNotInFuture => Problem::invalid(error.to_string()),
            TeamCreditsError::PlanDoesNotAllowJobs { plan } => {
                Problem::new(StatusCode::FORBIDDEN, "plan-does-not-allow-jobs", "Plan does not allow jobs")
                    .detail(format!("the {plan} plan runs no jobs; upgrade the plan"))
                    .with("plan", plan.to_string())
            }
            TeamCreditsError::Amount(_) => {
                Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-amount", "Invalid amount").detail(error.to_string())
            }
        }
    }
}

impl<E> From<CommandError<E>> for Problem
where
    E: std::error::Error,
    Problem: From<E>,
{
    fn from(error: CommandError<E>) -> Self {
        match error {
            CommandError::Rejected(rejection) => Problem::from(rejection),
            CommandError::Contention { .. } => Problem::new(StatusCode::SERVICE_UNAVAILABLE, "contention", "Too much contention")
                .detail("retry the request")
                .retry_after(CONTENTION_RETRY_AFTER_SECS),
            CommandError::Store(store) => Problem::internal(&store),
        }
    }
}

impl From<ApiKeyError> for Problem {
    fn from(error: ApiKeyError) -> Self {
        match error {
            ApiKeyError::NotFound => Problem::not_found().detail("no such API key"),
            ApiKeyError::AlreadyIssued => Problem::new(StatusCode::CONFLICT, "key-exists", "API key exists"),
            ApiKeyError::InvalidName(_) | ApiKeyError::InvalidHash => Problem::invalid(error.to_string()),
        }
    }
}

impl From<application::operator_actions::ActionError> for Problem {
    fn from(error: application::operator_actions::ActionError) -> Self {
        use application::operator_actions::ActionError as E;
        use application::operators::ActError;
        match error {
            E::Act(ActError::ReadOnly(read_only)) => Problem::forbidden(&read_only.to_string()),
            E::Act(ActError::Reason(_)) => Problem::invalid_field("reason", error.to_string()),
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

impl From<application::catalog::CatalogActionError> for Problem {
    fn from(error: application::catalog::CatalogActionError) -> Self {
        use application::catalog::CatalogActionError as E;
        match error {
            E::Reference(error) => error.into(),
            E::Preview(error) => Problem::invalid_field("preview", error.to_string()),
            E::Storage(error) => {
                tracing::warn!(%error, "object store unavailable");
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, "storage-unavailable", "Storage unavailable")
                    .detail("the image could not be stored; nothing was changed, try again")
                    .retry_after(CONTENTION_RETRY_AFTER_SECS)
            }
        }
    }
}

impl From<domain::catalog::ReferenceError> for Problem {
    fn from(error: domain::catalog::ReferenceError) -> Self {
        use domain::catalog::ReferenceError as E;
        let field = match &error {
            E::InvalidId(_) => "id",
            E::InvalidText { field, .. } => *field,
            E::InvalidCategory(_) => "category",
            E::InvalidTraits(_) => "characteristics",
            E::ComplexityOutOfRange { .. } => "complexity_factor_milli",
            E::AlreadyExists => {
                return Problem::new(StatusCode::CONFLICT, "reference-model-exists", "Reference model exists").detail(error.to_string())
            }
            E::NotFound => return Problem::not_found().detail("no such reference model"),
            E::Retired => {
                return Problem::new(StatusCode::CONFLICT, "reference-model-retired", "Reference model retired").detail(error.to_string())
            }
            E::NothingToChange => return Problem::invalid(error.to_string()),
        };
        Problem::invalid_field(field, error.to_string())
    }
}

impl From<domain::workers::WorkerDrainError> for Problem {
    fn from(error: domain::workers::WorkerDrainError) -> Self {
        match error {
            domain::workers::WorkerDrainError::UnknownWorker => Problem::not_found().detail("no such worker"),
        }
    }
}

impl From<domain::price_book::PriceBookError> for Problem {
    fn from(error: domain::price_book::PriceBookError) -> Self {
        use domain::price_book::PriceBookError as E;
        match error {
            E::VersionOutOfOrder { .. } => Problem::new(StatusCode::CONFLICT, "price-version-conflict", "Price version conflict").detail(error.to_string()),
            E::Invalid(_) | E::EffectiveInPast => Problem::invalid(error.to_string()),
        }
    }
}

impl From<domain::dispatch::DispatchError> for Problem {
    fn from(never: domain::dispatch::DispatchError) -> Self {
        match never {}
    }
}

pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status;
        let body = serde_json::to_vec(&self).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = (status, [(header::CONTENT_TYPE, PROBLEM_CONTENT_TYPE)], body).into_response();
        if let Some(secs) = self.retry_after_secs {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

pub async fn not_found() -> Problem {
    Problem::not_found().detail("no such resource")
}

/// Longest text of a plain error body kept as a problem's `detail`.
const PLAIN_DETAIL_BYTES_MAX: usize = 1_024;

/// The edge layer's last step: an error response that is not a problem yet (axum's own 405 — its
/// `Allow` header is kept —, a rejection's text/plain body, an empty 4xx) becomes one,
/// with the type of its status and the plain text, if any, as `detail`. HTML error pages
/// (the dashboard's) are left alone.
pub async fn problem_responses(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let content_type = response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if content_type.starts_with(PROBLEM_CONTENT_TYPE) || content_type.starts_with("text/html") {
        return response;
    }
    let plain = content_type.starts_with("text/plain");
    let (mut parts, body) = response.into_parts();
    let mut problem = Problem::for_status(status);
    if plain {
        if let Ok(bytes) = axum::body::to_bytes(body, PLAIN_DETAIL_BYTES_MAX).await {
            let text = String::from_utf8_lossy(&bytes).trim().to_string();
            if !text.is_empty() {
                problem = problem.detail(text);
            }
        }
    }
    if status == StatusCode::METHOD_NOT_ALLOWED {
        let allow = parts.headers.get(header::ALLOW).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        problem = problem.detail(format!("this resource allows {allow}")).with("allow", allow);
    }
    let rebuilt = problem.into_response();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_CONTENT_TYPE));
    let (_, body) = rebuilt.into_parts();
    Response::from_parts(parts, body)
}
