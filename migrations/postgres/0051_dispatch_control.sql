-- Dispatch paused for everyone (issue 28): inline projection of the Dispatch stream.
-- No row: dispatch runs. The dispatch turn reads it before walking the queue.
CREATE TABLE dispatch_control (
    id          text        PRIMARY KEY,
    paused      boolean     NOT NULL,
    changed_at  timestamptz NOT NULL,
    changed_by  text        NOT NULL,
    reason      text
);
