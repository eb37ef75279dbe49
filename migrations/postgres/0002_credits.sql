-- Read models of the credit ledger. Inline ones (team_balances, credit_grants,
-- credit_reservations*, api_keys) are written in the append transaction; credit_ledger is
-- async (projector). All are rebuildable from `events`.

CREATE TABLE team_balances (
    team_id         text        PRIMARY KEY,
    name            text        NOT NULL,
    plan            text        NOT NULL,
    available       bigint      NOT NULL CHECK (available >= 0),
    reserved        bigint      NOT NULL CHECK (reserved >= 0),
    granted_total   bigint      NOT NULL DEFAULT 0,
    deducted_total  bigint      NOT NULL DEFAULT 0,
    expired_total   bigint      NOT NULL DEFAULT 0,
    adjusted_total  bigint      NOT NULL DEFAULT 0,
    opened_at       timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);

CREATE TABLE credit_grants (
    grant_id      text        PRIMARY KEY,
    team_id       text        NOT NULL,
    origin        text        NOT NULL,
    amount        bigint      NOT NULL,
    remaining     bigint      NOT NULL CHECK (remaining >= 0),
    reserved      bigint      NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    deducted      bigint      NOT NULL DEFAULT 0,
    expired       bigint      NOT NULL DEFAULT 0,
    adjusted_out  bigint      NOT NULL DEFAULT 0,
    expires_at    timestamptz,
    granted_at    timestamptz NOT NULL
);
CREATE INDEX credit_grants_team_idx ON credit_grants (team_id, expires_at);

CREATE TABLE credit_reservations (
    reservation_id  text        PRIMARY KEY,
    team_id         text        NOT NULL,
    amount          bigint      NOT NULL,
    operation       text        NOT NULL,
    price_version   bigint      NOT NULL,
    state           text        NOT NULL,
    reserved_at     timestamptz NOT NULL,
    ended_at        timestamptz
);
CREATE INDEX credit_reservations_team_idx ON credit_reservations (team_id, state);

CREATE TABLE credit_reservation_allocations (
    reservation_id  text   NOT NULL,
    grant_id        text   NOT NULL,
    amount          bigint NOT NULL,
    PRIMARY KEY (reservation_id, grant_id)
);

CREATE TABLE api_keys (
    key_id      text        PRIMARY KEY,
    team_id     text        NOT NULL,
    role        text        NOT NULL,
    name        text        NOT NULL,
    key_hash    text        NOT NULL,
    created_at  timestamptz NOT NULL,
    revoked_at  timestamptz,
    CONSTRAINT api_keys_key_hash_key UNIQUE (key_hash)
);
CREATE INDEX api_keys_team_idx ON api_keys (team_id);

-- Every ledger entry with the balance it left, per team in stream order.
CREATE TABLE credit_ledger (
    team_id          text        NOT NULL,
    entry_no         bigint      NOT NULL,
    sequence         bigint      NOT NULL,
    entry_type       text        NOT NULL,
    amount           bigint      NOT NULL,
    available_after  bigint      NOT NULL,
    reserved_after   bigint      NOT NULL,
    reference        text,
    operation        text,
    detail           text,
    occurred_at      timestamptz NOT NULL,
    PRIMARY KEY (team_id, entry_no)
);
CREATE INDEX credit_ledger_time_idx ON credit_ledger (team_id, occurred_at);
-- Applying an event twice would be a projector bug: refuse it loudly.
CREATE UNIQUE INDEX credit_ledger_sequence_key ON credit_ledger (team_id, sequence);

CREATE TABLE credit_pricing_config (
    version     bigint      PRIMARY KEY,
    config      text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
