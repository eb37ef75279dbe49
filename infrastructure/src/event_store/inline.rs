//! Inline projections: read models updated inside the append transaction, so their
//! readers see their own writes and a failed append leaves them untouched.

use application::event_store::StoredEvent;
use async_trait::async_trait;
use sqlx::{PgConnection, SqliteConnection};

pub type ProjectionError = Box<dyn std::error::Error + Send + Sync>;

/// The open append transaction, on whichever database the store runs.
pub enum Tx<'a> {
    Postgres(&'a mut PgConnection),
    Sqlite(&'a mut SqliteConnection),
}

#[async_trait]
pub trait InlineProjection: Send + Sync {
    /// Stable name, used in errors and logs.
    fn name(&self) -> &'static str;

    /// Applies `events` (all events of one append, in order) inside `tx`. An error
    /// rolls back the whole append.
    async fn apply(&self, tx: &mut Tx<'_>, events: &[StoredEvent]) -> Result<(), ProjectionError>;
}

/// Runs every inline projection, in order, over one append's events inside its
/// transaction; the first refusal fails (and so rolls back) the append.
pub(crate) async fn run_inline(
    inline: &[std::sync::Arc<dyn InlineProjection>],
    tx: &mut Tx<'_>,
    events: &[StoredEvent],
) -> Result<(), application::event_store::EventStoreError> {
    use application::event_store::EventStoreError;
    for projection in inline {
        projection.apply(tx, events).await.map_err(|error| {
            // A projection's statement that lost its connection (or met a read-only
            // server) is the store being unavailable, not the projection refusing the
            // events: callers retry the one and report the other.
            if crate::db::is_unreachable_cause(&*error as &(dyn std::error::Error + 'static)) {
                return EventStoreError::Unavailable(format!("inline projection {}: {error}", projection.name()));
            }
            EventStoreError::Projection { projection: projection.name().to_string(), reason: error.to_string() }
        })?;
    }
    Ok(())
}

/// Runs one statement with the same SQL text on whichever database `tx` is on, and
/// returns the number of rows affected. Placeholders are `$1, $2, …` (both databases
/// accept them); every argument must be encodable for both.
#[macro_export]
macro_rules! tx_execute {
    ($tx:expr, $sql:expr $(, $arg:expr)* $(,)?) => {{
        match $tx {
            $crate::event_store::Tx::Postgres(conn) => {
                ::sqlx::query($sql)$(.bind($arg))*.execute(&mut **conn).await.map(|r| r.rows_affected())
            }
            $crate::event_store::Tx::Sqlite(conn) => {
                ::sqlx::query($sql)$(.bind($arg))*.execute(&mut **conn).await.map(|r| r.rows_affected())
            }
        }
    }};
}

/// Fetches at most one row as `$row` (a tuple or `FromRow` type decodable on both
/// databases) with the same SQL text on whichever database `tx` is on.
#[macro_export]
macro_rules! tx_fetch_optional {
    ($tx:expr, $row:ty, $sql:expr $(, $arg:expr)* $(,)?) => {{
        match $tx {
            $crate::event_store::Tx::Postgres(conn) => {
                ::sqlx::query_as::<_, $row>($sql)$(.bind($arg))*.fetch_optional(&mut **conn).await
            }
            $crate::event_store::Tx::Sqlite(conn) => {
                ::sqlx::query_as::<_, $row>($sql)$(.bind($arg))*.fetch_optional(&mut **conn).await
            }
        }
    }};
}

/// Fetches the rows of many keys as `$row`s: on PostgreSQL in one statement, `$many`, with
/// the keys bound as `$1` (a `text[]`); on SQLite with `$one` once per key, bound as `$1`
/// (local reads: there is no round trip to save, and no arrays). Both return the same
/// columns, the key among them, for the caller to match rows to keys. No keys, no read.
#[macro_export]
macro_rules! tx_fetch_by_keys {
    ($tx:expr, $row:ty, $many:expr, $one:expr, $keys:expr $(,)?) => {{
        let keys: &[&str] = $keys;
        match $tx {
            _ if keys.is_empty() => Ok(Vec::<$row>::new()),
            $crate::event_store::Tx::Postgres(conn) => {
                ::sqlx::query_as::<_, $row>($many).bind(keys).fetch_all(&mut **conn).await
            }
            $crate::event_store::Tx::Sqlite(conn) => {
                let mut rows: Vec<$row> = Vec::new();
                let mut failed = None;
                for key in keys {
                    match ::sqlx::query_as::<_, $row>($one).bind(*key).fetch_all(&mut **conn).await {
                        Ok(found) => rows.extend(found),
                        Err(error) => {
                            failed = Some(error);
                            break;
                        }
                    }
                }
                failed.map_or(Ok(rows), Err)
            }
        }
    }};
}

/// `{head} VALUES ($1, $2), ($3, $4), … {tail}` for `rows` rows of `columns` values.
/// Used for multi-row inserts and for `UPDATE … FROM (VALUES …) AS v` (both databases
/// name the columns of a VALUES list `column1`, `column2`, …).
pub fn values_sql(head: &str, columns: usize, rows: usize, tail: &str) -> String {
    let mut sql = String::with_capacity(head.len() + tail.len() + rows * columns * 5);
    sql.push_str(head);
    sql.push_str(" VALUES ");
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..columns {
            if column > 0 {
                sql.push_str(", ");
            }
            sql.push('$');
            sql.push_str(&(row * columns + column + 1).to_string());
        }
        sql.push(')');
    }
    sql.push(' ');
    sql.push_str(tail);
    sql
}

/// `{head} SELECT * FROM UNNEST($1::{type}[], $2::{type}[], …) AS v(column1, column2, …)
/// {tail}`: PostgreSQL's form of a multi-row statement, one array per column. Its text
/// does not depend on the number of rows, so each connection prepares it once; a VALUES
/// list is a new statement for every row count, parsed, described and planned again
/// (one extra round trip each), and a busy connection's statement cache keeps evicting
/// them. The columns are named as a VALUES list names them, so the same `head` and
/// `tail` serve both forms (see [`tx_execute_rows!`]).
pub fn unnest_sql(head: &str, types: &[&str], tail: &str) -> String {
    let arrays: Vec<String> = types.iter().enumerate().map(|(n, ty)| format!("${}::{ty}[]", n + 1)).collect();
    let names: Vec<String> = (1..=types.len()).map(|n| format!("column{n}")).collect();
    format!("{head} SELECT * FROM UNNEST({}) AS v({}) {tail}", arrays.join(", "), names.join(", "))
}

/// Rows per statement written as a list of parameters (a `VALUES` or `IN` list): keeps
/// the parameter count far below both databases' limits (SQLite: 32,766; PostgreSQL:
/// 65,535). [`tx_execute_rows!`] on PostgreSQL binds one array per column instead.
pub const ROWS_PER_STATEMENT_MAX: usize = 500;

/// Runs a multi-row statement over `rows` on either database, each column given once as
/// `"sql type" => |row| value`: on PostgreSQL one statement of arrays ([`unnest_sql`]),
/// on SQLite `{head} VALUES (…), (…) {tail}` in chunks ([`values_sql`]). `head` and
/// `tail` name the rows' columns `column1`, `column2`, … (as in `UPDATE … FROM (` …
/// `) AS v WHERE … = v.column1`). Nothing is sent for no rows.
#[macro_export]
macro_rules! tx_execute_rows {
    ($tx:expr, $head:expr, $tail:expr, $rows:expr, [$($type:literal => |$row:ident| $column:expr),+ $(,)?]) => {{
        let all = &$rows[..];
        let types: &[&str] = &[$($type),+];
        let mut done: Result<u64, ::sqlx::Error> = Ok(0);
        if !all.is_empty() {
            match &mut *$tx {
                $crate::event_store::Tx::Postgres(conn) => {
                    let sql = $crate::event_store::unnest_sql($head, types, $tail);
                    done = ::sqlx::query(&sql)
                        $(.bind(all.iter().map(|$row| $column).collect::<Vec<_>>()))+
                        .execute(&mut **conn)
                        .await
                        .map(|r| r.rows_affected());
                }
                $crate::event_store::Tx::Sqlite(conn) => {
                    for chunk in all.chunks($crate::event_store::ROWS_PER_STATEMENT_MAX) {
                        let sql = $crate::event_store::values_sql($head, types.len(), chunk.len(), $tail);
                        let mut query = ::sqlx::query(&sql);
                        for each in chunk {
                            query = query$(.bind({ let $row = each; $column }))+;
                        }
                        match query.execute(&mut **conn).await {
                            Ok(r) => done = done.map(|total| total + r.rows_affected()),
                            Err(error) => {
                                done = Err(error);
                                break;
                            }
                        }
                    }
                }
            }
        }
        done
    }};
}

/// As [`tx_execute_rows!`], for a statement that returns rows (`RETURNING …`), each as
/// an `$out`.
#[macro_export]
macro_rules! tx_fetch_rows {
    ($tx:expr, $out:ty, $head:expr, $tail:expr, $rows:expr, [$($type:literal => |$row:ident| $column:expr),+ $(,)?]) => {{
        let all = &$rows[..];
        let types: &[&str] = &[$($type),+];
        let mut fetched: Result<Vec<$out>, ::sqlx::Error> = Ok(Vec::new());
        if !all.is_empty() {
            match &mut *$tx {
                $crate::event_store::Tx::Postgres(conn) => {
                    let sql = $crate::event_store::unnest_sql($head, types, $tail);
                    fetched = ::sqlx::query_as::<_, $out>(&sql)
                        $(.bind(all.iter().map(|$row| $column).collect::<Vec<_>>()))+
                        .fetch_all(&mut **conn)
                        .await;
                }
                $crate::event_store::Tx::Sqlite(conn) => {
                    for chunk in all.chunks($crate::event_store::ROWS_PER_STATEMENT_MAX) {
                        let sql = $crate::event_store::values_sql($head, types.len(), chunk.len(), $tail);
                        let mut query = ::sqlx::query_as::<_, $out>(&sql);
                        for each in chunk {
                            query = query$(.bind({ let $row = each; $column }))+;
                        }
                        match (query.fetch_all(&mut **conn).await, &mut fetched) {
                            (Ok(rows), Ok(all_rows)) => all_rows.extend(rows),
                            (Err(error), _) => {
                                fetched = Err(error);
                                break;
                            }
                            (Ok(_), Err(_)) => break,
                        }
                    }
                }
            }
        }
        fetched
    }};
}
