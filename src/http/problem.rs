//! Errors as `application/problem+json` (RFC 9457). Each kind has a stable `type` URI
//! (`/problems/{slug}`) that clients may match on; `detail` is for humans.

use axum::http::{header, StatusCode};
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
}

fn serialize_status<S: serde::Serializer>(status: &StatusCode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u16(status.as_u16())
}

impl Problem {
    pub fn new(status: StatusCode, slug: &str, title: &'static str) -> Self {
        Self { type_uri: format!("/problems/{slug}"), title, status, detail: None, extensions: Map::new() }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extensions.insert(key.to_string(), value.into());
        self
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found")
    }

    /// A request that parsed but is not acceptable (422).
    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-request", "Invalid request").detail(detail)
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

    /// The 500 path: the cause is logged here, the client gets a generic body.
    pub fn internal(error: &dyn std::fmt::Display) -> Self {
        tracing::error!(%error, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error")
    }
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
            CommandError::Contention { .. } => {
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, "contention", "Too much contention").detail("retry the request")
            }
            CommandError::Store(store) => Problem::internal(&store),
        }
    }
}

impl From<ApiKeyError> for Problem {
    fn from(error: ApiKeyError) -> Self {
        match error {
            ApiKeyError::NotFound => Problem::not_found().detail("no such API key"),
            ApiKeyError::AlreadyIssued => Problem::new(StatusCode::CONFLICT, "key-exists", "API key exists"),
            ApiKeyError::InvalidName | ApiKeyError::InvalidHash => Problem::invalid(error.to_string()),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status;
        let body = serde_json::to_vec(&self).unwrap_or_else(|_| b"{}".to_vec());
        (status, [(header::CONTENT_TYPE, "application/problem+json")], body).into_response()
    }
}

pub async fn not_found() -> Problem {
    Problem::not_found().detail("no such resource")
}
