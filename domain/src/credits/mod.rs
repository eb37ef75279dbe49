//! The TeamCredits aggregate: a team's prepaid credits (aggregate id = team id).
//!
//! Owns the ledger rules. Credits arrive as **blocks** (grants, or positive adjustments),
//! each optionally expiring, like Orb/Metronome credit blocks. Spending is **two-phase**,
//! like TigerBeetle pending transfers: accepting a job reserves credits (pending), and the
//! reservation ends exactly once, by deduction (job completed) or refund (failed or
//! cancelled).
//!
//! Rules, all enforced in [`TeamCredits::decide`]:
//! - Invariant, asserted after every event: `granted + adjusted = available + reserved +
//!   deducted + expired`, and `available >= 0`.
//! - Burn-down: spends draw from the block expiring soonest, non-expiring blocks last, ties
//!   in grant order; the allocations are recorded on the event.
//! - A refund returns credits to their blocks; the part returned to a block already past
//!   expiry is expired at once (`CreditsExpired` after `CreditsRefunded`).
//! - Expiry removes only the unspent, unreserved part of blocks with `expires_at <= now`;
//!   reserved credits can still be deducted after their block's expiry.
//! - Idempotency: a repeated grant, reservation or adjustment (same id) or a repeated
//!   deduct/refund of an ended reservation records nothing; the same id with different
//!   content is `IdempotencyConflict`. Plan changes older than the last applied one are
//!   stale and record nothing.
//! - Plan limits are the job engine's concern; the ledger only guards money.

mod apply;
mod burn_down;
mod commands;
mod decide;
mod error;
mod events;
mod state;

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;

pub use commands::{OperatorAction, TeamCreditsCommand};
pub use decide::{ADJUSTMENT_ACTOR_CHARS_MAX, ADJUSTMENT_REASON_CHARS_MAX, TEAM_NAME_CHARS_MAX};
pub use error::TeamCreditsError;
pub use events::{Allocation, GrantSource, TeamCreditsEvent};
pub use state::{
    BlockOrigin, CreditBlock, Reservation, ReservationState, TeamCredits, TeamProfile,
};

impl Aggregate for TeamCredits {
    const TYPE: &'static str = "TeamCredits";
    type Command = TeamCreditsCommand;
    type Event = TeamCreditsEvent;
    type Error = TeamCreditsError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        // Decide against the state before any of the new events, then record them in order.
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.apply_event(event);
    }
}
