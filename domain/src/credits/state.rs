//! The TeamCredits aggregate's state and its read-only queries.
//!
//! Owns [`TeamCredits`] and the records it keeps: the team profile, credit blocks
//! ([`CreditBlock`]), reservations ([`Reservation`]) and running totals. The state is what a
//! snapshot stores, so it derives serde and uses `Vec`/`BTreeMap` only: the same events
//! always produce byte-identical snapshots. Reservations, blocks and adjustments are kept
//! after they are used up because they are the memory behind idempotency ("this key was
//! already handled, and here is how it ended").

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::amount::{Credits, SignedCredits};
use crate::ids::{AdjustmentId, GrantId, JobId, TeamId};
use crate::operation::Operation;
use crate::plan::Plan;

use super::events::{Allocation, GrantSource};

/// Who the team is and which plan it is on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeamProfile {
    /// The team (and aggregate) id.
    pub team_id: TeamId,
    /// Display name given at opening.
    pub name: String,
    /// The current plan.
    pub plan: Plan,
    /// `effective_at` of the last applied plan change (opening time at first); older
    /// changes are stale.
    pub plan_effective_at: DateTime<Utc>,
    /// When the team was opened.
    pub opened_at: DateTime<Utc>,
}

/// Where a credit block came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockOrigin {
    /// Granted from a Stripe payment.
    Stripe,
    /// Granted by an operator.
    Admin,
    /// Granted as a plan allowance.
    Plan,
    /// Opened by a positive adjustment (never expires).
    Adjustment,
}

impl From<GrantSource> for BlockOrigin {
    fn from(source: GrantSource) -> Self {
        match source {
            GrantSource::Stripe => Self::Stripe,
            GrantSource::Admin => Self::Admin,
            GrantSource::Plan => Self::Plan,
        }
    }
}

/// One credit block (a grant, or a positive adjustment), like an Orb/Metronome credit
/// block. Always `amount = remaining + reserved + deducted + adjusted_out + expired`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditBlock {
    /// The block's id (for an adjustment block, the adjustment's uuid).
    pub grant_id: GrantId,
    /// Where the credits came from.
    pub origin: BlockOrigin,
    /// Credits the block started with.
    pub amount: Credits,
    /// Unspent and unreserved: the block's share of `available`.
    pub remaining: i64,
    /// Held by pending reservations.
    pub reserved: i64,
    /// Spent by completed jobs.
    pub deducted: i64,
    /// Removed by negative adjustments.
    pub adjusted_out: i64,
    /// Removed by expiry.
    pub expired: i64,
    /// After this instant the unreserved remainder may be expired; `None` never expires.
    pub expires_at: Option<DateTime<Utc>>,
}

impl CreditBlock {
    /// Whether the block's expiry has passed at `now` (reserved credits are unaffected).
    pub fn is_expired_at(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|expires_at| expires_at <= now)
    }

    /// What a new reservation could draw from this block at `now`: its remainder, unless
    /// the block has expired and is only waiting for the sweeper.
    pub fn spendable_at(&self, now: DateTime<Utc>) -> i64 {
        if self.is_expired_at(now) {
            0
        } else {
            self.remaining
        }
    }

    pub(super) fn is_balanced(&self) -> bool {
        let parts = [
            self.remaining,
            self.reserved,
            self.deducted,
            self.adjusted_out,
            self.expired,
        ];
        parts.iter().all(|part| *part >= 0) && parts.iter().sum::<i64>() == self.amount.get()
    }
}

/// How a reservation stands. It ends exactly once, in `Deducted` or `Refunded`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReservationState {
    /// Credits are held for the job.
    Pending,
    /// The job completed and the credits were spent.
    Deducted,
    /// The job failed or was cancelled and the credits went back.
    Refunded,
}

/// A job's reservation, kept after it ends so repeats can read the first outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// Credits held.
    pub amount: Credits,
    /// What the job does.
    pub operation: Operation,
    /// The pricing config version that produced `amount`.
    pub price_version: i64,
    /// Which blocks the credits were drawn from.
    pub allocations: Vec<Allocation>,
    /// Pending, or how it ended.
    pub state: ReservationState,
    /// When the reservation was made.
    pub reserved_at: DateTime<Utc>,
}

