//! What a TeamCredits event means for the read models, written once (sans-I/O): its
//! [`effect`] on the team's balance and totals, on its credit blocks, on its reservations
//! and on its ledger. Every consumer folds these effects and only turns the result into
//! its own storage:
//!
//! - the live projection (`balances`, both stores) sums an append's effects into net
//!   changes and writes them set-based;
//! - the rebuild's bulk pass (`rebuild/fold.rs`) folds them into rows in memory;
//! - the credit history (`history`) and the rebuild write the ledger entries;
//! - the audit (`audit::ledger`) folds them and checks each against the rules;
//! - the API and the dashboard read the same [`Totals`] and [`LedgerEntry`].
//!
//! **Every value a read model holds is an order-independent function of the events.**
//! Appends of one team stream arrive in sequence order, but not in `occurred_at` order (a
//! command that lost an optimistic-concurrency race is decided again with its earlier
//! time; workers' clocks differ), and a rebuild groups events into other batches than the
//! appends did. So a time a row holds is either an event's own time (written once: a
//! block's `granted_at`, a reservation's `reserved_at`/`ended_at`, an entry's
//! `occurred_at`) or the **latest** time of the events folded into it
//! ([`latest`]: a team's `updated_at`), never the time of the last append; money columns
//! are sums of deltas; the plan is the last one in stream order.

use std::collections::HashMap;
use std::ops::AddAssign;

use chrono::{DateTime, Utc};
use domain::{BlockOrigin, GrantId, JobId, Operation, Plan, TeamCreditsEvent};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A team's money totals since it opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Totals {
    pub granted: i64,
    pub deducted: i64,
    pub expired: i64,
    /// Net of positive and negative adjustments.
    pub adjusted: i64,
}

impl AddAssign for Totals {
    fn add_assign(&mut self, other: Self) {
        self.granted += other.granted;
        self.deducted += other.deducted;
        self.expired += other.expired;
        self.adjusted += other.adjusted;
    }
}

/// A team's balance (the money columns of `team_balances`), or a change of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Balance {
    /// Credits that can be spent now.
    pub available: i64,
    /// Credits held by reservations not ended.
    pub reserved: i64,
    pub totals: Totals,
}

impl AddAssign for Balance {
    fn add_assign(&mut self, other: Self) {
        self.available += other.available;
        self.reserved += other.reserved;
        self.totals += other.totals;
    }
}

impl Balance {
    /// `granted + adjusted = available + reserved + deducted + expired`.
    pub fn conserved(&self) -> bool {
        self.totals.granted + self.totals.adjusted == self.available + self.reserved + self.totals.deducted + self.totals.expired
    }
}

/// Where drawn credits of a block go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Draw {
    /// Held by a reservation.
    Reserve,
    /// Taken by a negative adjustment.
    AdjustOut,
    /// Gone past the block's expiry.
    Expire,
}

/// How a reservation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum End {
    /// Spent: the job completed.
    Deducted,
    /// Returned to its blocks: the job failed or was cancelled.
    Refunded,
}

impl End {
    /// The `credit_reservations.state` (and ledger entry type) of the ending.
    pub const fn as_str(self) -> &'static str {
        match self {
            End::Deducted => "deducted",
            End::Refunded => "refunded",
        }
    }
}

/// A credit block's money (the money columns of `credit_grants`), or a change of it.
/// Always `amount = remaining + reserved + deducted + expired + adjusted_out`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockMoney {
    /// Spendable now.
    pub remaining: i64,
    /// Held by pending reservations.
    pub reserved: i64,
    pub deducted: i64,
    pub expired: i64,
    pub adjusted_out: i64,
}

impl BlockMoney {
    /// A block just opened with `amount`.
    pub fn opened(amount: i64) -> Self {
        Self { remaining: amount, ..Self::default() }
    }

    /// `amount` leaves `remaining` for `into`.
    pub fn draw(&mut self, into: Draw, amount: i64) {
        self.remaining -= amount;
        match into {
            Draw::Reserve => self.reserved += amount,
            Draw::AdjustOut => self.adjusted_out += amount,
            Draw::Expire => self.expired += amount,
        }
    }

