//! Webhooks out, the read side of the log:
//!
//! - [`WebhookEndpoints`] (inline): the `webhook_endpoints` read model of the
//!   WebhookEndpoint streams;
//! - [`WebhookDeliveriesProjection`] (async, run by the projector after the credit
//!   history): for each recorded event that notifies (a job's end, a model ready or
//!   failed, credits granted or falling below a threshold, a subscription expired), one
//!   `webhook_deliveries` row per enabled endpoint of the team subscribed to it, written in
//!   the projector's transaction with its checkpoint — so a crash anywhere loses no
//!   delivery and makes none twice (the row's key is derived from the event and the
//!   endpoint). That key is the `webhook-id` of every attempt. The rows are then the
//!   senders' work queue: operational state, not rebuilt;
//! - [`WebhookMessage`]: the body of every delivery (`type`, `timestamp`, `data`), whose
//!   job notifications carry the job event stream's [`PublicJobEvent`].

use std::collections::HashMap;

use application::event_store::StoredEvent;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::models::ModelEvent;
use domain::webhooks::{EventType, WebhookEndpoint, WebhookEvent};
use domain::{TeamCredits, TeamCreditsEvent};
use infrastructure::event_store::{InlineProjection, ProjectionError, Tx};
use infrastructure::{tx_execute, tx_fetch_by_keys, tx_fetch_optional};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::public_events::PublicJobEvent;
use crate::{credit_fold, decode};

pub const ENDPOINTS_NAME: &str = "webhook_endpoints";
pub const ENDPOINTS_TABLES: &[&str] = &["webhook_endpoints"];
pub const DELIVERIES_NAME: &str = "webhook_deliveries";

/// Namespace of delivery ids (UUIDv5 of endpoint and event).
const DELIVERY_NAMESPACE: Uuid = Uuid::from_u128(0x6b69_6c6e_2d77_6562_686f_6f6b_2d69_6400);

/// The body of every webhook Kiln sends.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookMessage {
    /// `job.completed`, `job.failed`, `job.cancelled`, `model.ready`, `model.failed`,
    /// `credits.granted`, `credits.low`, `subscription.expired` (or `webhook.test`).
    #[serde(rename = "type")]
    pub event_type: String,
    /// When the event happened.
    pub timestamp: DateTime<Utc>,
    pub data: WebhookData,
}

