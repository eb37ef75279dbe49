//! Webhooks out: a team's endpoints (create, change, enable/disable, rotate the secret,
//! delete), redelivery and test events — the use cases both doors call — and the ports
//! the sender works through. The sender itself is [`sender`].
//!
//! **Secrets.** An endpoint's signing secret is never stored: it is
//! `HMAC-SHA256(webhook key, endpoint id, salt)`, where the salt (random, not secret) is
//! recorded on the endpoint's events and the webhook key is Kiln's own
//! (`infrastructure::secrets`, or configuration). The secret is shown once, when it is
//! made; Kiln can derive it again to sign, and nothing in the database or the log reveals it.

pub mod sender;

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use domain::webhooks::{
    AddressPolicy, DisabledReason, Subscription, WebhookCommand, WebhookEndpoint, WebhookError, WebhookRequest, WebhookUrl,
};
use domain::{TeamId, WebhookEndpointId};
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde_json::Value;
use sha2::Sha256;

use crate::aggregate_store::{AggregateStore, CommandError};
use crate::clock::Clock;

pub type WebhookCommandError = CommandError<WebhookError>;

/// Every secret starts with this (the Standard Webhooks convention).
pub const SECRET_PREFIX: &str = "whsec_";

/// Derives endpoints' signing secrets from Kiln's webhook key.
#[derive(Clone)]
pub struct WebhookSecrets {
    key: Arc<Vec<u8>>,
}

impl std::fmt::Debug for WebhookSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecrets(…)")
    }
}

impl WebhookSecrets {
    pub fn new(key: Vec<u8>) -> Self {
        Self { key: Arc::new(key) }
    }

    /// The secret's 32 bytes, which sign (never logged).
    pub fn bytes(&self, endpoint: WebhookEndpointId, salt: &str) -> Vec<u8> {
        // HMAC takes a key of any length.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC accepts any key length");
        mac.update(b"kiln webhook secret\0");
        mac.update(endpoint.to_string().as_bytes());
        mac.update(b"\0");
        mac.update(salt.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// The secret as its owner sees it: `whsec_` + base64.
    pub fn secret(&self, endpoint: WebhookEndpointId, salt: &str) -> String {
        format!("{SECRET_PREFIX}{}", base64::engine::general_purpose::STANDARD.encode(self.bytes(endpoint, salt)))
    }
}

fn new_salt() -> String {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// A delivery the sender holds: what to send, and the endpoint's state now.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    /// The `webhook-id` of every attempt.
    pub delivery_id: String,
    pub endpoint_id: WebhookEndpointId,
    pub team_id: TeamId,
    pub url: String,
    pub event_type: String,
    pub payload: String,
    /// Attempts made before this one.
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
    pub secret_salt: String,
    /// The salt of the secret before the last rotation, while it is still sent.
    pub previous_salt: Option<String>,
    pub previous_until: Option<DateTime<Utc>>,
}

/// What one attempt came to.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub delivery_id: String,
    pub endpoint_id: WebhookEndpointId,
    /// From 1.
    pub attempt: u32,
    pub started_at: DateTime<Utc>,
    pub status_code: Option<u16>,
    pub latency_ms: i64,
    pub excerpt: String,
    pub succeeded: bool,
    /// When to try again; `None` after a success or the last attempt.
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// A delivery made by Kiln itself (a test event), not derived from the log.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub delivery_id: String,
    pub endpoint_id: WebhookEndpointId,
    pub team_id: TeamId,
    pub event_type: String,
    pub payload: String,
    pub now: DateTime<Utc>,
}

pub type WebhookStoreError = Box<dyn std::error::Error + Send + Sync>;

/// The deliveries table (SQL in `infrastructure::webhooks`).
#[async_trait]
pub trait WebhookDeliveries: Send + Sync {
    /// Claims up to `limit` due deliveries of enabled endpoints until `now + lease`,
    /// each by one claimer across processes; a claim that lapsed (a killed sender) is
    /// claimed again.
    async fn claim(&self, worker: &str, now: DateTime<Utc>, lease: Duration, limit: i64) -> Result<Vec<ClaimedDelivery>, WebhookStoreError>;
    /// Records an attempt and its outcome; returns since when every attempt to the
    /// endpoint failed (`None` if this one succeeded).
    async fn record(&self, attempt: &AttemptRecord) -> Result<Option<DateTime<Utc>>, WebhookStoreError>;
    /// Makes the team's delivery due again now (same `webhook-id`); false if unknown.
    async fn redeliver(&self, team: TeamId, delivery_id: &str, now: DateTime<Utc>) -> Result<bool, WebhookStoreError>;
    async fn enqueue(&self, delivery: NewDelivery) -> Result<(), WebhookStoreError>;
}

/// What a door asks to create or change.
#[derive(Debug, Clone, Default)]
pub struct EndpointInput {
    pub url: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub credits_low_threshold: Option<i64>,
}

/// The endpoint use cases; the URL rule and the subscription rule are the domain's.
#[derive(Clone)]
pub struct WebhookService {
    aggregates: AggregateStore,
    clock: Arc<dyn Clock>,
    secrets: WebhookSecrets,
    policy: AddressPolicy,
    /// How long the previous secret is still sent after a rotation.
    overlap: Duration,
    deliveries: Arc<dyn WebhookDeliveries>,
}

impl WebhookService {
    pub fn new(
        aggregates: AggregateStore,
        clock: Arc<dyn Clock>,
        secrets: WebhookSecrets,
        policy: AddressPolicy,
        overlap: Duration,
        deliveries: Arc<dyn WebhookDeliveries>,
    ) -> Self {
        Self { aggregates, clock, secrets, policy, overlap, deliveries }
    }