    /// `amount` held by a reservation that ended as `end`: spent, or back to `remaining`.
    pub fn release(&mut self, end: End, amount: i64) {
        self.reserved -= amount;
        match end {
            End::Deducted => self.deducted += amount,
            End::Refunded => self.remaining += amount,
        }
    }
}

impl AddAssign for BlockMoney {
    fn add_assign(&mut self, other: Self) {
        self.remaining += other.remaining;
        self.reserved += other.reserved;
        self.deducted += other.deducted;
        self.expired += other.expired;
        self.adjusted_out += other.adjusted_out;
    }
}

/// `credit_grants.origin` of a block.
pub const fn origin_name(origin: BlockOrigin) -> &'static str {
    match origin {
        BlockOrigin::Stripe => "stripe",
        BlockOrigin::Admin => "admin",
        BlockOrigin::Plan => "plan",
        BlockOrigin::Adjustment => "adjustment",
    }
}

/// A credit block an event opens (a grant, or a positive adjustment's own block).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBlock {
    pub grant_id: GrantId,
    pub origin: &'static str,
    pub amount: i64,
    pub expires_at: Option<DateTime<Utc>>,
    pub granted_at: DateTime<Utc>,
}

/// A reservation an event begins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewReservation {
    pub id: JobId,
    pub amount: i64,
    pub operation: Operation,
    pub price_version: i64,
    pub reserved_at: DateTime<Utc>,
    /// The credits it holds, by block.
    pub allocations: Vec<(GrantId, i64)>,
}

/// What an event does to the team's row besides its money.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TeamChange {
    /// The row begins (the first opening stands).
    Opened { name: String, plan: Plan },
    /// The plan is now this one.
    Plan(Plan),
}

/// What an event does to a reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReservationChange {
    Begins(NewReservation),
    /// Ends it: its allocations are released from their blocks ([`BlockMoney::release`]).
    Ends { id: JobId, end: End, amount: i64, at: DateTime<Utc> },
}

/// A ledger entry's content, before its place in the team's ledger is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub entry_type: &'static str,
    /// Credits moved (signed for adjustments).
    pub amount: i64,
    pub reference: String,
    /// The operation of a reservation; a deduction's or refund's is its reservation's,
    /// which the event does not carry: the consumer fills it from the reservation it
    /// knows ([`OpenReservations`], or its table).
    pub operation: Option<&'static str>,
    /// Grant source or adjustment reason; for an operator's entry, who and why.
    pub detail: Option<String>,
}

/// One event's whole meaning for the read models.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effect {
    /// The event's time: the team row's `updated_at` is the [`latest`] of them.
    pub occurred_at: DateTime<Utc>,
    pub team: Option<TeamChange>,
    /// The change of the team's balance and totals.
    pub balance: Balance,
    pub opens: Vec<NewBlock>,
    /// Credits drawn from existing blocks: (block, where to, amount).
    pub draws: Vec<(GrantId, Draw, i64)>,
    pub reservation: Option<ReservationChange>,
    /// The ledger entry (money events only).
    pub entry: Option<Entry>,
}

/// The latest of two times: how a row that many events touch takes their times, whatever
/// order and batches they come in.
pub fn latest(seen: Option<DateTime<Utc>>, at: DateTime<Utc>) -> DateTime<Utc> {
    seen.map_or(at, |seen| seen.max(at))
}

