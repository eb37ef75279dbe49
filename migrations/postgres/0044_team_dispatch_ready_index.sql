-- A dispatch turn walks the teams that can take a job, least recently served first
-- (`ORDER BY last_dispatched_at NULLS FIRST, team_id`), probes each for a ready job and
-- stops after as many as it needs. Without an index in that order PostgreSQL joined
-- every queued job to every team and sorted them all on each turn (≈ 5 ms at 1,000 teams
-- with 3,000 queued jobs); this index holds only teams with queued jobs and a free slot,
-- so the walk reads a few entries. Updates of `queued` and `running` are no longer HOT
-- (they decide membership): a small table, cheap entries.
CREATE INDEX team_dispatch_ready_idx ON team_dispatch (last_dispatched_at NULLS FIRST, team_id)
    WHERE queued > 0 AND running < running_limit;
