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
use crate::operators::OperatorAct;

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
    /// Stop handing the team's jobs to workers (submissions are still accepted and
    /// reserved). Pausing a paused team records nothing.
    PauseDispatch { now: DateTime<Utc> },
    /// Hand the team's jobs to workers again. Resuming a running team records nothing.
    ResumeDispatch { now: DateTime<Utc> },
    /// An operator's action on the team's credits or plan: `command` is decided as it
    /// would be alone, and if it records anything, an `OperatorActed` naming the
    /// operator, the action and the reason is recorded with it (a repeat records
    /// neither). `subject` names what was acted on (a grant, an adjustment).
    ByOperator { act: OperatorAct, subject: Option<String>, command: Box<TeamCreditsCommand> },
    /// An operator acted on something of the team kept on another stream (a job, an API
    /// key, dispatch): the act is recorded on the team's ledger, appended atomically
    /// with that stream's events (`CreditsService::execute_with`).
    RecordOperatorAct { act: OperatorAct, action: OperatorAction, subject: Option<String>, now: DateTime<Utc> },
}

impl TeamCreditsCommand {
    /// The command itself, out of any operator's wrapping (`ByOperator`).
    pub fn inner(&self) -> &TeamCreditsCommand {
        match self {
            TeamCreditsCommand::ByOperator { command, .. } => command.inner(),
            other => other,
        }
    }
}

/// What an operator did, as the ledger names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperatorAction {
    Grant,
    Adjust,
    ChangePlan,
    ExpireSubscription,
    CancelJob,
    RetryJob,
    RevokeKey,
    PauseDispatch,
    ResumeDispatch,
    /// Anything else (a command without an operator-facing name).
    Other,
}

impl OperatorAction {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Grant => "grant",
            Self::Adjust => "adjust",
            Self::ChangePlan => "change_plan",
            Self::ExpireSubscription => "expire_subscription",
            Self::CancelJob => "cancel_job",
            Self::RetryJob => "retry_job",
            Self::RevokeKey => "revoke_key",
            Self::PauseDispatch => "pause_dispatch",
            Self::ResumeDispatch => "resume_dispatch",
            Self::Other => "other",
        }
    }

    /// The action a credit command is, when an operator gives it.
    pub const fn of(command: &TeamCreditsCommand) -> Self {
        match command {
            TeamCreditsCommand::GrantCredits { .. } => Self::Grant,
            TeamCreditsCommand::AdjustCredits { .. } => Self::Adjust,
            TeamCreditsCommand::ChangePlan { .. } => Self::ChangePlan,
            TeamCreditsCommand::ExpireSubscription { .. } => Self::ExpireSubscription,
            TeamCreditsCommand::RefundCredits { .. } => Self::CancelJob,
            TeamCreditsCommand::ReserveCredits { .. } => Self::RetryJob,
            TeamCreditsCommand::PauseDispatch { .. } => Self::PauseDispatch,
            TeamCreditsCommand::ResumeDispatch { .. } => Self::ResumeDispatch,
            TeamCreditsCommand::RecordOperatorAct { action, .. } => *action,
            _ => Self::Other,
        }
    }
}
