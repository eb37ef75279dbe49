//! The signed-in team: a signed, HttpOnly, SameSite=Lax cookie (Secure over HTTPS) naming
//! the team and the API key it signed in with — never the key itself. The key is looked
//! up again on every request, so revoking it signs the browser out.

use application::api_keys::hash_key;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum_extra::extract::cookie::{Cookie, Key, SameSite, SignedCookieJar};
use domain::keys::Role;
use domain::{ApiKeyId, TeamId};

use super::csrf::CsrfToken;
use super::errors::WebError;
use crate::state::AppState;
use crate::queries;

pub const SESSION_COOKIE: &str = "kiln_session";
pub use crate::state::{WebKeys, COOKIE_KEY_FILE};

impl axum::extract::FromRef<AppState> for Key {
    fn from_ref(state: &AppState) -> Key {
        state.web.cookie_key.clone()
    }
}

/// Whether this request reached Kiln over HTTPS (directly configured, or through a proxy).
pub fn is_https(state: &AppState, headers: &axum::http::HeaderMap) -> bool {
    state.web.https || headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()) == Some("https")
}

/// A cookie with the dashboard's attributes.
pub fn cookie(name: &'static str, value: String, https: bool) -> Cookie<'static> {
    cookie_at(name, value, https, "/")
}

/// [`cookie`] sent only under `path` (the operator console's cookies: `/ops`).
pub fn cookie_at(name: &'static str, value: String, https: bool, path: &'static str) -> Cookie<'static> {
    Cookie::build((name, value)).path(path).http_only(true).same_site(SameSite::Lax).secure(https).build()
}

/// The signed-in team, its key re-checked against revocation.
#[derive(Debug, Clone)]
pub struct Session {
    pub team_id: TeamId,
    pub key_id: ApiKeyId,
    pub role: Role,
    /// The CSRF token every form of the page must carry.
    pub csrf: String,
}

impl Session {
    /// The actor recorded on events this session causes.
    pub fn actor(&self) -> String {
        format!("key:{}", self.key_id)
    }

    /// Refuses read-only keys (auditors) on forms that change something.
    pub fn writer(&self) -> Result<&Self, WebError> {
        if self.role.can_write() {
            Ok(self)
        } else {
            Err(WebError::Forbidden("This key is read-only: sign in with a member or admin key to do this.".into()))
        }
    }
}

impl Session {
    /// Refuses keys that may not manage the team's keys (`Role::can_manage_keys`).
    pub fn key_admin(&self) -> Result<&Self, WebError> {
        if self.role.can_manage_keys() {
            Ok(self)
        } else {
            Err(WebError::Forbidden("Only a team admin manages API keys: sign in with an admin key of the team to do this.".into()))
        }
    }
}

fn parse(value: &str) -> Option<(TeamId, ApiKeyId)> {
    let (team, key) = value.split_once(':')?;
    Some((team.parse().ok()?, key.parse().ok()?))
}

impl FromRequestParts<AppState> for Session {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, WebError> {
        let jar = SignedCookieJar::from_headers(&parts.headers, state.web.cookie_key.clone());
        let (team_id, key_id) = jar.get(SESSION_COOKIE).and_then(|c| parse(c.value())).ok_or(WebError::SignedOut)?;
        let active = queries::keys::active(&state.db, team_id, key_id).await?.ok_or(WebError::SignedOut)?;
        let csrf = parts.extensions.get::<CsrfToken>().map(|t| t.0.clone()).unwrap_or_default();
        tracing::Span::current().record("team_id", tracing::field::display(team_id));
        Ok(Session { team_id, key_id, role: active.role, csrf })
    }
}

/// Signs in with a pasted API key: the session cookie if the key is a team's unrevoked key.
pub async fn sign_in(state: &AppState, jar: SignedCookieJar, api_key: &str, https: bool) -> Result<Option<SignedCookieJar>, WebError> {
    let api_key = api_key.trim();
    if api_key.is_empty() {
        return Ok(None);
    }
    let Some(found) = queries::keys::by_hash(&state.db, &hash_key(api_key)).await? else {
        return Ok(None);
    };
    let value = format!("{}:{}", found.team_id, found.key_id);
    Ok(Some(jar.add(cookie(SESSION_COOKIE, value, https))))
}

pub fn sign_out(jar: SignedCookieJar) -> SignedCookieJar {
    jar.remove(Cookie::build(SESSION_COOKIE).path("/").build())
}
