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
use infrastructure::{tx_execute_rows, tx_fetch_by_keys};

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
        // Each money event's entry, in log order; the operation of a reservation opened
        // in this batch is named from it.
        let mut decided: Vec<(&StoredEvent, credit_fold::Effect, credit_fold::Entry, bool)> = Vec::new();
        let mut open = OpenReservations::default();
        // Reservations opened in earlier batches whose end names no operation yet.
        let mut unnamed: Vec<String> = Vec::new();
        for stored in events.iter().filter(|e| e.aggregate_type == <TeamCredits as cqrs_es::Aggregate>::TYPE) {
            let mut effect = credit_fold::effect(decode::<TeamCredits>(stored)?);
            open.name_operation(&mut effect);
            let Some(entry) = effect.entry.take() else { continue };
            let named_earlier = matches!(effect.reservation, Some(ReservationChange::Ends { .. })) && entry.operation.is_none();
            if named_earlier {
                unnamed.push(entry.reference.clone());
            }
            decided.push((stored, effect, entry, named_earlier));
        }
        if decided.is_empty() {
            return Ok(());
        }
        // Two reads for the whole batch, not one per team and one per ending: the inline
        // reservations table (written when a reservation was appended, so always ahead of
        // this projection) names the operations; each team's last entry is where its
        // ledger stands.
        let operations: HashMap<String, &'static str> = tx_fetch_by_keys!(
            &mut *tx,
            (String, String),
            "SELECT reservation_id, operation FROM credit_reservations WHERE reservation_id = ANY($1::text[])",
            "SELECT reservation_id, operation FROM credit_reservations WHERE reservation_id = $1",
            &unnamed.iter().map(String::as_str).collect::<Vec<_>>()
        )?
        .into_iter()
        .filter_map(|(reservation, operation)| Some((reservation, operation.parse::<domain::Operation>().ok()?.as_str())))
        .collect();
        let mut teams: Vec<&str> = decided.iter().map(|(stored, ..)| stored.aggregate_id.as_str()).collect();
        teams.sort_unstable();
        teams.dedup();
        let mut running: HashMap<String, Running> = tx_fetch_by_keys!(
            &mut *tx,
            (String, i64, i64, i64),
            "SELECT t.team_id, l.entry_no, l.available_after, l.reserved_after FROM UNNEST($1::text[]) AS t(team_id) \
             CROSS JOIN LATERAL (SELECT entry_no, available_after, reserved_after FROM credit_ledger \
                WHERE team_id = t.team_id ORDER BY entry_no DESC LIMIT 1) AS l",
            "SELECT team_id, entry_no, available_after, reserved_after FROM credit_ledger \
             WHERE team_id = $1 ORDER BY entry_no DESC LIMIT 1",
            &teams
        )?
        .into_iter()
        .map(|(team, entry_no, available, reserved)| (team, Running { entry_no, available, reserved }))
        .collect();
        let mut rows: Vec<(&str, LedgerEntry)> = Vec::with_capacity(decided.len());
        for (stored, effect, mut entry, named_earlier) in decided {
            if named_earlier {
                entry.operation = operations.get(&entry.reference).copied();
            }
            let team = stored.aggregate_id.as_str();
            // A team with no entry yet gets its key once; the others are moved in place.
            let last = match running.get_mut(team) {
                Some(last) => last,
                None => running.entry(team.to_string()).or_default(),
            };
            *last = last.next(&effect.balance);
            rows.push((team, entry.at(*last, stored.sequence, effect.occurred_at)));
        }
        // One multi-row insert per chunk instead of a statement per entry: the projector
        // and a rebuild apply thousands of events per batch.
        tx_execute_rows!(
            tx,
            "INSERT INTO credit_ledger (team_id, entry_no, sequence, entry_type, amount, available_after, \
             reserved_after, reference, operation, detail, occurred_at)",
            "",
            rows,
            [
                "text" => |row| row.0,
                "bigint" => |row| row.1.entry_no,
                "bigint" => |row| row.1.sequence,
                "text" => |row| row.1.entry_type.as_str(),
                "bigint" => |row| row.1.amount,
                "bigint" => |row| row.1.available_after,
                "bigint" => |row| row.1.reserved_after,
                "text" => |row| row.1.reference.as_deref(),
                "text" => |row| row.1.operation.as_deref(),
                "text" => |row| row.1.detail.as_deref(),
                "timestamptz" => |row| row.1.occurred_at,
            ]
        )?;
        Ok(())
    }
}
