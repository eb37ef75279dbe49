//! The webhook sender, run by `kiln serve` and `kiln worker`: claims due deliveries
//! (across processes: a claim is a lease), and for each attempt resolves the endpoint's
//! host once, checks every address against the domain's address rule, connects to that
//! address, signs with the Standard Webhooks crate (both secrets during a rotation's
//! overlap), and records the outcome. A failure is retried with exponential backoff and
//! jitter (backon) for the retry window (about three days); an endpoint whose every
//! attempt failed for `disable_after` is disabled.

use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use backon::BackoffBuilder;
use chrono::{DateTime, Duration, Utc};
use domain::webhooks::{AddressPolicy, WebhookUrl};
use standardwebhooks::Webhook;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use super::{AttemptRecord, ClaimedDelivery, OutgoingRequest, WebhookDeliveries, WebhookSecrets, WebhookService, WebhookTransport};
use crate::clock::Clock;

#[derive(Debug, Clone)]
pub struct SenderConfig {
    pub worker_id: String,
    /// Deliveries claimed per turn (and sent concurrently).
    pub batch: i64,
    /// How long a claim holds before another sender may take the delivery.
    pub lease: Duration,
    pub poll_interval: StdDuration,
    /// First retry delay; each next one is `backoff_factor` times longer, up to
    /// `backoff_max`, each with up to as much again of jitter.
    pub backoff_min: StdDuration,
    pub backoff_factor: f32,
    pub backoff_max: StdDuration,
    /// A delivery is retried while its next attempt falls within this of its creation.
    pub retry_window: Duration,
    /// An endpoint whose attempts all failed for this long is disabled.
    pub disable_after: Duration,
    pub policy: AddressPolicy,
}

impl SenderConfig {
    pub fn new(worker_id: String, policy: AddressPolicy) -> Self {
        Self {
            worker_id,
            batch: 32,
            lease: Duration::seconds(120),
            poll_interval: StdDuration::from_millis(500),
            backoff_min: StdDuration::from_secs(5),
            backoff_factor: 3.0,
            backoff_max: StdDuration::from_secs(8 * 3600),
            retry_window: Duration::days(3),
            disable_after: Duration::days(5),
            policy,
        }
    }

    /// The delay before attempt `attempt + 1`, after `attempt` failed ones (from 1).
    pub fn backoff(&self, attempt: u32) -> StdDuration {
        let steps = attempt.max(1) as usize;
        let mut delays = backon::ExponentialBuilder::default()
            .with_min_delay(self.backoff_min)
            .with_factor(self.backoff_factor)
            .with_max_delay(self.backoff_max)
            .with_jitter()
            .with_max_times(steps)
            .build();
        delays.nth(steps - 1).unwrap_or(self.backoff_max)
    }
}

/// Bytes of the answer kept in the delivery log.
pub const EXCERPT_CHARS_MAX: usize = 256;

#[derive(Clone)]
pub struct WebhookSender {
    deliveries: Arc<dyn WebhookDeliveries>,
    transport: Arc<dyn WebhookTransport>,
    service: WebhookService,
    clock: Arc<dyn Clock>,
    config: Arc<SenderConfig>,
    wake: Arc<Notify>,
}

impl WebhookSender {
    pub fn new(
        deliveries: Arc<dyn WebhookDeliveries>,
        transport: Arc<dyn WebhookTransport>,
        service: WebhookService,
        clock: Arc<dyn Clock>,
        config: SenderConfig,
    ) -> Self {
        Self { deliveries, transport, service, clock, config: Arc::new(config), wake: Arc::new(Notify::new()) }
    }

