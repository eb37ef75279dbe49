//! What the dashboard's forms and URLs bring in, read so that nothing a person types
//! ends as a JSON problem: a form body the page cannot read is the page's own "check the
//! form" ([`PageForm`]), and path parameters and query values follow the text rule
//! (`domain::text`) before any page reads them ([`check_path_and_query`]): a path
//! parameter the rule refuses names no page (HTML 404), a query value it refuses is a
//! 422 page. Fields with a value type (prompts, names, descriptions) are checked by the
//! use cases, which answer with a message the page shows on its form.

use axum::extract::{FromRequest, Query, RawPathParams, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Form;
use domain::text::{self, TOKEN_CHARS_MAX};
use serde::de::DeserializeOwned;

use super::errors::WebError;

/// A urlencoded form as `T`; a body that cannot be read as `T` is an HTML page saying
/// so (never axum's plain-text rejection, which the API's layer would turn into JSON).
/// Forms whose fields a person types declare them as text and parse them in the
/// handler, so that a value such as `count=abc` is a message on the form itself.
pub struct PageForm<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for PageForm<T> {
    type Rejection = WebError;

    async fn from_request(request: Request, state: &S) -> Result<Self, WebError> {
        match Form::<T>::from_request(request, state).await {
            Ok(Form(form)) => Ok(PageForm(form)),
            Err(rejection) => Err(WebError::BadForm(format!("The form could not be read: {}", rejection.body_text()))),
        }
    }
}

/// Middleware on every page: path parameters and query values follow the text rule.
pub async fn check_path_and_query(
    params: Result<RawPathParams, axum::extract::rejection::RawPathParamsRejection>,
    request: Request,
    next: Next,
) -> Response {
    // A path that is not UTF-8 names no page.
    let Ok(params) = params else {
        return WebError::NotFound.into_response();
    };
    if params.iter().any(|(_, value)| text::check(value, TOKEN_CHARS_MAX).is_err()) {
        return WebError::NotFound.into_response();
    }
    if request.uri().query().is_some() {
        let Ok(Query(pairs)) = Query::<Vec<(String, String)>>::try_from_uri(request.uri()) else {
            return WebError::BadForm("This address's query cannot be read. Follow a link from the page instead.".into()).into_response();
        };
        for (name, value) in &pairs {
            if let Err(reason) = text::check(name, TOKEN_CHARS_MAX).and_then(|()| text::check(value, TOKEN_CHARS_MAX)) {
                let shown: String = name.chars().filter(|c| text::refused_char(c.encode_utf8(&mut [0; 4])).is_none()).take(40).collect();
                return WebError::BadForm(format!("The address's {shown} {reason}.")).into_response();
            }
        }
    }
    next.run(request).await
}

/// Any URL outside the API that no page answers: the dashboard's 404 page.
pub async fn not_found() -> WebError {
    WebError::NotFound
}
