//! The facts the TeamCredits stream records.
//!
//! Owns [`TeamCreditsEvent`] and the small value types it carries ([`GrantSource`],
//! [`Allocation`]). Events are the source of truth and are replayed forever, so their shape
//! is a stored format: add fields with `#[serde(default)]` or a new `event_version`, never
//! rename. Payloads are internally tagged (`"type": "CreditsGranted"`), and the tag equals
//! [`DomainEvent::event_type`].

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

use crate::amount::{Credits, SignedCredits};
use crate::ids::{AdjustmentId, GrantId, IdempotencyKey, JobId, TeamId};
use crate::operation::Operation;
use crate::operators::OperatorAct;

use super::commands::OperatorAction;
use crate::plan::Plan;

/// Where granted credits came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantSource {
    /// A Stripe payment (checkout or top-up).
    Stripe,
    /// An operator, by hand.
    Admin,
    /// The plan's periodic allowance.
    Plan,
}

/// Part of an amount drawn from (or added to) one credit block. Reservations and negative
/// adjustments record their allocations so that a refund can return credits to exactly the
/// blocks they came from and an auditor can follow every credit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// The credit block (a grant, or a positive adjustment's own block).
    pub grant_id: GrantId,
    /// Credits taken from (or put into) that block.
    pub amount: Credits,
}

/// Everything that can happen to a team's credits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum TeamCreditsEvent {
    /// The team exists and can hold credits.
    TeamOpened {
        team_id: TeamId,
        name: String,
        plan: Plan,
        occurred_at: DateTime<Utc>,
    },
    /// The team moved to another plan, as of `effective_at`.
    PlanChanged {
        from: Plan,
        to: Plan,
        effective_at: DateTime<Utc>,
        key: IdempotencyKey,
        occurred_at: DateTime<Utc>,
    },
    /// The paid subscription ended as of `effective_at`; the team is on `Free` from now on.
    /// The job engine reacts by cancelling queued jobs (running jobs finish and are charged).
    SubscriptionExpired {
        from: Plan,
        effective_at: DateTime<Utc>,
        key: IdempotencyKey,
        occurred_at: DateTime<Utc>,
    },
    /// A new credit block, optionally expiring.
    CreditsGranted {
        grant_id: GrantId,
        amount: Credits,
        source: GrantSource,
        expires_at: Option<DateTime<Utc>>,
        key: IdempotencyKey,
        occurred_at: DateTime<Utc>,
    },
    /// Credits set aside for a job (pending, like a TigerBeetle pending transfer).
    CreditsReserved {
        reservation_id: JobId,
        amount: Credits,
        operation: Operation,
        price_version: i64,
        allocations: Vec<Allocation>,
        occurred_at: DateTime<Utc>,
    },
    /// A reservation was spent (the job completed). Ends the reservation.
    CreditsDeducted {
        reservation_id: JobId,
        amount: Credits,
        occurred_at: DateTime<Utc>,
    },
    /// A reservation was returned to its blocks (the job failed or was cancelled). Ends the
    /// reservation.
    CreditsRefunded {
        reservation_id: JobId,
        amount: Credits,
        occurred_at: DateTime<Utc>,
    },
    /// An operator corrected the balance. Positive amounts open a non-expiring block named
    /// by the adjustment id; negative amounts draw from blocks in burn-down order.
    CreditsAdjusted {
        adjustment_id: AdjustmentId,
        amount: SignedCredits,
        reason: String,
        actor: String,
        allocations: Vec<Allocation>,
        occurred_at: DateTime<Utc>,
    },
    /// Unspent, unreserved credits of a block passed its expiry and are gone.
    CreditsExpired {
        grant_id: GrantId,
        amount: Credits,
        occurred_at: DateTime<Utc>,
    },
    /// The team's jobs are no longer handed to workers (an operator paused its dispatch).
    DispatchPaused { occurred_at: DateTime<Utc> },
    /// The team's jobs are handed to workers again.
    DispatchResumed { occurred_at: DateTime<Utc> },
    /// An operator acted on the team (who, why, what, on which subject); recorded with
    /// the events of the action itself, in the same append. Moves no credits.
    OperatorActed {
        act: OperatorAct,
        action: OperatorAction,
        subject: Option<String>,
        occurred_at: DateTime<Utc>,
    },
}

impl TeamCreditsEvent {
    /// The variant name; also the serde tag and the stored `event_type`.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::TeamOpened { .. } => "TeamOpened",
            Self::PlanChanged { .. } => "PlanChanged",
            Self::SubscriptionExpired { .. } => "SubscriptionExpired",
            Self::CreditsGranted { .. } => "CreditsGranted",
            Self::CreditsReserved { .. } => "CreditsReserved",
            Self::CreditsDeducted { .. } => "CreditsDeducted",
            Self::CreditsRefunded { .. } => "CreditsRefunded",
            Self::CreditsAdjusted { .. } => "CreditsAdjusted",
            Self::CreditsExpired { .. } => "CreditsExpired",
            Self::DispatchPaused { .. } => "DispatchPaused",
            Self::DispatchResumed { .. } => "DispatchResumed",
            Self::OperatorActed { .. } => "OperatorActed",
        }
    }

    /// When it happened (the `now` of the command that caused it).
    pub const fn occurred_at(&self) -> DateTime<Utc> {
        match self {
            Self::TeamOpened { occurred_at, .. }
            | Self::PlanChanged { occurred_at, .. }
            | Self::SubscriptionExpired { occurred_at, .. }
            | Self::CreditsGranted { occurred_at, .. }
            | Self::CreditsReserved { occurred_at, .. }
            | Self::CreditsDeducted { occurred_at, .. }
            | Self::CreditsRefunded { occurred_at, .. }
            | Self::CreditsAdjusted { occurred_at, .. }
            | Self::CreditsExpired { occurred_at, .. }
            | Self::DispatchPaused { occurred_at }
            | Self::DispatchResumed { occurred_at }
            | Self::OperatorActed { occurred_at, .. } => *occurred_at,
        }
    }
}

impl DomainEvent for TeamCreditsEvent {
    fn event_type(&self) -> String {
        self.name().to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}
