//! `POST /api/webhooks/fal`: fal.ai's result deliveries.
//!
//! The signature is checked over the raw body before anything is parsed (ED25519 against
//! fal's JWKS, ±`fal.webhook_tolerance_secs`); a delivery that fails any check is refused
//! with 401 and changes nothing. A verified delivery ends its job through the worker's
//! own `finish` (outputs stored, then completion and deduction in one append), so a
//! webhook and a status poll end a job the same way, and only once: a duplicate, late or
//! reordered delivery finds the job already ended and is acknowledged without effect.
//! Deliveries for requests Kiln does not know (or an earlier attempt's request) are
//! acknowledged and logged. Kiln's own failures answer 5xx so fal delivers again.
//!
//! The worker records a request id just after fal accepts it; a delivery that beats that
//! record finds no job and is dropped, and the job is then finished by the status poll
//! after `jobs.stale_after_secs` (late, never lost).

use application::jobs::JobsError;
use application::provider::ProviderOutcome;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use domain::jobs::JobError;
use infrastructure::provider::fal::mapping::failure_message;
use infrastructure::provider::fal::{VerifyError, WebhookHeaders};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::Instrument;
use utoipa::ToSchema;

use super::extract::ApiBytes;
use super::problem::Problem;
use crate::state::AppState;

pub use crate::state::FalWebhooks;

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/webhooks/fal", post(webhook))
}

/// fal's delivery body.
#[derive(Debug, Deserialize)]
struct Delivery {
    request_id: String,
    /// OK | ERROR
    status: String,
    #[serde(default)]
    payload: Option<Value>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FalWebhookAck {
    pub request_id: String,
    /// applied (this delivery ended the job) | already_final (the job had ended; nothing
    /// changed) | ignored (unknown request, or not the job's current attempt)
    pub outcome: String,
    pub job_id: Option<String>,
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

fn refused(error: &VerifyError) -> Problem {
    tracing::warn!(reason = %error, "fal webhook refused");
    let outcome = if matches!(error, VerifyError::KeysUnavailable(_)) { "keys_unavailable" } else { "bad_signature" };
    super::metrics::webhook_delivered("fal", outcome);
    match error {
        // Not the sender's fault: 503, so fal delivers again once the keys can be read.
        VerifyError::KeysUnavailable(_) => Problem::new(StatusCode::SERVICE_UNAVAILABLE, "fal-keys-unavailable", "fal keys unavailable")
            .detail("fal's webhook keys cannot be fetched; try again later"),
        _ => Problem::new(StatusCode::UNAUTHORIZED, "invalid-fal-signature", "Invalid fal signature").detail(error.to_string()),
    }
}

/// fal.ai's webhook. Verifies `X-Fal-Webhook-Signature` (ED25519 over request id, user
/// id, timestamp and the body's SHA-256, keys from fal's JWKS) before anything else.
#[utoipa::path(post, path = "/api/webhooks/fal", tag = "webhooks", operation_id = "receiveFalWebhook",
    request_body(content = Object, description = "fal's delivery `{request_id, status: OK|ERROR, payload, error}`, exactly as signed", content_type = "application/json",
        example = json!({"request_id": "764cabcf-b745-4b3e-ae38-1200304cf45b", "gateway_request_id": "764cabcf-b745-4b3e-ae38-1200304cf45b",
            "status": "OK", "payload": {"images": [{"url": "https://v3.fal.media/files/example.png", "content_type": "image/png"}]}})),
    params(
        ("X-Fal-Webhook-Request-Id" = String, Header, description = "fal's request id"),
        ("X-Fal-Webhook-User-Id" = String, Header, description = "fal's user id"),
        ("X-Fal-Webhook-Timestamp" = String, Header, description = "unix seconds"),
        ("X-Fal-Webhook-Signature" = String, Header, description = "hex ED25519 signature")),
    responses(
        (status = 200, body = FalWebhookAck, description = "verified; applied, or acknowledged without effect"),
        (status = 400, description = "verified but not a delivery (`/problems/malformed-fal-delivery`)"),
        (status = 401, description = "missing, forged or stale signature (`/problems/invalid-fal-signature`)"),
        (status = 503, description = "fal is not configured, or its keys cannot be fetched")))]
