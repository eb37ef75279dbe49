//! Read-your-writes with a read replica (`database.read_url`): every successful write
//! answers with `Kiln-Consistency-Token` (a WAL position at or after its commit), and a
//! read that sends it back in the same header is served by the replica only once it has
//! replayed that far (`infrastructure::replica`). Without a replica configured no token
//! is made and every read goes to the primary.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method};
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
        let text = value.to_str().map_err(|_| Problem::invalid_field(NAME, "Kiln-Consistency-Token must be visible ASCII"))?;
        ConsistencyToken::parse(text).map(|token| ReadToken(Some(token))).map_err(|error| Problem::invalid_field(NAME, error.to_string()))
    }
}

/// In the OpenAPI document: the optional request header of the reads that honour it.
impl utoipa::IntoParams for ReadToken {
    fn into_params(_: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>) -> Vec<utoipa::openapi::path::Parameter> {
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        vec![ParameterBuilder::new()
            .name(NAME)
            .parameter_in(ParameterIn::Header)
            .required(utoipa::openapi::Required::False)
            .description(Some(
                "The `Kiln-Consistency-Token` of an earlier write's answer: with a read replica configured, the read \
                 waits a bounded time for the replica to have replayed that write, else is served by the primary \
                 (read-your-writes). Malformed: 422.",
            ))
            .schema(Some(token_schema()))
            .build()]
    }
}

/// The name of the header as the OpenAPI document spells it.
pub const NAME: &str = "Kiln-Consistency-Token";

/// A WAL position as PostgreSQL writes it: two hexadecimal numbers of up to 8 digits.
pub fn token_schema() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .pattern(Some("^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$"))
        .examples(["0/16B3748"])
        .build()
}

/// Whether a request only reads (GET, HEAD, OPTIONS): its answer carries no token.
pub fn is_read(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Adds the token to `response`, the answer of a write, when it succeeded and a replica is
/// configured (called by the router's layer of writes for every method but [`is_read`]'s).
pub async fn with_token(state: &AppState, mut response: Response) -> Response {
    if response.status().is_success() && state.reads.has_replica() {
        if let Some(token) = state.reads.token().await {
            if let Ok(value) = HeaderValue::from_str(&token.to_string()) {
                response.headers_mut().insert(HEADER, value);
            }
        }
    }
    response
}
