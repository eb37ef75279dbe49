//! The auditor's own fold of one team's TeamCredits events: sans-I/O, independent of the
//! aggregate's `apply` (which trusts its events and asserts), so that a stream that breaks
//! a rule is reported event by event instead of panicking or being silently absorbed.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use domain::TeamCreditsEvent;
use serde::Serialize;

use super::Violation;
use crate::history::entry_of;

/// One credit block as the auditor sees it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BlockView {
    pub grant_id: String,
    pub origin: String,
    pub amount: i64,
    pub remaining: i64,
    pub reserved: i64,
    pub deducted: i64,
    pub expired: i64,
    pub adjusted_out: i64,
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

/// One money entry and the balance it left (the same shape as `credit_ledger`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LedgerEntry {
    pub entry_no: i64,
    pub sequence: i64,
    pub entry_type: String,
    pub amount: i64,
    pub available_after: i64,
    pub reserved_after: i64,
    pub reference: Option<String>,
    pub operation: Option<String>,
    pub detail: Option<String>,
    pub occurred_at: DateTime<Utc>,
    /// The event's chain hash (`metadata.hash`), when recorded.
    pub hash: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Totals {
    pub granted: i64,
    pub deducted: i64,
    pub expired: i64,
    pub adjusted: i64,
}

/// A team's ledger folded from its events.
#[derive(Debug, Clone, Default)]
pub struct TeamLedger {
    pub team_id: String,
    pub name: Option<String>,
    pub plan: Option<String>,
    pub available: i64,
    pub reserved: i64,
    pub totals: Totals,
    pub blocks: Vec<BlockView>,
    pub reservations: BTreeMap<String, ReservationView>,
    pub entries: Vec<LedgerEntry>,
    pub last_sequence: i64,
    pub violations: Vec<Violation>,
    /// Whether `entries` is kept (a replay shows them; a verify needs only the balances).
    keep_entries: bool,
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

    fn open_block(&mut self, grant_id: String, origin: &str, amount: i64, expires_at: Option<DateTime<Utc>>, at: DateTime<Utc>) {
        self.blocks.push(BlockView {
            grant_id,
            origin: origin.to_string(),
            amount,
            remaining: amount,
            reserved: 0,
            deducted: 0,
            expired: 0,
            adjusted_out: 0,
            expires_at,
            granted_at: at,
        });
    }

    /// Draws `amount` from a block's `remaining`; a missing block or overdraw is a violation.
    fn draw(&mut self, sequence: i64, grant_id: &str, amount: i64, into: fn(&mut BlockView, i64)) {
        match self.block(grant_id) {
            Some(block) if block.remaining >= amount => {
                block.remaining -= amount;
                into(block, amount);
            }
            Some(block) => {
                let detail = format!("draws {amount} from block {grant_id} holding {}", block.remaining);
                self.violation(sequence, "block-overdrawn", detail);
            }
            None => self.violation(sequence, "unknown-block", format!("names credit block {grant_id}, never opened")),
        }
    }

    /// Folds one event (stream order). `hash` is the event's recorded chain hash.
    pub fn apply(&mut self, sequence: i64, event: TeamCreditsEvent, hash: Option<&str>) {
        self.last_sequence = sequence;
        if let Some(entry) = self.keep_entries.then(|| entry_of(&event)).flatten() {
            let last = self.entries.last().map_or((0, 0), |e| (e.available_after, e.reserved_after));
            self.entries.push(LedgerEntry {
                entry_no: self.entries.len() as i64 + 1,
                sequence,
                entry_type: entry.entry_type.to_string(),
                amount: entry.amount,
                available_after: last.0 + entry.available_delta,
                reserved_after: last.1 + entry.reserved_delta,
                // Deductions and refunds name the operation of the reservation they end.
                operation: entry.operation.map(str::to_string).or_else(|| {
                    let ends = matches!(event, TeamCreditsEvent::CreditsDeducted { .. } | TeamCreditsEvent::CreditsRefunded { .. });
                    let id = entry.reference.as_deref().filter(|_| ends)?;
                    self.reservations.get(id).map(|r| r.operation.clone())
                }),
                reference: entry.reference,
                detail: entry.detail,
                occurred_at: entry.occurred_at,
                hash: hash.map(str::to_string),
            });
        }
        self.apply_money(sequence, event);
        self.check(sequence);
    }

