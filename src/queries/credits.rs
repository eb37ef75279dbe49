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

/// One grant of `team` by id, whatever is left of it; `None` if the team has no such
/// grant (yet: a payment's grant arrives with the provider's confirmation).
pub async fn grant(db: &Database, team: TeamId, grant_id: domain::GrantId) -> Result<Option<GrantView>, QueryError> {
    Ok(db_fetch_optional!(
        db,
        GrantView,
        "SELECT grant_id, origin, amount, remaining, reserved, deducted, expired, expires_at, granted_at \
         FROM credit_grants WHERE team_id = $1 AND grant_id = $2",
        team.to_string(),
        grant_id.to_string()
    )?)
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
        "SELECT {ENTRY_COLUMNS} FROM credit_ledger WHERE team_id = $1{}{}{}{} ORDER BY entry_no DESC LIMIT $6",
        super::given(filter.from.is_some(), " AND occurred_at >= $2"),
        super::given(filter.to.is_some(), " AND occurred_at < $3"),
        super::given(filter.entry_type.is_some(), " AND entry_type = $4"),
        super::given(before.is_some(), " AND entry_no < $5"),
    );
    Ok(db_fetch_all!(db, LedgerEntry, &sql, team.to_string(), filter.from, filter.to, filter.entry_type, before, rows_max)?)
}

/// The team's ledger entries of one reservation (a job's reserve, then its deduction or
/// refund), oldest first.
pub async fn entries_of_job(db: &Database, team: TeamId, job_id: &str) -> Result<Vec<LedgerEntry>, QueryError> {
    let sql = format!("SELECT {ENTRY_COLUMNS} FROM credit_ledger WHERE team_id = $1 AND reference = $2 ORDER BY entry_no");
    Ok(db_fetch_all!(db, LedgerEntry, &sql, team.to_string(), job_id)?)
}

/// Whole UTC days up to and including the day of `today`: index 0 is the oldest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Days {
    pub today: chrono::NaiveDate,
    pub count: usize,
}

impl Days {
    /// The last `count` days up to `now`'s (at least one).
    pub fn ending(now: DateTime<Utc>, count: usize) -> Self {
        Self { today: now.date_naive(), count: count.max(1) }
    }

    /// The days, oldest first.
    pub fn dates(&self) -> Vec<chrono::NaiveDate> {
        (0..self.count).rev().map(|ago| self.today - chrono::Duration::days(ago as i64)).collect()
    }

    /// Midnight (UTC) starting the oldest day.
    pub fn start(&self) -> DateTime<Utc> {
        self.dates()[0].and_time(chrono::NaiveTime::MIN).and_utc()
    }

    /// Midnight (UTC) ending today.
    pub fn end(&self) -> DateTime<Utc> {
        (self.today + chrono::Duration::days(1)).and_time(chrono::NaiveTime::MIN).and_utc()
    }

    /// The index of `day` ("YYYY-MM-DD"), if it is one of these days.
    fn index(&self, day: &str) -> Option<usize> {
        let day = chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").ok()?;
        let ago = usize::try_from((self.today - day).num_days()).ok()?;
        (ago < self.count).then(|| self.count - 1 - ago)
    }
}

/// The UTC day ("YYYY-MM-DD") of the time `column`, in each database's words.
fn ledger_day(db: &Database, column: &str) -> String {
    match db {
        Database::Postgres(_) => format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD')"),
        // Stored as RFC 3339 text; `date` reads its offset and answers in UTC.
        Database::Sqlite { .. } => format!("date({column})"),
    }
}

/// Credits spent (deducted: what completed jobs cost) per day, by operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DailySpending {
    /// Operations that spent anything in the days, each with its credits per day
    /// (oldest day first), in `Operation` order.
    pub by_operation: Vec<(String, Vec<i64>)>,
    /// All operations together, per day.
    pub totals: Vec<i64>,
}

/// What the team spent per day over `days`, from the credit history.
pub async fn spending_by_day(db: &Database, team: TeamId, days: Days) -> Result<DailySpending, QueryError> {
    // A deduction names its reservation; the reservation (`credit_reservations`, by its
    // key) names the operation.
    let sql = format!(
        "SELECT {day} AS day, COALESCE(r.operation, '') AS operation, CAST(SUM(d.amount) AS BIGINT) AS spent \
         FROM credit_ledger d LEFT JOIN credit_reservations r ON r.reservation_id = d.reference \
         WHERE d.team_id = $1 AND d.entry_type = 'deducted' AND d.occurred_at >= $2 AND d.occurred_at < $3 GROUP BY 1, 2",
        day = ledger_day(db, "d.occurred_at")
    );
    let rows = db_fetch_all!(db, (String, String, i64), &sql, team.to_string(), days.start(), days.end())?;
    Ok(daily_spending(days, rows))
}

