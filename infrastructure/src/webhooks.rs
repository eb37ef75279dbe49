//! Webhooks out, the adapters: the deliveries table (`WebhookDeliveries` in SQL: claims
//! with `FOR UPDATE SKIP LOCKED` on PostgreSQL, SQLite's single writer otherwise), the
//! HTTP transport (reqwest connecting to the address the sender checked, no redirects,
//! bounded time and answer), and Kiln's webhook key.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration as StdDuration;

use application::webhooks::{Answer, AttemptRecord, ClaimedDelivery, NewDelivery, OutgoingRequest, WebhookDeliveries, WebhookStoreError, WebhookTransport};
use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use domain::TeamId;
use secrecy::ExposeSecret;

use crate::config::Settings;
use crate::db::Database;
use crate::event_store::Tx;
use crate::{db_execute, tx_execute, tx_fetch_optional};

/// File in the data directory holding the generated webhook key.
pub const KEY_FILE: &str = ".webhook-signing-key";
const KEY_BYTES_MIN: usize = 32;

/// The key endpoints' secrets derive from: configured, or generated once into the data
/// directory (0600) and shared by every process on it.
pub fn signing_key(settings: &Settings) -> std::io::Result<Vec<u8>> {
    if let Some(key) = &settings.webhooks.signing_key {
        let bytes = key.expose_secret().as_bytes().to_vec();
        if bytes.len() < KEY_BYTES_MIN {
            return Err(std::io::Error::other(format!("webhooks.signing_key must be at least {KEY_BYTES_MIN} bytes")));
        }
        return Ok(bytes);
    }
    let path = Path::new(&settings.storage.local_root).join(KEY_FILE);
    Ok(crate::secrets::load_or_create(&path, KEY_BYTES_MIN, "webhook signing key")?.key)
}

#[derive(Clone)]
pub struct SqlWebhookDeliveries(pub Database);

type ClaimRow = (String, String, String, String, String, String, i32, DateTime<Utc>, String, Option<String>, Option<DateTime<Utc>>);

const CLAIM_POSTGRES: &str = "WITH due AS ( \
       SELECT d.delivery_id FROM webhook_deliveries d JOIN webhook_endpoints e ON e.endpoint_id = d.endpoint_id \
       WHERE d.state = 'pending' AND d.next_attempt_at <= $1 AND (d.claimed_until IS NULL OR d.claimed_until < $1) \
         AND e.enabled AND e.deleted_at IS NULL \
       ORDER BY d.next_attempt_at, d.position LIMIT $2 FOR UPDATE OF d SKIP LOCKED) \
     UPDATE webhook_deliveries d SET claimed_until = $3, claimed_by = $4 FROM due WHERE d.delivery_id = due.delivery_id";

const CLAIM_SQLITE: &str = "UPDATE webhook_deliveries SET claimed_until = $3, claimed_by = $4 WHERE delivery_id IN ( \
       SELECT d.delivery_id FROM webhook_deliveries d JOIN webhook_endpoints e ON e.endpoint_id = d.endpoint_id \
       WHERE d.state = 'pending' AND d.next_attempt_at <= $1 AND (d.claimed_until IS NULL OR d.claimed_until < $1) \
         AND e.enabled AND e.deleted_at IS NULL \
       ORDER BY d.next_attempt_at, d.position LIMIT $2)";

const CLAIMED: &str = "SELECT d.delivery_id, d.endpoint_id, d.team_id, e.url, d.event_type, d.payload, d.attempts, d.created_at, \
       e.secret_salt, e.previous_salt, e.previous_until \
     FROM webhook_deliveries d JOIN webhook_endpoints e ON e.endpoint_id = d.endpoint_id \
     WHERE d.claimed_by = $1 AND d.claimed_until = $2 AND d.state = 'pending' ORDER BY d.next_attempt_at, d.position";

fn parse_claimed(row: ClaimRow) -> Result<ClaimedDelivery, WebhookStoreError> {
    let (delivery_id, endpoint_id, team_id, url, event_type, payload, attempts, created_at, secret_salt, previous_salt, previous_until) = row;
    Ok(ClaimedDelivery {
        delivery_id,
        endpoint_id: endpoint_id.parse()?,
        team_id: team_id.parse()?,
        url,
        event_type,
        payload,
        attempts: attempts.max(0) as u32,
        created_at,
        secret_salt,
        previous_salt,
        previous_until,
    })
}

#[async_trait]
impl WebhookDeliveries for SqlWebhookDeliveries {
    async fn claim(&self, worker: &str, now: DateTime<Utc>, lease: Duration, limit: i64) -> Result<Vec<ClaimedDelivery>, WebhookStoreError> {
        let until = now + lease;
        let rows: Vec<ClaimRow> = match &self.0 {
            Database::Postgres(pool) => {
                sqlx::query(CLAIM_POSTGRES).bind(now).bind(limit).bind(until).bind(worker).execute(pool).await?;
                sqlx::query_as(CLAIMED).bind(worker).bind(until).fetch_all(pool).await?
            }
            Database::Sqlite { write, .. } => {
                sqlx::query(CLAIM_SQLITE).bind(now).bind(limit).bind(until).bind(worker).execute(write).await?;
                sqlx::query_as(CLAIMED).bind(worker).bind(until).fetch_all(write).await?
            }
        };
        rows.into_iter().map(parse_claimed).collect()
    }

