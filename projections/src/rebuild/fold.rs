//! In-memory folds of the TeamCredits events into the rows of a projection's tables, for the
//! bulk pass of a rebuild on PostgreSQL (sans-I/O: events in, columns of rows out).
//!
//! Each fold produces exactly the rows its projection's `apply` writes (`balances.rs`,
//! `history.rs`): both fold the same [`credit_fold::effect`] of each event, this one into
//! whole rows in memory — the rebuild tests diff the result against the live tables. Rows whose
//! content is final (a ledger entry, an allocation, an ended reservation) leave memory as
//! soon as they are known; only the state still open (teams, blocks, pending reservations)
//! is held, which is what the live tables hold anyway.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use domain::{GrantId, JobId, TeamCreditsEvent};

use super::columns::{Column, Insert};
use crate::credit_fold::{self, latest, Balance, BlockMoney, End, OpenReservations, ReservationChange, Running, TeamChange};
use crate::{balances, history};

/// A projection whose bulk pass is a fold over the TeamCredits streams.
pub(super) trait Fold: Send {
    /// Folds one event of `team`'s stream (stream order per team).
    fn fold(&mut self, team: &str, sequence: i64, event: TeamCreditsEvent) -> Result<(), String>;
    /// Inserts of rows that are final, once at least `rows_min` of a table are ready.
    fn ready(&mut self, rows_min: usize) -> Vec<Insert>;
    /// Inserts of everything still held, at the end of the bulk pass.
    fn finish(&mut self) -> Vec<Insert>;
}

/// The fold of a projection, if it has one.
pub(super) fn for_projection(name: &str) -> Option<Box<dyn Fold>> {
    match name {
        balances::NAME => Some(Box::new(Balances::default())),
        history::NAME => Some(Box::new(Ledger::default())),
        _ => None,
    }
}

// ---- credit_history: credit_ledger ----

#[derive(Default)]
struct Ledger {
    /// Where each team's ledger stands.
    running: HashMap<String, Running>,
    /// Deductions and refunds take the operation of their reservation from here.
    open: OpenReservations,
    rows: LedgerRows,
}

#[derive(Default)]
struct LedgerRows {
    team_id: Vec<String>,
    entry_no: Vec<i64>,
    sequence: Vec<i64>,
    entry_type: Vec<&'static str>,
    amount: Vec<i64>,
    available_after: Vec<i64>,
    reserved_after: Vec<i64>,
    reference: Vec<Option<String>>,
    operation: Vec<Option<&'static str>>,
    detail: Vec<Option<String>>,
    occurred_at: Vec<DateTime<Utc>>,
}

impl LedgerRows {
    fn insert(self) -> Insert {
        Insert::new(
            "credit_ledger",
            vec![
                ("team_id", Column::Text(self.team_id)),
                ("entry_no", Column::Int(self.entry_no)),
                ("sequence", Column::Int(self.sequence)),
                ("entry_type", Column::Static(self.entry_type)),
                ("amount", Column::Int(self.amount)),
                ("available_after", Column::Int(self.available_after)),
                ("reserved_after", Column::Int(self.reserved_after)),
                ("reference", Column::OptText(self.reference)),
                ("operation", Column::OptStatic(self.operation)),
                ("detail", Column::OptText(self.detail)),
                ("occurred_at", Column::Time(self.occurred_at)),
            ],
        )
    }
}

impl Fold for Ledger {
    fn fold(&mut self, team: &str, sequence: i64, event: TeamCreditsEvent) -> Result<(), String> {
        let mut effect = credit_fold::effect(event);
        self.open.name_operation(&mut effect);
        let Some(entry) = effect.entry else { return Ok(()) };
        let running = match self.running.get_mut(team) {
            Some(running) => running,
            None => self.running.entry(team.to_string()).or_default(),
        };
        *running = running.next(&effect.balance);
        let rows = &mut self.rows;
        rows.team_id.push(team.to_string());
        rows.entry_no.push(running.entry_no);
        rows.sequence.push(sequence);
        rows.entry_type.push(entry.entry_type);
        rows.amount.push(entry.amount);
        rows.available_after.push(running.available);
        rows.reserved_after.push(running.reserved);
        rows.reference.push(Some(entry.reference));
        rows.operation.push(entry.operation);
        rows.detail.push(entry.detail);
        rows.occurred_at.push(effect.occurred_at);
        Ok(())
    }

    fn ready(&mut self, rows_min: usize) -> Vec<Insert> {
        if self.rows.team_id.len() < rows_min.max(1) {
            return Vec::new();
        }
        vec![std::mem::take(&mut self.rows).insert()]
    }

    fn finish(&mut self) -> Vec<Insert> {
        self.ready(1)
    }
}

// ---- team_balances: team_balances, credit_grants, credit_reservations, allocations ----

struct Team {
    name: String,
    plan: String,
    balance: Balance,
    opened_at: DateTime<Utc>,
    /// The latest `occurred_at` of the team's events (like the live row's `GREATEST`).
    updated_at: DateTime<Utc>,
}

