-- When each API key was last used by the API (operational state, like idempotency_keys:
-- not an event, not in the rebuild catalog). Written at most about once a second per key
-- and process (when authentication looks a key up in the database rather than in its
-- short cache), so the time shown is at most that much older than the last request.
CREATE TABLE api_key_last_use (
    key_id        TEXT        PRIMARY KEY,
    team_id       TEXT        NOT NULL,
    last_used_at  TEXT        NOT NULL
);
