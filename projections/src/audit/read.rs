//! Reading streams for the auditor inside one consistent snapshot: only the columns the
//! checks need (the payload as stored, the two chain hashes out of the metadata).

use infrastructure::db::Database;
use sqlx::{Executor, Postgres, Sqlite, Transaction};

/// One stored event as the auditor checks it. The payload is the stored JSON text, parsed
/// by the checker (a payload that is not JSON is reported against its event).
#[derive(Debug, Clone)]
pub(super) struct AuditEvent {
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: String,
    pub prev_hash: Option<String>,
    pub hash: Option<String>,
}

type Row = (String, i64, String, String, String, Option<String>, Option<String>);

impl From<Row> for AuditEvent {
    fn from((aggregate_id, sequence, event_type, event_version, payload, prev_hash, hash): Row) -> Self {
        Self { aggregate_id, sequence, event_type, event_version, payload, prev_hash, hash }
    }
}

/// The metadata's hashes as text on each database; metadata that is not a JSON object (or
/// not JSON) yields none, reported as `hash-missing`.
const COLUMNS_POSTGRES: &str = "aggregate_id, sequence, event_type, event_version, CAST(payload AS TEXT), \
     metadata->>'prev_hash', metadata->>'hash'";
const COLUMNS_SQLITE: &str = "aggregate_id, sequence, event_type, event_version, CAST(payload AS TEXT), \
     CASE WHEN json_valid(metadata) THEN CAST(json_extract(metadata, '$.prev_hash') AS TEXT) END, \
     CASE WHEN json_valid(metadata) THEN CAST(json_extract(metadata, '$.hash') AS TEXT) END";

/// Events per fetch while walking all streams of a type.
const PAGE_EVENTS: i64 = 5_000;

