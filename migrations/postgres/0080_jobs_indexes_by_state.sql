-- Index entries a job pays for on its way through the queue. Every change of state writes
-- a new version of the wide `jobs` row, and a version whose state changed gets an entry in
-- every index whose predicate it meets (no HOT update: `status` is indexed). A job is
-- inserted queued, then claimed, then ended: three versions. `jobs_queue_idx (status,
-- not_before, queued_at)` gave each an entry, though the queue is walked through
-- `jobs_queued_idx` and the only readers by state left want dispatched and running jobs
-- (orphans, jobs without news, the console's stuck jobs: oldest `updated_at` first);
-- `jobs_provider_request_idx` gave every version an entry, though most versions have no
-- provider request id. Now: one entry for the claimed version, none for the others, and
-- provider request ids only where there is one. Five index entries fewer per job.
DROP INDEX jobs_queue_idx;
CREATE INDEX jobs_active_idx ON jobs (updated_at) WHERE status IN ('dispatched', 'running');
DROP INDEX jobs_provider_request_idx;
CREATE INDEX jobs_provider_request_idx ON jobs (provider_request_id) WHERE provider_request_id IS NOT NULL;
