//! Inline read model of every team's balance: `team_balances` (totals), `credit_grants`
//! (per-block remaining), `credit_reservations` (+ allocations). Updated in the append
//! transaction, so a client reads its own writes.
//!
//! The events of one append (often a whole batch of commands of a busy team) are folded
//! into net changes first and written with a fixed handful of set-based statements,
//! whatever the batch size. CHECK constraints on the tables refuse a negative balance:
//! a projection bug fails the append instead of showing wrong money.

use std::collections::{BTreeMap, HashMap};

use application::event_store::StoredEvent;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::{BlockOrigin, Plan, TeamCredits, TeamCreditsEvent};
use infrastructure::event_store::{InlineProjection, ProjectionError, Tx};
use infrastructure::{tx_execute, tx_execute_values};

use crate::decode;

pub struct TeamBalances;

pub const NAME: &str = "team_balances";

/// Tables this projection owns.
pub const TABLES: &[&str] = &["credit_reservation_allocations", "credit_reservations", "credit_grants", "team_balances"];

#[derive(Default)]
struct TeamDelta {
    available: i64,
    reserved: i64,
    granted: i64,
    deducted: i64,
    expired: i64,
    adjusted: i64,
    at: Option<DateTime<Utc>>,
}

#[derive(Default)]
struct GrantDelta {
    remaining: i64,
    reserved: i64,
    deducted: i64,
    expired: i64,
    adjusted_out: i64,
}

struct NewGrant {
    grant_id: String,
    team: String,
    origin: &'static str,
    amount: i64,
    expires_at: Option<DateTime<Utc>>,
    at: DateTime<Utc>,
}

struct NewReservation {
    id: String,
    team: String,
    amount: i64,
    operation: &'static str,
    price_version: i64,
    at: DateTime<Utc>,
}

/// How a reservation ended: its id, `deducted` or `refunded`, and when.
type Ended = (String, &'static str, DateTime<Utc>);

/// The net effect of one append's TeamCredits events.
#[derive(Default)]
struct Changes {
    opened: Vec<(String, String, String, DateTime<Utc>)>,
    plans: Vec<(String, String, DateTime<Utc>)>,
    teams: BTreeMap<String, TeamDelta>,
    new_grants: Vec<NewGrant>,
    grants: BTreeMap<String, GrantDelta>,
    new_reservations: Vec<NewReservation>,
    /// Allocations of reservations made in this append: (reservation, grant, amount).
    new_allocations: Vec<(String, String, i64)>,
    ended: Vec<Ended>,
}

fn origin_name(origin: BlockOrigin) -> &'static str {
    match origin {
        BlockOrigin::Stripe => "stripe",
        BlockOrigin::Admin => "admin",
        BlockOrigin::Plan => "plan",
        BlockOrigin::Adjustment => "adjustment",
    }
}

impl Changes {
    fn team(&mut self, team: &str, at: DateTime<Utc>) -> &mut TeamDelta {
        let delta = self.teams.entry(team.to_string()).or_default();
        delta.at = Some(delta.at.map_or(at, |seen| seen.max(at)));
        delta
    }

    fn grant(&mut self, grant_id: String) -> &mut GrantDelta {
        self.grants.entry(grant_id).or_default()
    }

