-- An operator may pause a team's dispatch (issue 28): its jobs are still accepted and
-- reserved, but no worker takes them. While paused the team's `running_limit` is 0, so
-- the dispatch walk and the claim skip it with no change of their own; `paused` tells
-- it apart from a plan that runs no jobs (whose queued jobs are cancelled).
ALTER TABLE team_dispatch ADD COLUMN paused boolean NOT NULL DEFAULT false;
