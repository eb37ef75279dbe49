-- Which jobs' images expired (the API's 410), in a narrow table of its own rather than a
-- flag on the job's row: see the PostgreSQL migration of the same number.
CREATE TABLE job_image_expiries (
    job_id      text        PRIMARY KEY,
    expired_at  TEXT        NOT NULL
);
INSERT INTO job_image_expiries (job_id, expired_at) SELECT job_id, updated_at FROM jobs WHERE images_expired;
ALTER TABLE jobs DROP COLUMN images_expired;
