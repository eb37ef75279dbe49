-- Operators (issue 28): people who run Kiln, with a role and a key (its SHA-256 only).
-- Inline projection of the Operator streams; rebuildable from `events`.
CREATE TABLE operators (
    operator_id text        PRIMARY KEY,
    name        text        NOT NULL,
    role        text        NOT NULL,
    key_hash    text        NOT NULL,
    created_at  timestamptz NOT NULL,
    revoked_at  timestamptz,
    CONSTRAINT operators_key_hash_key UNIQUE (key_hash)
);
