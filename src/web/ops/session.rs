//! The signed-in operator: a signed, HttpOnly, SameSite=Lax cookie sent only under
//! `/ops` (Secure over HTTPS), naming the operator — never their key. The operator is
//! looked up again on every request, so revoking them signs the browser out; a viewer's
//! session is refused on every POST but sign-out, here, so no form can forget it.

use application::operators::OperatorIdentity;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::Method;
use axum_extra::extract::cookie::{Cookie, SignedCookieJar};
use domain::OperatorId;

use crate::queries;
use crate::state::AppState;
use crate::web::csrf::CsrfToken;
use crate::web::errors::WebError;
use crate::web::session::cookie_at;

pub const OPS_SESSION_COOKIE: &str = "kiln_ops_session";
const OPS_PATH: &str = "/ops";

/// The signed-in operator, re-checked against revocation.
#[derive(Debug, Clone)]
pub struct OpsSession {
    pub operator: OperatorIdentity,
    /// The CSRF token every form of the page must carry.
    pub csrf: String,
}

impl FromRequestParts<AppState> for OpsSession {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, WebError> {
        let jar = SignedCookieJar::from_headers(&parts.headers, state.web.cookie_key.clone());
        let id: OperatorId = jar.get(OPS_SESSION_COOKIE).and_then(|c| c.value().parse().ok()).ok_or(WebError::OpsSignedOut)?;
        let bootstrap = state.operator_key_sha256.is_some();
        let operator = queries::operators::active(&state.db, bootstrap, id).await?.ok_or(WebError::OpsSignedOut)?;
        if parts.method == Method::POST && parts.uri.path() != "/ops/sign-out" {
            operator.writer().map_err(|_| WebError::Forbidden("You are signed in as a viewer: viewers see everything and change nothing. Ask an admin operator.".into()))?;
        }
        let csrf = parts.extensions.get::<CsrfToken>().map(|t| t.0.clone()).unwrap_or_default();
        tracing::Span::current().record("operator", tracing::field::display(&operator.name));
        Ok(OpsSession { operator, csrf })
    }
}

impl axum::extract::OptionalFromRequestParts<AppState> for OpsSession {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Option<Self>, WebError> {
        match <OpsSession as FromRequestParts<AppState>>::from_request_parts(parts, state).await {
            Ok(session) => Ok(Some(session)),
            Err(WebError::OpsSignedOut) => Ok(None),
            Err(other) => Err(other),
        }
    }
}

/// Signs in with a pasted operator key (or the bootstrap key): the session cookie if the
/// key is an unrevoked operator's.
pub async fn sign_in(state: &AppState, jar: SignedCookieJar, key: &str, https: bool) -> Result<Option<SignedCookieJar>, WebError> {
    let key = key.trim();
    if key.is_empty() {
        return Ok(None);
    }
    let Some(found) = queries::operators::authenticate(&state.db, state.operator_key_sha256.as_ref(), key).await? else {
        return Ok(None);
    };
    Ok(Some(jar.add(cookie_at(OPS_SESSION_COOKIE, found.id.to_string(), https, OPS_PATH))))
}

pub fn sign_out(jar: SignedCookieJar) -> SignedCookieJar {
    jar.remove(Cookie::build(OPS_SESSION_COOKIE).path(OPS_PATH).build())
}
