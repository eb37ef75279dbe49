//! Read-your-writes on the dashboard with a read replica (`database.read_url`): a form's
//! successful POST leaves the consistency token of its write in a cookie, and the pages'
//! lists read with it (`queries::read_db`), so the job just submitted is on the next page
//! even when it is served by a replica. Without a replica no cookie is set.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum_extra::extract::cookie::CookieJar;
use infrastructure::replica::ConsistencyToken;

use super::session::{cookie, is_https};
use crate::state::AppState;

const COOKIE: &str = "kiln_read_after";

/// The token of the team's latest write from this browser, if any (a cookie that does
/// not parse is ignored: it only makes reads wait).
pub struct PageReadToken(pub Option<ConsistencyToken>);

impl<S: Send + Sync> FromRequestParts<S> for PageReadToken {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let jar = CookieJar::from_headers(&parts.headers);
        Ok(PageReadToken(jar.get(COOKIE).and_then(|c| ConsistencyToken::parse(c.value()).ok())))
    }
}

/// After a form's POST that succeeded (2xx, or the 303 to the next page), remembers the
/// write's token in the browser.
pub async fn remember_writes(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let post = request.method() == axum::http::Method::POST;
    let https = is_https(&state, request.headers());
    let response = next.run(request).await;
    let done = response.status().is_success() || response.status().is_redirection();
    if !(post && done && state.reads.has_replica()) {
        return response;
    }
    match state.reads.token().await {
        Some(token) => (CookieJar::new().add(cookie(COOKIE, token.to_string(), https)), response).into_response(),
        None => response,
    }
}