    fn add(&mut self, team: &str, event: TeamCreditsEvent) {
        match event {
            TeamCreditsEvent::TeamOpened { name, plan, occurred_at, .. } => {
                self.opened.push((team.to_string(), name, plan.to_string(), occurred_at));
            }
            // A plan event also counts towards `updated_at` (the latest event of the batch),
            // so the row does not depend on how events are grouped into appends: a rebuild
            // applies them in larger batches and must produce the same row.
            TeamCreditsEvent::PlanChanged { to, occurred_at, .. } => {
                self.plans.push((team.to_string(), to.to_string(), occurred_at));
                self.team(team, occurred_at);
            }
            TeamCreditsEvent::SubscriptionExpired { occurred_at, .. } => {
                self.plans.push((team.to_string(), Plan::Free.to_string(), occurred_at));
                self.team(team, occurred_at);
            }
            TeamCreditsEvent::CreditsGranted { grant_id, amount, source, expires_at, occurred_at, .. } => {
                let delta = self.team(team, occurred_at);
                delta.available += amount.get();
                delta.granted += amount.get();
                let origin = origin_name(BlockOrigin::from(source));
                self.new_grants.push(NewGrant {
                    grant_id: grant_id.to_string(),
                    team: team.to_string(),
                    origin,
                    amount: amount.get(),
                    expires_at,
                    at: occurred_at,
                });
            }
            TeamCreditsEvent::CreditsReserved { reservation_id, amount, operation, price_version, allocations, occurred_at } => {
                let delta = self.team(team, occurred_at);
                delta.available -= amount.get();
                delta.reserved += amount.get();
                let id = reservation_id.to_string();
                for allocation in allocations {
                    let grant = self.grant(allocation.grant_id.to_string());
                    grant.remaining -= allocation.amount.get();
                    grant.reserved += allocation.amount.get();
                    self.new_allocations.push((id.clone(), allocation.grant_id.to_string(), allocation.amount.get()));
                }
                self.new_reservations.push(NewReservation {
                    id,
                    team: team.to_string(),
                    amount: amount.get(),
                    operation: operation.as_str(),
                    price_version,
                    at: occurred_at,
                });
            }
            TeamCreditsEvent::CreditsDeducted { reservation_id, amount, occurred_at } => {
                let delta = self.team(team, occurred_at);
                delta.reserved -= amount.get();
                delta.deducted += amount.get();
                self.ended.push((reservation_id.to_string(), "deducted", occurred_at));
            }
            TeamCreditsEvent::CreditsRefunded { reservation_id, amount, occurred_at } => {
                let delta = self.team(team, occurred_at);
                delta.available += amount.get();
                delta.reserved -= amount.get();
                self.ended.push((reservation_id.to_string(), "refunded", occurred_at));
            }
            TeamCreditsEvent::CreditsAdjusted { amount, allocations, occurred_at, .. } => {
                let delta = self.team(team, occurred_at);
                delta.available += amount.get();
                delta.adjusted += amount.get();
                for allocation in allocations {
                    let (id, moved) = (allocation.grant_id.to_string(), allocation.amount.get());
                    if amount.is_negative() {
                        let grant = self.grant(id);
                        grant.remaining -= moved;
                        grant.adjusted_out += moved;
                    } else {
                        // A positive adjustment opens its own non-expiring block.
                        let origin = origin_name(BlockOrigin::Adjustment);
                        let grant = NewGrant { grant_id: id, team: team.to_string(), origin, amount: moved, expires_at: None, at: occurred_at };
                        self.new_grants.push(grant);
                    }
                }
            }
            TeamCreditsEvent::CreditsExpired { grant_id, amount, occurred_at } => {
                let delta = self.team(team, occurred_at);
                delta.available -= amount.get();
                delta.expired += amount.get();
                let grant = self.grant(grant_id.to_string());
                grant.remaining -= amount.get();
                grant.expired += amount.get();
            }
        }
    }

