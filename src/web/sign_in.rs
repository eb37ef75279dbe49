//! Sign in with a team API key (it is checked, then forgotten: the browser keeps only a
//! signed cookie naming the team and key id), and sign out.

use askama::Template;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use axum_extra::extract::cookie::SignedCookieJar;
use serde::Deserialize;

use super::csrf::CsrfToken;
use super::form::PageForm;
use super::errors::{Notice, WebError};
use super::layout::Layout;
use super::session::{self, Session};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/sign-in", get(page).post(submit))
        .route("/sign-out", post(sign_out))
}

#[derive(Template)]
#[template(path = "sign_in.html")]
struct SignInPage {
    layout: Layout,
    notice: Option<Notice>,
}

fn render(csrf: &str, notice: Option<Notice>) -> Result<Html<String>, WebError> {
    Ok(Html(SignInPage { layout: Layout::signed_out("Sign in", csrf), notice }.render()?))
}

async fn page(session: Option<Session>, Extension(csrf): Extension<CsrfToken>) -> Result<Response, WebError> {
    if session.is_some() {
        return Ok(Redirect::to("/").into_response());
    }
    Ok(render(&csrf.0, None)?.into_response())
}

#[derive(Deserialize)]
struct SignInForm {
    api_key: String,
}

async fn submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    jar: SignedCookieJar,
    Extension(csrf): Extension<CsrfToken>,
    PageForm(form): PageForm<SignInForm>,
) -> Result<Response, WebError> {
    let https = session::is_https(&state, &headers);
    match session::sign_in(&state, jar, &form.api_key, https).await? {
        Some(jar) => Ok((jar, Redirect::to("/")).into_response()),
        // Which part was wrong (unknown, revoked, mistyped) is not said: a key is either
        // accepted or not.
        None => {
            let notice = Notice::new(
                "That key was not accepted",
                "Paste the whole team API key (it starts with kiln_). If it was revoked or lost, ask your operator for a new one.",
            );
            Ok((axum::http::StatusCode::UNAUTHORIZED, render(&csrf.0, Some(notice))?).into_response())
        }
    }
}

async fn sign_out(jar: SignedCookieJar) -> impl IntoResponse {
    (session::sign_out(jar), Redirect::to("/sign-in"))
}

impl axum::extract::OptionalFromRequestParts<AppState> for Session {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &AppState) -> Result<Option<Self>, WebError> {
        match <Session as axum::extract::FromRequestParts<AppState>>::from_request_parts(parts, state).await {
            Ok(session) => Ok(Some(session)),
            Err(WebError::SignedOut) => Ok(None),
            Err(other) => Err(other),
        }
    }
}