    /// Wakes the loop before its poll interval (a test moved the clock, a redelivery).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Runs until `stop` flips to true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        loop {
            let sent = match self.turn().await {
                Ok(sent) => sent,
                Err(error) => {
                    tracing::warn!(%error, "webhook sender turn failed; retrying");
                    0
                }
            };
            if *stop.borrow() {
                return;
            }
            if sent < self.config.batch as usize {
                tokio::select! {
                    _ = stop.changed() => {}
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(self.config.poll_interval) => {}
                }
            }
            if *stop.borrow() {
                return;
            }
        }
    }

    /// One turn: claims a batch of due deliveries and attempts them all. Returns how many.
    pub async fn turn(&self) -> Result<usize, super::WebhookStoreError> {
        let now = self.clock.now();
        let claimed = self.deliveries.claim(&self.config.worker_id, now, self.config.lease, self.config.batch).await?;
        let count = claimed.len();
        let mut attempts = JoinSet::new();
        for delivery in claimed {
            let sender = self.clone();
            attempts.spawn(async move { sender.attempt(delivery).await });
        }
        while let Some(done) = attempts.join_next().await {
            if let Ok(Err(error)) = done {
                tracing::warn!(%error, "webhook attempt could not be recorded; its claim will lapse and it is tried again");
            }
        }
        Ok(count)
    }

    async fn attempt(&self, delivery: ClaimedDelivery) -> Result<(), super::WebhookStoreError> {
        let now = self.clock.now();
        let started = Instant::now();
        let outcome = self.send(&delivery, now).await;
        let latency = started.elapsed();
        let attempt = delivery.attempts + 1;
        let (status_code, excerpt, succeeded) = match &outcome {
            Ok(answer) => (Some(answer.status), answer.excerpt.clone(), (200..300).contains(&answer.status)),
            Err(reason) => (None, cut(reason), false),
        };
        let next_attempt_at = (!succeeded)
            .then(|| now + Duration::from_std(self.config.backoff(attempt)).unwrap_or(Duration::hours(8)))
            .filter(|next| *next <= delivery.created_at + self.config.retry_window);
        let outcome_label = match (&outcome, succeeded) {
            (_, true) => "delivered",
            (Err(_), _) => "error",
            (Ok(_), false) => "rejected",
        };
        metrics::counter!("kiln_webhook_attempts_total", "outcome" => outcome_label).increment(1);
        metrics::histogram!("kiln_webhook_attempt_seconds").record(latency.as_secs_f64());
        if !succeeded && next_attempt_at.is_none() {
            metrics::counter!("kiln_webhook_deliveries_failed_total").increment(1);
        }
        tracing::info!(delivery_id = %delivery.delivery_id, endpoint_id = %delivery.endpoint_id, team_id = %delivery.team_id,
            attempt, status = ?status_code, succeeded, "webhook attempt");
        let record = AttemptRecord {
            delivery_id: delivery.delivery_id.clone(),
            endpoint_id: delivery.endpoint_id,
            attempt,
            started_at: now,
            status_code,
            latency_ms: latency.as_millis() as i64,
            excerpt,
            succeeded,
            next_attempt_at,
        };
        let failing_since = self.deliveries.record(&record).await?;
        if let Some(since) = failing_since.filter(|since| now - *since >= self.config.disable_after) {
            tracing::warn!(endpoint_id = %delivery.endpoint_id, %since, "webhook endpoint failing for too long: disabled");
            if let Err(error) = self.service.disable_failing(delivery.endpoint_id).await {
                tracing::warn!(%error, endpoint_id = %delivery.endpoint_id, "could not disable a failing webhook endpoint");
            }
        }
        Ok(())
    }

    /// Resolves, checks, signs and sends; `Err` says why nothing was answered.
    async fn send(&self, delivery: &ClaimedDelivery, now: DateTime<Utc>) -> Result<super::Answer, String> {
        let url = WebhookUrl::parse(&delivery.url, self.config.policy).map_err(|e| format!("url {e}"))?;
        let host = url.host();
        let addresses = self.transport.resolve(&host, url.port()).await.map_err(|e| format!("cannot resolve {host}: {e}"))?;
        // Every address the name has must be allowed: the one connected to is the first.
        for address in &addresses {
            self.config.policy.check_ip(address.ip()).map_err(|e| format!("refused: {host} {e}"))?;
        }
        let address = *addresses.first().ok_or_else(|| format!("{host} has no address"))?;
        let signature = signature(self.service.secrets(), delivery, now).map_err(|e| format!("cannot sign: {e}"))?;
        let headers = vec![
            ("webhook-id", delivery.delivery_id.clone()),
            ("webhook-timestamp", now.timestamp().to_string()),
            ("webhook-signature", signature),
            ("content-type", "application/json".to_string()),
        ];
        self.transport
            .post(OutgoingRequest { url: url.as_str().to_string(), host, address, headers, body: delivery.payload.clone() })
            .await
    }
}

/// `v1,<sig>` with the current secret, and with the previous one too during a
/// rotation's overlap (space-separated, as Standard Webhooks specifies).
pub fn signature(secrets: &WebhookSecrets, delivery: &ClaimedDelivery, now: DateTime<Utc>) -> Result<String, standardwebhooks::WebhookError> {
    let sign = |salt: &str| {
        Webhook::from_bytes(secrets.bytes(delivery.endpoint_id, salt))?.sign(&delivery.delivery_id, now.timestamp(), delivery.payload.as_bytes())
    };
    let mut signatures = vec![sign(&delivery.secret_salt)?];
    if let (Some(previous), Some(until)) = (&delivery.previous_salt, delivery.previous_until) {
        if now < until {
            signatures.push(sign(previous)?);
        }
    }
    Ok(signatures.join(" "))
}

fn cut(text: &str) -> String {
    text.chars().take(EXCERPT_CHARS_MAX).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_bounded() {
        let config = SenderConfig::new("t".into(), AddressPolicy::default());
        for attempt in 1..=30 {
            let base = (5.0 * 3f64.powi(attempt as i32 - 1)).min(8.0 * 3600.0);
            let delay = config.backoff(attempt).as_secs_f64();
            assert!(delay >= base * 0.999 && delay <= base * 2.001, "attempt {attempt}: {delay} vs {base}");
        }
    }

    #[test]
    fn retries_span_about_three_days() {
        let config = SenderConfig::new("t".into(), AddressPolicy::default());
        let (mut at, mut attempts) = (Duration::zero(), 1);
        while let Some(next) = Some(at + Duration::from_std(config.backoff(attempts)).unwrap()).filter(|n| *n <= config.retry_window) {
            at = next;
            attempts += 1;
        }
        assert!(at > Duration::days(2) && at <= Duration::days(3), "last attempt at {at}");
        assert!((8..=20).contains(&attempts), "{attempts} attempts");
    }
}
