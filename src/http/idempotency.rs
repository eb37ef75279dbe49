//! Idempotency-Key as Stripe does it, for every request that changes state (POST, PUT,
//! PATCH, DELETE under `/api/`, webhooks aside): the key is bound, per team, to the
//! request's fingerprint — method, path and the SHA-256 of its canonical JSON body — in
//! `idempotency_keys` (durable, so the rule holds across processes).
//!
//! - the same key with another fingerprint: 422 `/problems/idempotency-key-reused`;
//! - the same key while the first request still runs: 409
//!   `/problems/idempotency-key-in-use` (with `Retry-After`);
//! - the same key and request after it finished: the handler runs again and answers with
//!   the first result (the ids it records derive from the key).
//!
//! A request refused with a 4xx recorded nothing and releases its key; any other answer
//! keeps it bound. Bindings are forgotten after `RETENTION_HOURS` (24).

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use infrastructure::idempotency::{self, Claim, Finish, KeyedRequest};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::extract::{body_limit, too_large_than};
use super::problem::Problem;
use crate::state::AppState;

/// Seconds a client is asked to wait before repeating a request still in flight.
const IN_FLIGHT_RETRY_AFTER_SECS: u64 = 1;

/// Middleware of every route's writes (see the module doc; the router's `writes` layer).
pub async fn idempotent_requests(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let changes_state = matches!(*request.method(), Method::POST | Method::PUT | Method::PATCH | Method::DELETE);
    let path = request.uri().path();
    if !changes_state || !path.starts_with("/api/") || path.starts_with("/api/webhooks/") {
        return next.run(request).await;
    }
    let Some(value) = request.headers().get("idempotency-key") else {
        return next.run(request).await;
    };
    // The handler's extractor explains a malformed key; only a valid one is bound.
    let Some(key) = value.to_str().ok().and_then(|text| domain::IdempotencyKey::parse(text).ok()) else {
        return next.run(request).await;
    };
    let scope = match scope_of(&state, request.headers(), request.uri().path()).await {
        Ok(Some(scope)) => scope,
        // Not authenticated: the handler answers 401 and nothing is bound.
        Ok(None) => return next.run(request).await,
        Err(problem) => return problem.into_response(),
    };
    let (parts, body) = request.into_parts();
    let limit = body_limit(&parts.method, parts.uri.path(), &parts.headers);
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => bytes,
        Err(_) => return too_large_than(limit).into_response(),
    };
    let fingerprint = fingerprint(&parts.method, parts.uri.path(), &without_boundary(&parts.headers, &bytes));
    let keyed = KeyedRequest {
        scope: &scope,
        key: key.as_str(),
        fingerprint: &fingerprint,
        method: parts.method.as_str(),
        path: parts.uri.path(),
        now: state.credits.now(),
    };
    let mut claim = idempotency::claim(&state.db, &keyed).await;
    if matches!(claim, Ok(Claim::InFlight)) {
        // This process's own claim, left unfinished while the database was away (a
        // failover, a restart): the request it was for has ended, so finish it now and
        // claim again, rather than answer the client's retry with 409.
        if let Some(how) = state.unfinished_claims.take(&scope, key.as_str()) {
            if let Err(error) = idempotency::finish(&state.db, &scope, key.as_str(), how, keyed.now).await {
                state.unfinished_claims.add(&scope, key.as_str(), how);
                return Problem::internal(&error).into_response();
            }
            claim = idempotency::claim(&state.db, &keyed).await;
        }
    }
    let claimed = match claim {
        Ok(Claim::Claimed) => true,
        Ok(Claim::Repeat) => false,
        Ok(Claim::InFlight) => {
            return Problem::new(StatusCode::CONFLICT, "idempotency-key-in-use", "Idempotency key in use")
                .detail("a request with this Idempotency-Key is still being processed; retry after it has finished")
                .retry_after(IN_FLIGHT_RETRY_AFTER_SECS)
                .into_response()
        }
        Ok(Claim::Mismatch { method, path }) => {
            return Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "idempotency-key-reused", "Idempotency key reused")
                .detail(format!(
                    "this Idempotency-Key was first used with another request ({method} {path} with another body); use a new key for a new request"
                ))
                .with("field", "Idempotency-Key")
                .into_response()
        }
        Err(error) => {
            if infrastructure::db::is_unreachable(&error) {
                // The claim may have committed with its answer lost: bind it as done
                // once the database is back (a repeat runs the request again, which is
                // idempotent), so it does not hold the key for the in-flight lease.
                finish_later(&state, &scope, key.as_str(), Finish::Done);
            }
            return Problem::internal(&error).into_response();
        }
    };
    let request = Request::from_parts(parts, Body::from(bytes));
    if !claimed {
        return next.run(request).await;
    }
    let mut guard = ClaimGuard { state: Some(state.clone()), scope, key: key.as_str().to_string() };
    let response = next.run(request).await;
    let how = if response.status().is_client_error() { Finish::Release } else { Finish::Done };
    guard.finish(how).await;
    response
}

