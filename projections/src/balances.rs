//! Inline read model of every team's balance: `team_balances` (totals), `credit_grants`
//! (per-block remaining), `credit_reservations` (+ allocations). Updated in the append
//! transaction, so a client reads its own writes.
//!
//! The events of one append (often a whole batch of commands of a busy team) are folded
//! into net changes first and written with a fixed handful of set-based statements,
//! whatever the batch size. What each event means is [`crate::credit_fold::effect`], the
//! fold the rebuild and the audit use too; this module only turns the summed effects into
//! rows, keeping each row an order-independent function of the events (a team's
//! `updated_at` is the latest event time, `GREATEST`, not the last append's). CHECK
//! constraints on the tables refuse a negative balance: a projection bug fails the append
//! instead of showing wrong money.

use std::collections::{BTreeMap, HashMap, HashSet};

use application::event_store::StoredEvent;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::{Plan, TeamCredits};
use infrastructure::event_store::{InlineProjection, ProjectionError, Tx};
use infrastructure::{tx_execute_rows, tx_fetch_rows};

use crate::credit_fold::{self, latest, Balance, BlockMoney, Effect, End, NewBlock, NewReservation, ReservationChange, TeamChange};
use crate::decode;

pub struct TeamBalances;

pub const NAME: &str = "team_balances";

/// Tables this projection owns.
pub const TABLES: &[&str] = &["credit_reservation_allocations", "credit_reservations", "credit_grants", "team_balances"];

/// The net change of one team's row in an append.
#[derive(Default)]
struct TeamDelta {
    balance: Balance,
    /// The plan of the append's last plan event (stream order).
    plan: Option<Plan>,
    /// The latest time of the append's events: the row keeps the latest of these over
    /// all appends (`GREATEST`), the same whatever the batching.
    at: Option<DateTime<Utc>>,
}

/// How a reservation ended: its id, how, and when.
type Ended = (String, End, DateTime<Utc>);

/// The net effect of one append's TeamCredits events (their [`credit_fold::effect`]s summed).
#[derive(Default)]
struct Changes {
    opened: Vec<(String, String, String, DateTime<Utc>)>,
    teams: BTreeMap<String, TeamDelta>,
    new_grants: Vec<(String, NewBlock)>,
    grants: BTreeMap<String, BlockMoney>,
    new_reservations: Vec<(String, NewReservation)>,
    /// Allocations of reservations made in this append: (reservation, grant, amount).
    new_allocations: Vec<(String, String, i64)>,
    ended: Vec<Ended>,
}

impl Changes {
    /// Every event of a team changes its row (its `updated_at` at least), so every append
    /// that changes a grant writes a new version of its `team_balances` row (even when
    /// the totals net to zero): `kiln::queries::credits::BalanceCache` relies on it to
    /// know when the grants it remembers are out of date.
    fn add(&mut self, team: &str, effect: Effect) {
        let delta = self.teams.entry(team.to_string()).or_default();
        delta.at = Some(latest(delta.at, effect.occurred_at));
        delta.balance += effect.balance;
        match effect.team {
            Some(TeamChange::Opened { name, plan }) => self.opened.push((team.to_string(), name, plan.to_string(), effect.occurred_at)),
            Some(TeamChange::Plan(plan)) => delta.plan = Some(plan),
            None => {}
        }
        self.new_grants.extend(effect.opens.into_iter().map(|block| (team.to_string(), block)));
        for (grant, into, amount) in effect.draws {
            self.grants.entry(grant.to_string()).or_default().draw(into, amount);
        }
        match effect.reservation {
            Some(ReservationChange::Begins(reservation)) => {
                let id = reservation.id.to_string();
                for (grant, amount) in &reservation.allocations {
                    self.new_allocations.push((id.clone(), grant.to_string(), *amount));
                }
                self.new_reservations.push((team.to_string(), reservation));
            }
            Some(ReservationChange::Ends { id, end, at, .. }) => self.ended.push((id.to_string(), end, at)),
            None => {}
        }
    }

