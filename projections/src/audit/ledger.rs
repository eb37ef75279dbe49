//! The auditor's fold of one team's TeamCredits events: the same [`credit_fold::effect`]
//! of each event that the read models fold, checked against the ledger's rules before it
//! is applied. Independent of the aggregate's `apply` (which trusts its events and
//! asserts), so that a stream that breaks a rule is reported event by event instead of
//! panicking or being silently absorbed.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use domain::TeamCreditsEvent;
use serde::Serialize;

use super::Violation;
use crate::credit_fold::{self, Balance, BlockMoney, Draw, Effect, End, NewBlock, ReservationChange, Running, TeamChange};
pub use crate::credit_fold::{LedgerEntry, Totals};

/// One credit block as the auditor sees it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BlockView {
    pub grant_id: String,
    pub origin: String,
    pub amount: i64,
    #[serde(flatten)]
    pub money: BlockMoney,
    pub expires_at: Option<DateTime<Utc>>,
    pub granted_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ReservationEnd {
    Pending,
    Deducted,
    Refunded,
}

impl From<End> for ReservationEnd {
    fn from(end: End) -> Self {
        match end {
            End::Deducted => ReservationEnd::Deducted,
            End::Refunded => ReservationEnd::Refunded,
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReservationView {
    pub reservation_id: String,
    pub amount: i64,
    pub operation: String,
    pub price_version: i64,
    pub state: ReservationEnd,
    pub reserved_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    /// Stream sequence of the `CreditsReserved` event.
    pub sequence: i64,
    #[serde(skip)]
    allocations: Vec<(String, i64)>,
}

/// A team's ledger folded from its events.
#[derive(Debug, Default)]
pub struct TeamLedger {
    pub team_id: String,
    pub name: Option<String>,
    pub plan: Option<String>,
    pub balance: Balance,
    pub blocks: Vec<BlockView>,
    /// By reservation id (a hash map: a team's every reservation is held, and ids share
    /// long prefixes that make ordered keys slow to compare).
    pub reservations: HashMap<String, ReservationView, foldhash::fast::RandomState>,
    pub entries: Vec<LedgerEntry>,
    pub last_sequence: i64,
    pub violations: Vec<Violation>,
    /// Whether `entries` is kept (a replay shows them; a verify needs only the balances).
    keep_entries: bool,
    running: Running,
}

impl TeamLedger {
    pub fn new(team_id: &str) -> Self {
        Self { team_id: team_id.to_string(), keep_entries: true, ..Self::default() }
    }

    /// A ledger that checks every rule but keeps no entries.
    pub fn without_entries(team_id: &str) -> Self {
        Self { team_id: team_id.to_string(), ..Self::default() }
    }

    fn violation(&mut self, sequence: i64, kind: &'static str, detail: String) {
        self.violations.push(Violation::event("TeamCredits", &self.team_id, sequence, kind, detail));
    }

    fn block(&mut self, grant_id: &str) -> Option<&mut BlockView> {
        self.blocks.iter_mut().find(|b| b.grant_id == grant_id)
    }

    fn open_block(&mut self, block: NewBlock) {
        self.blocks.push(BlockView {
            grant_id: block.grant_id.to_string(),
            origin: block.origin.to_string(),
            amount: block.amount,
            money: BlockMoney::opened(block.amount),
            expires_at: block.expires_at,
            granted_at: block.granted_at,
        });
    }

    /// Draws `amount` from a block's `remaining`; a missing block or overdraw is a violation.
    fn draw(&mut self, sequence: i64, grant_id: &str, into: Draw, amount: i64) {
        match self.block(grant_id) {
            Some(block) if block.money.remaining >= amount => block.money.draw(into, amount),
            Some(block) => {
                let detail = format!("draws {amount} from block {grant_id} holding {}", block.money.remaining);
                self.violation(sequence, "block-overdrawn", detail);
            }
            None => self.violation(sequence, "unknown-block", format!("names credit block {grant_id}, never opened")),
        }
    }

    /// Folds one event (stream order). `hash` is the event's recorded chain hash.
    pub fn apply(&mut self, sequence: i64, event: TeamCreditsEvent, hash: Option<&str>) {
        self.last_sequence = sequence;
        let effect = credit_fold::effect(event);
        if let Some(entry) = effect.entry.as_ref().filter(|_| self.keep_entries).cloned() {
            // The ledger as the events say it, even where they break a rule.
            self.running = self.running.next(&effect.balance);
            let mut entry = entry.at(self.running, sequence, effect.occurred_at);
            if let Some(ReservationChange::Ends { id, .. }) = &effect.reservation {
                // Deductions and refunds name the operation of the reservation they end.
                entry.operation = self.reservations.get(&id.to_string()).map(|r| r.operation.clone());
            }
            entry.hash = hash.map(str::to_string);
            self.entries.push(entry);
        }
        self.apply_effect(sequence, effect);
        self.check(sequence);
    }

    fn apply_effect(&mut self, sequence: i64, effect: Effect) {
        match effect.team {
            Some(TeamChange::Opened { name, plan }) => {
                if self.name.is_some() {
                    self.violation(sequence, "opened-twice", "TeamOpened on an open team".into());
                }
                self.name = Some(name);
                self.plan = Some(plan.to_string());
            }
            Some(TeamChange::Plan(plan)) => self.plan = Some(plan.to_string()),
            None => {}
        }
        match effect.reservation {
            Some(ReservationChange::Ends { id, end, amount, at }) => return self.end(sequence, id.to_string(), amount, end, at),
            Some(ReservationChange::Begins(r)) => {
                let id = r.id.to_string();
                if self.reservations.contains_key(&id) {
                    // Refused whole: its money is not moved again.
                    self.violation(sequence, "reserved-twice", format!("reservation {id} begins a second time"));
                    return;
                }
                let allocated: i64 = r.allocations.iter().map(|(_, part)| part).sum();
                if allocated != r.amount {
                    self.violation(sequence, "allocation-mismatch", format!("reservation {id} of {} allocates {allocated}", r.amount));
                }
                self.reservations.insert(id.clone(), ReservationView {
                    reservation_id: id,
                    amount: r.amount,
                    operation: r.operation.as_str().to_string(),
                    price_version: r.price_version,
                    state: ReservationEnd::Pending,
                    reserved_at: r.reserved_at,
                    ended_at: None,
                    sequence,
                    allocations: r.allocations.iter().map(|(grant, part)| (grant.to_string(), *part)).collect(),
                });
            }
            None => {}
        }
        if let Some(adjusted) = effect.entry.as_ref().filter(|e| e.entry_type == "adjusted") {
            // A positive adjustment opens its block with the amount, a negative one draws it.
            let moved = effect.draws.iter().map(|d| d.2).sum::<i64>() + effect.opens.iter().map(|b| b.amount).sum::<i64>();
            if moved != adjusted.amount.abs() {
                let detail = format!("adjustment {} of {} allocates {moved}", adjusted.reference, adjusted.amount);
                self.violation(sequence, "allocation-mismatch", detail);
            }
        }
        for block in effect.opens {
            self.open_block(block);
        }
        for (grant_id, into, amount) in effect.draws {
            self.draw(sequence, &grant_id.to_string(), into, amount);
        }
        self.balance += effect.balance;
    }

    /// Ends a reservation; the balance moves by what the reservation holds (an ending of
    /// another amount is a violation, and the held amount is what moves).
    fn end(&mut self, sequence: i64, id: String, amount: i64, end: End, at: DateTime<Utc>) {
        let Some(reservation) = self.reservations.get_mut(&id) else {
            self.violation(sequence, "ended-before-begun", format!("ends reservation {id}, which has not begun"));
            return;
        };
        if reservation.state != ReservationEnd::Pending {
            let detail = format!("ends reservation {id} a second time (already {:?})", reservation.state);
            self.violation(sequence, "ended-twice", detail.to_lowercase());
            return;
        }
        reservation.state = end.into();
        reservation.ended_at = Some(at);
        let (held, allocations) = (reservation.amount, reservation.allocations.clone());
        if held != amount {
            self.violation(sequence, "end-amount-mismatch", format!("ends reservation {id} of {held} with {amount}"));
        }
        for (grant, part) in allocations {
            if let Some(block) = self.block(&grant) {
                block.money.release(end, part);
            }
        }
        // The effect of an ending of the amount held.
        let mut ending = Balance { reserved: -held, ..Balance::default() };
        match end {
            End::Deducted => ending.totals.deducted = held,
            End::Refunded => ending.available = held,
        }
        self.balance += ending;
    }

    /// The ledger equation, no negative balance, and the blocks agreeing with the totals.
    fn check(&mut self, sequence: i64) {
        let b = self.balance;
        if !b.conserved() {
            let (inflow, outflow) = (b.totals.granted + b.totals.adjusted, b.available + b.reserved + b.totals.deducted + b.totals.expired);
            self.violation(sequence, "not-conserved", format!("granted + adjusted = {inflow} but available + reserved + deducted + expired = {outflow}"));
        }
        if b.available < 0 {
            self.violation(sequence, "negative-available", format!("available is {}", b.available));
        }
        if b.reserved < 0 {
            self.violation(sequence, "negative-reserved", format!("reserved is {}", b.reserved));
        }
        let remaining: i64 = self.blocks.iter().map(|b| b.money.remaining).sum();
        let held: i64 = self.blocks.iter().map(|b| b.money.reserved).sum();
        if (remaining, held) != (b.available, b.reserved) {
            let detail = format!("blocks hold {remaining} available / {held} reserved, totals say {} / {}", b.available, b.reserved);
            self.violation(sequence, "blocks-disagree", detail);
        }
    }

    /// Blocks that still hold credits, soonest-expiring first (the order they are spent in).
    pub fn open_blocks(&self) -> Vec<BlockView> {
        let mut blocks: Vec<BlockView> = self.blocks.iter().filter(|b| b.money.remaining > 0 || b.money.reserved > 0).cloned().collect();
        blocks.sort_by_key(|b| (b.expires_at.is_none(), b.expires_at, b.granted_at));
        blocks
    }

    pub fn open_reservations(&self) -> Vec<ReservationView> {
        let mut open: Vec<ReservationView> = self.reservations.values().filter(|r| r.state == ReservationEnd::Pending).cloned().collect();
        open.sort_by(|a, b| a.reservation_id.cmp(&b.reservation_id));
        open
    }
}