    /// Moves the allocations of ended reservations out of `reserved` of their blocks.
    fn end_allocations(&mut self, allocations: &HashMap<String, Vec<(String, i64)>>) -> Result<(), ProjectionError> {
        let ended: Vec<(String, &'static str)> = self.ended.iter().map(|(id, how, _)| (id.clone(), *how)).collect();
        for (reservation, how) in ended {
            let held = allocations.get(&reservation).ok_or_else(|| format!("allocations of reservation {reservation} not found"))?;
            for (grant_id, amount) in held {
                let grant = self.grant(grant_id.clone());
                grant.reserved -= amount;
                if how == "deducted" {
                    grant.deducted += amount;
                } else {
                    grant.remaining += amount;
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl InlineProjection for TeamBalances {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn apply(&self, tx: &mut Tx<'_>, events: &[StoredEvent]) -> Result<(), ProjectionError> {
        let mut changes = Changes::default();
        for stored in events.iter().filter(|e| e.aggregate_type == <TeamCredits as cqrs_es::Aggregate>::TYPE) {
            changes.add(&stored.aggregate_id, decode::<TeamCredits>(stored)?);
        }
        if changes.opened.is_empty() && changes.plans.is_empty() && changes.teams.is_empty() {
            return Ok(());
        }
        write(tx, changes).await
    }
}

async fn write(tx: &mut Tx<'_>, mut changes: Changes) -> Result<(), ProjectionError> {
    tx_execute_values!(
        tx,
        "INSERT INTO team_balances (team_id, name, plan, opened_at, updated_at, available, reserved)",
        "ON CONFLICT (team_id) DO NOTHING",
        7,
        changes.opened,
        |q, row| q.bind(&row.0).bind(&row.1).bind(&row.2).bind(row.3).bind(row.3).bind(0i64).bind(0i64)
    )?;
    for (team, plan, at) in &changes.plans {
        tx_execute!(&mut *tx, "UPDATE team_balances SET plan = $2, updated_at = $3 WHERE team_id = $1", team, plan, at)?;
    }
    tx_execute_values!(
        tx,
        "INSERT INTO credit_grants (grant_id, team_id, origin, amount, remaining, expires_at, granted_at)",
        "",
        7,
        changes.new_grants,
        |q, g| q.bind(&g.grant_id).bind(&g.team).bind(g.origin).bind(g.amount).bind(g.amount).bind(g.expires_at).bind(g.at)
    )?;
    tx_execute_values!(
        tx,
        "INSERT INTO credit_reservations (reservation_id, team_id, amount, operation, price_version, reserved_at, state)",
        "",
        7,
        changes.new_reservations,
        |q, r| q.bind(&r.id).bind(&r.team).bind(r.amount).bind(r.operation).bind(r.price_version).bind(r.at).bind("pending")
    )?;
    tx_execute_values!(
        tx,
        "INSERT INTO credit_reservation_allocations (reservation_id, grant_id, amount)",
        "",
        3,
        changes.new_allocations,
        |q, a| q.bind(&a.0).bind(&a.1).bind(a.2)
    )?;
    if !changes.ended.is_empty() {
        let allocations = allocations_of(tx, &changes).await?;
        changes.end_allocations(&allocations)?;
        tx_execute_values!(
            tx,
            "UPDATE credit_reservations SET state = v.column2, ended_at = v.column3 FROM (",
            ") AS v WHERE credit_reservations.reservation_id = v.column1",
            3,
            changes.ended,
            |q, e| q.bind(&e.0).bind(e.1).bind(e.2)
        )?;
    }
    let grants: Vec<(String, GrantDelta)> = changes.grants.into_iter().collect();
    tx_execute_values!(
        tx,
        "UPDATE credit_grants SET remaining = remaining + v.column2, reserved = reserved + v.column3, \
         deducted = deducted + v.column4, expired = expired + v.column5, adjusted_out = adjusted_out + v.column6 FROM (",
        ") AS v WHERE credit_grants.grant_id = v.column1",
        6,
        grants,
        |q, g| q.bind(&g.0).bind(g.1.remaining).bind(g.1.reserved).bind(g.1.deducted).bind(g.1.expired).bind(g.1.adjusted_out)
    )?;
    let teams: Vec<(String, TeamDelta)> = changes.teams.into_iter().collect();
    tx_execute_values!(
        tx,
        "UPDATE team_balances SET available = available + v.column2, reserved = reserved + v.column3, \
         granted_total = granted_total + v.column4, deducted_total = deducted_total + v.column5, \
         expired_total = expired_total + v.column6, adjusted_total = adjusted_total + v.column7, updated_at = v.column8 FROM (",
        ") AS v WHERE team_balances.team_id = v.column1",
        8,
        teams,
        |q, t| q
            .bind(&t.0)
            .bind(t.1.available)
            .bind(t.1.reserved)
            .bind(t.1.granted)
            .bind(t.1.deducted)
            .bind(t.1.expired)
            .bind(t.1.adjusted)
            .bind(t.1.at)
    )?;
    Ok(())
}

/// Allocations of the reservations ending in this append: those made in it, plus the
/// rest read from `credit_reservation_allocations` in one query.
async fn allocations_of(tx: &mut Tx<'_>, changes: &Changes) -> Result<HashMap<String, Vec<(String, i64)>>, ProjectionError> {
    let mut allocations: HashMap<String, Vec<(String, i64)>> = HashMap::new();
    for (reservation, grant, amount) in &changes.new_allocations {
        allocations.entry(reservation.clone()).or_default().push((grant.clone(), *amount));
    }
    let missing: Vec<&String> = changes.ended.iter().map(|e| &e.0).filter(|id| !allocations.contains_key(*id)).collect();
    for chunk in missing.chunks(infrastructure::event_store::ROWS_PER_STATEMENT_MAX) {
        let placeholders: Vec<String> = (1..=chunk.len()).map(|n| format!("${n}")).collect();
        let sql = format!(
            "SELECT reservation_id, grant_id, amount FROM credit_reservation_allocations WHERE reservation_id IN ({})",
            placeholders.join(", ")
        );
        let rows: Vec<(String, String, i64)> = match &mut *tx {
            Tx::Postgres(conn) => {
                let mut query = sqlx::query_as(&sql);
                for id in chunk {
                    query = query.bind(*id);
                }
                query.fetch_all(&mut **conn).await?
            }
            Tx::Sqlite(conn) => {
                let mut query = sqlx::query_as(&sql);
                for id in chunk {
                    query = query.bind(*id);
                }
                query.fetch_all(&mut **conn).await?
            }
        };
        for (reservation, grant, amount) in rows {
            allocations.entry(reservation).or_default().push((grant, amount));
        }
    }
    Ok(allocations)
}