    /// Releases the allocations of ended reservations from their blocks.
    fn end_allocations(&mut self, allocations: &HashMap<String, Vec<(String, i64)>>) -> Result<(), ProjectionError> {
        for (reservation, end, _) in &self.ended {
            let held = allocations.get(reservation).ok_or_else(|| format!("allocations of reservation {reservation} not found"))?;
            for (grant_id, amount) in held {
                self.grants.entry(grant_id.clone()).or_default().release(*end, *amount);
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
            changes.add(&stored.aggregate_id, credit_fold::effect(decode::<TeamCredits>(stored)?));
        }
        if changes.teams.is_empty() {
            return Ok(());
        }
        write(tx, changes).await
    }
}

/// New teams and blocks first (by their own statements, on both databases), the
/// endings' allocations, then the money rows.
async fn write(tx: &mut Tx<'_>, mut changes: Changes) -> Result<(), ProjectionError> {
    tx_execute_rows!(
        tx,
        "INSERT INTO team_balances (team_id, name, plan, opened_at, updated_at, available, reserved)",
        "ON CONFLICT (team_id) DO NOTHING",
        changes.opened,
        [
            "text" => |row| row.0.as_str(),
            "text" => |row| row.1.as_str(),
            "text" => |row| row.2.as_str(),
            "timestamptz" => |row| row.3,
            "timestamptz" => |row| row.3,
            "bigint" => |_row| 0i64,
            "bigint" => |_row| 0i64,
        ]
    )?;
    tx_execute_rows!(
        tx,
        "INSERT INTO credit_grants (grant_id, team_id, origin, amount, remaining, expires_at, granted_at)",
        "",
        changes.new_grants,
        [
            "text" => |g| g.1.grant_id.to_string(),
            "text" => |g| g.0.as_str(),
            "text" => |g| g.1.origin,
            "bigint" => |g| g.1.amount,
            "bigint" => |g| g.1.amount,
            "timestamptz" => |g| g.1.expires_at,
            "timestamptz" => |g| g.1.granted_at,
        ]
    )?;
    if !changes.ended.is_empty() {
        let allocations = allocations_of(tx, &changes).await?;
        changes.end_allocations(&allocations)?;
    }
    match tx {
        Tx::Postgres(conn) => write_postgres(conn, changes).await,
        Tx::Sqlite(_) => write_portable(tx, changes).await,
    }
}

/// The money rows of one append on PostgreSQL, in one statement: new reservations, their
/// allocations, reservations ended, the blocks' and the teams' net changes. Each part is
/// a data-modifying `WITH` (they all run, on distinct rows, from one snapshot), its rows
/// bound as arrays (`UNNEST`), so the text is the same whatever the batch size and stays
/// in the connection's prepared-statement cache. An append used to send these as five
/// statements, each a round trip inside the transaction that holds its team's rows
/// (`pg_stat_activity` sampled over `kiln-bench latency --only credits`: two fifths of a
/// joint commit's time). One snapshot means no part sees another's rows: a reservation made
/// and ended in the same append is inserted ended; new teams and new blocks, which the
/// updates must see, are inserted before, by their own statements.
const MONEY_POSTGRES: &str = "WITH reservations AS ( \
     INSERT INTO credit_reservations (reservation_id, team_id, amount, operation, price_version, reserved_at, state, ended_at) \
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::bigint[], $6::timestamptz[], $7::text[], \
     $8::timestamptz[])), \
     allocations AS (INSERT INTO credit_reservation_allocations (reservation_id, grant_id, amount) \
     SELECT * FROM UNNEST($9::text[], $10::text[], $11::bigint[])), \
     ended AS (UPDATE credit_reservations SET state = u.s, ended_at = u.at \
     FROM UNNEST($12::text[], $13::text[], $14::timestamptz[]) AS u(i, s, at) WHERE credit_reservations.reservation_id = u.i), \
     blocks AS (UPDATE credit_grants SET remaining = remaining + u.r, reserved = reserved + u.rs, deducted = deducted + u.d, \
     expired = expired + u.e, adjusted_out = adjusted_out + u.ao \
     FROM UNNEST($15::text[], $16::bigint[], $17::bigint[], $18::bigint[], $19::bigint[], $20::bigint[]) AS u(g, r, rs, d, e, ao) \
     WHERE credit_grants.grant_id = u.g) \
     UPDATE team_balances SET available = available + u.av, reserved = reserved + u.rs, \
     granted_total = granted_total + u.g, deducted_total = deducted_total + u.d, expired_total = expired_total + u.e, \
     adjusted_total = adjusted_total + u.ad, plan = COALESCE(u.p, team_balances.plan), \
     updated_at = GREATEST(team_balances.updated_at, u.at) \
     FROM UNNEST($21::text[], $22::bigint[], $23::bigint[], $24::bigint[], $25::bigint[], $26::bigint[], $27::bigint[], \
     $28::timestamptz[], $29::text[]) AS u(t, av, rs, g, d, e, ad, at, p) WHERE team_balances.team_id = u.t";

/// PostgreSQL: the money rows in one statement ([`MONEY_POSTGRES`]), bound as arrays.
async fn write_postgres(conn: &mut sqlx::PgConnection, changes: Changes) -> Result<(), ProjectionError> {
    // A reservation this append makes and ends is inserted ended; the update takes the rest.
    let r = &changes.new_reservations;
    let made: Vec<String> = r.iter().map(|(_, r)| r.id.to_string()).collect();
    let ends: HashMap<&str, (End, DateTime<Utc>)> = changes.ended.iter().map(|(id, end, at)| (id.as_str(), (*end, *at))).collect();
    let made_ends: Vec<Option<&(End, DateTime<Utc>)>> = made.iter().map(|id| ends.get(id.as_str())).collect();
    let made_here: HashSet<&str> = made.iter().map(String::as_str).collect();
    let ended: Vec<&Ended> = changes.ended.iter().filter(|e| !made_here.contains(e.0.as_str())).collect();
    let (a, g, t) = (&changes.new_allocations, &changes.grants, &changes.teams);
    sqlx::query(MONEY_POSTGRES)
        .bind(&made)
        .bind(r.iter().map(|(team, _)| team.as_str()).collect::<Vec<_>>())
        .bind(r.iter().map(|(_, r)| r.amount).collect::<Vec<_>>())
        .bind(r.iter().map(|(_, r)| r.operation.as_str()).collect::<Vec<_>>())
        .bind(r.iter().map(|(_, r)| r.price_version).collect::<Vec<_>>())
        .bind(r.iter().map(|(_, r)| r.reserved_at).collect::<Vec<_>>())
        .bind(made_ends.iter().map(|e| e.map_or("pending", |(end, _)| end.as_str())).collect::<Vec<_>>())
        .bind(made_ends.iter().map(|e| e.map(|(_, at)| *at)).collect::<Vec<_>>())
        .bind(a.iter().map(|a| a.0.as_str()).collect::<Vec<_>>())
        .bind(a.iter().map(|a| a.1.as_str()).collect::<Vec<_>>())
        .bind(a.iter().map(|a| a.2).collect::<Vec<_>>())
        .bind(ended.iter().map(|e| e.0.as_str()).collect::<Vec<_>>())
        .bind(ended.iter().map(|e| e.1.as_str()).collect::<Vec<_>>())
        .bind(ended.iter().map(|e| e.2).collect::<Vec<_>>())
        .bind(g.keys().map(String::as_str).collect::<Vec<_>>())
        .bind(g.values().map(|d| d.remaining).collect::<Vec<_>>())
        .bind(g.values().map(|d| d.reserved).collect::<Vec<_>>())
        .bind(g.values().map(|d| d.deducted).collect::<Vec<_>>())
        .bind(g.values().map(|d| d.expired).collect::<Vec<_>>())
        .bind(g.values().map(|d| d.adjusted_out).collect::<Vec<_>>())
        .bind(t.keys().map(String::as_str).collect::<Vec<_>>())
        .bind(t.values().map(|d| d.balance.available).collect::<Vec<_>>())
        .bind(t.values().map(|d| d.balance.reserved).collect::<Vec<_>>())
        .bind(t.values().map(|d| d.balance.totals.granted).collect::<Vec<_>>())
        .bind(t.values().map(|d| d.balance.totals.deducted).collect::<Vec<_>>())
        .bind(t.values().map(|d| d.balance.totals.expired).collect::<Vec<_>>())
        .bind(t.values().map(|d| d.balance.totals.adjusted).collect::<Vec<_>>())
        .bind(t.values().map(|d| d.at).collect::<Vec<_>>())
        .bind(t.values().map(|d| d.plan.map(|p| p.to_string())).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Allocations of the reservations made in this append, by reservation.
fn new_allocations(changes: &Changes) -> HashMap<String, Vec<(String, i64)>> {
    let mut allocations: HashMap<String, Vec<(String, i64)>> = HashMap::new();
    for (reservation, grant, amount) in &changes.new_allocations {
        allocations.entry(reservation.clone()).or_default().push((grant.clone(), *amount));
    }
    allocations
}

/// SQLite: the money rows, a statement per table.
async fn write_portable(tx: &mut Tx<'_>, changes: Changes) -> Result<(), ProjectionError> {
    tx_execute_rows!(
        tx,
        "INSERT INTO credit_reservations (reservation_id, team_id, amount, operation, price_version, reserved_at, state)",
        "",
        changes.new_reservations,
        [
            "text" => |r| r.1.id.to_string(),
            "text" => |r| r.0.as_str(),
            "bigint" => |r| r.1.amount,
            "text" => |r| r.1.operation.as_str(),
            "bigint" => |r| r.1.price_version,
            "timestamptz" => |r| r.1.reserved_at,
            "text" => |_r| "pending",
        ]
    )?;
    tx_execute_rows!(
        tx,
        "INSERT INTO credit_reservation_allocations (reservation_id, grant_id, amount)",
        "",
        changes.new_allocations,
        ["text" => |a| a.0.as_str(), "text" => |a| a.1.as_str(), "bigint" => |a| a.2]
    )?;
    tx_execute_rows!(
        tx,
        "UPDATE credit_reservations SET state = v.column2, ended_at = v.column3 FROM (",
        ") AS v WHERE credit_reservations.reservation_id = v.column1",
        changes.ended,
        ["text" => |e| e.0.as_str(), "text" => |e| e.1.as_str(), "timestamptz" => |e| e.2]
    )?;
    let grants: Vec<(String, BlockMoney)> = changes.grants.into_iter().collect();
    tx_execute_rows!(
        tx,
        "UPDATE credit_grants SET remaining = remaining + v.column2, reserved = reserved + v.column3, \
         deducted = deducted + v.column4, expired = expired + v.column5, adjusted_out = adjusted_out + v.column6 FROM (",
        ") AS v WHERE credit_grants.grant_id = v.column1",
        grants,
        [
            "text" => |g| g.0.as_str(),
            "bigint" => |g| g.1.remaining,
            "bigint" => |g| g.1.reserved,
            "bigint" => |g| g.1.deducted,
            "bigint" => |g| g.1.expired,
            "bigint" => |g| g.1.adjusted_out,
        ]
    )?;
    // `MAX` of two times as text is the later one: sqlx writes every time of these
    // columns in one RFC 3339 form (UTC offset, fraction digits in groups of three, none
    // when zero), in which text order is time order.
    let teams: Vec<(String, TeamDelta)> = changes.teams.into_iter().collect();
    tx_execute_rows!(
        tx,
        "UPDATE team_balances SET available = available + v.column2, reserved = reserved + v.column3, \
         granted_total = granted_total + v.column4, deducted_total = deducted_total + v.column5, \
         expired_total = expired_total + v.column6, adjusted_total = adjusted_total + v.column7, \
         plan = COALESCE(v.column9, plan), updated_at = MAX(updated_at, v.column8) FROM (",
        ") AS v WHERE team_balances.team_id = v.column1",
        teams,
        [
            "text" => |t| t.0.as_str(),
            "bigint" => |t| t.1.balance.available,
            "bigint" => |t| t.1.balance.reserved,
            "bigint" => |t| t.1.balance.totals.granted,
            "bigint" => |t| t.1.balance.totals.deducted,
            "bigint" => |t| t.1.balance.totals.expired,
            "bigint" => |t| t.1.balance.totals.adjusted,
            "timestamptz" => |t| t.1.at,
            "text" => |t| t.1.plan.map(|p| p.to_string()),
        ]
    )?;
    Ok(())
}

/// Allocations of the reservations ending in this append: those made in it, plus the
/// rest read from `credit_reservation_allocations` in one query.
async fn allocations_of(tx: &mut Tx<'_>, changes: &Changes) -> Result<HashMap<String, Vec<(String, i64)>>, ProjectionError> {
    let mut allocations = new_allocations(changes);
    let missing: Vec<&str> = changes.ended.iter().map(|e| e.0.as_str()).filter(|id| !allocations.contains_key(*id)).collect();
    let rows = tx_fetch_rows!(
        tx,
        (String, String, i64),
        "SELECT reservation_id, grant_id, amount FROM credit_reservation_allocations WHERE reservation_id IN (SELECT column1 FROM (",
        ") AS v)",
        missing,
        ["text" => |id| *id]
    )?;
    for (reservation, grant, amount) in rows {
        allocations.entry(reservation).or_default().push((grant, amount));
    }
    Ok(allocations)
}
