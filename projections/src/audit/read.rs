//! Reading streams for the auditor inside one consistent snapshot.

use application::event_store::{LogPosition, StoredEvent};
use chrono::{DateTime, Utc};
use infrastructure::db::Database;
use sqlx::{Postgres, Sqlite, Transaction};

/// Payload and metadata are read as text on both databases (`CAST` works on both) and
/// parsed here; a payload that is not JSON becomes `null` and fails to decode, which the
/// auditor reports against its event.
type Row = (String, String, i64, String, String, String, String, DateTime<Utc>);

const COLUMNS: &str = "aggregate_type, aggregate_id, sequence, event_type, event_version, \
     CAST(payload AS TEXT), CAST(metadata AS TEXT), recorded_at";

pub(super) enum Snapshot {
    Postgres(Transaction<'static, Postgres>),
    Sqlite(Transaction<'static, Sqlite>),
}

macro_rules! fetch_rows {
    ($snapshot:expr, $sql:expr $(, $arg:expr)* $(,)?) => {{
        match $snapshot {
            Snapshot::Postgres(tx) => sqlx::query_as::<_, Row>($sql)$(.bind($arg))*.fetch_all(&mut **tx).await,
            Snapshot::Sqlite(tx) => sqlx::query_as::<_, Row>($sql)$(.bind($arg))*.fetch_all(&mut **tx).await,
        }
    }};
}

fn to_event(row: Row) -> StoredEvent {
    let (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, recorded_at) = row;
    StoredEvent {
        log_position: LogPosition::START,
        aggregate_type,
        aggregate_id,
        sequence,
        event_type,
        event_version,
        payload: serde_json::from_str(&payload).unwrap_or_default(),
        metadata: serde_json::from_str(&metadata).unwrap_or_default(),
        recorded_at,
    }
}

impl Snapshot {
    pub(super) async fn begin(db: &Database) -> Result<Self, sqlx::Error> {
        Ok(match db {
            Database::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY").execute(&mut *tx).await?;
                Snapshot::Postgres(tx)
            }
            // A WAL read transaction sees one snapshot from its first read on.
            Database::Sqlite { read, .. } => Snapshot::Sqlite(read.begin().await?),
        })
    }

    pub(super) async fn end(self) -> Result<(), sqlx::Error> {
        match self {
            Snapshot::Postgres(tx) => tx.rollback().await,
            Snapshot::Sqlite(tx) => tx.rollback().await,
        }
    }

    /// One stream, in sequence order.
    pub(super) async fn stream(&mut self, aggregate_type: &str, aggregate_id: &str) -> Result<Vec<StoredEvent>, sqlx::Error> {
        let sql = format!("SELECT {COLUMNS} FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence");
        let rows = fetch_rows!(self, &sql, aggregate_type, aggregate_id)?;
        Ok(rows.into_iter().map(to_event).collect())
    }

    /// Several streams of one type, each in sequence order.
    pub(super) async fn streams(&mut self, aggregate_type: &str, ids: &[String]) -> Result<Vec<Vec<StoredEvent>>, sqlx::Error> {
        let mut streams = Vec::new();
        for chunk in ids.chunks(infrastructure::event_store::ROWS_PER_STATEMENT_MAX) {
            let placeholders: Vec<String> = (2..chunk.len() + 2).map(|n| format!("${n}")).collect();
            let sql = format!(
                "SELECT {COLUMNS} FROM events WHERE aggregate_type = $1 AND aggregate_id IN ({}) ORDER BY aggregate_id, sequence",
                placeholders.join(", ")
            );
            let rows = match self {
                Snapshot::Postgres(tx) => {
                    let mut query = sqlx::query_as::<_, Row>(&sql).bind(aggregate_type);
                    for id in chunk {
                        query = query.bind(id);
                    }
                    query.fetch_all(&mut **tx).await?
                }
                Snapshot::Sqlite(tx) => {
                    let mut query = sqlx::query_as::<_, Row>(&sql).bind(aggregate_type);
                    for id in chunk {
                        query = query.bind(id);
                    }
                    query.fetch_all(&mut **tx).await?
                }
            };
            group(rows.into_iter().map(to_event), |events| streams.push(events));
        }
        Ok(streams)
    }

    /// Calls `visit` with every stream of `aggregate_type`, whole and in sequence order,
    /// reading `page_size` events at a time in key order (bounded memory: one page plus
    /// one stream). The row-value comparison lets both databases walk the stream key's
    /// index instead of sorting the rest of the log for every page.
    pub(super) async fn each_stream(
        &mut self,
        aggregate_type: &str,
        page_size: i64,
        mut visit: impl FnMut(&[StoredEvent]),
    ) -> Result<(), sqlx::Error> {
        let sql = format!(
            "SELECT {COLUMNS} FROM events WHERE aggregate_type = $1 AND (aggregate_id, sequence) > ($2, $3) \
             ORDER BY aggregate_id, sequence LIMIT $4"
        );
        let (mut after_id, mut after_sequence) = (String::new(), 0i64);
        let mut current: Vec<StoredEvent> = Vec::new();
        loop {
            let rows = fetch_rows!(self, &sql, aggregate_type, &after_id, after_sequence, page_size)?;
            let full = rows.len() as i64 == page_size;
            for event in rows.into_iter().map(to_event) {
                if current.first().is_some_and(|first| first.aggregate_id != event.aggregate_id) {
                    visit(&current);
                    current.clear();
                }
                after_id.clone_from(&event.aggregate_id);
                after_sequence = event.sequence;
                current.push(event);
            }
            if !full {
                break;
            }
        }
        if !current.is_empty() {
            visit(&current);
        }
        Ok(())
    }
}

/// Splits events ordered by stream into one `Vec` per stream.
fn group(events: impl Iterator<Item = StoredEvent>, mut visit: impl FnMut(Vec<StoredEvent>)) {
    let mut current: Vec<StoredEvent> = Vec::new();
    for event in events {
        if current.first().is_some_and(|first| first.aggregate_id != event.aggregate_id) {
            visit(std::mem::take(&mut current));
        }
        current.push(event);
    }
    if !current.is_empty() {
        visit(current);
    }
}