/// Sums `(day, operation, credits)` rows into per-day series.
fn daily_spending(days: Days, rows: Vec<(String, String, i64)>) -> DailySpending {
    let mut by_operation: Vec<(String, Vec<i64>)> = Vec::new();
    let mut totals = vec![0; days.count];
    for (day, operation, spent) in rows {
        let Some(i) = days.index(&day) else { continue };
        let at = match by_operation.iter().position(|(name, _)| *name == operation) {
            Some(at) => at,
            None => {
                by_operation.push((operation, vec![0; days.count]));
                by_operation.len() - 1
            }
        };
        by_operation[at].1[i] += spent;
        totals[i] += spent;
    }
    let rank = |name: &str| domain::Operation::ALL.iter().position(|o| o.as_str() == name).unwrap_or(usize::MAX);
    by_operation.sort_by(|(a, _), (b, _)| rank(a).cmp(&rank(b)).then_with(|| a.cmp(b)));
    DailySpending { by_operation, totals }
}

/// The team's available credits at the end of each of `days` (oldest first), from the
/// credit history: the balance its last entry of the day left, or the day before's.
pub async fn balance_by_day(db: &Database, team: TeamId, days: Days) -> Result<Vec<i64>, QueryError> {
    let team_id = team.to_string();
    let before = db_fetch_optional!(
        db,
        (i64,),
        "SELECT available_after FROM credit_ledger WHERE team_id = $1 AND occurred_at < $2 ORDER BY occurred_at DESC, entry_no DESC LIMIT 1",
        &team_id,
        days.start()
    )?;
    let sql = format!(
        "SELECT d.day, l.available_after FROM \
           (SELECT {day} AS day, MAX(entry_no) AS last_no FROM credit_ledger \
            WHERE team_id = $1 AND occurred_at >= $2 AND occurred_at < $3 GROUP BY 1) d \
         JOIN credit_ledger l ON l.team_id = $1 AND l.entry_no = d.last_no",
        day = ledger_day(db, "occurred_at")
    );
    let ends = db_fetch_all!(db, (String, i64), &sql, &team_id, days.start(), days.end())?;
    Ok(carried_forward(days, before.map_or(0, |(b,)| b), ends))
}

/// Each day's closing balance: its own last entry's, else the day before's.
fn carried_forward(days: Days, opening: i64, ends: Vec<(String, i64)>) -> Vec<i64> {
    let mut closing: Vec<Option<i64>> = vec![None; days.count];
    for (day, available) in ends {
        if let Some(i) = days.index(&day) {
            closing[i] = Some(available);
        }
    }
    let mut last = opening;
    closing
        .into_iter()
        .map(|c| {
            last = c.unwrap_or(last);
            last
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn days() -> Days {
        Days::ending(DateTime::parse_from_rfc3339("2026-12-06T20:15:00Z").expect("time").with_timezone(&Utc), 3)
    }

    #[test]
    fn days_cover_whole_utc_days_up_to_today() {
        let days = days();
        assert_eq!(days.start().to_rfc3339(), "2026-12-04T00:00:00+00:00");
        assert_eq!(days.end().to_rfc3339(), "2026-12-07T00:00:00+00:00");
        assert_eq!(days.dates().iter().map(|d| d.to_string()).collect::<Vec<_>>(), ["2026-12-04", "2026-12-05", "2026-12-06"]);
        assert_eq!((days.index("2026-12-04"), days.index("2026-12-06"), days.index("2026-12-03"), days.index("2026-12-07")), (Some(0), Some(2), None, None));
    }

    #[test]
    fn spending_sums_per_day_and_operation_in_operation_order() {
        let rows = vec![
            ("2026-12-06".to_string(), "image_generation".to_string(), 40),
            ("2026-12-04".to_string(), "model_creation".to_string(), 300),
            ("2026-12-06".to_string(), "model_creation".to_string(), 311),
            ("2026-11-01".to_string(), "model_creation".to_string(), 999),
        ];
        let spending = daily_spending(days(), rows);
        assert_eq!(spending.totals, [300, 0, 351]);
        let names: Vec<&str> = spending.by_operation.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["model_creation", "image_generation"]);
        assert_eq!(spending.by_operation[0].1, [300, 0, 311]);
    }

    #[test]
    fn a_day_without_entries_keeps_the_balance_of_the_day_before() {
        assert_eq!(carried_forward(days(), 1000, vec![("2026-12-05".into(), 700)]), [1000, 700, 700]);
        assert_eq!(carried_forward(days(), 0, Vec::new()), [0, 0, 0]);
    }
}