/// Whose key space the request's key lives in: the team of its API key, or the
/// operator (per team acted on). `None` for a request without valid credentials.
async fn scope_of(state: &AppState, headers: &axum::http::HeaderMap, path: &str) -> Result<Option<String>, Problem> {
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|text| text.strip_prefix("Bearer ").or_else(|| text.strip_prefix("bearer ")))
        .map(str::trim)
    else {
        return Ok(None);
    };
    // Operators act for many teams: their keys are per team acted on, as the ids they
    // derive from them are (`grant:{team}:{key}`), shared by all operators.
    if path.starts_with("/api/admin/") {
        let operator = crate::queries::operators::authenticate(&state.db, state.operator_key_sha256.as_ref(), token)
            .await
            .map_err(|e| Problem::internal(&e))?;
        if operator.is_some() {
            let team = path.strip_prefix("/api/admin/teams/").and_then(|rest| rest.split('/').next()).filter(|t| !t.is_empty());
            return Ok(Some(match team {
                Some(team) => format!("operator:{team}"),
                None => "operator".to_string(),
            }));
        }
    }
    // The same lookup (and its short memory) as authentication's.
    let key = state.keys.by_hash(&state.db, &application::api_keys::hash_key(token)).await.map_err(|e| Problem::internal(&e))?;
    Ok(key.map(|key| key.team_id.to_string()))
}

/// A multipart body with its boundary taken out: a client's retry picks a new boundary
/// for the same content, which must fingerprint the same.
fn without_boundary(headers: &axum::http::HeaderMap, body: &Bytes) -> Bytes {
    let content_type = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let Ok(boundary) = multer::parse_boundary(content_type) else { return body.clone() };
    let boundary = boundary.as_bytes();
    if boundary.is_empty() {
        return body.clone();
    }
    let mut out = Vec::with_capacity(body.len());
    let mut from = 0;
    for at in memchr::memmem::find_iter(body, boundary) {
        out.extend_from_slice(&body[from..at]);
        from = at + boundary.len();
    }
    out.extend_from_slice(&body[from..]);
    Bytes::from(out)
}

/// Hex SHA-256 of `METHOD\npath\n` and the body: canonical JSON (keys sorted, no
/// insignificant whitespace) when it is JSON, else its bytes.
pub fn fingerprint(method: &Method, path: &str, body: &Bytes) -> String {
    let mut hasher = Sha256::new();
    hasher.update(method.as_str().as_bytes());
    hasher.update(b"\n");
    hasher.update(path.as_bytes());
    hasher.update(b"\n");
    match serde_json::from_slice::<Value>(body) {
        Ok(value) => {
            let mut canonical = String::new();
            write_canonical(&value, &mut canonical);
            hasher.update(canonical.as_bytes());
        }
        Err(_) => hasher.update(body),
    }
    hex::encode(hasher.finalize())
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(fields) => {
            let mut keys: Vec<&String> = fields.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&fields[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Finishes a claim; if the request is dropped midway (the client went away), the claim
/// is marked done in the background, since the handler may have recorded something.
struct ClaimGuard {
    state: Option<AppState>,
    scope: String,
    key: String,
}

impl ClaimGuard {
    async fn finish(&mut self, how: Finish) {
        let Some(state) = self.state.take() else { return };
        finish(&state, &self.scope, &self.key, how).await;
    }
}

async fn finish(state: &AppState, scope: &str, key: &str, how: Finish) {
    let now = state.credits.now();
    let Err(error) = idempotency::finish(&state.db, scope, key, how, now).await else { return };
    if !infrastructure::db::is_unreachable(&error) {
        // The claim stays in flight until its lease runs out; repeats get 409 till then.
        tracing::warn!(%error, "idempotency key not released");
        return;
    }
    // The database is away (the request itself most likely answered 503): finish the
    // claim once it is back, so the client's retry is not turned away meanwhile.
    finish_later(state, scope, key, how);
}

/// Finishes a claim once the database is back, in the background; until then a repeat
/// reaching this process finishes it itself (`Unfinished`).
fn finish_later(state: &AppState, scope: &str, key: &str, how: Finish) {
    state.unfinished_claims.add(scope, key, how);
    let (db, unfinished, now) = (state.db.clone(), state.unfinished_claims.clone(), state.credits.now());
    let (scope, key) = (scope.to_string(), key.to_string());
    tokio::spawn(async move {
        match idempotency::finish_when_reachable(&db, &scope, &key, how, now).await {
            Ok(()) => {
                unfinished.take(&scope, &key);
            }
            Err(error) => tracing::warn!(%error, "idempotency key not released"),
        }
    });
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if let Some(state) = self.state.take() {
            let (scope, key) = (std::mem::take(&mut self.scope), std::mem::take(&mut self.key));
            tokio::spawn(async move { finish(&state, &scope, &key, Finish::Done).await });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_ignore_key_order_and_whitespace_but_not_content() {
        let a = fingerprint(&Method::POST, "/api/generate", &Bytes::from_static(br#"{"a":1,"b":[1,2]}"#));
        let b = fingerprint(&Method::POST, "/api/generate", &Bytes::from_static(b"{ \"b\": [1, 2], \"a\": 1 }"));
        assert_eq!(a, b);
        let other_body = fingerprint(&Method::POST, "/api/generate", &Bytes::from_static(br#"{"a":2,"b":[1,2]}"#));
        let other_path = fingerprint(&Method::POST, "/api/models", &Bytes::from_static(br#"{"a":1,"b":[1,2]}"#));
        assert_ne!(a, other_body);
        assert_ne!(a, other_path);
    }
}
