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