/// Running totals, kept so every query is O(1). Every field is non-negative except
/// `adjusted_net`, and all are bounded by `inflow`, which is checked before it grows: that
/// is the proof that the plain arithmetic in `apply` cannot overflow.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct LedgerTotals {
    pub(super) granted: i64,
    pub(super) adjusted_net: i64,
    /// Everything that ever entered the ledger: grants plus positive adjustments.
    pub(super) inflow: i64,
    pub(super) available: i64,
    pub(super) reserved: i64,
    pub(super) deducted: i64,
    pub(super) expired: i64,
}

/// The TeamCredits aggregate (id = team id): a team's prepaid credits as blocks, with
/// two-phase reservations. See the module docs of [`crate::credits`] for the rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeamCredits {
    pub(super) team: Option<TeamProfile>,
    /// In grant order, which breaks burn-down ties.
    pub(super) blocks: Vec<CreditBlock>,
    pub(super) reservations: BTreeMap<JobId, Reservation>,
    /// Amounts of handled adjustments, to recognise repeats.
    pub(super) adjustments: BTreeMap<AdjustmentId, SignedCredits>,
    pub(super) totals: LedgerTotals,
    /// An operator paused the team's dispatch: its jobs are accepted and reserved but
    /// not handed to workers until resumed.
    #[serde(default)]
    pub(super) dispatch_paused: bool,
}

impl TeamCredits {
    /// Whether an operator paused the team's dispatch.
    pub fn dispatch_paused(&self) -> bool {
        self.dispatch_paused
    }

    /// Whether `OpenTeam` has happened.
    pub fn is_open(&self) -> bool {
        self.team.is_some()
    }

    /// The team's profile, once opened.
    pub fn profile(&self) -> Option<&TeamProfile> {
        self.team.as_ref()
    }

    /// The current plan; an unopened team counts as `Free` (it may run nothing).
    pub fn plan(&self) -> Plan {
        self.team.as_ref().map_or(Plan::Free, |team| team.plan)
    }

    /// Unspent, unreserved credits. May include credits of blocks past their expiry that
    /// the sweeper has not expired yet; see [`TeamCredits::spendable_at`].
    pub fn available(&self) -> i64 {
        self.totals.available
    }

    /// What a reservation at `now` may draw: `available` minus blocks already past expiry.
    pub fn spendable_at(&self, now: DateTime<Utc>) -> i64 {
        super::burn_down::spendable(&self.blocks, now)
    }

    /// Credits held by pending reservations.
    pub fn reserved(&self) -> i64 {
        self.totals.reserved
    }

    /// Sum of all grants.
    pub fn granted_total(&self) -> i64 {
        self.totals.granted
    }

    /// Sum of all deductions.
    pub fn deducted_total(&self) -> i64 {
        self.totals.deducted
    }

    /// Sum of all expiries.
    pub fn expired_total(&self) -> i64 {
        self.totals.expired
    }

    /// Net sum of all adjustments (signed).
    pub fn adjusted_total(&self) -> i64 {
        self.totals.adjusted_net
    }

    /// Every credit block, in grant order, including used-up ones.
    pub fn grants(&self) -> &[CreditBlock] {
        &self.blocks
    }

    /// One block by id.
    pub fn grant(&self, grant_id: GrantId) -> Option<&CreditBlock> {
        self.blocks.iter().find(|block| block.grant_id == grant_id)
    }

    /// A reservation, pending or ended.
    pub fn reservation(&self, reservation_id: JobId) -> Option<&Reservation> {
        self.reservations.get(&reservation_id)
    }

    /// How a reservation stands: `None` if it was never made.
    pub fn reservation_outcome(&self, reservation_id: JobId) -> Option<ReservationState> {
        self.reservation(reservation_id)
            .map(|reservation| reservation.state)
    }

    /// Reservations still pending, e.g. for a sweeper of orphaned reservations.
    pub fn pending_reservations(&self) -> impl Iterator<Item = (JobId, &Reservation)> {
        self.reservations
            .iter()
            .filter(|(_, reservation)| reservation.state == ReservationState::Pending)
            .map(|(id, reservation)| (*id, reservation))
    }

    /// The amount of a handled adjustment.
    pub fn adjustment(&self, adjustment_id: AdjustmentId) -> Option<SignedCredits> {
        self.adjustments.get(&adjustment_id).copied()
    }
}
