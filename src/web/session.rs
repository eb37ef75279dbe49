//! The signed-in team: a signed, HttpOnly, SameSite=Lax cookie (Secure over HTTPS) naming
//! the team and the API key it signed in with — never the key itself. The key is looked
//! up again on every request, so revoking it signs the browser out.

use application::api_keys::hash_key;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum_extra::extract::cookie::{Cookie, Key, SameSite, SignedCookieJar};
use domain::keys::Role;
use domain::{ApiKeyId, TeamId};
use infrastructure::config::Settings;

use super::csrf::CsrfToken;
use super::errors::WebError;
use crate::app::AppState;
use crate::queries;

pub const SESSION_COOKIE: &str = "kiln_session";
/// File in the data directory (`storage.local_root`) holding the cookie-signing key.
pub const COOKIE_KEY_FILE: &str = ".cookie-signing-key";
/// `Key::from` needs 64 bytes (32 to sign, 32 to encrypt).
const COOKIE_KEY_BYTES: usize = 64;

/// The dashboard's secrets and cookie policy.
#[derive(Clone)]
pub struct WebKeys {
    pub cookie_key: Key,
    /// Cookies get `Secure` when Kiln's public URL is HTTPS (or a proxy says so per request).
    pub https: bool,
}

impl WebKeys {
    /// The cookie key is generated on first run into the data directory (mode 0600), so
    /// it is never in git and every process on that directory shares it.
    pub fn load(settings: &Settings) -> std::io::Result<Self> {
        let root = std::path::Path::new(&settings.storage.local_root);
        let file = infrastructure::secrets::load_or_create(&root.join(COOKIE_KEY_FILE), COOKIE_KEY_BYTES, "cookie-signing key")?;
        let bytes = file.key;
        let https = settings.storage.public_base_url.as_deref().is_some_and(|url| url.starts_with("https://"));
        Ok(Self { cookie_key: Key::from(&bytes), https })
    }
}

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
    Cookie::build((name, value)).path("/").http_only(true).same_site(SameSite::Lax).secure(https).build()
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
