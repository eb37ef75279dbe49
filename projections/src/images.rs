//! The `images` side of the `jobs` inline projection, set-based: all `ImagesExpired`
//! events of one append become two statements (the jobs recorded in
//! `job_image_expiries`, their images' rows deleted from the index) instead of two per
//! job, which is what lets the retention sweeper record thousands of expiries per append.
//! Called by [`crate::jobs::Jobs`], so the tables stay that projection's (rebuild, catalog).

use chrono::{DateTime, Utc};
use infrastructure::event_store::{ProjectionError, Tx};
use infrastructure::tx_execute_rows;

/// One job's `ImagesExpired`: its id and when.
pub type Expired = (String, DateTime<Utc>);

/// Marks the jobs' images expired: a row in `job_image_expiries` (what the API answers
/// 410 from; a narrow insert, where a flag on the wide `jobs` row cost a new row version
/// and, mostly, six index entries) and their rows out of `images` (the index of live
/// images the sweeper and the model listing read; a delete writes no index entries,
/// unlike an update). A job appears at most once per append (one stream per append, one
/// `ImagesExpired` per job); one already recorded keeps its first time.
pub async fn expire(tx: &mut Tx<'_>, expired: &[Expired]) -> Result<(), ProjectionError> {
    if expired.is_empty() {
        return Ok(());
    }
    match tx {
        Tx::Postgres(conn) => expire_postgres(conn, expired).await,
        Tx::Sqlite(_) => expire_portable(tx, expired).await,
    }
}

/// PostgreSQL: the same two statements as [`expire_portable`] with the rows bound as
/// arrays (`UNNEST`, `ANY`): one statement each whatever the count, whose text stays in
/// the connection's prepared-statement cache (a `VALUES` list of n rows is a new
/// statement to parse and plan for every n, and is cut into chunks of 500).
async fn expire_postgres(conn: &mut sqlx::PgConnection, expired: &[Expired]) -> Result<(), ProjectionError> {
    let (jobs, at): (Vec<&str>, Vec<DateTime<Utc>>) = expired.iter().map(|(job, at)| (job.as_str(), *at)).unzip();
    sqlx::query(
        "INSERT INTO job_image_expiries (job_id, expired_at) SELECT * FROM UNNEST($1::text[], $2::timestamptz[]) \
         ON CONFLICT (job_id) DO NOTHING",
    )
    .bind(&jobs)
    .bind(&at)
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM images WHERE job_id = ANY($1::text[])").bind(&jobs).execute(&mut *conn).await?;
    Ok(())
}

async fn expire_portable(tx: &mut Tx<'_>, expired: &[Expired]) -> Result<(), ProjectionError> {
    // `VALUES` columns are `column1`, `column2` on both databases.
    tx_execute_rows!(
        tx,
        "INSERT INTO job_image_expiries (job_id, expired_at) SELECT v.column1, v.column2 FROM (",
        ") AS v WHERE true ON CONFLICT (job_id) DO NOTHING",
        expired,
        ["text" => |row| row.0.as_str(), "timestamptz" => |row| row.1]
    )?;
    tx_execute_rows!(
        tx,
        "DELETE FROM images WHERE job_id IN (SELECT v.column1 FROM (",
        ") AS v)",
        expired,
        ["text" => |row| row.0.as_str()]
    )?;
    Ok(())
}
