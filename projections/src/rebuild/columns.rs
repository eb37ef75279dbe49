//! Rows in columns, written with one binary `COPY … FROM STDIN` per chunk: the values go in
//! PostgreSQL's own binary form (no text formatting or parsing of numbers and times), and
//! COPY stores rows a page at a time (one WAL record per page, not per row).
//!
//! Every column is `text`, `bigint` or `timestamptz` in the tables written here; a column of
//! another type fails the COPY loudly ("incorrect binary data format"), never silently.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

pub(super) enum Column {
    Text(Vec<String>),
    OptText(Vec<Option<String>>),
    Static(Vec<&'static str>),
    OptStatic(Vec<Option<&'static str>>),
    Int(Vec<i64>),
    Time(Vec<DateTime<Utc>>),
    OptTime(Vec<Option<DateTime<Utc>>>),
}

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 00:00:00 UTC).
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// Bytes of COPY data gathered before they are sent.
const COPY_CHUNK_BYTES: usize = 1 << 20;

/// A binary COPY stream's header: signature, flags, header extension length.
const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

impl Column {
    /// Appends row `row`'s value as one binary COPY field (length, then the bytes; -1 for NULL).
    fn write_field(&self, row: usize, out: &mut Vec<u8>) {
        fn text(value: &str, out: &mut Vec<u8>) {
            out.extend_from_slice(&(value.len() as i32).to_be_bytes());
            out.extend_from_slice(value.as_bytes());
        }
        fn int(value: i64, out: &mut Vec<u8>) {
            out.extend_from_slice(&8i32.to_be_bytes());
            out.extend_from_slice(&value.to_be_bytes());
        }
        fn time(value: &DateTime<Utc>, out: &mut Vec<u8>) {
            int(value.timestamp_micros() - POSTGRES_EPOCH_MICROS, out);
        }
        fn null(out: &mut Vec<u8>) {
            out.extend_from_slice(&(-1i32).to_be_bytes());
        }
        match self {
            Column::Text(v) => text(&v[row], out),
            Column::OptText(v) => match v[row].as_deref() {
                Some(value) => text(value, out),
                None => null(out),
            },
            Column::Static(v) => text(v[row], out),
            Column::OptStatic(v) => match v[row] {
                Some(value) => text(value, out),
                None => null(out),
            },
            Column::Int(v) => int(v[row], out),
            Column::Time(v) => time(&v[row], out),
            Column::OptTime(v) => match &v[row] {
                Some(value) => time(value, out),
                None => null(out),
            },
        }
    }

    fn len(&self) -> usize {
        match self {
            Column::Text(v) => v.len(),
            Column::OptText(v) => v.len(),
            Column::Static(v) => v.len(),
            Column::OptStatic(v) => v.len(),
            Column::Int(v) => v.len(),
            Column::Time(v) => v.len(),
            Column::OptTime(v) => v.len(),
        }
    }
}

/// Rows for one table: named columns of equal length.
pub(super) struct Insert {
    pub(super) table: &'static str,
    columns: Vec<(&'static str, Column)>,
}

impl Insert {
    pub(super) fn new(table: &'static str, columns: Vec<(&'static str, Column)>) -> Self {
        debug_assert!(columns.windows(2).all(|w| w[0].1.len() == w[1].1.len()), "columns of {table} differ in length");
        Self { table, columns }
    }

    pub(super) fn rows(&self) -> usize {
        self.columns.first().map_or(0, |(_, c)| c.len())
    }

    /// Writes the rows with one binary COPY, sent a chunk at a time (the connection's
    /// `search_path` decides which table that is).
    pub(super) async fn execute(self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        let rows = self.rows();
        if rows == 0 {
            return Ok(());
        }
        let names: Vec<&str> = self.columns.iter().map(|(name, _)| *name).collect();
        let sql = format!("COPY \"{}\" ({}) FROM STDIN (FORMAT binary)", self.table, names.join(", "));
        let fields = (self.columns.len() as i16).to_be_bytes();
        let mut copy = conn.copy_in_raw(&sql).await?;
        let mut data = Vec::with_capacity(COPY_CHUNK_BYTES + 4096);
        data.extend_from_slice(COPY_HEADER);
        for row in 0..rows {
            data.extend_from_slice(&fields);
            for (_, column) in &self.columns {
                column.write_field(row, &mut data);
            }
            if data.len() >= COPY_CHUNK_BYTES {
                copy.send(data.as_slice()).await?;
                data.clear();
            }
        }
        // The trailer: a field count of -1.
        data.extend_from_slice(&(-1i16).to_be_bytes());
        copy.send(data.as_slice()).await?;
        copy.finish().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_fields_are_postgres_own_forms() {
        let at = DateTime::parse_from_rfc3339("2000-01-01T00:00:01.5Z").unwrap().with_timezone(&Utc);
        let mut out = Vec::new();
        Column::Time(vec![at]).write_field(0, &mut out);
        assert_eq!(out, [0, 0, 0, 8, 0, 0, 0, 0, 0, 0x16, 0xe3, 0x60]);
        out.clear();
        Column::OptText(vec![None, Some("é".into())]).write_field(0, &mut out);
        Column::OptText(vec![None, Some("é".into())]).write_field(1, &mut out);
        assert_eq!(out, [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 2, 0xc3, 0xa9]);
        out.clear();
        Column::Int(vec![-2]).write_field(0, &mut out);
        assert_eq!(out, [0, 0, 0, 8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe]);
        assert_eq!(COPY_HEADER.len(), 19);
    }
}
