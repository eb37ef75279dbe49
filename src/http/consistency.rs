//! Read-your-writes with a read replica (`database.read_url`): every successful write
//! answers with `Kiln-Consistency-Token` (a WAL position at or after its commit), and a
//! read that sends it back in the same header is served by the replica only once it has
//! replayed that far (`infrastructure::replica`). Without a replica configured no token
//! is made and every read goes to the primary.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use infrastructure::replica::ConsistencyToken;

use super::problem::Problem;
use crate::state::AppState;

pub const HEADER: &str = "kiln-consistency-token";

/// The optional `Kiln-Consistency-Token` of a read; a malformed one is a 422.
pub struct ReadToken(pub Option<ConsistencyToken>);

impl<S: Send + Sync> FromRequestParts<S> for ReadToken {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        let Some(value) = parts.headers.get(HEADER) else { return Ok(ReadToken(None)) };
        const FIELD: &str = "Kiln-Consistency-Token";
        let text = value.to_str().map_err(|_| Problem::invalid_field(FIELD, "Kiln-Consistency-Token must be visible ASCII"))?;
        ConsistencyToken::parse(text).map(|token| ReadToken(Some(token))).map_err(|error| Problem::invalid_field(FIELD, error.to_string()))
    }
}

/// Adds the token to the answer of every successful write (any method but GET, HEAD and
/// OPTIONS), when a replica is configured.
pub async fn token_on_writes(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let write = !matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let mut response = next.run(request).await;
    if write && response.status().is_success() && state.reads.has_replica() {
        if let Some(token) = state.reads.token().await {
            if let Ok(value) = HeaderValue::from_str(&token.to_string()) {
                response.headers_mut().insert(HEADER, value);
            }
        }
    }
    response
}
