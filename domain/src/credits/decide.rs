//! Deciding: which events a command causes, or why it is refused.
//!
//! Owns [`TeamCredits::decide`], a pure function of the state and the command. All business
//! rules live here; `apply` only does bookkeeping. Idempotency is checked first so that a
//! verbatim repeat records nothing, whatever has happened since.

use std::fmt::Display;

use chrono::{DateTime, Utc};

use crate::amount::{AmountError, Credits, SignedCredits};
use crate::ids::{AdjustmentId, GrantId, IdempotencyKey, JobId, TeamId};
use crate::operation::Operation;
use crate::plan::Plan;
use crate::text::{Actor, Reason, TeamName, TextError};

use super::burn_down::allocate;
use super::commands::{OperatorAction, TeamCreditsCommand};
use super::error::TeamCreditsError;
use super::events::{Allocation, GrantSource, TeamCreditsEvent as E};
use super::state::{BlockOrigin, Reservation, ReservationState, TeamCredits, TeamProfile};

pub use crate::text::{ADJUSTMENT_ACTOR_CHARS_MAX, ADJUSTMENT_REASON_CHARS_MAX, TEAM_NAME_CHARS_MAX};

type Decision = Result<Vec<E>, TeamCreditsError>;

impl TeamCredits {
    /// The events `command` causes (empty for a no-op such as a repeat), or why it is
    /// refused. [`cqrs_es::Aggregate::handle`] is this plus writing the events.
    pub fn decide(&self, command: TeamCreditsCommand) -> Decision {
        use TeamCreditsCommand as C;
        if !self.is_open() && !matches!(command, C::OpenTeam { .. }) {
            return Err(TeamCreditsError::TeamNotFound);
        }
        match command {
            C::OpenTeam {
                team_id,
                name,
                plan,
                now,
            } => self.decide_open(team_id, name, plan, now),
            C::ChangePlan {
                to,
                effective_at,
                key,
                now,
            } => self.decide_plan(Some(to), effective_at, key, now),
            C::ExpireSubscription {
                effective_at,
                key,
                now,
            } => self.decide_plan(None, effective_at, key, now),
            C::GrantCredits {
                grant_id,
                amount,
                source,
                expires_at,
                key,
                now,
            } => self.decide_grant(grant_id, amount, source, expires_at, key, now),
            C::ReserveCredits {
                reservation_id,
                amount,
                operation,
                price_version,
                now,
            } => self.decide_reserve(reservation_id, amount, operation, price_version, now),
            C::DeductCredits {
                reservation_id,
                now,
            } => self.decide_deduct(reservation_id, now),
            C::RefundCredits {
                reservation_id,
                now,
            } => self.decide_refund(reservation_id, now),
            C::AdjustCredits {
                adjustment_id,
                amount,
                reason,
                actor,
                now,
            } => self.decide_adjust(adjustment_id, amount, reason, actor, now),
            C::ExpireCredits { now } => Ok(self.decide_expire(now)),
            C::ByOperator { act, subject, command } => {
                let action = OperatorAction::of(&command);
                let mut events = self.decide(*command)?;
                // A repeat (nothing recorded) records no act either.
                if let Some(occurred_at) = events.first().map(E::occurred_at) {
                    events.push(E::OperatorActed { act, action, subject, occurred_at });
                }
                Ok(events)
            }
            C::PauseDispatch { now } => Ok(if self.dispatch_paused { vec![] } else { vec![E::DispatchPaused { occurred_at: now }] }),
            C::ResumeDispatch { now } => Ok(if self.dispatch_paused { vec![E::DispatchResumed { occurred_at: now }] } else { vec![] }),
            C::RecordOperatorAct { act, action, subject, now } => Ok(vec![E::OperatorActed { act, action, subject, occurred_at: now }]),
        }
    }

    fn decide_open(
        &self,
        team_id: TeamId,
        name: String,
        plan: Plan,
        now: DateTime<Utc>,
    ) -> Decision {
        let name = free_text("name", TeamName::parse(&name))?;
        if let Some(team) = &self.team {
            let same = team.team_id == team_id && team.name == name;
            return if same {
                Ok(vec![])
            } else {
                Err(TeamCreditsError::TeamAlreadyOpened)
            };
        }
        Ok(vec![E::TeamOpened {
            team_id,
            name,
            plan,
            occurred_at: now,
        }])
    }

    /// `to = None` is a subscription expiry. Both move the plan and share one watermark, so
    /// out-of-order webhooks cannot roll the plan back.
    fn decide_plan(
        &self,
        to: Option<Plan>,
        effective_at: DateTime<Utc>,
        key: IdempotencyKey,
        now: DateTime<Utc>,
    ) -> Decision {
        let team = self.open_team()?;
        if effective_at <= team.plan_effective_at {
            return Ok(vec![]);
        }
        let from = team.plan;
        Ok(vec![match to {
            Some(to) => E::PlanChanged {
                from,
                to,
                effective_at,
                key,
                occurred_at: now,
            },
            None => E::SubscriptionExpired {
                from,
                effective_at,
                key,
                occurred_at: now,
            },
        }])
    }

    fn decide_grant(
        &self,
        grant_id: GrantId,
        amount: Credits,
        source: GrantSource,
        expires_at: Option<DateTime<Utc>>,
        key: IdempotencyKey,
        now: DateTime<Utc>,
    ) -> Decision {
        if let Some(block) = self.grant(grant_id) {
            let same = block.origin == BlockOrigin::from(source)
                && block.amount == amount
                && block.expires_at == expires_at;
            return repeat_or_conflict(same, grant_id);
        }
        if expires_at.is_some_and(|expires_at| expires_at <= now) {
            return Err(TeamCreditsError::ExpiryNotInFuture);
        }
        self.check_inflow(amount)?;
        Ok(vec![E::CreditsGranted {
            grant_id,
            amount,
            source,
            expires_at,
            key,
            occurred_at: now,
        }])
    }

