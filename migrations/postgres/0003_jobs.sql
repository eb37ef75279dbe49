-- Read models of the job engine, all inline (written in the append transaction):
-- `jobs` is also the dispatch queue; `team_dispatch` holds per-team running and queued
-- counts and the plan's limit, and refuses a dispatch beyond the limit.

CREATE TABLE jobs (
    job_id               text        PRIMARY KEY,
    team_id              text        NOT NULL,
    kind                 text        NOT NULL,
    status               text        NOT NULL,
    model_id             text        NOT NULL,
    cost                 bigint      NOT NULL,
    price_version        bigint      NOT NULL,
    attempt              integer     NOT NULL DEFAULT 0,
    input                text        NOT NULL,
    outputs              text,
    error                text,
    provider             text,
    provider_request_id  text,
    worker               text,
    images_expired       boolean     NOT NULL DEFAULT false,
    queued_at            timestamptz NOT NULL,
    not_before           timestamptz NOT NULL,
    dispatched_at        timestamptz,
    finished_at          timestamptz,
    updated_at           timestamptz NOT NULL
);
CREATE INDEX jobs_queue_idx ON jobs (status, not_before, queued_at);
CREATE INDEX jobs_team_idx ON jobs (team_id, queued_at);
CREATE INDEX jobs_model_idx ON jobs (model_id, queued_at);
CREATE INDEX jobs_provider_request_idx ON jobs (provider_request_id);

CREATE TABLE team_dispatch (
    team_id             text        PRIMARY KEY,
    running             integer     NOT NULL DEFAULT 0 CHECK (running >= 0),
    queued              integer     NOT NULL DEFAULT 0 CHECK (queued >= 0),
    running_limit       integer     NOT NULL DEFAULT 0,
    last_dispatched_at  timestamptz
);

CREATE TABLE custom_models (
    model_id            text        PRIMARY KEY,
    team_id             text        NOT NULL,
    name                text        NOT NULL,
    description         text        NOT NULL,
    reference_model_id  text        NOT NULL,
    complexity_milli    bigint      NOT NULL,
    status              text        NOT NULL,
    archived            boolean     NOT NULL DEFAULT false,
    current_version     integer,
    pending_job_id      text,
    pending_prompt      text,
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL
);
CREATE INDEX custom_models_team_idx ON custom_models (team_id, created_at);

CREATE TABLE model_versions (
    model_id      text        NOT NULL,
    version       integer     NOT NULL,
    artifact_key  text        NOT NULL,
    job_id        text        NOT NULL,
    prompt        text,
    created_at    timestamptz NOT NULL,
    PRIMARY KEY (model_id, version)
);

-- Every generated image, for listing, retention and 410 after expiry.
CREATE TABLE images (
    key         text        PRIMARY KEY,
    team_id     text        NOT NULL,
    job_id      text        NOT NULL,
    model_id    text        NOT NULL,
    position    integer     NOT NULL,
    bytes       bigint      NOT NULL,
    created_at  timestamptz NOT NULL,
    expired_at  timestamptz
);
CREATE INDEX images_job_idx ON images (job_id, position);
CREATE INDEX images_model_idx ON images (model_id, created_at);
CREATE INDEX images_created_idx ON images (created_at) WHERE expired_at IS NULL;

-- Live worker processes (heartbeats), so jobs of a dead worker are found and retried.
CREATE TABLE workers (
    worker_id     text        PRIMARY KEY,
    started_at    timestamptz NOT NULL,
    heartbeat_at  timestamptz NOT NULL
);
