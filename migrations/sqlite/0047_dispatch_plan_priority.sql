-- Plan priority in dispatch (weighted fair queuing by plan): each team's plan (its weight
-- comes from configuration) and its share tag, the virtual time after its latest claimed
-- job (the highest `share_tag` of its `JobDispatched` events). The dispatch turn ranks a
-- team's next jobs by share tag, so teams get free slots in proportion to their weights.
ALTER TABLE team_dispatch ADD COLUMN plan TEXT NOT NULL DEFAULT 'free';
ALTER TABLE team_dispatch ADD COLUMN share_tag INTEGER NOT NULL DEFAULT 0;
UPDATE team_dispatch SET plan = (SELECT b.plan FROM team_balances b WHERE b.team_id = team_dispatch.team_id)
WHERE EXISTS (SELECT 1 FROM team_balances b WHERE b.team_id = team_dispatch.team_id);
CREATE INDEX team_dispatch_share_tag_idx ON team_dispatch (share_tag);