/// What the event says; its shape follows `type`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(untagged)]
pub enum WebhookData {
    /// `job.*`: the job's final event, as its event stream sends it.
    Job(PublicJobEvent),
    /// `model.*`
    Model(ModelNotice),
    /// `credits.granted`
    CreditsGranted(CreditsGrantedNotice),
    /// `credits.low`
    CreditsLow(CreditsLowNotice),
    /// `subscription.expired`
    SubscriptionExpired(SubscriptionNotice),
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelNotice {
    pub model_id: String,
    /// The job that trained (or failed to train) it.
    pub job_id: String,
    /// The version now current (`model.ready`).
    pub version: Option<u32>,
    /// Why training failed (`model.failed`).
    pub reason: Option<String>,
    pub occurred_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CreditsGrantedNotice {
    pub team_id: String,
    pub grant_id: String,
    pub amount_credits: i64,
    /// `stripe`, `admin` or `plan`.
    pub source: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub occurred_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CreditsLowNotice {
    pub team_id: String,
    /// Available credits after the event.
    pub available_credits: i64,
    /// The endpoint's threshold, crossed downwards by the event.
    pub threshold_credits: i64,
    pub occurred_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SubscriptionNotice {
    pub team_id: String,
    /// The plan that expired.
    pub plan: String,
    pub occurred_at: DateTime<Utc>,
}

pub struct WebhookEndpoints;

#[async_trait]
impl InlineProjection for WebhookEndpoints {
    fn name(&self) -> &'static str {
        ENDPOINTS_NAME
    }

    async fn apply(&self, tx: &mut Tx<'_>, events: &[StoredEvent]) -> Result<(), ProjectionError> {
        for stored in events.iter().filter(|e| e.aggregate_type == <WebhookEndpoint as cqrs_es::Aggregate>::TYPE) {
            apply_endpoint(tx, decode::<WebhookEndpoint>(stored)?).await?;
        }
        Ok(())
    }
}

fn type_list(types: &[EventType]) -> String {
    types.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(",")
}

async fn apply_endpoint(tx: &mut Tx<'_>, event: WebhookEvent) -> Result<(), sqlx::Error> {
    match event {
        WebhookEvent::WebhookEndpointCreated { endpoint_id, team_id, url, subscription, secret_salt, occurred_at } => {
            tx_execute!(
                tx,
                "INSERT INTO webhook_endpoints (endpoint_id, team_id, url, event_types, credits_low_threshold, enabled, \
                 secret_salt, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
                endpoint_id.to_string(),
                team_id.to_string(),
                url,
                type_list(&subscription.event_types),
                subscription.credits_low_threshold,
                true,
                secret_salt,
                occurred_at
            )?;
        }
        WebhookEvent::WebhookEndpointUpdated { endpoint_id, url, subscription, occurred_at } => {
            tx_execute!(
                tx,
                "UPDATE webhook_endpoints SET url = $2, event_types = $3, credits_low_threshold = $4, updated_at = $5 WHERE endpoint_id = $1",
                endpoint_id.to_string(),
                url,
                type_list(&subscription.event_types),
                subscription.credits_low_threshold,
                occurred_at
            )?;
        }
        WebhookEvent::WebhookEndpointEnabled { endpoint_id, occurred_at } => {
            tx_execute!(
                tx,
                "UPDATE webhook_endpoints SET enabled = $2, disabled_reason = NULL, updated_at = $3 WHERE endpoint_id = $1",
                endpoint_id.to_string(),
                true,
                occurred_at
            )?;
        }
        WebhookEvent::WebhookEndpointDisabled { endpoint_id, reason, occurred_at } => {
            tx_execute!(
                tx,
                "UPDATE webhook_endpoints SET enabled = $2, disabled_reason = $3, updated_at = $4 WHERE endpoint_id = $1",
                endpoint_id.to_string(),
                false,
                reason.as_str(),
                occurred_at
            )?;
        }
        WebhookEvent::WebhookSecretRotated { endpoint_id, secret_salt, previous_salt, previous_until, occurred_at } => {
            tx_execute!(
                tx,
                "UPDATE webhook_endpoints SET secret_salt = $2, previous_salt = $3, previous_until = $4, updated_at = $5 WHERE endpoint_id = $1",
                endpoint_id.to_string(),
                secret_salt,
                previous_salt,
                previous_until,
                occurred_at
            )?;
        }
        WebhookEvent::WebhookEndpointDeleted { endpoint_id, occurred_at } => {
            tx_execute!(
                tx,
                "UPDATE webhook_endpoints SET enabled = $2, deleted_at = $3, updated_at = $3 WHERE endpoint_id = $1",
                endpoint_id.to_string(),
                false,
                occurred_at
            )?;
        }
    }
    Ok(())
}

/// Whose event it is, as the read models know it.
#[derive(Clone, Copy)]
enum Owner<'a> {
    Team(&'a str),
    Job(&'a str),
    Model(&'a str),
}

/// What a recorded event notifies: its owner and the message, or for a money event the
/// change of available credits (for `credits.low`). Pure.
enum Notice<'a> {
    Message(Owner<'a>, EventType, WebhookData, DateTime<Utc>),
    Spent { team: &'a str, available_change: i64, occurred_at: DateTime<Utc> },
}

impl<'a> Notice<'a> {
    fn owner(&self) -> Owner<'a> {
        match self {
            Notice::Message(owner, ..) => *owner,
            Notice::Spent { team, .. } => Owner::Team(team),
        }
    }
}

fn notice(stored: &StoredEvent) -> Result<Option<Notice<'_>>, ProjectionError> {
    let id = stored.aggregate_id.as_str();
    Ok(match stored.aggregate_type.as_str() {
        "GenerationJob" => {
            let Some(public) = PublicJobEvent::of(id, stored) else { return Ok(None) };
            let (event_type, at) = match &public {
                PublicJobEvent::Completed { occurred_at, .. } => (EventType::JobCompleted, *occurred_at),
                PublicJobEvent::Failed { occurred_at, .. } => (EventType::JobFailed, *occurred_at),
                PublicJobEvent::Cancelled { occurred_at, .. } => (EventType::JobCancelled, *occurred_at),
                _ => return Ok(None),
            };
            Some(Notice::Message(Owner::Job(id), event_type, WebhookData::Job(public), at))
        }
        "CustomModel" => {
            let model = |job_id: domain::JobId, version, reason, occurred_at| {
                WebhookData::Model(ModelNotice { model_id: id.to_string(), job_id: job_id.to_string(), version, reason, occurred_at })
            };
            match decode::<domain::models::CustomModel>(stored)? {
                ModelEvent::ModelTrained { job_id, version, occurred_at, .. } | ModelEvent::ModelRefined { job_id, version, occurred_at, .. } => {
                    Some(Notice::Message(Owner::Model(id), EventType::ModelReady, model(job_id, Some(version), None, occurred_at), occurred_at))
                }
                ModelEvent::ModelCreationFailed { job_id, reason, occurred_at }
                | ModelEvent::ModelRefinementFailed { job_id, reason, occurred_at } => {
                    Some(Notice::Message(Owner::Model(id), EventType::ModelFailed, model(job_id, None, Some(reason), occurred_at), occurred_at))
                }
                _ => None,
            }
        }
        "TeamCredits" => {
            let event = decode::<TeamCredits>(stored)?;
            match &event {
                TeamCreditsEvent::CreditsGranted { grant_id, amount, source, expires_at, occurred_at, .. } => {
                    let data = WebhookData::CreditsGranted(CreditsGrantedNotice {
                        team_id: id.to_string(),
                        grant_id: grant_id.to_string(),
                        amount_credits: amount.get(),
                        source: serde_json::to_value(source)?.as_str().unwrap_or_default().to_string(),
                        expires_at: *expires_at,
                        occurred_at: *occurred_at,
                    });
                    Some(Notice::Message(Owner::Team(id), EventType::CreditsGranted, data, *occurred_at))
                }
                TeamCreditsEvent::SubscriptionExpired { from, occurred_at, .. } => {
                    let data = WebhookData::SubscriptionExpired(SubscriptionNotice {
                        team_id: id.to_string(),
                        plan: from.as_str().to_string(),
                        occurred_at: *occurred_at,
                    });
                    Some(Notice::Message(Owner::Team(id), EventType::SubscriptionExpired, data, *occurred_at))
                }
                _ => {
                    let effect = credit_fold::effect(event);
                    (effect.entry.is_some() && effect.balance.available < 0)
                        .then_some(Notice::Spent { team: id, available_change: effect.balance.available, occurred_at: effect.occurred_at })
                }
            }
        }
        _ => None,
    })
}

/// An endpoint as the projection needs it.
#[derive(Clone)]
struct Subscriber {
    endpoint_id: String,
    event_types: String,
    threshold: Option<i64>,
    created_at: DateTime<Utc>,
}

impl Subscriber {
    fn wants(&self, event_type: EventType, at: DateTime<Utc>) -> bool {
        // An endpoint hears of what happens from its creation on.
        at >= self.created_at && self.event_types.split(',').any(|t| t == event_type.as_str())
    }
}

pub struct WebhookDeliveriesProjection;

#[async_trait]
impl InlineProjection for WebhookDeliveriesProjection {
    fn name(&self) -> &'static str {
        DELIVERIES_NAME
    }

    async fn apply(&self, tx: &mut Tx<'_>, events: &[StoredEvent]) -> Result<(), ProjectionError> {
        let mut notices: Vec<(&StoredEvent, Notice<'_>)> = Vec::new();
        for stored in events {
            if let Some(notice) = notice(stored)? {
                notices.push((stored, notice));
            }
        }
        if notices.is_empty() {
            return Ok(());
        }
        // Whose each notice is, and the teams' endpoints: a few reads for the whole batch,
        // not one per job and per team (the inline read models are always ahead of the
        // projector).
        let (mut jobs, mut models): (Vec<&str>, Vec<&str>) = (Vec::new(), Vec::new());
        for (_, notice) in &notices {
            match notice.owner() {
                Owner::Job(id) => jobs.push(id),
                Owner::Model(id) => models.push(id),
                Owner::Team(_) => {}
            }
        }
        let job_teams: HashMap<String, String> = tx_fetch_by_keys!(
            &mut *tx,
            (String, String),
            "SELECT job_id, team_id FROM jobs WHERE job_id = ANY($1::text[])",
            "SELECT job_id, team_id FROM jobs WHERE job_id = $1",
            &jobs
        )?
        .into_iter()
        .collect();
        let model_teams: HashMap<String, String> = tx_fetch_by_keys!(
            &mut *tx,
            (String, String),
            "SELECT model_id, team_id FROM custom_models WHERE model_id = ANY($1::text[])",
            "SELECT model_id, team_id FROM custom_models WHERE model_id = $1",
            &models
        )?
        .into_iter()
        .collect();
        let team_of = |owner: Owner<'_>| -> Option<String> {
            match owner {
                Owner::Team(team) => Some(team.to_string()),
                Owner::Job(id) => job_teams.get(id).cloned(),
                Owner::Model(id) => model_teams.get(id).cloned(),
            }
        };
        // Each notice with its team, once (a job or model without a row is skipped).
        let notices: Vec<(&StoredEvent, Notice<'_>, String)> = notices
            .into_iter()
            .filter_map(|(stored, notice)| {
                let team = team_of(notice.owner())?;
                Some((stored, notice, team))
            })
            .collect();
        let mut teams: Vec<&str> = notices.iter().map(|(_, _, team)| team.as_str()).collect();
        teams.sort_unstable();
        teams.dedup();
        let mut subscribers: HashMap<String, Vec<Subscriber>> = HashMap::new();
        let rows = tx_fetch_by_keys!(
            &mut *tx,
            (String, String, String, Option<i64>, DateTime<Utc>),
            "SELECT team_id, endpoint_id, event_types, credits_low_threshold, created_at FROM webhook_endpoints \
             WHERE team_id = ANY($1::text[]) AND enabled AND deleted_at IS NULL",
            "SELECT team_id, endpoint_id, event_types, credits_low_threshold, created_at FROM webhook_endpoints \
             WHERE team_id = $1 AND enabled AND deleted_at IS NULL",
            &teams
        )?;
        for (team, endpoint_id, event_types, threshold, created_at) in rows {
            subscribers.entry(team).or_default().push(Subscriber { endpoint_id, event_types, threshold, created_at });
        }
        for (stored, notice, team) in notices {
            let Some(endpoints) = subscribers.get(&team) else { continue };
            match notice {
                Notice::Message(_, event_type, data, at) => {
                    let message = WebhookMessage { event_type: event_type.as_str().to_string(), timestamp: at, data };
                    for endpoint in endpoints.iter().filter(|e| e.wants(event_type, at)) {
                        insert(tx, stored, endpoint, &team, &message).await?;
                    }
                }
                Notice::Spent { available_change, occurred_at, .. } => {
                    let low: Vec<&Subscriber> = endpoints.iter().filter(|e| e.wants(EventType::CreditsLow, occurred_at)).collect();
                    if low.is_empty() {
                        continue;
                    }
                    let after = available_after(tx, &team, stored.sequence).await?;
                    let before = after - available_change;
                    for endpoint in low {
                        let threshold = endpoint.threshold.unwrap_or(0);
                        if before >= threshold && after < threshold {
                            let data = WebhookData::CreditsLow(CreditsLowNotice {
                                team_id: team.clone(),
                                available_credits: after,
                                threshold_credits: threshold,
                                occurred_at,
                            });
                            let message = WebhookMessage { event_type: EventType::CreditsLow.as_str().to_string(), timestamp: occurred_at, data };
                            insert(tx, stored, endpoint, &team, &message).await?;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// The team's available credits after the event at `sequence`, from the credit history
/// (which the projector runs first). Missing means the history is behind (another
/// process's projector): the batch fails and is tried again.
async fn available_after(tx: &mut Tx<'_>, team: &str, sequence: i64) -> Result<i64, ProjectionError> {
    let row = tx_fetch_optional!(
        &mut *tx,
        (i64,),
        "SELECT available_after FROM credit_ledger WHERE team_id = $1 AND sequence = $2",
        team,
        sequence
    )?;
    row.map(|(available,)| available).ok_or_else(|| format!("credit history has no entry for team {team} #{sequence} yet").into())
}

/// The delivery's id, and so its `webhook-id`: the same for the same event and endpoint.
pub fn delivery_id(endpoint_id: &str, stored: &StoredEvent, event_type: &str) -> String {
    let name = format!("{endpoint_id}/{}/{}/{}/{event_type}", stored.aggregate_type, stored.aggregate_id, stored.sequence);
    format!("msg_{}", Uuid::new_v5(&DELIVERY_NAMESPACE, name.as_bytes()).simple())
}

async fn insert(tx: &mut Tx<'_>, stored: &StoredEvent, endpoint: &Subscriber, team: &str, message: &WebhookMessage) -> Result<(), ProjectionError> {
    let payload = serde_json::to_string(message)?;
    tx_execute!(
        &mut *tx,
        "INSERT INTO webhook_deliveries (delivery_id, endpoint_id, team_id, event_type, payload, source, created_at, \
         next_attempt_at, position) VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8) ON CONFLICT (delivery_id) DO NOTHING",
        delivery_id(&endpoint.endpoint_id, stored, &message.event_type),
        &endpoint.endpoint_id,
        team,
        &message.event_type,
        payload,
        format!("{}/{}/{}", stored.aggregate_type, stored.aggregate_id, stored.sequence),
        message.timestamp,
        stored.log_position.position
    )?;
    Ok(())
}
