-- Idempotency keys, as Stripe binds them: a key a client sends with a request that
-- changes state is bound, per team (`scope`: the team id, or `operator` for the admin
-- API), to that request's fingerprint (SHA-256 of method, path and canonical JSON body).
-- The same key with another fingerprint is refused (422); while the first request runs
-- (`in_flight`) a repeat is refused (409); once it has finished (`done`) a repeat is
-- answered again (ids derived from the key make it name the first result). A request
-- refused with a 4xx leaves no row. Rows are forgotten 24 hours after their creation.
CREATE TABLE idempotency_keys (
    scope        TEXT        NOT NULL,
    key          TEXT        NOT NULL,
    fingerprint  TEXT        NOT NULL,
    method       TEXT        NOT NULL,
    path         TEXT        NOT NULL,
    state        TEXT        NOT NULL CHECK (state IN ('in_flight', 'done')),
    created_at   TEXT        NOT NULL,
    updated_at   TEXT        NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);
