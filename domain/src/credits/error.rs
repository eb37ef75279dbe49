//! Why the ledger refuses a command.
//!
//! Owns [`TeamCreditsError`]. Its variants are a stable contract: the HTTP layer maps each
//! one to a problem+json `type`, so add variants rather than repurpose them.

use crate::amount::AmountError;
use crate::ids::JobId;

/// A TeamCredits command was refused; nothing was recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TeamCreditsError {
    /// The team has not been opened (only `OpenTeam` works on an empty stream).
    #[error("team not found")]
    TeamNotFound,
    /// `OpenTeam` on a team already opened with different details.
    #[error("team is already open")]
    TeamAlreadyOpened,
    /// A text field (team name, adjustment reason or actor) breaks the text rule
    /// (`crate::text`): empty, too long, or holding a control character.
    #[error("{field} {reason}")]
    InvalidText {
        /// Which field.
        field: &'static str,
        /// Which part of the rule it breaks.
        reason: crate::text::TextError,
    },
    /// Spending or removing more than the spendable balance.
    #[error("insufficient credits: {available} available, {requested} requested")]
    InsufficientCredits {
        /// Credits spendable at the command's `now`.
        available: i64,
        /// Credits asked for.
        requested: i64,
    },
    /// Deduct or refund of a reservation this team never made.
    #[error("reservation {0} not found")]
    ReservationNotFound(JobId),
    /// The idempotency key was used before for a different request (e.g. another amount).
    #[error("idempotency key {key} was already used for a different request")]
    IdempotencyConflict {
        /// The reused key (grant, reservation or adjustment id).
        key: String,
    },
    /// A grant whose `expires_at` is not after `now` would be born expired.
    #[error("grant would expire before it is granted")]
    ExpiryNotInFuture,
    /// The team's plan runs no jobs (Free, or a subscription that expired). Raised by the
    /// job engine when it accepts a job, on the state it reserves against.
    #[error("the {plan} plan does not run jobs")]
    PlanDoesNotAllowJobs {
        /// The team's plan.
        plan: crate::Plan,
    },
    /// An amount is invalid or a balance would overflow.
    #[error(transparent)]
    Amount(#[from] AmountError),
}