struct Grant {
    team: String,
    origin: &'static str,
    amount: i64,
    money: BlockMoney,
    expires_at: Option<DateTime<Utc>>,
    granted_at: DateTime<Utc>,
}

struct Pending {
    team: String,
    amount: i64,
    operation: &'static str,
    price_version: i64,
    reserved_at: DateTime<Utc>,
    allocations: Vec<(GrantId, i64)>,
}

#[derive(Default)]
struct Balances {
    teams: HashMap<String, Team>,
    /// Blocks in the order they were opened (the table's insertion order).
    grants: Vec<(GrantId, Grant)>,
    grant_index: HashMap<GrantId, usize>,
    pending: HashMap<JobId, Pending>,
    reservations: ReservationRows,
    allocations: AllocationRows,
}

#[derive(Default)]
struct ReservationRows {
    reservation_id: Vec<String>,
    team_id: Vec<String>,
    amount: Vec<i64>,
    operation: Vec<&'static str>,
    price_version: Vec<i64>,
    state: Vec<&'static str>,
    reserved_at: Vec<DateTime<Utc>>,
    ended_at: Vec<Option<DateTime<Utc>>>,
}

impl ReservationRows {
    fn push(&mut self, id: JobId, r: Pending, state: &'static str, ended_at: Option<DateTime<Utc>>) {
        self.reservation_id.push(id.to_string());
        self.team_id.push(r.team);
        self.amount.push(r.amount);
        self.operation.push(r.operation);
        self.price_version.push(r.price_version);
        self.state.push(state);
        self.reserved_at.push(r.reserved_at);
        self.ended_at.push(ended_at);
    }

    fn insert(self) -> Insert {
        Insert::new(
            "credit_reservations",
            vec![
                ("reservation_id", Column::Text(self.reservation_id)),
                ("team_id", Column::Text(self.team_id)),
                ("amount", Column::Int(self.amount)),
                ("operation", Column::Static(self.operation)),
                ("price_version", Column::Int(self.price_version)),
                ("state", Column::Static(self.state)),
                ("reserved_at", Column::Time(self.reserved_at)),
                ("ended_at", Column::OptTime(self.ended_at)),
            ],
        )
    }
}

#[derive(Default)]
struct AllocationRows {
    reservation_id: Vec<String>,
    grant_id: Vec<String>,
    amount: Vec<i64>,
}

impl AllocationRows {
    fn insert(self) -> Insert {
        Insert::new(
            "credit_reservation_allocations",
            vec![
                ("reservation_id", Column::Text(self.reservation_id)),
                ("grant_id", Column::Text(self.grant_id)),
                ("amount", Column::Int(self.amount)),
            ],
        )
    }
}

impl Balances {
    /// A block's row; like the live `UPDATE`, a block without a row changes nothing.
    fn grant(&mut self, id: GrantId) -> Option<&mut Grant> {
        let index = *self.grant_index.get(&id)?;
        Some(&mut self.grants[index].1)
    }

    fn open_grant(&mut self, id: GrantId, grant: Grant) -> Result<(), String> {
        if self.grant_index.insert(id, self.grants.len()).is_some() {
            return Err(format!("credit block {id} opened twice"));
        }
        self.grants.push((id, grant));
        Ok(())
    }

    fn end(&mut self, id: JobId, end: End, at: DateTime<Utc>) -> Result<(), String> {
        let reservation = self.pending.remove(&id).ok_or_else(|| format!("allocations of reservation {id} not found"))?;
        for (grant_id, amount) in &reservation.allocations {
            if let Some(grant) = self.grant(*grant_id) {
                grant.money.release(end, *amount);
            }
        }
        self.reservations.push(id, reservation, end.as_str(), Some(at));
        Ok(())
    }
}

