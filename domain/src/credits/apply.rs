//! Folding events into TeamCredits state.
//!
//! Owns `apply`: no decisions, no errors, only bookkeeping. Every rule was checked in
//! `decide` before the event existed, so arithmetic here is plain: all totals are bounded
//! by `totals.inflow`, which `decide` keeps within `i64`. After every event the ledger
//! equation is asserted (in debug builds), TigerBeetle style.

use chrono::{DateTime, Utc};

use crate::amount::{Credits, SignedCredits};
use crate::ids::{AdjustmentId, GrantId, JobId};
use crate::plan::Plan;

use super::events::{Allocation, TeamCreditsEvent};
use super::state::{
    BlockOrigin, CreditBlock, Reservation, ReservationState, TeamCredits, TeamProfile,
};

impl TeamCredits {
    pub(super) fn apply_event(&mut self, event: TeamCreditsEvent) {
        use TeamCreditsEvent as E;
        match event {
            E::TeamOpened {
                team_id,
                name,
                plan,
                occurred_at,
            } => {
                self.team = Some(TeamProfile {
                    team_id,
                    name,
                    plan,
                    plan_effective_at: occurred_at,
                    opened_at: occurred_at,
                });
            }
            E::PlanChanged {
                to, effective_at, ..
            } => self.set_plan(to, effective_at),
            E::SubscriptionExpired { effective_at, .. } => self.set_plan(Plan::Free, effective_at),
            E::CreditsGranted {
                grant_id,
                amount,
                source,
                expires_at,
                ..
            } => {
                self.open_block(grant_id, amount, source.into(), expires_at);
                self.totals.granted += amount.get();
            }
            E::CreditsReserved {
                reservation_id,
                amount,
                operation,
                price_version,
                allocations,
                occurred_at,
            } => {
                let reservation = Reservation {
                    amount,
                    operation,
                    price_version,
                    allocations,
                    state: ReservationState::Pending,
                    reserved_at: occurred_at,
                };
                self.hold(reservation_id, reservation);
            }
            E::CreditsDeducted { reservation_id, .. } => {
                self.settle(reservation_id, ReservationState::Deducted);
            }
            E::CreditsRefunded { reservation_id, .. } => {
                self.settle(reservation_id, ReservationState::Refunded);
            }
            E::CreditsAdjusted {
                adjustment_id,
                amount,
                allocations,
                ..
            } => {
                self.adjust(adjustment_id, amount, &allocations);
            }
            E::CreditsExpired {
                grant_id, amount, ..
            } => self.expire(grant_id, amount),
            E::DispatchPaused { .. } => self.dispatch_paused = true,
            E::DispatchResumed { .. } => self.dispatch_paused = false,
            // A record of who acted and why: the action's own events changed the state.
            E::OperatorActed { .. } => {}
        }
        self.debug_assert_ledger();
    }

    fn set_plan(&mut self, plan: Plan, effective_at: DateTime<Utc>) {
        if let Some(team) = self.team.as_mut() {
            team.plan = plan;
            team.plan_effective_at = effective_at;
        }
    }

    fn open_block(
        &mut self,
        grant_id: GrantId,
        amount: Credits,
        origin: BlockOrigin,
        expires_at: Option<DateTime<Utc>>,
    ) {
        self.blocks.push(CreditBlock {
            grant_id,
            origin,
            amount,
            remaining: amount.get(),
            reserved: 0,
            deducted: 0,
            adjusted_out: 0,
            expired: 0,
            expires_at,
        });
        self.totals.inflow += amount.get();
        self.totals.available += amount.get();
    }

    fn hold(&mut self, reservation_id: JobId, reservation: Reservation) {
        for allocation in &reservation.allocations {
            self.with_block(allocation.grant_id, |block| {
                block.remaining -= allocation.amount.get();
                block.reserved += allocation.amount.get();
            });
        }
        self.totals.available -= reservation.amount.get();
        self.totals.reserved += reservation.amount.get();
        self.reservations.insert(reservation_id, reservation);
    }

    /// Ends a pending reservation. A second end is ignored rather than applied, so even a
    /// corrupted stream cannot move a reservation's credits twice.
    fn settle(&mut self, reservation_id: JobId, outcome: ReservationState) {
        let Some(reservation) = self.reservations.get_mut(&reservation_id) else {
            debug_assert!(false, "settling unknown reservation {reservation_id}");
            return;
        };
        if reservation.state != ReservationState::Pending {
            debug_assert!(false, "reservation {reservation_id} ended twice");
            return;
        }
        reservation.state = outcome;
        let amount = reservation.amount.get();
        let allocations = reservation.allocations.clone();
        let deducted = outcome == ReservationState::Deducted;
        for allocation in &allocations {
            self.with_block(allocation.grant_id, |block| {
                block.reserved -= allocation.amount.get();
                if deducted {
                    block.deducted += allocation.amount.get();
                } else {
                    block.remaining += allocation.amount.get();
                }
            });
        }
        self.totals.reserved -= amount;
        if deducted {
            self.totals.deducted += amount;
        } else {
            self.totals.available += amount;
        }
    }

    fn adjust(
        &mut self,
        adjustment_id: AdjustmentId,
        amount: SignedCredits,
        allocations: &[Allocation],
    ) {
        self.adjustments.insert(adjustment_id, amount);
        self.totals.adjusted_net += amount.get();
        if !amount.is_negative() {
            for allocation in allocations {
                self.open_block(
                    allocation.grant_id,
                    allocation.amount,
                    BlockOrigin::Adjustment,
                    None,
                );
            }
            return;
        }
        for allocation in allocations {
            self.with_block(allocation.grant_id, |block| {
                block.remaining -= allocation.amount.get();
                block.adjusted_out += allocation.amount.get();
            });
        }
        self.totals.available += amount.get();
    }

    fn expire(&mut self, grant_id: GrantId, amount: Credits) {
        self.with_block(grant_id, |block| {
            block.remaining -= amount.get();
            block.expired += amount.get();
        });
        self.totals.available -= amount.get();
        self.totals.expired += amount.get();
    }

    fn with_block(&mut self, grant_id: GrantId, change: impl FnOnce(&mut CreditBlock)) {
        match self
            .blocks
            .iter_mut()
            .find(|block| block.grant_id == grant_id)
        {
            Some(block) => change(block),
            None => debug_assert!(false, "event names unknown credit block {grant_id}"),
        }
    }

    /// `granted + adjusted_net = available + reserved + deducted + expired`, `available >= 0`,
    /// and the totals agree with the blocks. Costs O(blocks) per event in debug builds;
    /// reservations are not re-summed here because a long stream has many of them and replay
    /// would turn quadratic (the property test checks them instead).
    fn debug_assert_ledger(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        let totals = &self.totals;
        let ledger_in = totals.granted + totals.adjusted_net;
        let ledger_out = totals.available + totals.reserved + totals.deducted + totals.expired;
        debug_assert_eq!(ledger_in, ledger_out, "ledger equation broken: {totals:?}");
        debug_assert!(totals.available >= 0, "available went negative: {totals:?}");
        debug_assert!(totals.reserved >= 0, "reserved went negative: {totals:?}");
        let remaining: i64 = self.blocks.iter().map(|block| block.remaining).sum();
        let held: i64 = self.blocks.iter().map(|block| block.reserved).sum();
        debug_assert_eq!(
            remaining, totals.available,
            "blocks disagree with available"
        );
        debug_assert_eq!(held, totals.reserved, "blocks disagree with reserved");
        let balanced = self.blocks.iter().all(CreditBlock::is_balanced);
        debug_assert!(balanced, "unbalanced block");
    }
}
