-- Expired images leave the `images` index: the jobs projection deletes their rows on
-- `ImagesExpired` instead of setting `expired_at`. A delete writes no index entry; the
-- update wrote a new row version into every index of the table (the sweeper's busiest
-- statement). What expired stays on record in `jobs.images_expired` (the API's 410) and
-- in the log (`JobCompleted` outputs, `ImagesExpired`).
DELETE FROM images WHERE expired_at IS NOT NULL;
DROP INDEX images_expiry_idx;
ALTER TABLE images DROP COLUMN expired_at;
CREATE INDEX images_expiry_idx ON images (created_at, job_id, position);