pub(super) enum Snapshot {
    Postgres(Transaction<'static, Postgres>),
    Sqlite(Transaction<'static, Sqlite>),
}

/// `$sql` with `{COLUMNS}` replaced by the database's column list, run with `$args`.
macro_rules! fetch_events {
    ($snapshot:expr, $sql:expr $(, $arg:expr)* $(,)?) => {{
        let rows: Result<Vec<Row>, sqlx::Error> = match $snapshot {
            Snapshot::Postgres(tx) => {
                let sql = $sql.replace("{COLUMNS}", COLUMNS_POSTGRES);
                sqlx::query_as::<_, Row>(&sql)$(.bind($arg))*.fetch_all(&mut **tx).await
            }
            Snapshot::Sqlite(tx) => {
                let sql = $sql.replace("{COLUMNS}", COLUMNS_SQLITE);
                sqlx::query_as::<_, Row>(&sql)$(.bind($arg))*.fetch_all(&mut **tx).await
            }
        };
        rows.map(|rows| rows.into_iter().map(AuditEvent::from).collect::<Vec<_>>())
    }};
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

    /// Events of these aggregate types in the snapshot.
    pub(super) async fn count_events(&mut self, aggregate_types: &[&str]) -> Result<u64, sqlx::Error> {
        let mut total = 0i64;
        for aggregate_type in aggregate_types {
            let sql = "SELECT COUNT(*) FROM events WHERE aggregate_type = $1";
            total += match self {
                Snapshot::Postgres(tx) => sqlx::query_scalar::<_, i64>(sql).bind(aggregate_type).fetch_one(&mut **tx).await?,
                Snapshot::Sqlite(tx) => sqlx::query_scalar::<_, i64>(sql).bind(aggregate_type).fetch_one(&mut **tx).await?,
            };
        }
        Ok(u64::try_from(total).unwrap_or(0))
    }

    /// One stream, in sequence order.
    pub(super) async fn stream(&mut self, aggregate_type: &str, aggregate_id: &str) -> Result<Vec<AuditEvent>, sqlx::Error> {
        let sql = "SELECT {COLUMNS} FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence";
        fetch_events!(self, sql, aggregate_type, aggregate_id)
    }

    /// Several streams of one type, each in sequence order.
    pub(super) async fn streams(&mut self, aggregate_type: &str, ids: &[String]) -> Result<Vec<Vec<AuditEvent>>, sqlx::Error> {
        let mut streams = Vec::new();
        for chunk in ids.chunks(infrastructure::event_store::ROWS_PER_STATEMENT_MAX) {
            let placeholders: Vec<String> = (2..chunk.len() + 2).map(|n| format!("${n}")).collect();
            let sql = format!(
                "SELECT {{COLUMNS}} FROM events WHERE aggregate_type = $1 AND aggregate_id IN ({}) ORDER BY aggregate_id, sequence",
                placeholders.join(", ")
            );
            let rows = match self {
                Snapshot::Postgres(tx) => {
                    let sql = sql.replace("{COLUMNS}", COLUMNS_POSTGRES);
                    let mut query = sqlx::query_as::<_, Row>(&sql).bind(aggregate_type);
                    for id in chunk {
                        query = query.bind(id);
                    }
                    query.fetch_all(&mut **tx).await?
                }
                Snapshot::Sqlite(tx) => {
                    let sql = sql.replace("{COLUMNS}", COLUMNS_SQLITE);
                    let mut query = sqlx::query_as::<_, Row>(&sql).bind(aggregate_type);
                    for id in chunk {
                        query = query.bind(id);
                    }
                    query.fetch_all(&mut **tx).await?
                }
            };
            let mut grouping = Streams::default();
            for event in rows.into_iter().map(AuditEvent::from) {
                grouping.push(event, |events| streams.push(events.to_vec()));
            }
            grouping.finish(|events| streams.push(events.to_vec()));
        }
        Ok(streams)
    }

    /// The next page of every event of `aggregate_type` in (stream, sequence) order,
    /// [`PAGE_EVENTS`] at a time (`None` after the last). PostgreSQL walks one cursor over
    /// the stream key's index; SQLite pages by the key (the row-value comparison walks the
    /// same index). The caller may check a page on another thread while the next is read.
    pub(super) async fn next_page(&mut self, pages: &mut Pages) -> Result<Option<Vec<AuditEvent>>, sqlx::Error> {
        if pages.done {
            return Ok(None);
        }
        let events = match self {
            Snapshot::Postgres(tx) => {
                let cursor = format!("kiln_audit_{}", pages.cursor);
                if !pages.opened {
                    let declare = format!(
                        "DECLARE {cursor} NO SCROLL CURSOR FOR SELECT {COLUMNS_POSTGRES} FROM events \
                         WHERE aggregate_type = '{}' ORDER BY aggregate_id, sequence",
                        pages.aggregate_type.replace('\'', "''")
                    );
                    tx.execute(declare.as_str()).await?;
                    pages.opened = true;
                }
                let rows: Vec<Row> = sqlx::query_as(&format!("FETCH FORWARD {PAGE_EVENTS} FROM {cursor}")).fetch_all(&mut **tx).await?;
                if (rows.len() as i64) < PAGE_EVENTS {
                    tx.execute(format!("CLOSE {cursor}").as_str()).await?;
                }
                rows.into_iter().map(AuditEvent::from).collect::<Vec<_>>()
            }
            Snapshot::Sqlite(_) => {
                let sql = "SELECT {COLUMNS} FROM events WHERE aggregate_type = $1 AND (aggregate_id, sequence) > ($2, $3) \
                     ORDER BY aggregate_id, sequence LIMIT $4";
                let (after_id, after_sequence) = pages.after.clone().unwrap_or_default();
                let events = fetch_events!(self, sql, &pages.aggregate_type, after_id, after_sequence, PAGE_EVENTS)?;
                pages.after = events.last().map(|last| (last.aggregate_id.clone(), last.sequence));
                events
            }
        };
        pages.done = (events.len() as i64) < PAGE_EVENTS;
        Ok(Some(events))
    }
}

/// Where a walk over all streams of a type stands.
pub(super) struct Pages {
    aggregate_type: String,
    /// Names the PostgreSQL cursor (one per walk in a snapshot).
    cursor: usize,
    opened: bool,
    /// SQLite: the key of the last event read.
    after: Option<(String, i64)>,
    done: bool,
}

impl Pages {
    pub(super) fn new(aggregate_type: &str, cursor: usize) -> Self {
        Self { aggregate_type: aggregate_type.to_string(), cursor, opened: false, after: None, done: false }
    }
}

/// Splits events ordered by stream into whole streams (one stream held at a time).
#[derive(Default)]
pub(super) struct Streams {
    current: Vec<AuditEvent>,
}

impl Streams {
    pub(super) fn push(&mut self, event: AuditEvent, mut visit: impl FnMut(&[AuditEvent])) {
        if self.current.first().is_some_and(|first| first.aggregate_id != event.aggregate_id) {
            visit(&self.current);
            self.current.clear();
        }
        self.current.push(event);
    }

    /// Like [`Streams::push`], handing over each stream as it ends.
    pub(super) fn push_owned(&mut self, event: AuditEvent, mut ended: impl FnMut(Vec<AuditEvent>)) {
        if self.current.first().is_some_and(|first| first.aggregate_id != event.aggregate_id) {
            ended(std::mem::take(&mut self.current));
        }
        self.current.push(event);
    }

    /// The stream still open, if any (after the last event of its kind).
    pub(super) fn take(&mut self) -> Option<Vec<AuditEvent>> {
        (!self.current.is_empty()).then(|| std::mem::take(&mut self.current))
    }

    pub(super) fn finish(&mut self, mut visit: impl FnMut(&[AuditEvent])) {
        if !self.current.is_empty() {
            visit(&self.current);
            self.current.clear();
        }
    }
}
