-- Which jobs' images expired (the API's 410), in a narrow table of its own rather than a
-- flag on the job's row. The retention sweeper expires thousands of jobs per append; a
-- flag meant a new version of each wide `jobs` row (≈ 1.3 KB), which found no room in its
-- page for most rows (20% were HOT updates in `kiln-bench sweep`), so six index entries
-- each: the sweep's costliest statement. One narrow row and one key entry here instead.
CREATE TABLE job_image_expiries (
    job_id      text        PRIMARY KEY,
    expired_at  timestamptz NOT NULL
);
INSERT INTO job_image_expiries (job_id, expired_at) SELECT job_id, updated_at FROM jobs WHERE images_expired;
ALTER TABLE jobs DROP COLUMN images_expired;