async fn webhook(State(state): State<AppState>, headers: HeaderMap, ApiBytes(body): ApiBytes) -> Result<Json<FalWebhookAck>, Problem> {
    let fal = state.fal.clone().ok_or_else(|| {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, "fal-not-configured", "fal.ai not configured").detail("fal.key is not set")
    })?;
    let signed = WebhookHeaders {
        request_id: header(&headers, "x-fal-webhook-request-id"),
        user_id: header(&headers, "x-fal-webhook-user-id"),
        timestamp: header(&headers, "x-fal-webhook-timestamp"),
        signature: header(&headers, "x-fal-webhook-signature"),
    };
    fal.verifier.verify(&signed, &body, state.credits.now()).await.map_err(|e| refused(&e))?;
    let malformed = |detail: String| Problem::new(StatusCode::BAD_REQUEST, "malformed-fal-delivery", "Malformed fal delivery").detail(detail);
    let mut value: Value = serde_json::from_slice(&body).map_err(|e| malformed(e.to_string()))?;
    // Text Kiln cannot store (NUL, control characters) in a signed delivery is replaced,
    // not refused: the delivery still ends its job, and an error answer would only make
    // fal deliver it again.
    if let Some((field, _)) = super::text::first_violation(&value, &mut String::new()) {
        tracing::warn!(field, "fal delivery holds control characters; replaced before use");
        super::text::make_storable(&mut value);
    }
    let delivery: Delivery = serde_json::from_value(value).map_err(|e| malformed(e.to_string()))?;
    if signed.request_id.as_deref() != Some(delivery.request_id.as_str()) {
        return Err(malformed("request_id differs from X-Fal-Webhook-Request-Id".into()));
    }
    let span = tracing::info_span!("fal_webhook", request_id = %delivery.request_id, status = %delivery.status, job_id = tracing::field::Empty);
    let ack = handle(&state, &fal, delivery).instrument(span).await;
    let outcome = match ack.as_ref().map(|ack| ack.outcome.as_str()) {
        Ok("applied") => "applied",
        Ok("already_final") => "already_final",
        Ok(_) => "ignored",
        Err(_) => "error",
    };
    super::metrics::webhook_delivered("fal", outcome);
    Ok(Json(ack?))
}

async fn handle(state: &AppState, fal: &FalWebhooks, delivery: Delivery) -> Result<FalWebhookAck, Problem> {
    let ack = |outcome: &str, job: Option<String>| FalWebhookAck { request_id: delivery.request_id.clone(), outcome: outcome.into(), job_id: job };
    let Some(job_id) = state.job_index.job_of_request(&delivery.request_id).await.map_err(|e| Problem::internal(&e))? else {
        tracing::warn!("fal webhook for a request Kiln does not know; acknowledged");
        return Ok(ack("ignored", None));
    };
    tracing::Span::current().record("job_id", tracing::field::display(job_id));
    let job = state.jobs.job(job_id).await?;
    let status = job.status.ok_or_else(|| Problem::not_found().detail("no such job"))?;
    if status.is_final() {
        tracing::info!(status = status.as_str(), "fal webhook for an ended job; nothing to do");
        return Ok(ack("already_final", Some(job_id.to_string())));
    }
    if !status.is_active() || job.provider_request_id.as_deref() != Some(delivery.request_id.as_str()) {
        tracing::info!(status = status.as_str(), "fal webhook for an earlier attempt of the job; ignored");
        return Ok(ack("ignored", Some(job_id.to_string())));
    }
    let outcome = match delivery.status.as_str() {
        "OK" => {
            let payload = delivery.payload.clone().unwrap_or(Value::Null);
            fal.provider.outcome_of(Some(&delivery.request_id), &payload).await.map_err(|error| {
                // Downloading the result failed for now: fal delivers again, and polling is the backstop.
                tracing::warn!(%error, "fal result not fetched");
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, "fal-result-unavailable", "fal result unavailable").detail("try again later")
            })?
        }
        "ERROR" => ProviderOutcome::Failed { message: failure_message(delivery.error.as_ref(), delivery.payload.as_ref()) },
        other => {
            tracing::warn!(status = other, "fal webhook with an unknown status; ignored");
            return Ok(ack("ignored", Some(job_id.to_string())));
        }
    };
    match fal.worker.finish(job_id, &job, outcome).await {
        Ok(()) => {}
        // Ended by a racing cancel, poll or delivery: that ending stands.
        Err(JobsError::Job(JobError::AlreadyFinished(how))) => {
            tracing::info!(how, "job ended meanwhile; nothing changed");
            return Ok(ack("already_final", Some(job_id.to_string())));
        }
        Err(error) => return Err(Problem::from(error)),
    }
    tracing::info!("fal webhook applied");
    Ok(ack("applied", Some(job_id.to_string())))
}
