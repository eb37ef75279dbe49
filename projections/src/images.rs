//! The `images` side of the `jobs` inline projection, set-based: all `ImagesExpired`
//! events of one append become two statements (jobs flagged, their images' rows deleted
//! from the index) instead of two per job, which is what lets the retention sweeper record
//! thousands of expiries per append. Called by [`crate::jobs::Jobs`], so the tables stay
//! that projection's (rebuild, catalog).

use chrono::{DateTime, Utc};
use infrastructure::event_store::{ProjectionError, Tx};
use infrastructure::tx_execute_values;

/// One job's `ImagesExpired`: its id and when.
pub type Expired = (String, DateTime<Utc>);

/// Marks the jobs' images expired: `jobs.images_expired` (what the API answers 410
/// from) and their rows out of `images` (the index of live images the sweeper and the
/// model listing read; a delete writes no index entries, unlike an update). A job
/// appears at most once per append (one stream per append, one `ImagesExpired` per job).
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
        "UPDATE jobs SET images_expired = TRUE, updated_at = v.at \
         FROM UNNEST($1::text[], $2::timestamptz[]) AS v(job_id, at) WHERE jobs.job_id = v.job_id",
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
    tx_execute_values!(
        tx,
        "UPDATE jobs SET images_expired = TRUE, updated_at = v.column2 FROM (",
        ") AS v WHERE jobs.job_id = v.column1",
        2,
        expired,
        |q, row| q.bind(&row.0).bind(row.1)
    )?;
    tx_execute_values!(
        tx,
        "DELETE FROM images WHERE job_id IN (SELECT v.column1 FROM (",
        ") AS v)",
        1,
        expired,
        |q, row| q.bind(&row.0)
    )?;
    Ok(())
}
