//! The team's money: the `team_balances`, `credit_grants` and `credit_ledger` read
//! models.

use chrono::{DateTime, Utc};
use domain::TeamId;
use infrastructure::db::Database;
use infrastructure::{db_fetch_all, db_fetch_optional};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::QueryError;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Totals {
    pub granted: i64,
    pub deducted: i64,
    pub expired: i64,
    /// Net of positive and negative adjustments.
    pub adjusted: i64,
}

/// One credit block (a grant or a positive adjustment) that still holds credits.
#[derive(Debug, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct GrantView {
    pub grant_id: String,
    /// stripe | admin | plan | adjustment
    pub origin: String,
    pub amount: i64,
    /// Spendable now (not reserved, not spent, not expired).
    pub remaining: i64,
    /// Held by pending reservations.
    pub reserved: i64,
    pub deducted: i64,
    pub expired: i64,
    pub expires_at: Option<DateTime<Utc>>,
    pub granted_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BalanceView {
    pub team_id: String,
    pub name: String,
    /// free | basic | pro | enterprise
    pub plan: String,
    /// Jobs the plan may run at once.
    pub concurrency_limit: u32,
    /// Credits that can be spent now.
    pub available: i64,
    /// Credits held by jobs that have not finished.
    pub reserved: i64,
    pub totals: Totals,
    /// Blocks with credits left or held, soonest-expiring first (the order they are spent in).
    pub grants: Vec<GrantView>,
}

type BalanceRow = (String, String, i64, i64, i64, i64, i64, i64);
/// [`BalanceRow`] and the grants as one JSON column (PostgreSQL).
type BalanceWithGrantsRow = (String, String, i64, i64, i64, i64, i64, i64, sqlx::types::Json<Vec<GrantView>>);

/// A team's balance; `None` if the team does not exist.
pub async fn balance(db: &Database, team: TeamId) -> Result<Option<BalanceView>, QueryError> {
    let team_id = team.to_string();
    if let Database::Postgres(pool) = db {
        return balance_in_one_statement(pool, team_id).await;
    }
    let row = db_fetch_optional!(
        db,
        BalanceRow,
        "SELECT name, plan, available, reserved, granted_total, deducted_total, expired_total, adjusted_total \
         FROM team_balances WHERE team_id = $1",
        &team_id
    )?;
    let Some(row) = row else {
        return Ok(None);
    };
    let grants = db_fetch_all!(
        db,
        GrantView,
        "SELECT grant_id, origin, amount, remaining, reserved, deducted, expired, expires_at, granted_at \
         FROM credit_grants WHERE team_id = $1 AND (remaining > 0 OR reserved > 0) \
         ORDER BY expires_at IS NULL, expires_at, granted_at, grant_id",
        &team_id
    )?;
    Ok(Some(balance_view(team_id, row, grants)))
}

fn balance_view(team_id: String, row: BalanceRow, grants: Vec<GrantView>) -> BalanceView {
    let (name, plan, available, reserved, granted, deducted, expired, adjusted) = row;
    let concurrency_limit = plan.parse::<domain::Plan>().map(|p| p.concurrency_limit()).unwrap_or(0);
    BalanceView { team_id, name, plan, concurrency_limit, available, reserved, totals: Totals { granted, deducted, expired, adjusted }, grants }
}

/// [`balance`] on PostgreSQL: the balance row and its grants in one round trip (the
/// grants as a JSON array, in the order they are spent in).
async fn balance_in_one_statement(pool: &sqlx::PgPool, team_id: String) -> Result<Option<BalanceView>, QueryError> {
    let row: Option<BalanceWithGrantsRow> = sqlx::query_as(
        "SELECT b.name, b.plan, b.available, b.reserved, b.granted_total, b.deducted_total, b.expired_total, b.adjusted_total, \
           COALESCE((SELECT json_agg(json_build_object('grant_id', g.grant_id, 'origin', g.origin, 'amount', g.amount, \
                       'remaining', g.remaining, 'reserved', g.reserved, 'deducted', g.deducted, 'expired', g.expired, \
                       'expires_at', g.expires_at, 'granted_at', g.granted_at) \
                     ORDER BY g.expires_at IS NULL, g.expires_at, g.granted_at, g.grant_id) \
                     FROM credit_grants g WHERE g.team_id = b.team_id AND (g.remaining > 0 OR g.reserved > 0)), '[]'::json) \
         FROM team_balances b WHERE b.team_id = $1",
    )
    .bind(&team_id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(name, plan, available, reserved, granted, deducted, expired, adjusted, grants)| {
        balance_view(team_id, (name, plan, available, reserved, granted, deducted, expired, adjusted), grants.0)
    }))
}

pub const ENTRY_TYPES: &[&str] = &["granted", "reserved", "deducted", "refunded", "adjusted", "expired"];

/// One ledger entry and the balance it left.
#[derive(Debug, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct LedgerEntry {
    /// Position in the team's ledger, from 1.
    pub entry_no: i64,
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
}

const ENTRY_COLUMNS: &str =
    "entry_no, entry_type, amount, available_after, reserved_after, reference, operation, detail, occurred_at";

/// Which ledger entries a history shows (values already validated by the caller).
#[derive(Debug, Default, Clone)]
pub struct LedgerFilter<'a> {
    /// At or after.
    pub from: Option<DateTime<Utc>>,
    /// Before.
    pub to: Option<DateTime<Utc>>,
    pub entry_type: Option<&'a str>,
}

/// Up to `rows_max` of the team's ledger entries, newest first, below entry `before`.
pub async fn history(
    db: &Database,
    team: TeamId,
    filter: &LedgerFilter<'_>,
    before: Option<i64>,
    rows_max: i64,
) -> Result<Vec<LedgerEntry>, QueryError> {
    let sql = format!(
        "SELECT {ENTRY_COLUMNS} FROM credit_ledger WHERE team_id = $1 \
           AND ($2 IS NULL OR occurred_at >= $2) AND ($3 IS NULL OR occurred_at < $3) \
           AND ($4 IS NULL OR entry_type = $4) AND ($5 IS NULL OR entry_no < $5) \
         ORDER BY entry_no DESC LIMIT $6"
    );
    Ok(db_fetch_all!(db, LedgerEntry, &sql, team.to_string(), filter.from, filter.to, filter.entry_type, before, rows_max)?)
}

/// The team's ledger entries of one reservation (a job's reserve, then its deduction or
/// refund), oldest first.
pub async fn entries_of_job(db: &Database, team: TeamId, job_id: &str) -> Result<Vec<LedgerEntry>, QueryError> {
    let sql = format!("SELECT {ENTRY_COLUMNS} FROM credit_ledger WHERE team_id = $1 AND reference = $2 ORDER BY entry_no");
    Ok(db_fetch_all!(db, LedgerEntry, &sql, team.to_string(), job_id)?)
}
