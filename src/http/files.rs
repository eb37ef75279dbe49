//! `GET /files/{key}?expires=…&signature=…`: the local object store's signed, expiring
//! URLs. The signature is the only credential (no API key), so it is checked before the
//! store is touched: a bad or missing one is 403, an expired one 410, then a missing
//! object 404.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use infrastructure::storage::{content_type_of, verify_signature, SignatureError};
use serde::Deserialize;

use super::extract::ApiQuery;
use super::problem::Problem;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/files/{*key}", get(serve))
}

#[derive(Debug, Deserialize)]
pub struct SignedQuery {
    /// Unix seconds after which the URL stops working.
    pub expires: Option<String>,
    /// Hex HMAC-SHA256 of `"{key}\n{expires}"`.
    pub signature: Option<String>,
}

fn invalid_signature() -> Problem {
    Problem::new(StatusCode::FORBIDDEN, "invalid-signature", "Invalid signature")
        .detail("the URL's signature is missing or does not match; ask the API for a fresh URL")
}

async fn serve(
    State(state): State<AppState>,
    Path(key): Path<String>,
    ApiQuery(query): ApiQuery<SignedQuery>,
) -> Result<Response, Problem> {
    let (Some(expires), Some(signature)) = (query.expires, query.signature) else {
        return Err(invalid_signature());
    };
    let expires: i64 = expires.parse().map_err(|_| invalid_signature())?;
    let now = state.credits.now();
    match verify_signature(&key, expires, &signature, now, &state.url_signing_key) {
        Ok(()) => {}
        Err(SignatureError::Invalid) => return Err(invalid_signature()),
        Err(SignatureError::Expired) => {
            return Err(Problem::new(StatusCode::GONE, "url-expired", "URL expired")
                .detail("this signed URL has expired; ask the API for a fresh one"));
        }
    }
    let bytes = match state.objects.get(&key).await {
        Ok(Some(bytes)) => bytes,
        Ok(None) | Err(application::storage::StorageError::InvalidKey(_)) => {
            return Err(Problem::not_found().detail("no such object"));
        }
        Err(error) => return Err(Problem::internal(&error)),
    };
    // Caches may keep the bytes as long as the URL itself is valid, no longer.
    let max_age = (expires - now.timestamp()).max(0);
    Ok((
        [
            (header::CONTENT_TYPE, content_type_of(&key).to_string()),
            (header::CACHE_CONTROL, format!("private, max-age={max_age}")),
        ],
        bytes,
    )
        .into_response())
}
