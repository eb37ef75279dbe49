-- Webhooks out (issue 31).
-- `webhook_endpoints`: inline read model of the WebhookEndpoint streams (rebuildable).
CREATE TABLE webhook_endpoints (
    endpoint_id           text        PRIMARY KEY,
    team_id               text        NOT NULL,
    url                   text        NOT NULL,
    -- The subscribed event types, sorted, comma-separated (`job.completed,job.failed`).
    event_types           text        NOT NULL,
    credits_low_threshold bigint,
    enabled               boolean     NOT NULL,
    disabled_reason       text,
    -- Not secret: the signing secret is derived from it with Kiln's webhook key.
    secret_salt           text        NOT NULL,
    previous_salt         text,
    previous_until        timestamptz,
    created_at            timestamptz NOT NULL,
    updated_at            timestamptz NOT NULL,
    deleted_at            timestamptz
);
CREATE INDEX webhook_endpoints_team_idx ON webhook_endpoints (team_id, created_at);

-- `webhook_deliveries`: one row per (event, endpoint), written by the `webhook_deliveries`
-- async projection with its checkpoint in the same transaction (so none is lost or made
-- twice), then worked by the senders: operational state, not rebuilt. `delivery_id` is
-- the `webhook-id` every attempt of the delivery carries.
CREATE TABLE webhook_deliveries (
    delivery_id     text        PRIMARY KEY,
    endpoint_id     text        NOT NULL,
    team_id         text        NOT NULL,
    event_type      text        NOT NULL,
    payload         text        NOT NULL,
    -- The recorded event it comes from (`aggregate/id/sequence`), or `test/…`.
    source          text        NOT NULL,
    created_at      timestamptz NOT NULL,
    state           text        NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    claimed_until   timestamptz,
    claimed_by      text,
    last_status     integer,
    last_error      text,
    delivered_at    timestamptz,
    -- Log position of the event (0 for a test event): deliveries of one job go in order.
    position        bigint      NOT NULL
);
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at, position) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_endpoint_idx ON webhook_deliveries (endpoint_id, created_at DESC);

-- Every attempt of a delivery: what the endpoint answered and how long it took.
CREATE TABLE webhook_attempts (
    delivery_id text        NOT NULL,
    attempt     integer     NOT NULL,
    endpoint_id text        NOT NULL,
    started_at  timestamptz NOT NULL,
    status_code integer,
    latency_ms  bigint      NOT NULL,
    -- At most 256 characters of the answer's body, or why there was none.
    excerpt     text        NOT NULL,
    succeeded   boolean     NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);

-- Since when every attempt to an endpoint failed (`NULL`: its last attempt succeeded).
CREATE TABLE webhook_endpoint_health (
    endpoint_id     text        PRIMARY KEY,
    failing_since   timestamptz,
    last_success_at timestamptz
);
