//! Extractors whose rejections are problem+json: JSON bodies (checked by the text rule
//! of `text`), raw bodies of webhooks, query strings, `Idempotency-Key`.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::problem::Problem;
use super::text;

/// Largest request body accepted (bytes): bodies are small JSON documents or webhook
/// events. Beyond it: 413.
pub const BODY_BYTES_MAX: usize = 2 * 1024 * 1024;

pub use crate::multipart::{is_upload, UPLOAD_BODY_BYTES_MAX};

/// The largest body this request may send.
pub fn body_limit(method: &axum::http::Method, path: &str, headers: &axum::http::HeaderMap) -> usize {
    if is_upload(method, path, headers) { UPLOAD_BODY_BYTES_MAX } else { BODY_BYTES_MAX }
}

/// A request whose `Content-Length` is over its limit ([`body_limit`]): answered 413 before
/// any of its body is read (a client that sent `Expect: 100-continue` never sends it), by
/// the API's edge layer. Bodies of unannounced length are cut at the same limit by the
/// extractors.
pub fn oversized(request: &Request) -> Option<Problem> {
    let announced = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let limit = body_limit(request.method(), request.uri().path(), request.headers());
    announced.is_some_and(|bytes| bytes > limit as u64).then(|| too_large_than(limit))
}

fn too_large() -> Problem {
    too_large_than(BODY_BYTES_MAX)
}

pub fn too_large_than(limit: usize) -> Problem {
    Problem::for_status(StatusCode::PAYLOAD_TOO_LARGE).detail(format!("the body is larger than {limit} bytes"))
}

/// `axum::Json` with problem+json rejections: 400 for malformed JSON, 422 for JSON of the
/// wrong shape (missing or unknown fields, wrong types) or text the rule refuses (the
/// field is named), 415 for a missing content type, 413 for a body over the limit.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        let value = match axum::Json::<serde_json::Value>::from_request(request, state).await {
            Ok(axum::Json(value)) => value,
            Err(JsonRejection::JsonSyntaxError(error)) => {
                return Err(Problem::new(StatusCode::BAD_REQUEST, "malformed-json", "Malformed JSON").detail(error.body_text()))
            }
            Err(JsonRejection::MissingJsonContentType(_)) => {
                return Err(Problem::for_status(StatusCode::UNSUPPORTED_MEDIA_TYPE).detail("send Content-Type: application/json"))
            }
            Err(other) if other.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(too_large()),
            Err(other) => return Err(Problem::for_status(other.status()).detail(other.body_text())),
        };
        from_json(value).map(ApiJson)
    }
}

/// A request's fields as `T`, checked as a JSON body is: the text rule, then the shape
/// (422 naming the field).
pub fn from_json<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, Problem> {
    text::check_json(&value)?;
    serde_path_to_error::deserialize(value).map_err(|error| {
        let field = error.path().to_string();
        let detail = format!("{field}: {}", error.inner());
        if field == "." { Problem::invalid(detail) } else { Problem::invalid_field(&field, detail) }
    })
}

/// The raw body (webhooks verify signatures over the exact bytes), with problem+json
/// rejections: 413 over the limit.
pub struct ApiBytes(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for ApiBytes {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        Bytes::from_request(request, state).await.map(ApiBytes).map_err(|error: BytesRejection| {
            if error.status() == StatusCode::PAYLOAD_TOO_LARGE {
                too_large()
            } else {
                Problem::for_status(error.status()).detail(error.body_text())
            }
        })
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
        const FIELD: &str = "Idempotency-Key";
        let text = value.to_str().map_err(|_| Problem::invalid_field(FIELD, "Idempotency-Key must be visible ASCII"))?;
        if text.len() > IDEMPOTENCY_KEY_BYTES_MAX {
            return Err(Problem::invalid_field(FIELD, "Idempotency-Key is longer than 255 bytes"));
        }
        domain::IdempotencyKey::parse(text)
            .map(|key| IdempotencyKey(Some(key)))
            .map_err(|error| Problem::invalid_field(FIELD, format!("Idempotency-Key: {error}")))
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
