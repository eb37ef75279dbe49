//! The team's money: the `team_balances`, `credit_grants` and `credit_ledger` read
//! models.

use chrono::{DateTime, Utc};
use domain::TeamId;
use infrastructure::db::Database;
use infrastructure::{db_fetch_all, db_fetch_optional};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::QueryError;
/// The one `Totals` and `LedgerEntry`: what the projections fold from the events.
pub use projections::credit_fold::{LedgerEntry, Totals, ENTRY_TYPES};

/// One credit block (a grant or a positive adjustment) that still holds credits.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
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

/// A team's balance, uncached; `None` if the team does not exist. The API and the
/// dashboard read it through [`BalanceCache`].
pub async fn balance(db: &Database, team: TeamId) -> Result<Option<BalanceView>, QueryError> {
    let team_id = team.to_string();
    if let Database::Postgres(pool) = db {
        let read = balance_postgres(pool, &team_id, None).await?;
        return Ok(read.map(|(_, row, grants)| balance_view(team_id, row, grants.unwrap_or_default())));
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

/// The version of a team's `team_balances` row: PostgreSQL's `xmin`, the transaction that
/// wrote the row as it now stands.
type RowVersion = i64;

/// [`balance`] on PostgreSQL, in one round trip: the balance row, its version, and its
/// grants — unless `known` is that version, in which case the grants are not read (`None`):
/// the caller holds them. The grants are read by `balance_grants_json` (migration 0045)
/// in the same snapshot as the row.
async fn balance_postgres(
    pool: &sqlx::PgPool,
    team_id: &str,
    known: Option<RowVersion>,
) -> Result<Option<(RowVersion, BalanceRow, Option<Vec<GrantView>>)>, QueryError> {
    type Row = (RowVersion, String, String, i64, i64, i64, i64, i64, i64, Option<sqlx::types::Json<Vec<GrantView>>>);
    let row: Option<Row> = sqlx::query_as(
        "SELECT b.xmin::text::bigint, b.name, b.plan, b.available, b.reserved, b.granted_total, b.deducted_total, \
           b.expired_total, b.adjusted_total, \
           CASE WHEN b.xmin::text::bigint = $2 THEN NULL ELSE balance_grants_json(b.team_id) END \
         FROM team_balances b WHERE b.team_id = $1",
    )
    .bind(team_id)
    .bind(known)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(version, name, plan, available, reserved, granted, deducted, expired, adjusted, grants)| {
        (version, (name, plan, available, reserved, granted, deducted, expired, adjusted), grants.map(|g| g.0))
    }))
}

/// How long grants read with a balance are reused while the balance row keeps the same
/// version. Only a guard: a row version is a transaction id, and PostgreSQL reuses those
/// after about two billion transactions.
pub const BALANCE_GRANTS_TTL: std::time::Duration = std::time::Duration::from_secs(30);
/// Teams, and grants over all teams, remembered at most (≈ 25 MB of grants); the memory
/// starts over when either is full.
const BALANCE_TEAMS_CACHED_MAX: usize = 10_000;
const BALANCE_GRANTS_CACHED_MAX: usize = 100_000;

/// The grants of recently read balances (PostgreSQL), each with the version of the
/// `team_balances` row they were read with. Every append that changes a team's grants
/// also updates its balance row (the inline projection moves the totals in the same
/// transaction), so while that row keeps its version the grants are the same: a balance
/// read sends the version it holds, and PostgreSQL answers the row alone when it still
/// matches — a point select instead of reading and sorting the grants — or the row with
/// its grants when it does not. Each read sees the committed balance (read-your-writes,
/// across processes); nothing is served without asking the database.
#[derive(Default)]
pub struct BalanceCache {
    entries: std::sync::Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    by_team: std::collections::HashMap<String, Remembered>,
    /// Grants held over all teams.
    grants: usize,
}

struct Remembered {
    version: RowVersion,
    read_at: std::time::Instant,
    grants: std::sync::Arc<Vec<GrantView>>,
}

impl BalanceCache {
    /// A team's balance; `None` if the team does not exist.
    pub async fn balance(&self, db: &Database, team: TeamId) -> Result<Option<BalanceView>, QueryError> {
        let Database::Postgres(pool) = db else {
            return balance(db, team).await;
        };
        let team_id = team.to_string();
        let held = self.fresh(&team_id);
        let Some((version, row, read)) = balance_postgres(pool, &team_id, held.as_ref().map(|(v, _)| *v)).await? else {
            return Ok(None);
        };
        let grants = match (read, held) {
            (Some(grants), _) => {
                self.remember(&team_id, version, &grants);
                grants
            }
            (None, Some((_, grants))) => grants.as_ref().clone(),
            (None, None) => return Err(QueryError(sqlx::Error::Protocol("balance read without its grants".into()))),
        };
        Ok(Some(balance_view(team_id, row, grants)))
    }

    fn fresh(&self, team_id: &str) -> Option<(RowVersion, std::sync::Arc<Vec<GrantView>>)> {
        let entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = entries.by_team.get(team_id).filter(|e| e.read_at.elapsed() < BALANCE_GRANTS_TTL)?;
        Some((entry.version, entry.grants.clone()))
    }

    fn remember(&self, team_id: &str, version: RowVersion, grants: &[GrantView]) {
        let mut entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(replaced) = entries.by_team.remove(team_id) {
            entries.grants -= replaced.grants.len();
        }
        if grants.len() > BALANCE_GRANTS_CACHED_MAX {
            return;
        }
        if entries.by_team.len() >= BALANCE_TEAMS_CACHED_MAX || entries.grants + grants.len() > BALANCE_GRANTS_CACHED_MAX {
            *entries = Entries::default();
        }
        entries.grants += grants.len();
        let remembered = Remembered { version, read_at: std::time::Instant::now(), grants: std::sync::Arc::new(grants.to_vec()) };
        entries.by_team.insert(team_id.to_string(), remembered);
    }
}

const ENTRY_COLUMNS: &str =
    "entry_no, sequence, entry_type, amount, available_after, reserved_after, reference, operation, detail, occurred_at";

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