impl Fold for Balances {
    fn fold(&mut self, team: &str, _sequence: i64, event: TeamCreditsEvent) -> Result<(), String> {
        let effect = credit_fold::effect(event);
        let at = effect.occurred_at;
        let plan = match effect.team {
            // `ON CONFLICT (team_id) DO NOTHING`: the first opening stands.
            Some(TeamChange::Opened { name, plan }) => {
                let opened = || Team { name, plan: plan.to_string(), balance: Balance::default(), opened_at: at, updated_at: at };
                self.teams.entry(team.to_string()).or_insert_with(opened);
                None
            }
            Some(TeamChange::Plan(plan)) => Some(plan),
            None => None,
        };
        // Like the live `UPDATE`, an event of a team without a row changes no row.
        if let Some(row) = self.teams.get_mut(team) {
            row.updated_at = latest(Some(row.updated_at), at);
            row.balance += effect.balance;
            if let Some(plan) = plan {
                row.plan = plan.to_string();
            }
        }
        for block in effect.opens {
            let grant = Grant {
                team: team.to_string(),
                origin: block.origin,
                amount: block.amount,
                money: BlockMoney::opened(block.amount),
                expires_at: block.expires_at,
                granted_at: block.granted_at,
            };
            self.open_grant(block.grant_id, grant)?;
        }
        for (grant_id, into, amount) in effect.draws {
            if let Some(grant) = self.grant(grant_id) {
                grant.money.draw(into, amount);
            }
        }
        match effect.reservation {
            Some(ReservationChange::Begins(r)) => {
                let id = r.id.to_string();
                for (grant_id, part) in &r.allocations {
                    self.allocations.reservation_id.push(id.clone());
                    self.allocations.grant_id.push(grant_id.to_string());
                    self.allocations.amount.push(*part);
                }
                let pending = Pending {
                    team: team.to_string(),
                    amount: r.amount,
                    operation: r.operation.as_str(),
                    price_version: r.price_version,
                    reserved_at: r.reserved_at,
                    allocations: r.allocations,
                };
                if self.pending.insert(r.id, pending).is_some() {
                    return Err(format!("reservation {id} begins twice"));
                }
            }
            Some(ReservationChange::Ends { id, end, at, .. }) => self.end(id, end, at)?,
            None => {}
        }
        Ok(())
    }

    fn ready(&mut self, rows_min: usize) -> Vec<Insert> {
        let mut inserts = Vec::new();
        if self.reservations.reservation_id.len() >= rows_min.max(1) {
            inserts.push(std::mem::take(&mut self.reservations).insert());
        }
        if self.allocations.reservation_id.len() >= rows_min.max(1) {
            inserts.push(std::mem::take(&mut self.allocations).insert());
        }
        inserts
    }

    fn finish(&mut self) -> Vec<Insert> {
        for (id, reservation) in std::mem::take(&mut self.pending) {
            self.reservations.push(id, reservation, "pending", None);
        }
        let mut inserts = self.ready(1);
        inserts.extend(grants_insert(std::mem::take(&mut self.grants)));
        inserts.extend(teams_insert(std::mem::take(&mut self.teams)));
        self.grant_index.clear();
        inserts
    }
}

fn grants_insert(grants: Vec<(GrantId, Grant)>) -> Option<Insert> {
    if grants.is_empty() {
        return None;
    }
    let n = grants.len();
    let (mut id, mut team, mut origin, mut amount, mut remaining) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut reserved, mut deducted, mut expired, mut adjusted_out, mut expires_at, mut granted_at) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for (grant_id, g) in grants {
        id.push(grant_id.to_string());
        team.push(g.team);
        origin.push(g.origin);
        amount.push(g.amount);
        remaining.push(g.money.remaining);
        reserved.push(g.money.reserved);
        deducted.push(g.money.deducted);
        expired.push(g.money.expired);
        adjusted_out.push(g.money.adjusted_out);
        expires_at.push(g.expires_at);
        granted_at.push(g.granted_at);
    }
    Some(Insert::new(
        "credit_grants",
        vec![
            ("grant_id", Column::Text(id)),
            ("team_id", Column::Text(team)),
            ("origin", Column::Static(origin)),
            ("amount", Column::Int(amount)),
            ("remaining", Column::Int(remaining)),
            ("reserved", Column::Int(reserved)),
            ("deducted", Column::Int(deducted)),
            ("expired", Column::Int(expired)),
            ("adjusted_out", Column::Int(adjusted_out)),
            ("expires_at", Column::OptTime(expires_at)),
            ("granted_at", Column::Time(granted_at)),
        ],
    ))
}

fn teams_insert(teams: HashMap<String, Team>) -> Option<Insert> {
    if teams.is_empty() {
        return None;
    }
    let n = teams.len();
    let (mut id, mut name, mut plan, mut available, mut reserved, mut granted) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut deducted, mut expired, mut adjusted, mut opened_at, mut updated_at) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for (team_id, t) in teams {
        id.push(team_id);
        name.push(t.name);
        plan.push(t.plan);
        available.push(t.balance.available);
        reserved.push(t.balance.reserved);
        granted.push(t.balance.totals.granted);
        deducted.push(t.balance.totals.deducted);
        expired.push(t.balance.totals.expired);
        adjusted.push(t.balance.totals.adjusted);
        opened_at.push(t.opened_at);
        updated_at.push(t.updated_at);
    }
    Some(Insert::new(
        "team_balances",
        vec![
            ("team_id", Column::Text(id)),
            ("name", Column::Text(name)),
            ("plan", Column::Text(plan)),
            ("available", Column::Int(available)),
            ("reserved", Column::Int(reserved)),
            ("granted_total", Column::Int(granted)),
            ("deducted_total", Column::Int(deducted)),
            ("expired_total", Column::Int(expired)),
            ("adjusted_total", Column::Int(adjusted)),
            ("opened_at", Column::Time(opened_at)),
            ("updated_at", Column::Time(updated_at)),
        ],
    ))
}
