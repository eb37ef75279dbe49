//! The console's error pages in the console's frame: a 404, 403, 422 or 500 under
//! `/ops` is the same `WebError` page as the team pages' (same message, same status,
//! same headers), drawn in `templates/ops/` with the operator's navigation when a
//! console session is signed in, its next step pointing into the console.

use askama::Template;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum_extra::extract::cookie::SignedCookieJar;

use super::layout::OpsLayout;
use super::session::OpsSession;
use crate::state::AppState;
use crate::web::csrf::{CsrfToken, OPS_CSRF_COOKIE};
use crate::web::errors::{ErrorShown, Notice};

#[derive(Template)]
#[template(path = "ops/error.html")]
struct OpsErrorPage {
    layout: OpsLayout,
    notice: Notice,
}

/// The operator signed in on this browser, if any (for the frame's navigation).
async fn signed_in(state: &AppState, headers: &axum::http::HeaderMap) -> Option<OpsSession> {
    let (mut parts, ()) = axum::http::Request::builder().uri("/ops").body(()).ok()?.into_parts();
    parts.headers = headers.clone();
    let jar = SignedCookieJar::from_headers(headers, state.web.cookie_key.clone());
    let token = jar.get(OPS_CSRF_COOKIE).map(|c| c.value().to_string()).unwrap_or_default();
    parts.extensions.insert(CsrfToken(token));
    OpsSession::from_request_parts(&mut parts, state).await.ok()
}

/// Middleware around every console route: an error page becomes the console's.
pub async fn errors_in_frame(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let headers = request.headers().clone();
    let response = next.run(request).await;
    let Some(ErrorShown(mut notice)) = response.extensions().get::<ErrorShown>().cloned() else {
        return response;
    };
    if notice.next.as_ref().is_none_or(|(href, _)| !href.starts_with("/ops")) {
        notice.next = Some(("/ops".to_string(), "Operations overview".to_string()));
    }
    let layout = match signed_in(&state, &headers).await {
        Some(session) => OpsLayout::new(&session, &notice.title, ""),
        None => OpsLayout::signed_out(&notice.title, ""),
    };
    let Ok(html) = (OpsErrorPage { layout, notice }).render() else {
        return response;
    };
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    let mut framed = Html(html).into_response();
    std::mem::swap(framed.headers_mut(), &mut parts.headers);
    *framed.status_mut() = parts.status;
    framed
}
