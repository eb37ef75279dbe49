//! Authentication as extractors, so a handler cannot forget it.
//!
//! - [`TeamKey`]: `Authorization: Bearer kiln_…`, a team's API key, looked up by its
//!   SHA-256 among unrevoked keys. Everything a handler does with it is scoped to
//!   `team_id`.
//! - [`Operator`]: an operator's key (or the configured bootstrap key), for
//!   `/api/admin/*`; viewers only read.

use application::api_keys::hash_key;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use application::operators::OperatorIdentity;
use axum_extra::headers::authorization::{Authorization, Bearer};
use axum_extra::headers::HeaderMapExt;
use domain::keys::Role;
use domain::{ApiKeyId, TeamId};

use super::problem::Problem;
use crate::state::AppState;
use crate::queries;

#[derive(Debug, Clone, Copy)]
pub struct TeamKey {
    pub team_id: TeamId,
    pub key_id: ApiKeyId,
    pub role: Role,
}

impl TeamKey {
    /// Refuses read-only keys (auditors) on requests that change state.
    pub fn writer(self) -> Result<Self, Problem> {
        if self.role.can_write() {
            Ok(self)
        } else {
            Err(Problem::forbidden("this key is read-only"))
        }
    }

    /// Refuses keys whose role may not manage the team's keys (`Role::can_manage_keys`).
    pub fn admin(self) -> Result<Self, Problem> {
        if self.role.can_manage_keys() {
            Ok(self)
        } else {
            Err(Problem::forbidden("this needs an admin key of the team"))
        }
    }
}

/// The token of `Authorization: Bearer …` (parsed by axum-extra's typed header).
pub(crate) fn bearer(parts: &Parts) -> Result<String, Problem> {
    if !parts.headers.contains_key(axum::http::header::AUTHORIZATION) {
        return Err(Problem::unauthorized("send Authorization: Bearer <api key>"));
    }
    let Some(Authorization(bearer)) = parts.headers.typed_get::<Authorization<Bearer>>() else {
        return Err(Problem::unauthorized("expected a Bearer token"));
    };
    let token = bearer.token().trim();
    if token.is_empty() {
        return Err(Problem::unauthorized("empty Bearer token"));
    }
    Ok(token.to_string())
}

impl FromRequestParts<AppState> for TeamKey {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let key_hash = hash_key(&bearer(parts)?);
        let found = state.keys.authenticate(&state.db, &key_hash, state.credits.now()).await.map_err(|e| Problem::internal(&e))?;
        let queries::keys::ActiveKey { team_id, key_id, role } =
            found.ok_or_else(|| Problem::unauthorized("unknown or revoked API key"))?;
        let key = TeamKey { team_id, key_id, role };
        tracing::Span::current().record("team_id", tracing::field::display(team_id));
        Ok(key)
    }
}

/// An operator, authenticated by an operator key (`kiln operator create`) or the
/// configured bootstrap key. Requests that change something (any method but GET and
/// HEAD) are refused to viewers here, so no admin handler can forget it.
#[derive(Debug, Clone)]
pub struct Operator(pub OperatorIdentity);

impl Operator {
    /// The event metadata of this operator's actions.
    pub fn metadata(&self) -> serde_json::Value {
        self.0.metadata()
    }
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let token = bearer(parts)?;
        let found = queries::operators::authenticate(&state.db, state.operator_key_sha256.as_ref(), &token).await.map_err(|e| Problem::internal(&e))?;
        let Some(operator) = found else {
            if state.operator_key_sha256.is_none() && !token.starts_with(application::operators::OPERATOR_KEY_PREFIX) {
                return Err(Problem::new(StatusCode::FORBIDDEN, "admin-disabled", "Admin API disabled")
                    .detail("no operator key is configured (auth.operator_key) and this is no operator's key"));
            }
            return Err(Problem::unauthorized("not an operator key"));
        };
        if !matches!(parts.method, Method::GET | Method::HEAD) {
            operator.writer().map_err(|e| Problem::forbidden(&e.to_string()))?;
        }
        tracing::Span::current().record("operator", tracing::field::display(&operator.name));
        Ok(Operator(operator))
    }
}
