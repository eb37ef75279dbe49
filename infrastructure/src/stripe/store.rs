//! Stripe bookkeeping tables (`migrations/*/0020_stripe.sql`): the webhook events seen,
//! and which team each Stripe customer pays for. Same SQL on PostgreSQL and SQLite.

use chrono::{DateTime, Utc};
use domain::TeamId;

use application::event_store::EventStoreError;
use application::payments::SubscriptionStatus;

use crate::db::Database;
use crate::event_store::store_error;
use crate::{db_execute, db_fetch_optional};

pub use application::payments::{EventRecord, EventStatus};

/// How an earlier delivery of `event_id` ended, if there was one.
pub async fn status_of(db: &Database, event_id: &str) -> Result<Option<EventStatus>, sqlx::Error> {
    let row = db_fetch_optional!(db, (String,), "SELECT status FROM stripe_events WHERE event_id = $1", event_id)?;
    Ok(row.and_then(|(status,)| EventStatus::parse(&status)))
}

/// Records an event. A row that exists is only overwritten while it is `unresolved`, so
/// a redelivery can resolve it but never undo a final outcome.
pub async fn record(db: &Database, record: &EventRecord<'_>) -> Result<(), sqlx::Error> {
    db_execute!(
        db,
        "INSERT INTO stripe_events (event_id, event_type, team_id, status, detail, payload, created_at, received_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (event_id) DO UPDATE SET team_id = excluded.team_id, status = excluded.status, \
           detail = excluded.detail, payload = excluded.payload, received_at = excluded.received_at \
         WHERE stripe_events.status = 'unresolved'",
        record.event_id,
        record.event_type,
        record.team_id.map(|t| t.to_string()),
        record.status.as_str(),
        record.detail,
        record.payload,
        record.created_at,
        record.received_at
    )?;
    Ok(())
}

/// The team a customer was first seen paying for.
pub async fn team_of_customer(db: &Database, customer_id: &str) -> Result<Option<TeamId>, sqlx::Error> {
    let row = db_fetch_optional!(db, (String,), "SELECT team_id FROM stripe_customers WHERE customer_id = $1", customer_id)?;
    Ok(row.and_then(|(team,)| team.parse().ok()))
}

/// The team's most recently seen customer, reused for its next checkout.
pub async fn customer_of_team(db: &Database, team_id: TeamId) -> Result<Option<String>, sqlx::Error> {
    let row = db_fetch_optional!(
        db,
        (String,),
        "SELECT customer_id FROM stripe_customers WHERE team_id = $1 ORDER BY recorded_at DESC, customer_id LIMIT 1",
        team_id.to_string()
    )?;
    Ok(row.map(|(customer,)| customer))
}

/// Remembers that `customer_id` pays for `team_id`. The first mapping stays: a customer
/// is created for one team's checkout and never handed to another.
pub async fn remember_customer(db: &Database, customer_id: &str, team_id: TeamId, now: DateTime<Utc>) -> Result<(), sqlx::Error> {
    db_execute!(
        db,
        "INSERT INTO stripe_customers (customer_id, team_id, recorded_at) VALUES ($1, $2, $3) \
         ON CONFLICT (customer_id) DO NOTHING",
        customer_id,
        team_id.to_string(),
        now
    )?;
    Ok(())
}

/// Subscription statuses in which the customer is paying (or about to retry paying).
pub const LIVE_SUBSCRIPTION_STATUSES: [&str; 3] = ["active", "trialing", "past_due"];

/// Records `status` for a subscription unless a newer event already said otherwise.
pub async fn record_subscription(
    db: &Database,
    subscription_id: &str,
    team_id: TeamId,
    status: &str,
    status_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    db_execute!(
        db,
        "INSERT INTO stripe_subscriptions (subscription_id, team_id, status, status_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (subscription_id) DO UPDATE SET team_id = excluded.team_id, status = excluded.status, \
           status_at = excluded.status_at \
         WHERE stripe_subscriptions.status_at <= excluded.status_at",
        subscription_id,
        team_id.to_string(),
        status,
        status_at
    )?;
    Ok(())
}

/// A live subscription of the team other than `except`, if there is one.
pub async fn live_subscription(db: &Database, team_id: TeamId, except: Option<&str>) -> Result<Option<String>, sqlx::Error> {
    let [a, b, c] = LIVE_SUBSCRIPTION_STATUSES;
    let row = db_fetch_optional!(
        db,
        (String,),
        "SELECT subscription_id FROM stripe_subscriptions \
         WHERE team_id = $1 AND status IN ($2, $3, $4) AND subscription_id <> $5 \
         ORDER BY status_at DESC, subscription_id LIMIT 1",
        team_id.to_string(),
        a,
        b,
        c,
        except.unwrap_or("")
    )?;
    Ok(row.map(|(id,)| id))
}

/// The payment bookkeeping port on these tables.
pub struct SqlPaymentRecords(pub Database);

#[async_trait::async_trait]
impl application::payments::PaymentRecords for SqlPaymentRecords {
    async fn status_of(&self, event_id: &str) -> Result<Option<EventStatus>, EventStoreError> {
        status_of(&self.0, event_id).await.map_err(store_error)
    }

    async fn record(&self, record: &EventRecord<'_>) -> Result<(), EventStoreError> {
        self::record(&self.0, record).await.map_err(store_error)
    }

    async fn team_of_customer(&self, customer: &str) -> Result<Option<TeamId>, EventStoreError> {
        team_of_customer(&self.0, customer).await.map_err(store_error)
    }

    async fn customer_of_team(&self, team: TeamId) -> Result<Option<String>, EventStoreError> {
        customer_of_team(&self.0, team).await.map_err(store_error)
    }

    async fn remember_customer(&self, customer: &str, team: TeamId, now: DateTime<Utc>) -> Result<(), EventStoreError> {
        remember_customer(&self.0, customer, team, now).await.map_err(store_error)
    }

    async fn record_subscription(&self, subscription: &SubscriptionStatus, team: TeamId, at: DateTime<Utc>) -> Result<(), EventStoreError> {
        record_subscription(&self.0, &subscription.subscription_id, team, &subscription.status, at).await.map_err(store_error)
    }

    async fn live_subscription(&self, team: TeamId, except: Option<&str>) -> Result<Option<String>, EventStoreError> {
        live_subscription(&self.0, team, except).await.map_err(store_error)
    }
}
