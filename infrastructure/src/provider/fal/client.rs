//! fal's queue API over HTTP (reqwest): submit, status, result, cancel, and downloads of
//! result files. Every call is retried with doubling back-off, a bounded number of times,
//! when fal cannot be reached or answers 429/5xx. The API key goes only to the queue
//! API: result files are fetched without it (their URLs come from fal's answers and may
//! point anywhere).

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

use reqwest::{Method, RequestBuilder, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::mapping::{error_message, queue_app, QueueStatus, Queued};
use super::settings::FalSettings;

/// The longest back-off between two tries.
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FalError {
    /// fal could not be reached or was overloaded, every try.
    #[error("fal unavailable: {0}")]
    Transient(String),
    /// fal does not know the request (404).
    #[error("fal does not know the request")]
    NotFound,
    /// fal refused the call (4xx other than 404 and 429), with its message.
    #[error("fal refused the request ({status}): {message}")]
    Rejected { status: u16, message: String },
}

/// fal's answer to a cancel (`PUT …/cancel`), whatever the HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelAnswer {
    /// OK or CANCELLATION_REQUESTED: fal stops the request.
    Requested,
    /// ALREADY_COMPLETED: too late; its result is discarded by Kiln.
    AlreadyCompleted,
    NotFound,
}

#[derive(Clone)]
pub struct FalClient {
    http: reqwest::Client,
    base: String,
    key: SecretString,
    attempts_max: u32,
    retry_backoff: Duration,
    download_bytes_max: u64,
}

impl std::fmt::Debug for FalClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FalClient").field("base", &self.base).finish_non_exhaustive()
    }
}

