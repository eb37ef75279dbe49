//! What callers may ask of a team's credits.
//!
//! Owns [`TeamCreditsCommand`]. Every command carries `now`, the caller's clock reading, so
//! the domain never reads a clock. Commands that a client or webhook can repeat carry an
//! idempotency key (a grant, reservation or adjustment id, or an external `key`); repeating a
//! command verbatim records nothing and the first outcome stays readable on the aggregate.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::amount::{Credits, SignedCredits};
use crate::ids::{AdjustmentId, GrantId, IdempotencyKey, JobId, TeamId};
use crate::operation::Operation;
use crate::plan::Plan;

use super::events::GrantSource;

/// A request to the TeamCredits aggregate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum TeamCreditsCommand {
    /// Start the team's ledger. Repeating it with the same id and name is a no-op.
    OpenTeam {
        team_id: TeamId,
        name: String,
        plan: Plan,
        now: DateTime<Utc>,
    },
    /// Move to another plan. A change whose `effective_at` is not newer than the last
    /// applied change is stale (webhooks arrive out of order) and records nothing.
    ChangePlan {
        to: Plan,
        effective_at: DateTime<Utc>,
        key: IdempotencyKey,
        now: DateTime<Utc>,
    },
    /// End the subscription: the team is on `Free` afterwards. Stale like `ChangePlan`.
    ExpireSubscription {
        effective_at: DateTime<Utc>,
        key: IdempotencyKey,
        now: DateTime<Utc>,
    },
    /// Add a credit block. `grant_id` is the idempotency key; `key` records the external
    /// request (e.g. the Stripe event id) for audit.
    GrantCredits {
        grant_id: GrantId,
        amount: Credits,
        source: GrantSource,
        expires_at: Option<DateTime<Utc>>,
        key: IdempotencyKey,
        now: DateTime<Utc>,
    },
    /// Set credits aside for a job; `reservation_id` (the job id) is the idempotency key.
    ReserveCredits {
        reservation_id: JobId,
        amount: Credits,
        operation: Operation,
        price_version: i64,
        now: DateTime<Utc>,
    },
    /// Spend a pending reservation in full (the job completed).
    DeductCredits {
        reservation_id: JobId,
        now: DateTime<Utc>,
    },
    /// Return a pending reservation to its blocks (the job failed or was cancelled).
    RefundCredits {
        reservation_id: JobId,
        now: DateTime<Utc>,
    },
    /// Correct the balance by hand; `adjustment_id` is the idempotency key. A negative
    /// amount may not exceed the spendable balance.
    AdjustCredits {
        adjustment_id: AdjustmentId,
        amount: SignedCredits,
        reason: String,
        actor: String,
        now: DateTime<Utc>,
    },
    /// Expire the unspent, unreserved part of every block with `expires_at <= now`.
    ExpireCredits { now: DateTime<Utc> },
}
