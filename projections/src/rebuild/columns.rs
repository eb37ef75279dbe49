//! Rows in columns, written with one `INSERT … SELECT * FROM UNNEST($1::text[], …)` per
//! chunk: a statement carries thousands of rows as one array per column (binary protocol,
//! no per-row placeholders, no text formatting of values).

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

/// Rows per statement: bounds the size of one message (a few MB) and of the memory held.
pub(super) const ROWS_PER_INSERT_MAX: usize = 50_000;

pub(super) enum Column {
    Text(Vec<String>),
    OptText(Vec<Option<String>>),
    Static(Vec<&'static str>),
    OptStatic(Vec<Option<&'static str>>),
    Int(Vec<i64>),
    Time(Vec<DateTime<Utc>>),
    OptTime(Vec<Option<DateTime<Utc>>>),
}

impl Column {
    fn sql_type(&self) -> &'static str {
        match self {
            Column::Text(_) | Column::OptText(_) | Column::Static(_) | Column::OptStatic(_) => "text[]",
            Column::Int(_) => "int8[]",
            Column::Time(_) | Column::OptTime(_) => "timestamptz[]",
        }
    }

    /// Splits off the rows from `at` on.
    fn split_off(&mut self, at: usize) -> Column {
        match self {
            Column::Text(v) => Column::Text(v.split_off(at)),
            Column::OptText(v) => Column::OptText(v.split_off(at)),
            Column::Static(v) => Column::Static(v.split_off(at)),
            Column::OptStatic(v) => Column::OptStatic(v.split_off(at)),
            Column::Int(v) => Column::Int(v.split_off(at)),
            Column::Time(v) => Column::Time(v.split_off(at)),
            Column::OptTime(v) => Column::OptTime(v.split_off(at)),
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

    fn sql(&self) -> String {
        let names: Vec<&str> = self.columns.iter().map(|(name, _)| *name).collect();
        let arrays: Vec<String> = self.columns.iter().enumerate().map(|(n, (_, c))| format!("${}::{}", n + 1, c.sql_type())).collect();
        format!("INSERT INTO \"{}\" ({}) SELECT * FROM UNNEST({})", self.table, names.join(", "), arrays.join(", "))
    }

    /// Writes the rows, at most [`ROWS_PER_INSERT_MAX`] per statement (the connection's
    /// `search_path` decides which table that is).
    pub(super) async fn execute(mut self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        while self.rows() > ROWS_PER_INSERT_MAX {
            let rest: Vec<(&'static str, Column)> =
                self.columns.iter_mut().map(|(name, column)| (*name, column.split_off(ROWS_PER_INSERT_MAX))).collect();
            let head = std::mem::replace(&mut self.columns, rest);
            Insert { table: self.table, columns: head }.execute_one(conn).await?;
        }
        self.execute_one(conn).await
    }

    async fn execute_one(self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        if self.rows() == 0 {
            return Ok(());
        }
        let sql = self.sql();
        let mut query = sqlx::query(&sql);
        for (_, column) in self.columns {
            query = match column {
                Column::Text(v) => query.bind(v),
                Column::OptText(v) => query.bind(v),
                Column::Static(v) => query.bind(v),
                Column::OptStatic(v) => query.bind(v),
                Column::Int(v) => query.bind(v),
                Column::Time(v) => query.bind(v),
                Column::OptTime(v) => query.bind(v),
            };
        }
        query.execute(conn).await?;
        Ok(())
    }
}
