-- The retention sweeper walks unexpired images in (created_at, job_id, position) order
-- from a cursor `(created_at, job_id) > (…)`: one index range, already in order, instead
-- of a range on created_at alone followed by a sort. Replaces images_created_idx.
CREATE INDEX images_expiry_idx ON images (created_at, job_id, position) WHERE expired_at IS NULL;
DROP INDEX images_created_idx;
