//! Async read model of the credit history (`credit_ledger`): one entry per money event
//! of a team (granted, reserved, deducted, refunded, adjusted, expired) with the
//! available and reserved balance it left. Fed by the projector in commit order, which
//! within one team is stream order. Each entry is [`credit_fold::effect`]'s, placed after
//! the team's last one.

use std::collections::HashMap;

use application::event_store::StoredEvent;
use async_trait::async_trait;
use domain::TeamCredits;
use infrastructure::event_store::{InlineProjection, ProjectionError, Tx};
use infrastructure::{tx_execute_values, tx_fetch_optional};

use crate::credit_fold::{self, LedgerEntry, OpenReservations, ReservationChange, Running};
use crate::decode;

pub struct CreditHistory;

pub const NAME: &str = "credit_history";
pub const TABLES: &[&str] = &["credit_ledger"];

#[async_trait]
impl InlineProjection for CreditHistory {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn apply(&self, tx: &mut Tx<'_>, events: &[StoredEvent]) -> Result<(), ProjectionError> {
        // Running balances of the teams seen in this batch: one read per team per batch.
        let mut running: HashMap<&str, Running> = HashMap::new();
        let mut rows: Vec<(&str, LedgerEntry)> = Vec::new();
        let mut open = OpenReservations::default();
        for stored in events.iter().filter(|e| e.aggregate_type == <TeamCredits as cqrs_es::Aggregate>::TYPE) {
            let mut effect = credit_fold::effect(decode::<TeamCredits>(stored)?);
            open.name_operation(&mut effect);
            let Some(mut entry) = effect.entry.take() else { continue };
            if matches!(effect.reservation, Some(ReservationChange::Ends { .. })) && entry.operation.is_none() {
                // Reserved in an earlier batch: the inline reservations table (written
                // when the reservation was appended, so always ahead of this projection)
                // has it, by primary key.
                let row = tx_fetch_optional!(
                    &mut *tx,
                    (String,),
                    "SELECT operation FROM credit_reservations WHERE reservation_id = $1",
                    &entry.reference
                )?;
                entry.operation = row.and_then(|(operation,)| operation.parse::<domain::Operation>().ok()).map(|o| o.as_str());
            }
            let team = stored.aggregate_id.as_str();
            let last = match running.get(team) {
                Some(last) => *last,
                None => tx_fetch_optional!(
                    &mut *tx,
                    (i64, i64, i64),
                    "SELECT entry_no, available_after, reserved_after FROM credit_ledger \
                     WHERE team_id = $1 ORDER BY entry_no DESC LIMIT 1",
                    team
                )?
                .map_or(Running::default(), |(entry_no, available, reserved)| Running { entry_no, available, reserved }),
            };
            let next = last.next(&effect.balance);
            rows.push((team, entry.at(next, stored.sequence, effect.occurred_at)));
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
                .bind(row.1.entry_no)
                .bind(row.1.sequence)
                .bind(&row.1.entry_type)
                .bind(row.1.amount)
                .bind(row.1.available_after)
                .bind(row.1.reserved_after)
                .bind(&row.1.reference)
                .bind(&row.1.operation)
                .bind(&row.1.detail)
                .bind(row.1.occurred_at)
        )?;
        Ok(())
    }
}
