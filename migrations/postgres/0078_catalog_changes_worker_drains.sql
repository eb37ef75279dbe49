-- Operator console (issue 28): the catalog's operator changes and worker drains.
-- Reference models gain a description and who changed them last (`CatalogEntry` events,
-- projected inline into this table; a later `kiln seed` leaves a changed row alone).
ALTER TABLE reference_models ADD COLUMN description text NOT NULL DEFAULT '';
ALTER TABLE reference_models ADD COLUMN changed_at timestamptz;
ALTER TABLE reference_models ADD COLUMN changed_by text;
ALTER TABLE reference_models ADD COLUMN change_reason text;

-- What each worker reports with its heartbeat (operational state, like the rest of it).
ALTER TABLE workers ADD COLUMN jobs_done bigint NOT NULL DEFAULT 0;
ALTER TABLE workers ADD COLUMN last_error text;
ALTER TABLE workers ADD COLUMN last_error_at timestamptz;

-- Inline projection of the WorkerDrain streams: a drained worker claims nothing new.
CREATE TABLE worker_drains (
    worker_id   text        PRIMARY KEY,
    draining    boolean     NOT NULL,
    changed_at  timestamptz NOT NULL,
    changed_by  text        NOT NULL,
    reason      text
);
