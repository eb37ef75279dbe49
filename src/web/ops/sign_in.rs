//! Sign in to the console with an operator key (checked, then forgotten: the browser
//! keeps a signed cookie naming the operator), and sign out.

use askama::Template;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use axum_extra::extract::cookie::SignedCookieJar;
use serde::Deserialize;

use super::layout::OpsLayout;
use super::session::{self, OpsSession};
use crate::state::AppState;
use crate::web::csrf::CsrfToken;
use crate::web::errors::{Notice, WebError};
use crate::web::form::PageForm;

pub fn routes() -> Router<AppState> {
    Router::new().route("/ops/sign-in", get(page).post(submit)).route("/ops/sign-out", post(sign_out))
}

#[derive(Template)]
#[template(path = "ops/sign_in.html")]
struct SignInPage {
    layout: OpsLayout,
    notice: Option<Notice>,
}

fn render(csrf: &str, notice: Option<Notice>) -> Result<Html<String>, WebError> {
    Ok(Html(SignInPage { layout: OpsLayout::signed_out("Operator sign-in", csrf), notice }.render()?))
}

async fn page(session: Option<OpsSession>, Extension(csrf): Extension<CsrfToken>) -> Result<Response, WebError> {
    if session.is_some() {
        return Ok(Redirect::to("/ops").into_response());
    }
    Ok(render(&csrf.0, None)?.into_response())
}

#[derive(Deserialize)]
struct SignInForm {
    operator_key: String,
}

async fn submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    jar: SignedCookieJar,
    Extension(csrf): Extension<CsrfToken>,
    PageForm(form): PageForm<SignInForm>,
) -> Result<Response, WebError> {
    let https = crate::web::session::is_https(&state, &headers);
    match session::sign_in(&state, jar, &form.operator_key, https).await? {
        Some(jar) => Ok((jar, Redirect::to("/ops")).into_response()),
        None => {
            let notice = Notice::new(
                "That key was not accepted",
                "Paste a whole operator key (it starts with kiln_op_) or the configured operator key. A team's API key opens the team pages, not the console.",
            );
            Ok((StatusCode::UNAUTHORIZED, render(&csrf.0, Some(notice))?).into_response())
        }
    }
}

async fn sign_out(jar: SignedCookieJar) -> impl IntoResponse {
    (session::sign_out(jar), Redirect::to("/ops/sign-in"))
}
