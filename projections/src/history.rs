//! Async read model of the credit history (`credit_ledger`): one entry per money event
//! of a team (granted, reserved, deducted, refunded, adjusted, expired) with the
//! available and reserved balance it left. Fed by the projector in commit order, which
//! within one team is stream order.

use std::collections::HashMap;

use application::event_store::StoredEvent;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::{TeamCredits, TeamCreditsEvent};
use infrastructure::event_store::{InlineProjection, ProjectionError, Tx};
use infrastructure::{tx_execute_values, tx_fetch_optional};

use crate::decode;

pub struct CreditHistory;

pub const NAME: &str = "credit_history";
pub const TABLES: &[&str] = &["credit_ledger"];

/// A ledger entry's effect, derived from one event.
pub(crate) struct Entry {
    pub(crate) entry_type: &'static str,
    pub(crate) amount: i64,
    pub(crate) available_delta: i64,
    pub(crate) reserved_delta: i64,
    pub(crate) reference: Option<String>,
    pub(crate) operation: Option<&'static str>,
    pub(crate) detail: Option<String>,
    pub(crate) occurred_at: DateTime<Utc>,
}

pub(crate) fn entry_of(event: &TeamCreditsEvent) -> Option<Entry> {
    let entry = |entry_type, amount: i64, available_delta, reserved_delta, reference: String, occurred_at: &DateTime<Utc>| Entry {
        entry_type,
        amount,
        available_delta,
        reserved_delta,
        reference: Some(reference),
        operation: None,
        detail: None,
        occurred_at: *occurred_at,
    };
    Some(match event {
        TeamCreditsEvent::TeamOpened { .. }
        | TeamCreditsEvent::PlanChanged { .. }
        | TeamCreditsEvent::SubscriptionExpired { .. } => return None,
        TeamCreditsEvent::CreditsGranted { grant_id, amount, source, occurred_at, .. } => {
            let mut e = entry("granted", amount.get(), amount.get(), 0, grant_id.to_string(), occurred_at);
            e.detail = serde_json::to_value(source).ok().and_then(|v| v.as_str().map(str::to_owned));
            e
        }
        TeamCreditsEvent::CreditsReserved { reservation_id, amount, operation, occurred_at, .. } => {
            let a = amount.get();
            let mut e = entry("reserved", a, -a, a, reservation_id.to_string(), occurred_at);
            e.operation = Some(operation.as_str());
            e
        }
        TeamCreditsEvent::CreditsDeducted { reservation_id, amount, occurred_at } => {
            entry("deducted", amount.get(), 0, -amount.get(), reservation_id.to_string(), occurred_at)
        }
        TeamCreditsEvent::CreditsRefunded { reservation_id, amount, occurred_at } => {
            let a = amount.get();
            entry("refunded", a, a, -a, reservation_id.to_string(), occurred_at)
        }
        TeamCreditsEvent::CreditsAdjusted { adjustment_id, amount, reason, occurred_at, .. } => {
            let mut e = entry("adjusted", amount.get(), amount.get(), 0, adjustment_id.to_string(), occurred_at);
            e.detail = Some(reason.clone());
            e
        }
        TeamCreditsEvent::CreditsExpired { grant_id, amount, occurred_at } => {
            entry("expired", amount.get(), -amount.get(), 0, grant_id.to_string(), occurred_at)
        }
    })
}

/// The operation of each reservation not yet ended, so that the entries of deductions
/// and refunds (whose events do not carry it) name it too. A reservation ends exactly
/// once, so this holds only the open ones.
#[derive(Default)]
pub(crate) struct OpenReservations(HashMap<String, &'static str>);

impl OpenReservations {
    /// The entry of `event`, with the operation of the reservation it ends. `None` as
    /// operation means the reservation was not seen here: the caller may look it up.
    pub(crate) fn entry_of(&mut self, event: &TeamCreditsEvent) -> Option<Entry> {
        let mut entry = entry_of(event)?;
        match event {
            TeamCreditsEvent::CreditsReserved { reservation_id, operation, .. } => {
                self.0.insert(reservation_id.to_string(), operation.as_str());
            }
            TeamCreditsEvent::CreditsDeducted { reservation_id, .. } | TeamCreditsEvent::CreditsRefunded { reservation_id, .. } => {
                entry.operation = self.0.remove(&reservation_id.to_string());
            }
            _ => {}
        }
        Some(entry)
    }
}

/// True for the entries that end a reservation (they take its operation).
pub(crate) fn ends_reservation(entry: &Entry) -> bool {
    matches!(entry.entry_type, "deducted" | "refunded")
}

/// A team's last entry: (entry_no, available_after, reserved_after).
type Running = (i64, i64, i64);

#[async_trait]
impl InlineProjection for CreditHistory {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn apply(&self, tx: &mut Tx<'_>, events: &[StoredEvent]) -> Result<(), ProjectionError> {
        // Running balances of the teams seen in this batch: one read per team per batch.
        let mut running: HashMap<&str, Running> = HashMap::new();
        let mut rows: Vec<(&str, Running, i64, Entry)> = Vec::new();
        let mut open = OpenReservations::default();
        for stored in events.iter().filter(|e| e.aggregate_type == <TeamCredits as cqrs_es::Aggregate>::TYPE) {
            let Some(mut entry) = open.entry_of(&decode::<TeamCredits>(stored)?) else { continue };
            if ends_reservation(&entry) && entry.operation.is_none() {
                // Reserved in an earlier batch: the inline reservations table (written
                // when the reservation was appended, so always ahead of this projection)
                // has it, by primary key.
                let reservation = entry.reference.as_deref().unwrap_or_default();
                let row = tx_fetch_optional!(
                    &mut *tx,
                    (String,),
                    "SELECT operation FROM credit_reservations WHERE reservation_id = $1",
                    reservation
                )?;
                entry.operation = row.and_then(|(operation,)| operation.parse::<domain::Operation>().ok()).map(|o| o.as_str());
            }
            let team = stored.aggregate_id.as_str();
            let last = match running.get(team) {
                Some(last) => *last,
                None => tx_fetch_optional!(
                    &mut *tx,
                    Running,
                    "SELECT entry_no, available_after, reserved_after FROM credit_ledger \
                     WHERE team_id = $1 ORDER BY entry_no DESC LIMIT 1",
                    team
                )?
                .unwrap_or((0, 0, 0)),
            };
            let next = (last.0 + 1, last.1 + entry.available_delta, last.2 + entry.reserved_delta);
            rows.push((team, next, stored.sequence, entry));
            running.insert(team, next);
        }
        // One multi-row insert per chunk instead of a statement per entry: the projector
        // and a rebuild apply thousands of events per batch.
        tx_execute_values!(
            tx,
            "INSERT INTO credit_ledger (team_id, entry_no, sequence, entry_type, amount, available_after, \
             reserved_after, reference, operation, detail, occurred_at)",
            "",
            11,
            rows,
            |q, row| q
                .bind(row.0)
                .bind(row.1 .0)
                .bind(row.2)
                .bind(row.3.entry_type)
                .bind(row.3.amount)
                .bind(row.1 .1)
                .bind(row.1 .2)
                .bind(&row.3.reference)
                .bind(row.3.operation)
                .bind(&row.3.detail)
                .bind(row.3.occurred_at)
        )?;
        Ok(())
    }
}