impl FalClient {
    pub fn new(settings: &FalSettings, key: SecretString) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(settings.request_timeout_secs.max(1)))
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self {
            http,
            base: settings.queue_base_url.trim_end_matches('/').to_string(),
            key,
            attempts_max: settings.attempts_max.max(1),
            retry_backoff: Duration::from_millis(settings.retry_backoff_ms),
            download_bytes_max: settings.download_bytes_max,
        })
    }

    fn authorized(&self, method: Method, url: &str) -> RequestBuilder {
        self.http.request(method, url).header("Authorization", format!("Key {}", self.key.expose_secret()))
    }

    /// `POST {base}/{app_id}?fal_webhook=…` with `input`.
    pub async fn submit(&self, app_id: &str, input: &Value, webhook_url: Option<&str>) -> Result<Queued, FalError> {
        let url = format!("{}/{}", self.base, app_id.trim_matches('/'));
        let body = self
            .send(|| {
                let request = self.authorized(Method::POST, &url).json(input);
                match webhook_url {
                    Some(webhook) => request.query(&[("fal_webhook", webhook)]),
                    None => request,
                }
            })
            .await?;
        parse(&body)
    }

    /// `GET {base}/{app}/requests/{id}/status?logs=1`.
    pub async fn status(&self, app_id: &str, request_id: &str) -> Result<QueueStatus, FalError> {
        let url = format!("{}/{}/requests/{request_id}/status", self.base, queue_app(app_id));
        let body = self.send(|| self.authorized(Method::GET, &url).query(&[("logs", "1")])).await?;
        parse(&body)
    }

    /// The result of a completed request: `GET {response_url}` (or the conventional URL).
    pub async fn result(&self, app_id: &str, request_id: &str, response_url: Option<&str>) -> Result<Value, FalError> {
        let url = match response_url {
            Some(url) => url.to_string(),
            None => format!("{}/{}/requests/{request_id}", self.base, queue_app(app_id)),
        };
        let body = self.send(|| self.authorized(Method::GET, &url)).await?;
        parse(&body)
    }

    /// `PUT {base}/{app}/requests/{id}/cancel`.
    pub async fn cancel(&self, app_id: &str, request_id: &str) -> Result<CancelAnswer, FalError> {
        let url = format!("{}/{}/requests/{request_id}/cancel", self.base, queue_app(app_id));
        let answer = match self.send(|| self.authorized(Method::PUT, &url)).await {
            Ok(body) => serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null),
            Err(FalError::NotFound) => return Ok(CancelAnswer::NotFound),
            // fal answers ALREADY_COMPLETED with a 400.
            Err(FalError::Rejected { message, .. }) if message.contains("ALREADY_COMPLETED") => {
                return Ok(CancelAnswer::AlreadyCompleted)
            }
            Err(error) => return Err(error),
        };
        Ok(match answer.get("status").and_then(Value::as_str) {
            Some("ALREADY_COMPLETED") => CancelAnswer::AlreadyCompleted,
            Some("NOT_FOUND") => CancelAnswer::NotFound,
            _ => CancelAnswer::Requested,
        })
    }

    /// A result file's bytes (no API key sent), refused beyond `download_bytes_max`.
    pub async fn download(&self, url: &str) -> Result<Vec<u8>, FalError> {
        (|| self.download_once(url))
            .retry(self.retries())
            .when(|error| matches!(error, FalError::Transient(_)))
            .notify(|error, delay| tracing::warn!(%error, ?delay, "downloading a fal result failed; retrying"))
            .await
    }

    async fn download_once(&self, url: &str) -> Result<Vec<u8>, FalError> {
        let mut response = self.http.get(url).send().await.map_err(transport)?;
        let status = response.status();
        if !status.is_success() {
            let body = response.bytes().await.unwrap_or_default();
            return Err(classify(status, &body));
        }
        if response.content_length().is_some_and(|length| length > self.download_bytes_max) {
            return Err(too_large(self.download_bytes_max));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if (bytes.len() + chunk.len()) as u64 > self.download_bytes_max {
                return Err(too_large(self.download_bytes_max));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }

    /// Sends the request `build` makes, retrying transient failures; returns a 2xx answer.
    ///
    /// A retried submission may reach fal twice if only its answer was lost; the second
    /// request's result is then never asked for (Kiln records one request id per attempt).
    async fn send(&self, build: impl Fn() -> RequestBuilder) -> Result<Vec<u8>, FalError> {
        let once = || async {
            match build().send().await {
                Ok(response) => {
                    let status = response.status();
                    match response.bytes().await {
                        Ok(body) if status.is_success() => Ok(body.to_vec()),
                        Ok(body) => Err(classify(status, &body)),
                        Err(error) => Err(transport(error)),
                    }
                }
                Err(error) => Err(transport(error)),
            }
        };
        once.retry(self.retries())
            .when(|error| matches!(error, FalError::Transient(_)))
            .notify(|error, delay| tracing::warn!(%error, ?delay, "fal call failed; retrying"))
            .await
    }

    /// `attempts_max` tries in all, the pause doubling from `retry_backoff` up to
    /// [`RETRY_BACKOFF_MAX`].
    fn retries(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.retry_backoff)
            .with_max_delay(RETRY_BACKOFF_MAX)
            .with_max_times(self.attempts_max.saturating_sub(1) as usize)
    }
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, FalError> {
    // An answer of an unexpected shape is fal (or a proxy) misbehaving: worth a later try.
    serde_json::from_slice(body).map_err(|error| FalError::Transient(format!("unexpected answer from fal: {error}")))
}

fn classify(status: StatusCode, body: &[u8]) -> FalError {
    let message = error_message(body);
    if status == StatusCode::NOT_FOUND {
        FalError::NotFound
    } else if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
        FalError::Transient(format!("{status}: {message}"))
    } else {
        FalError::Rejected { status: status.as_u16(), message }
    }
}

/// Errors never carry the request (whose headers hold the key), only what went wrong.
fn transport(error: reqwest::Error) -> FalError {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else {
        "transport error"
    };
    FalError::Transient(format!("{kind}: {}", error.without_url()))
}

fn too_large(max: u64) -> FalError {
    FalError::Rejected { status: 413, message: format!("result file larger than {max} bytes") }
}
