//! Cross-site request forgery: every POST to the dashboard must come from one of its own
//! pages. Two checks, both required: the `Origin` (or, without it, the `Referer`) names
//! this host, and the form carries the token of the browser's signed `kiln_csrf` cookie
//! (a signed double-submit token: another site can neither read nor forge it). Done as a
//! layer in front of every page, so no form handler can forget it.

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum_extra::extract::cookie::SignedCookieJar;
use rand::RngCore;

use super::errors::WebError;
use super::session::{cookie_at, is_https};
use crate::state::AppState;
use crate::multipart;

pub const CSRF_COOKIE: &str = "kiln_csrf";
/// The operator console's own token cookie (path `/ops`), apart from the team pages'.
pub const OPS_CSRF_COOKIE: &str = "kiln_ops_csrf";
/// The form field carrying the token.
pub const CSRF_FIELD: &str = "csrf";
/// Largest form body read (forms carry a prompt or a description; those with training
/// images are multipart, up to `multipart::UPLOAD_BODY_BYTES_MAX`).
const FORM_BYTES_MAX: usize = 64 * 1024;

/// The browser's CSRF token, for the forms of the page being drawn.
#[derive(Debug, Clone)]
pub struct CsrfToken(pub String);

fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Where a set of pages keeps its token: the cookie's name and path.
#[derive(Debug, Clone, Copy)]
pub struct CsrfCookie {
    pub name: &'static str,
    pub path: &'static str,
}

/// The team pages' token.
pub const TEAM_PAGES: CsrfCookie = CsrfCookie { name: CSRF_COOKIE, path: "/" };
/// The operator console's token.
pub const OPS_PAGES: CsrfCookie = CsrfCookie { name: OPS_CSRF_COOKIE, path: "/ops" };

/// The layer of the team pages: checks POSTs, hands the token to the handlers, and sets
/// the cookie the first time a browser comes.
pub async fn protect(State(state): State<AppState>, request: Request, next: Next) -> Response {
    guard(&state, TEAM_PAGES, request, next).await
}

/// The same layer for the operator console, with its own cookie.
pub async fn protect_ops(State(state): State<AppState>, request: Request, next: Next) -> Response {
    guard(&state, OPS_PAGES, request, next).await
}

async fn guard(state: &AppState, pages: CsrfCookie, request: Request, next: Next) -> Response {
    let jar = SignedCookieJar::from_headers(request.headers(), state.web.cookie_key.clone());
    let (token, fresh) = match jar.get(pages.name) {
        Some(existing) if !existing.value().is_empty() => (existing.value().to_string(), false),
        _ => (new_token(), true),
    };
    let https = is_https(state, request.headers());
    let mut request = if request.method() == Method::POST {
        match checked(request, &token).await {
            Ok(request) => request,
            Err(refusal) => return refusal.into_response(),
        }
    } else {
        request
    };
    request.extensions_mut().insert(CsrfToken(token.clone()));
    let response = next.run(request).await;
    if fresh {
        (jar.add(cookie_at(pages.name, token, https, pages.path)), response).into_response()
    } else {
        response
    }
}

/// The request, body intact, if it passes both checks.
async fn checked(request: Request, token: &str) -> Result<Request, WebError> {
    if !same_origin(request.headers()) {
        tracing::warn!("dashboard POST refused: Origin is not this site");
        return Err(WebError::CsrfRefused);
    }
    let (parts, body) = request.into_parts();
    // Forms that send training images are multipart, and larger.
    let upload = multipart::is_upload(&parts.method, parts.uri.path(), &parts.headers);
    let limit = if upload { multipart::UPLOAD_BODY_BYTES_MAX } else { FORM_BYTES_MAX };
    let bytes = to_bytes(body, limit).await.map_err(|_| WebError::BadForm("The form is too large.".into()))?;
    let presented = if upload {
        multipart::text_part(&parts.headers, bytes.clone(), CSRF_FIELD).await
    } else {
        serde_urlencoded::from_bytes::<Vec<(String, String)>>(&bytes)
            .ok()
            .and_then(|fields| fields.into_iter().find(|(name, _)| name == CSRF_FIELD).map(|(_, value)| value))
    };
    // Constant-time enough: both are 64 hex characters of a random token, compared once.
    if presented.as_deref() != Some(token) {
        tracing::warn!("dashboard POST refused: missing or wrong CSRF token");
        return Err(WebError::CsrfRefused);
    }
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

/// The Origin (or Referer) names the Host the request was sent to.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let names_host = |url: &str| {
        let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
        rest.is_some_and(|rest| rest == host || rest.strip_prefix(host).is_some_and(|tail| tail.starts_with('/')))
    };
    if let Some(origin) = headers.get(header::ORIGIN) {
        return origin.to_str().is_ok_and(names_host);
    }
    headers.get(header::REFERER).and_then(|r| r.to_str().ok()).is_some_and(names_host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(origin: Option<&str>, referer: Option<&str>, expected: bool) {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "127.0.0.1:8080".parse().expect("header"));
        if let Some(origin) = origin {
            headers.insert(header::ORIGIN, origin.parse().expect("header"));
        }
        if let Some(referer) = referer {
            headers.insert(header::REFERER, referer.parse().expect("header"));
        }
        assert_eq!(same_origin(&headers), expected, "origin {origin:?} referer {referer:?}");
    }

    #[test]
    fn only_this_host_may_post() {
        check(Some("http://127.0.0.1:8080"), None, true);
        check(Some("https://127.0.0.1:8080"), None, true);
        check(Some("http://127.0.0.1:8081"), None, false);
        check(Some("http://127.0.0.1:8080.evil.test"), None, false);
        check(Some("null"), Some("http://127.0.0.1:8080/generate"), false);
        check(None, Some("http://127.0.0.1:8080/generate"), true);
        check(None, Some("http://127.0.0.1:80800/"), false);
        check(None, None, false);
    }
}
