//! The retention sweep's view of the `images` index (live generated images): the
//! `ExpiredImages` port in SQL, the same on PostgreSQL and SQLite.

use application::event_store::EventStoreError;
use application::retention::{ExpiredImages, ExpiredJob};
use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::db::Database;
use crate::db_fetch_all;
use crate::event_store::store_error;

pub struct SqlExpiredImages(pub Database);

#[async_trait]
impl ExpiredImages for SqlExpiredImages {
    async fn find(&self, cutoff: DateTime<Utc>, after: Option<&(DateTime<Utc>, String)>, limit: i64) -> Result<Vec<ExpiredJob>, EventStoreError> {
        // The row comparison is an index range on `images_expiry_idx` (created_at, job_id,
        // position), which also yields the order.
        let rows: Vec<(String, DateTime<Utc>, String)> = match after {
            None => db_fetch_all!(
                &self.0,
                (String, DateTime<Utc>, String),
                "SELECT job_id, created_at, key FROM images WHERE created_at < $1 \
                 ORDER BY created_at, job_id, position LIMIT $2",
                cutoff,
                limit
            ),
            Some((created_at, job_id)) => db_fetch_all!(
                &self.0,
                (String, DateTime<Utc>, String),
                "SELECT job_id, created_at, key FROM images WHERE created_at < $1 \
                 AND (created_at, job_id) > ($2, $3) \
                 ORDER BY created_at, job_id, position LIMIT $4",
                cutoff,
                created_at,
                job_id,
                limit
            ),
        }
        .map_err(store_error)?;
        let full = rows.len() as i64 >= limit;
        let mut jobs: Vec<ExpiredJob> = Vec::new();
        for (job_id, created_at, key) in rows {
            match jobs.last_mut() {
                Some(last) if last.job_id == job_id => last.keys.push(key),
                _ => jobs.push(ExpiredJob { job_id, created_at, keys: vec![key] }),
            }
        }
        if full {
            // The limit may have cut the last job short: take all of it.
            if let Some(last) = jobs.last_mut() {
                let rows: Vec<(String,)> =
                    db_fetch_all!(&self.0, (String,), "SELECT key FROM images WHERE job_id = $1 ORDER BY position", &last.job_id)
                        .map_err(store_error)?;
                last.keys = rows.into_iter().map(|(key,)| key).collect();
            }
        }
        Ok(jobs)
    }
}