/// What `event` means for the read models.
pub fn effect(event: TeamCreditsEvent) -> Effect {
    use TeamCreditsEvent as E;
    let occurred_at = event.occurred_at();
    let mut effect = Effect {
        occurred_at,
        team: None,
        balance: Balance::default(),
        opens: Vec::new(),
        draws: Vec::new(),
        reservation: None,
        entry: None,
    };
    let entry = |entry_type, amount, reference: String| Some(Entry { entry_type, amount, reference, operation: None, detail: None });
    match event {
        E::TeamOpened { name, plan, .. } => effect.team = Some(TeamChange::Opened { name, plan }),
        E::PlanChanged { to, .. } => effect.team = Some(TeamChange::Plan(to)),
        E::SubscriptionExpired { .. } => effect.team = Some(TeamChange::Plan(Plan::Free)),
        E::CreditsGranted { grant_id, amount, source, expires_at, .. } => {
            let a = amount.get();
            effect.balance.available = a;
            effect.balance.totals.granted = a;
            let origin = origin_name(BlockOrigin::from(source));
            effect.opens.push(NewBlock { grant_id, origin, amount: a, expires_at, granted_at: occurred_at });
            effect.entry = entry("granted", a, grant_id.to_string());
            if let Some(entry) = effect.entry.as_mut() {
                entry.detail = Some(origin.to_string());
            }
        }
        E::CreditsReserved { reservation_id, amount, operation, price_version, allocations, .. } => {
            let a = amount.get();
            effect.balance.available = -a;
            effect.balance.reserved = a;
            let held: Vec<(GrantId, i64)> = allocations.iter().map(|x| (x.grant_id, x.amount.get())).collect();
            effect.draws = held.iter().map(|(grant, part)| (*grant, Draw::Reserve, *part)).collect();
            effect.entry = entry("reserved", a, reservation_id.to_string());
            if let Some(entry) = effect.entry.as_mut() {
                entry.operation = Some(operation.as_str());
            }
            effect.reservation = Some(ReservationChange::Begins(NewReservation {
                id: reservation_id,
                amount: a,
                operation,
                price_version,
                reserved_at: occurred_at,
                allocations: held,
            }));
        }
        E::CreditsDeducted { reservation_id, amount, .. } => {
            let a = amount.get();
            effect.balance.reserved = -a;
            effect.balance.totals.deducted = a;
            effect.entry = entry("deducted", a, reservation_id.to_string());
            effect.reservation = Some(ReservationChange::Ends { id: reservation_id, end: End::Deducted, amount: a, at: occurred_at });
        }
        E::CreditsRefunded { reservation_id, amount, .. } => {
            let a = amount.get();
            effect.balance.available = a;
            effect.balance.reserved = -a;
            effect.entry = entry("refunded", a, reservation_id.to_string());
            effect.reservation = Some(ReservationChange::Ends { id: reservation_id, end: End::Refunded, amount: a, at: occurred_at });
        }
        E::CreditsAdjusted { adjustment_id, amount, reason, allocations, .. } => {
            let a = amount.get();
            effect.balance.available = a;
            effect.balance.totals.adjusted = a;
            for allocation in allocations {
                let (grant_id, part) = (allocation.grant_id, allocation.amount.get());
                if amount.is_negative() {
                    effect.draws.push((grant_id, Draw::AdjustOut, part));
                } else {
                    // A positive adjustment opens its own non-expiring block.
                    let origin = origin_name(BlockOrigin::Adjustment);
                    effect.opens.push(NewBlock { grant_id, origin, amount: part, expires_at: None, granted_at: occurred_at });
                }
            }
            effect.entry = entry("adjusted", a, adjustment_id.to_string());
            if let Some(entry) = effect.entry.as_mut() {
                entry.detail = Some(reason);
            }
        }
        E::CreditsExpired { grant_id, amount, .. } => {
            let a = amount.get();
            effect.balance.available = -a;
            effect.balance.totals.expired = a;
            effect.draws.push((grant_id, Draw::Expire, a));
            effect.entry = entry("expired", a, grant_id.to_string());
        }
        // Dispatch is the job engine's (`jobs` projection): no money, no entry; the
        // operator's act beside it makes the ledger entry.
        E::DispatchPaused { .. } | E::DispatchResumed { .. } => {}
        E::OperatorActed { act, action, subject, .. } => {
            // Moves no credits: an entry of 0 that says who did what and why, right after
            // the entries of the action itself.
            effect.entry = entry("operator", 0, subject.unwrap_or_default());
            if let Some(entry) = effect.entry.as_mut() {
                entry.detail = Some(format!("{} by {}", action.as_str(), act.describe()));
            }
        }
    }
    effect
}

/// Every type of ledger entry.
pub const ENTRY_TYPES: &[&str] = &["granted", "reserved", "deducted", "refunded", "adjusted", "expired", "operator"];

/// One ledger entry and the balance it left (a row of `credit_ledger`; the audit adds the
/// event's chain hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct LedgerEntry {
    /// Position in the team's ledger, from 1.
    pub entry_no: i64,
    /// Stream sequence of the event.
    pub sequence: i64,
    pub entry_type: String,
    /// Credits moved (signed for adjustments).
    pub amount: i64,
    pub available_after: i64,
    pub reserved_after: i64,
    /// Grant, reservation (job) or adjustment id.
    pub reference: Option<String>,
    pub operation: Option<String>,
    /// Grant source or adjustment reason.
    pub detail: Option<String>,
    pub occurred_at: DateTime<Utc>,
    /// The event's chain hash (`metadata.hash`): in the audit's replay only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[sqlx(default)]
    pub hash: Option<String>,
}