    async fn record(&self, attempt: &AttemptRecord) -> Result<Option<DateTime<Utc>>, WebhookStoreError> {
        match &self.0 {
            Database::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let failing = record_in(&mut Tx::Postgres(&mut tx), attempt).await?;
                tx.commit().await?;
                Ok(failing)
            }
            Database::Sqlite { write, .. } => {
                let mut tx = write.begin_with("BEGIN IMMEDIATE").await?;
                let failing = record_in(&mut Tx::Sqlite(&mut tx), attempt).await?;
                tx.commit().await?;
                Ok(failing)
            }
        }
    }

    async fn redeliver(&self, team: TeamId, delivery_id: &str, now: DateTime<Utc>) -> Result<bool, WebhookStoreError> {
        let changed = db_execute!(
            &self.0,
            "UPDATE webhook_deliveries SET state = 'pending', next_attempt_at = $3, claimed_until = NULL, claimed_by = NULL \
             WHERE delivery_id = $1 AND team_id = $2",
            delivery_id,
            team.to_string(),
            now
        )?;
        Ok(changed > 0)
    }

    async fn enqueue(&self, delivery: NewDelivery) -> Result<(), WebhookStoreError> {
        db_execute!(
            &self.0,
            "INSERT INTO webhook_deliveries (delivery_id, endpoint_id, team_id, event_type, payload, source, created_at, next_attempt_at, position) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7, 0)",
            &delivery.delivery_id,
            delivery.endpoint_id.to_string(),
            delivery.team_id.to_string(),
            &delivery.event_type,
            &delivery.payload,
            format!("test/{}", delivery.delivery_id),
            delivery.now
        )?;
        Ok(())
    }
}

/// The attempt, the delivery's new state and the endpoint's health, in one transaction.
async fn record_in(tx: &mut Tx<'_>, a: &AttemptRecord) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    let endpoint = a.endpoint_id.to_string();
    let status = a.status_code.map(i32::from);
    tx_execute!(
        &mut *tx,
        "INSERT INTO webhook_attempts (delivery_id, attempt, endpoint_id, started_at, status_code, latency_ms, excerpt, succeeded) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (delivery_id, attempt) DO NOTHING",
        &a.delivery_id,
        a.attempt as i32,
        &endpoint,
        a.started_at,
        status,
        a.latency_ms,
        &a.excerpt,
        a.succeeded
    )?;
    let state = match (a.succeeded, a.next_attempt_at) {
        (true, _) => "delivered",
        (false, Some(_)) => "pending",
        (false, None) => "failed",
    };
    let error = (!a.succeeded).then(|| a.excerpt.clone());
    let delivered_at = a.succeeded.then_some(a.started_at);
    tx_execute!(
        &mut *tx,
        "UPDATE webhook_deliveries SET state = $2, attempts = $3, next_attempt_at = COALESCE($4, next_attempt_at), \
         claimed_until = NULL, claimed_by = NULL, last_status = $5, last_error = $6, delivered_at = COALESCE($7, delivered_at) \
         WHERE delivery_id = $1",
        &a.delivery_id,
        state,
        a.attempt as i32,
        a.next_attempt_at,
        status,
        error,
        delivered_at
    )?;
    if a.succeeded {
        tx_execute!(
            &mut *tx,
            "INSERT INTO webhook_endpoint_health (endpoint_id, failing_since, last_success_at) VALUES ($1, NULL, $2) \
             ON CONFLICT (endpoint_id) DO UPDATE SET failing_since = NULL, last_success_at = $2",
            &endpoint,
            a.started_at
        )?;
        return Ok(None);
    }
    let row = tx_fetch_optional!(
        &mut *tx,
        (Option<DateTime<Utc>>,),
        "INSERT INTO webhook_endpoint_health (endpoint_id, failing_since, last_success_at) VALUES ($1, $2, NULL) \
         ON CONFLICT (endpoint_id) DO UPDATE SET failing_since = COALESCE(webhook_endpoint_health.failing_since, $2) \
         RETURNING failing_since",
        &endpoint,
        a.started_at
    )?;
    Ok(row.and_then(|(since,)| since))
}

/// reqwest, one client per attempt: it is bound to the one address that was checked.
#[derive(Debug, Clone)]
pub struct HttpTransport {
    pub timeout: StdDuration,
    pub answer_bytes_max: usize,
}

#[async_trait]
impl WebhookTransport for HttpTransport {
    async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        let found = tokio::time::timeout(self.timeout, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| "name resolution timed out".to_string())?
            .map_err(|e| e.to_string())?;
        Ok(found.collect())
    }

    async fn post(&self, request: OutgoingRequest) -> Result<Answer, String> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(self.timeout)
            .connect_timeout(self.timeout)
            .resolve(&request.host, request.address)
            .user_agent(concat!("Kiln-Webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("http client: {e}"))?;
        let mut builder = client.post(&request.url).body(request.body);
        for (name, value) in request.headers {
            builder = builder.header(name, value);
        }
        let mut response = builder.send().await.map_err(describe)?;
        let status = response.status().as_u16();
        let mut body = Vec::new();
        while body.len() < self.answer_bytes_max {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk[..chunk.len().min(self.answer_bytes_max - body.len())]),
                Ok(None) => break,
                // The status is the answer; a body cut short is only a shorter excerpt.
                Err(_) => break,
            }
        }
        let excerpt = String::from_utf8_lossy(&body).chars().take(application::webhooks::sender::EXCERPT_CHARS_MAX).collect();
        Ok(Answer { status, excerpt })
    }
}

fn describe(error: reqwest::Error) -> String {
    if error.is_timeout() {
        "timed out".to_string()
    } else if error.is_connect() {
        "connection failed".to_string()
    } else {
        format!("request failed: {error}")
    }
}
