-- The append-only event log, column-compatible with postgres-es's `events` table
-- (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
-- plus a global position and the appending transaction's id for gap-safe reading.
CREATE TABLE events (
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    sequence        bigint      NOT NULL CHECK (sequence > 0),
    event_type      text        NOT NULL,
    event_version   text        NOT NULL,
    payload         jsonb       NOT NULL,
    metadata        jsonb       NOT NULL,
    position        bigint      GENERATED ALWAYS AS IDENTITY,
    -- Readers of the whole log order by (transaction_id, position) and only read below
    -- the oldest running transaction (pg_snapshot_xmin), so a transaction that commits
    -- late can never land behind a checkpoint.
    transaction_id  xid8        NOT NULL DEFAULT pg_current_xact_id(),
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

CREATE UNIQUE INDEX events_position_key ON events (position);
CREATE INDEX events_commit_order_idx ON events (transaction_id, position);

-- The log is append-only: an UPDATE or DELETE is refused. (A superuser can still
-- disable the trigger; the hash chain of the credit ledger detects what that enables.)
CREATE FUNCTION events_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are append-only (% refused)', TG_OP;
END;
$$;

CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_refuse_change();

-- Latest snapshot per stream, compatible with postgres-es's `snapshots` table.
CREATE TABLE snapshots (
    aggregate_type   text   NOT NULL,
    aggregate_id     text   NOT NULL,
    last_sequence    bigint NOT NULL CHECK (last_sequence > 0),
    current_snapshot bigint NOT NULL,
    payload          jsonb  NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
);

-- Where each async projection stands in the global log.
CREATE TABLE projection_checkpoints (
    name          text        PRIMARY KEY,
    commit_order  bigint      NOT NULL,
    position      bigint      NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
