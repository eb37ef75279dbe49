-- Per-job leases: a worker renews, with each heartbeat, the lease of every job it holds
-- (claimed and waiting for a slot, at the provider's door, storing outputs, ending). A job
-- with no provider request outstanding whose lease lapsed is taken back by any worker's
-- upkeep, even while its worker lives (it dropped the job: a lost connection, a bug), and
-- the attempt fences what that worker may still try to record. Operational state like
-- `workers`: not a projection of the log, never rebuilt. A job claimed and never renewed
-- has the implicit lease of its claim (`jobs.updated_at` + the lease time).
CREATE TABLE job_leases (
    job_id      text        PRIMARY KEY,
    worker_id   text        NOT NULL,
    attempt     integer     NOT NULL,
    expires_at  TEXT        NOT NULL
);
CREATE INDEX job_leases_worker_idx ON job_leases (worker_id);
