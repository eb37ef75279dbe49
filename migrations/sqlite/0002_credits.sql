-- Read models of the credit ledger. Inline ones (team_balances, credit_grants,
-- credit_reservations*, api_keys) are written in the append transaction; credit_ledger is
-- async (projector). All are rebuildable from `events`.

CREATE TABLE team_balances (
    team_id         TEXT        PRIMARY KEY,
    name            TEXT        NOT NULL,
    plan            TEXT        NOT NULL,
    available       INTEGER      NOT NULL CHECK (available >= 0),
    reserved        INTEGER      NOT NULL CHECK (reserved >= 0),
    granted_total   INTEGER      NOT NULL DEFAULT 0,
    deducted_total  INTEGER      NOT NULL DEFAULT 0,
    expired_total   INTEGER      NOT NULL DEFAULT 0,
    adjusted_total  INTEGER      NOT NULL DEFAULT 0,
    opened_at       TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);

CREATE TABLE credit_grants (
    grant_id      TEXT        PRIMARY KEY,
    team_id       TEXT        NOT NULL,
    origin        TEXT        NOT NULL,
    amount        INTEGER      NOT NULL,
    remaining     INTEGER      NOT NULL CHECK (remaining >= 0),
    reserved      INTEGER      NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    deducted      INTEGER      NOT NULL DEFAULT 0,
    expired       INTEGER      NOT NULL DEFAULT 0,
    adjusted_out  INTEGER      NOT NULL DEFAULT 0,
    expires_at    TEXT,
    granted_at    TEXT NOT NULL
);
CREATE INDEX credit_grants_team_idx ON credit_grants (team_id, expires_at);

CREATE TABLE credit_reservations (
    reservation_id  TEXT        PRIMARY KEY,
    team_id         TEXT        NOT NULL,
    amount          INTEGER      NOT NULL,
    operation       TEXT        NOT NULL,
    price_version   INTEGER      NOT NULL,
    state           TEXT        NOT NULL,
    reserved_at     TEXT NOT NULL,
    ended_at        TEXT
);
CREATE INDEX credit_reservations_team_idx ON credit_reservations (team_id, state);

CREATE TABLE credit_reservation_allocations (
    reservation_id  TEXT   NOT NULL,
    grant_id        TEXT   NOT NULL,
    amount          INTEGER NOT NULL,
    PRIMARY KEY (reservation_id, grant_id)
);

CREATE TABLE api_keys (
    key_id      TEXT        PRIMARY KEY,
    team_id     TEXT        NOT NULL,
    role        TEXT        NOT NULL,
    name        TEXT        NOT NULL,
    key_hash    TEXT        NOT NULL,
    created_at  TEXT NOT NULL,
    revoked_at  TEXT,
    CONSTRAINT api_keys_key_hash_key UNIQUE (key_hash)
);
CREATE INDEX api_keys_team_idx ON api_keys (team_id);

-- Every ledger entry with the balance it left, per team in stream order.
CREATE TABLE credit_ledger (
    team_id          TEXT        NOT NULL,
    entry_no         INTEGER      NOT NULL,
    sequence         INTEGER      NOT NULL,
    entry_type       TEXT        NOT NULL,
    amount           INTEGER      NOT NULL,
    available_after  INTEGER      NOT NULL,
    reserved_after   INTEGER      NOT NULL,
    reference        text,
    operation        text,
    detail           text,
    occurred_at      TEXT NOT NULL,
    PRIMARY KEY (team_id, entry_no)
);
CREATE INDEX credit_ledger_time_idx ON credit_ledger (team_id, occurred_at);
-- Applying an event twice would be a projector bug: refuse it loudly.
CREATE UNIQUE INDEX credit_ledger_sequence_key ON credit_ledger (team_id, sequence);

CREATE TABLE credit_pricing_config (
    version     INTEGER      PRIMARY KEY,
    config      TEXT        NOT NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