    pub fn policy(&self) -> AddressPolicy {
        self.policy
    }

    pub fn secrets(&self) -> &WebhookSecrets {
        &self.secrets
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    fn url(&self, text: &str) -> Result<WebhookUrl, WebhookCommandError> {
        WebhookUrl::parse(text, self.policy).map_err(|e| CommandError::Rejected(WebhookError::InvalidUrl(e)))
    }

    async fn run(&self, endpoint_id: WebhookEndpointId, command: WebhookCommand, metadata: &Value) -> Result<(), WebhookCommandError> {
        let request = WebhookRequest { endpoint_id, command };
        self.aggregates.execute::<WebhookEndpoint>(&endpoint_id.to_string(), request, &(), metadata).await?;
        Ok(())
    }

    /// Loads the endpoint if `team` owns it; another team's endpoint is "not found".
    async fn owned(&self, team: TeamId, endpoint_id: WebhookEndpointId) -> Result<WebhookEndpoint, WebhookCommandError> {
        let loaded = self.aggregates.load::<WebhookEndpoint>(&endpoint_id.to_string()).await?;
        if loaded.aggregate.owned_by(team) {
            Ok(loaded.aggregate)
        } else {
            Err(CommandError::Rejected(WebhookError::NotFound))
        }
    }

    /// Creates an endpoint; returns its id and its secret (shown this once).
    pub async fn create(&self, team: TeamId, input: EndpointInput, metadata: &Value) -> Result<(WebhookEndpointId, String), WebhookCommandError> {
        let url = self.url(input.url.as_deref().unwrap_or_default())?;
        let subscription = Subscription::parse(&input.event_types.unwrap_or_default(), input.credits_low_threshold)
            .map_err(CommandError::Rejected)?;
        let endpoint_id = WebhookEndpointId::new(uuid::Uuid::now_v7());
        let secret_salt = new_salt();
        let secret = self.secrets.secret(endpoint_id, &secret_salt);
        let command = WebhookCommand::Create { team_id: team, url, subscription, secret_salt, now: self.clock.now() };
        self.run(endpoint_id, command, metadata).await?;
        Ok((endpoint_id, secret))
    }

    /// Changes the URL and/or the subscription (event types with their threshold).
    pub async fn update(&self, team: TeamId, endpoint_id: WebhookEndpointId, input: EndpointInput, metadata: &Value) -> Result<(), WebhookCommandError> {
        let current = self.owned(team, endpoint_id).await?;
        let url = input.url.as_deref().map(|u| self.url(u)).transpose()?;
        let subscription = match (input.event_types, current.subscription) {
            (Some(types), _) => Some(Subscription::parse(&types, input.credits_low_threshold)),
            (None, Some(now)) if input.credits_low_threshold.is_some() => {
                Some(Subscription::new(now.event_types, input.credits_low_threshold))
            }
            _ => None,
        }
        .transpose()
        .map_err(CommandError::Rejected)?;
        self.run(endpoint_id, WebhookCommand::Update { url, subscription, now: self.clock.now() }, metadata).await
    }

    pub async fn set_enabled(&self, team: TeamId, endpoint_id: WebhookEndpointId, enabled: bool, metadata: &Value) -> Result<(), WebhookCommandError> {
        self.owned(team, endpoint_id).await?;
        let now = self.clock.now();
        let command = if enabled { WebhookCommand::Enable { now } } else { WebhookCommand::Disable { reason: DisabledReason::Manual, now } };
        self.run(endpoint_id, command, metadata).await
    }

    /// A new secret (returned, shown once); the previous one is still sent beside it
    /// for the overlap, so receivers can switch without losing a delivery.
    pub async fn rotate(&self, team: TeamId, endpoint_id: WebhookEndpointId, metadata: &Value) -> Result<String, WebhookCommandError> {
        self.owned(team, endpoint_id).await?;
        let now = self.clock.now();
        let secret_salt = new_salt();
        let secret = self.secrets.secret(endpoint_id, &secret_salt);
        self.run(endpoint_id, WebhookCommand::RotateSecret { secret_salt, previous_until: now + self.overlap, now }, metadata).await?;
        Ok(secret)
    }

    pub async fn delete(&self, team: TeamId, endpoint_id: WebhookEndpointId, metadata: &Value) -> Result<(), WebhookCommandError> {
        self.owned(team, endpoint_id).await?;
        self.run(endpoint_id, WebhookCommand::Delete { now: self.clock.now() }, metadata).await
    }

    /// The sender's decision: an endpoint failing for too long stops receiving.
    pub async fn disable_failing(&self, endpoint_id: WebhookEndpointId) -> Result<(), WebhookCommandError> {
        let command = WebhookCommand::Disable { reason: DisabledReason::Failing, now: self.clock.now() };
        self.run(endpoint_id, command, &serde_json::json!({ "actor": "webhook-sender" })).await
    }

    /// Sends a delivery again, with the same `webhook-id`.
    pub async fn redeliver(&self, team: TeamId, delivery_id: &str) -> Result<(), WebhookCommandError> {
        match self.deliveries.redeliver(team, delivery_id, self.clock.now()).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(CommandError::Rejected(WebhookError::NotFound)),
            Err(error) => Err(CommandError::Store(crate::event_store::EventStoreError::Database(error.to_string()))),
        }
    }