    fn decide_reserve(
        &self,
        reservation_id: JobId,
        amount: Credits,
        operation: Operation,
        price_version: i64,
        now: DateTime<Utc>,
    ) -> Decision {
        if let Some(reservation) = self.reservation(reservation_id) {
            let same = reservation.amount == amount && reservation.operation == operation;
            return repeat_or_conflict(same, reservation_id);
        }
        let allocations = allocate(&self.blocks, amount, now)?;
        Ok(vec![E::CreditsReserved {
            reservation_id,
            amount,
            operation,
            price_version,
            allocations,
            occurred_at: now,
        }])
    }

    fn decide_deduct(&self, reservation_id: JobId, now: DateTime<Utc>) -> Decision {
        let Some(reservation) = self.pending(reservation_id)? else {
            return Ok(vec![]);
        };
        let amount = reservation.amount;
        Ok(vec![E::CreditsDeducted {
            reservation_id,
            amount,
            occurred_at: now,
        }])
    }

    /// Credits go back to the blocks they came from; a block already past its expiry gets
    /// them back only to lose them at once, so an expired grant cannot be revived by a
    /// failed job.
    fn decide_refund(&self, reservation_id: JobId, now: DateTime<Utc>) -> Decision {
        let Some(reservation) = self.pending(reservation_id)? else {
            return Ok(vec![]);
        };
        let amount = reservation.amount;
        let mut events = vec![E::CreditsRefunded {
            reservation_id,
            amount,
            occurred_at: now,
        }];
        let lapsed = reservation.allocations.iter().filter(|allocation| {
            self.grant(allocation.grant_id)
                .is_some_and(|block| block.is_expired_at(now))
        });
        events.extend(lapsed.map(|allocation| E::CreditsExpired {
            grant_id: allocation.grant_id,
            amount: allocation.amount,
            occurred_at: now,
        }));
        Ok(events)
    }

    fn decide_adjust(
        &self,
        adjustment_id: AdjustmentId,
        amount: SignedCredits,
        reason: String,
        actor: String,
        now: DateTime<Utc>,
    ) -> Decision {
        if let Some(previous) = self.adjustment(adjustment_id) {
            return repeat_or_conflict(previous == amount, adjustment_id);
        }
        let reason = free_text("reason", Reason::parse(&reason))?;
        let actor = free_text("actor", Actor::parse(&actor))?;
        let allocations = if amount.is_negative() {
            allocate(&self.blocks, amount.magnitude(), now)?
        } else {
            self.adjustment_block(adjustment_id, amount.magnitude())?
        };
        Ok(vec![E::CreditsAdjusted {
            adjustment_id,
            amount,
            reason,
            actor,
            allocations,
            occurred_at: now,
        }])
    }

    /// Only the unreserved remainder expires: reserved credits belong to a job already
    /// accepted and are settled by its deduction or refund.
    fn decide_expire(&self, now: DateTime<Utc>) -> Vec<E> {
        self.blocks
            .iter()
            .filter(|block| block.is_expired_at(now))
            .filter_map(|block| {
                let amount = Credits::parse(block.remaining).ok()?;
                Some(E::CreditsExpired {
                    grant_id: block.grant_id,
                    amount,
                    occurred_at: now,
                })
            })
            .collect()
    }

    fn open_team(&self) -> Result<&TeamProfile, TeamCreditsError> {
        self.team.as_ref().ok_or(TeamCreditsError::TeamNotFound)
    }

    /// The reservation if it is still pending, `None` if it already ended (a repeat).
    fn pending(&self, reservation_id: JobId) -> Result<Option<&Reservation>, TeamCreditsError> {
        let reservation = self
            .reservation(reservation_id)
            .ok_or(TeamCreditsError::ReservationNotFound(reservation_id))?;
        Ok((reservation.state == ReservationState::Pending).then_some(reservation))
    }

    /// A positive adjustment opens its own non-expiring block, named by the adjustment id.
    fn adjustment_block(
        &self,
        adjustment_id: AdjustmentId,
        amount: Credits,
    ) -> Result<Vec<Allocation>, TeamCreditsError> {
        let grant_id = GrantId::from(adjustment_id);
        if self.grant(grant_id).is_some() {
            return Err(conflict(adjustment_id));
        }
        self.check_inflow(amount)?;
        Ok(vec![Allocation { grant_id, amount }])
    }

    /// Every balance is bounded by the total inflow, so keeping the inflow within `i64`
    /// keeps all ledger arithmetic overflow-free.
    fn check_inflow(&self, amount: Credits) -> Result<(), TeamCreditsError> {
        match self.totals.inflow.checked_add(amount.get()) {
            Some(_) => Ok(()),
            None => Err(AmountError::Overflow.into()),
        }
    }
}

fn repeat_or_conflict(same: bool, key: impl Display) -> Decision {
    if same {
        Ok(vec![])
    } else {
        Err(conflict(key))
    }
}

fn conflict(key: impl Display) -> TeamCreditsError {
    TeamCreditsError::IdempotencyConflict {
        key: key.to_string(),
    }
}

/// Free text that ends up in events, logs and the dashboard, checked by its value type
/// (`crate::text`): the refusal names the field.
fn free_text<T: Into<String>>(field: &'static str, parsed: Result<T, TextError>) -> Result<String, TeamCreditsError> {
    parsed.map(Into::into).map_err(|reason| TeamCreditsError::InvalidText { field, reason })
}
