//! Extractors whose rejections are problem+json: JSON bodies, query strings,
//! `Idempotency-Key`.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::problem::Problem;

/// `axum::Json` with problem+json rejections: 400 for malformed JSON, 422 for JSON of the
/// wrong shape (missing or unknown fields, wrong types), 415 for a missing content type.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(JsonRejection::JsonDataError(error)) => Err(Problem::invalid(error.body_text())),
            Err(JsonRejection::JsonSyntaxError(error)) => {
                Err(Problem::new(StatusCode::BAD_REQUEST, "malformed-json", "Malformed JSON").detail(error.body_text()))
            }
            Err(JsonRejection::MissingJsonContentType(_)) => Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            )
            .detail("send Content-Type: application/json")),
            Err(other) => Err(Problem::new(StatusCode::BAD_REQUEST, "bad-request", "Bad request").detail(other.body_text())),
        }
    }
}

/// `axum::extract::Query` with a 422 problem on a bad query string.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|error: QueryRejection| Problem::invalid(error.body_text()))
    }
}

/// Longest accepted `Idempotency-Key`.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 255;

/// The optional `Idempotency-Key` header, validated.
pub struct IdempotencyKey(pub Option<domain::IdempotencyKey>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        let Some(value) = parts.headers.get("idempotency-key") else {
            return Ok(IdempotencyKey(None));
        };
        let text = value.to_str().map_err(|_| Problem::invalid("Idempotency-Key must be visible ASCII"))?;
        if text.len() > IDEMPOTENCY_KEY_BYTES_MAX {
            return Err(Problem::invalid("Idempotency-Key is longer than 255 bytes"));
        }
        domain::IdempotencyKey::parse(text)
            .map(|key| IdempotencyKey(Some(key)))
            .map_err(|error| Problem::invalid(format!("Idempotency-Key: {error}")))
    }
}

impl IdempotencyKey {
    /// For requests that spend or grant: the key is mandatory.
    pub fn required(self) -> Result<domain::IdempotencyKey, Problem> {
        self.0.ok_or_else(|| {
            Problem::new(StatusCode::BAD_REQUEST, "idempotency-key-required", "Idempotency-Key required")
                .detail("this request moves credits: send an Idempotency-Key header so a retry cannot apply it twice")
        })
    }
}
