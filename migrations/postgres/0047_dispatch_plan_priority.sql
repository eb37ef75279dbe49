-- Plan priority in dispatch (weighted fair queuing by plan): each team's plan (its weight
-- comes from configuration) and its share tag, the virtual time after its latest claimed
-- job (the highest `share_tag` of its `JobDispatched` events). The dispatch turn ranks a
-- team's next jobs by share tag, so teams get free slots in proportion to their weights.
ALTER TABLE team_dispatch ADD COLUMN plan text NOT NULL DEFAULT 'free';
ALTER TABLE team_dispatch ADD COLUMN share_tag bigint NOT NULL DEFAULT 0;
UPDATE team_dispatch d SET plan = b.plan FROM team_balances b WHERE b.team_id = d.team_id;
-- The front of virtual time (the highest share tag) is read on every dispatch turn.
CREATE INDEX team_dispatch_share_tag_idx ON team_dispatch (share_tag);
-- The walk: per plan, the teams that can take a job in share-tag order (a team's next
-- tag only grows with its own tag), so a turn reads O(jobs asked) rows per plan.
DROP INDEX team_dispatch_ready_idx;
CREATE INDEX team_dispatch_ready_idx ON team_dispatch (plan, share_tag, last_dispatched_at NULLS FIRST, team_id)
    WHERE queued > 0 AND running < running_limit;
