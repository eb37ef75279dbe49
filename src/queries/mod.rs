//! The read side shared by both doors: the REST handlers (`http`) and the dashboard
//! (`web`). Every query of the read models lives here, scoped to the caller's team, and
//! returns view structs; neither door runs SQL of its own, so both show the same data.
//!
//! Pagination stays with the callers (cursor formats are a door's contract): list
//! queries take the position after which to read and how many rows to fetch.

pub mod catalog;
pub mod credits;
pub mod jobs;
pub mod keys;
pub mod models;
pub mod webhooks;

/// `clause` if the request gives that filter, else nothing: a list query names only the
/// filters given. Every argument is still bound, given or not (PostgreSQL takes the
/// types of the parameters a statement does not name from the bind; SQLite leaves them
/// unused), so each combination of filters is a statement of its own that PostgreSQL
/// plans once per connection. A `($n IS NULL OR …)` clause would instead be planned
/// afresh at every execution: the generic plan cannot leave the clause out, so the
/// planner judges a custom plan cheaper every time (≈ 35 µs of planning a list read).
pub(crate) fn given(given: bool, clause: &str) -> &str {
    if given {
        clause
    } else {
        ""
    }
}

/// The `LIKE` pattern (with `ESCAPE '\'`) of a text search: `text` anywhere, any case
/// (lower-cased: the queries compare `LOWER(column)`), its `%`, `_` and `\` taken
/// literally. One rule for every search box (jobs, catalog, the console).
pub(crate) fn like_pattern(text: &str) -> String {
    let escaped = text.to_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
    format!("%{escaped}%")
}

/// The database a read that allows a replica goes to (`database.read_url`): the
/// replica, or — for a read presenting a write's consistency token that the replica has
/// not replayed within `database.read_wait_ms` — the primary. Counted by where it went
/// (`kiln_reads_total{from}`). Reads that must be exact (the balance, a job being
/// acted on) keep reading the primary.
pub async fn read_db(
    reads: &infrastructure::replica::ReadSide,
    token: Option<infrastructure::replica::ConsistencyToken>,
) -> &infrastructure::db::Database {
    let (db, from) = reads.for_read(token).await;
    metrics::counter!("kiln_reads_total", "from" => from.as_str()).increment(1);
    db
}
pub mod operators;
pub mod ops;

/// A read-model query failed (the database, not the caller, is at fault).
#[derive(Debug, thiserror::Error)]
#[error("read model query failed: {0}")]
pub struct QueryError(#[from] sqlx::Error);