    /// Queues a `webhook.test` delivery to the endpoint; returns its `webhook-id`.
    pub async fn send_test(&self, team: TeamId, endpoint_id: WebhookEndpointId) -> Result<String, WebhookCommandError> {
        self.owned(team, endpoint_id).await?;
        let now = self.clock.now();
        let delivery_id = format!("msg_{}", uuid::Uuid::now_v7().simple());
        let payload = serde_json::json!({
            "type": TEST_EVENT_TYPE,
            "timestamp": now,
            "data": { "endpoint_id": endpoint_id, "team_id": team, "message": "A test event from Kiln." },
        });
        let delivery = NewDelivery {
            delivery_id: delivery_id.clone(),
            endpoint_id,
            team_id: team,
            event_type: TEST_EVENT_TYPE.to_string(),
            payload: payload.to_string(),
            now,
        };
        self.deliveries
            .enqueue(delivery)
            .await
            .map_err(|e| CommandError::Store(crate::event_store::EventStoreError::Database(e.to_string())))?;
        Ok(delivery_id)
    }
}

/// The type of the events "send a test event" makes.
pub const TEST_EVENT_TYPE: &str = "webhook.test";

/// One HTTP request of an attempt, to the address already resolved and checked.
#[derive(Debug, Clone)]
pub struct OutgoingRequest {
    pub url: String,
    pub host: String,
    pub address: SocketAddr,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

/// What the endpoint answered (the body cut to its excerpt).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub excerpt: String,
}

/// Resolving and sending (reqwest in `infrastructure::webhooks`).
#[async_trait]
pub trait WebhookTransport: Send + Sync {
    async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String>;
    /// Sends `request` to its `address`, following no redirect, within the configured
    /// time, reading a bounded part of the answer.
    async fn post(&self, request: OutgoingRequest) -> Result<Answer, String>;
}
