-- Each dispatch turn reads, for a few teams, their oldest queued jobs that are ready
-- (`team_id = … AND status = 'queued' AND not_before <= now ORDER BY queued_at, job_id`).
-- `jobs_team_idx (team_id, queued_at)` walks a team's whole history to find them; this
-- index holds only queued jobs (a row leaves it when the job is dispatched).
CREATE INDEX jobs_queued_idx ON jobs (team_id, queued_at, job_id) WHERE status = 'queued';