    fn apply_money(&mut self, sequence: i64, event: TeamCreditsEvent) {
        use TeamCreditsEvent as E;
        match event {
            E::TeamOpened { name, plan, .. } => {
                if self.name.is_some() {
                    self.violation(sequence, "opened-twice", "TeamOpened on an open team".into());
                }
                self.name = Some(name);
                self.plan = Some(plan.to_string());
            }
            E::PlanChanged { to, .. } => self.plan = Some(to.to_string()),
            E::SubscriptionExpired { .. } => self.plan = Some(domain::Plan::Free.to_string()),
            E::CreditsGranted { grant_id, amount, source, expires_at, occurred_at, .. } => {
                let origin = serde_json::to_value(source).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
                self.open_block(grant_id.to_string(), &origin, amount.get(), expires_at, occurred_at);
                self.available += amount.get();
                self.totals.granted += amount.get();
            }
            E::CreditsReserved { reservation_id, amount, operation, price_version, allocations, occurred_at } => {
                let id = reservation_id.to_string();
                if self.reservations.contains_key(&id) {
                    self.violation(sequence, "reserved-twice", format!("reservation {id} begins a second time"));
                    return;
                }
                let allocated: i64 = allocations.iter().map(|a| a.amount.get()).sum();
                if allocated != amount.get() {
                    self.violation(sequence, "allocation-mismatch", format!("reservation {id} of {} allocates {allocated}", amount.get()));
                }
                let held: Vec<(String, i64)> = allocations.iter().map(|a| (a.grant_id.to_string(), a.amount.get())).collect();
                for (grant, part) in &held {
                    self.draw(sequence, grant, *part, |b, n| b.reserved += n);
                }
                self.available -= amount.get();
                self.reserved += amount.get();
                self.reservations.insert(id.clone(), ReservationView {
                    reservation_id: id,
                    amount: amount.get(),
                    operation: operation.as_str().to_string(),
                    price_version,
                    state: ReservationEnd::Pending,
                    reserved_at: occurred_at,
                    ended_at: None,
                    sequence,
                    allocations: held,
                });
            }
            E::CreditsDeducted { reservation_id, amount, occurred_at } => {
                self.end(sequence, reservation_id.to_string(), amount.get(), ReservationEnd::Deducted, occurred_at);
            }
            E::CreditsRefunded { reservation_id, amount, occurred_at } => {
                self.end(sequence, reservation_id.to_string(), amount.get(), ReservationEnd::Refunded, occurred_at);
            }
            E::CreditsAdjusted { adjustment_id, amount, allocations, occurred_at, .. } => {
                let allocated: i64 = allocations.iter().map(|a| a.amount.get()).sum();
                if allocated != amount.get().abs() {
                    let detail = format!("adjustment {adjustment_id} of {} allocates {allocated}", amount.get());
                    self.violation(sequence, "allocation-mismatch", detail);
                }
                for allocation in &allocations {
                    let (grant, part) = (allocation.grant_id.to_string(), allocation.amount.get());
                    if amount.is_negative() {
                        self.draw(sequence, &grant, part, |b, n| b.adjusted_out += n);
                    } else {
                        self.open_block(grant, "adjustment", part, None, occurred_at);
                    }
                }
                self.available += amount.get();
                self.totals.adjusted += amount.get();
            }
            E::CreditsExpired { grant_id, amount, .. } => {
                self.draw(sequence, &grant_id.to_string(), amount.get(), |b, n| b.expired += n);
                self.available -= amount.get();
                self.totals.expired += amount.get();
            }
        }
    }

    fn end(&mut self, sequence: i64, id: String, amount: i64, outcome: ReservationEnd, at: DateTime<Utc>) {
        let Some(reservation) = self.reservations.get_mut(&id) else {
            self.violation(sequence, "ended-before-begun", format!("ends reservation {id}, which has not begun"));
            return;
        };
        if reservation.state != ReservationEnd::Pending {
            let detail = format!("ends reservation {id} a second time (already {:?})", reservation.state);
            self.violation(sequence, "ended-twice", detail.to_lowercase());
            return;
        }
        reservation.state = outcome;
        reservation.ended_at = Some(at);
        let (held, allocations) = (reservation.amount, reservation.allocations.clone());
        if held != amount {
            self.violation(sequence, "end-amount-mismatch", format!("ends reservation {id} of {held} with {amount}"));
        }
        for (grant, part) in allocations {
            if let Some(block) = self.block(&grant) {
                block.reserved -= part;
                if outcome == ReservationEnd::Deducted {
                    block.deducted += part;
                } else {
                    block.remaining += part;
                }
            }
        }
        self.reserved -= held;
        if outcome == ReservationEnd::Deducted {
            self.totals.deducted += held;
        } else {
            self.available += held;
        }
    }

    /// The ledger equation, no negative balance, and the blocks agreeing with the totals.
    fn check(&mut self, sequence: i64) {
        let inflow = self.totals.granted + self.totals.adjusted;
        let outflow = self.available + self.reserved + self.totals.deducted + self.totals.expired;
        if inflow != outflow {
            self.violation(sequence, "not-conserved", format!("granted + adjusted = {inflow} but available + reserved + deducted + expired = {outflow}"));
        }
        if self.available < 0 {
            self.violation(sequence, "negative-available", format!("available is {}", self.available));
        }
        if self.reserved < 0 {
            self.violation(sequence, "negative-reserved", format!("reserved is {}", self.reserved));
        }
        let remaining: i64 = self.blocks.iter().map(|b| b.remaining).sum();
        let held: i64 = self.blocks.iter().map(|b| b.reserved).sum();
        if (remaining, held) != (self.available, self.reserved) {
            let detail = format!("blocks hold {remaining} available / {held} reserved, totals say {} / {}", self.available, self.reserved);
            self.violation(sequence, "blocks-disagree", detail);
        }
    }

    /// Blocks that still hold credits, soonest-expiring first (the order they are spent in).
    pub fn open_blocks(&self) -> Vec<BlockView> {
        let mut blocks: Vec<BlockView> = self.blocks.iter().filter(|b| b.remaining > 0 || b.reserved > 0).cloned().collect();
        blocks.sort_by_key(|b| (b.expires_at.is_none(), b.expires_at, b.granted_at));
        blocks
    }

    pub fn open_reservations(&self) -> Vec<ReservationView> {
        self.reservations.values().filter(|r| r.state == ReservationEnd::Pending).cloned().collect()
    }
}