impl LedgerEntry {
    /// The job an entry is about: a reservation's id is its job's (reserved, deducted,
    /// refunded); other entries name grants or adjustments.
    pub fn job_id(&self) -> Option<&str> {
        matches!(self.entry_type.as_str(), "reserved" | "deducted" | "refunded").then_some(self.reference.as_deref()).flatten()
    }
}

/// Where a team's ledger stands: its last entry's number and the balance it left.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Running {
    pub entry_no: i64,
    pub available: i64,
    pub reserved: i64,
}

impl Running {
    /// The running balance after an entry that changed the balance by `balance`.
    pub fn next(self, balance: &Balance) -> Running {
        Running { entry_no: self.entry_no + 1, available: self.available + balance.available, reserved: self.reserved + balance.reserved }
    }
}

impl Entry {
    /// The entry placed in the ledger: `running` is where the ledger stands after it.
    pub fn at(self, running: Running, sequence: i64, occurred_at: DateTime<Utc>) -> LedgerEntry {
        LedgerEntry {
            entry_no: running.entry_no,
            sequence,
            entry_type: self.entry_type.to_string(),
            amount: self.amount,
            available_after: running.available,
            reserved_after: running.reserved,
            reference: Some(self.reference),
            operation: self.operation.map(str::to_string),
            detail: self.detail,
            occurred_at,
            hash: None,
        }
    }
}

/// The operation of each reservation not yet ended, so that the entries of deductions and
/// refunds (whose events do not carry it) name it too. A reservation ends exactly once,
/// so this holds only the open ones.
#[derive(Debug, Default)]
pub struct OpenReservations(HashMap<JobId, &'static str>);

impl OpenReservations {
    /// Remembers a begun reservation's operation and gives an ending entry its
    /// reservation's. Leaves `None` for a reservation not seen here: the caller may look
    /// it up.
    pub fn name_operation(&mut self, effect: &mut Effect) {
        match (&effect.reservation, effect.entry.as_mut()) {
            (Some(ReservationChange::Begins(r)), _) => {
                self.0.insert(r.id, r.operation.as_str());
            }
            (Some(ReservationChange::Ends { id, .. }), Some(entry)) => entry.operation = self.0.remove(id),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::{Allocation, Credits, GrantSource, IdempotencyKey};

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).expect("time")
    }

    #[test]
    fn a_reservation_moves_credits_from_available_to_its_blocks_reserved() {
        let grant = GrantId::new(uuid::Uuid::now_v7());
        let job = JobId::new(uuid::Uuid::now_v7());
        let granted = effect(TeamCreditsEvent::CreditsGranted {
            grant_id: grant,
            amount: Credits::parse(10).expect("credits"),
            source: GrantSource::Stripe,
            expires_at: None,
            key: IdempotencyKey::parse("k").expect("key"),
            occurred_at: at(0),
        });
        let reserved = effect(TeamCreditsEvent::CreditsReserved {
            reservation_id: job,
            amount: Credits::parse(4).expect("credits"),
            operation: Operation::ImageGeneration,
            price_version: 1,
            allocations: vec![Allocation { grant_id: grant, amount: Credits::parse(4).expect("credits") }],
            occurred_at: at(-5),
        });
        let mut balance = granted.balance;
        balance += reserved.balance;
        assert_eq!((balance.available, balance.reserved, balance.totals.granted), (6, 4, 10));
        assert!(balance.conserved());
        let mut block = BlockMoney::opened(granted.opens[0].amount);
        for (_, into, part) in &reserved.draws {
            block.draw(*into, *part);
        }
        block.release(End::Refunded, 4);
        assert_eq!(block, BlockMoney::opened(10));
        assert_eq!(granted.entry.as_ref().and_then(|e| e.detail.as_deref()), Some("stripe"));
        // An earlier time after a later one: the row keeps the latest.
        assert_eq!(latest(Some(granted.occurred_at), reserved.occurred_at), at(0));
    }
}
