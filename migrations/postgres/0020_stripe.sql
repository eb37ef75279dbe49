-- Stripe bookkeeping (not ledger state: the ledger's facts are events).
--
-- `stripe_events`: every webhook event Kiln accepted (signature verified), by Stripe's
-- event id, so a redelivery is recognised and answered without acting again. Events that
-- could not be acted on (`unresolved`: no team or no credit pack found; `rejected`: the
-- ledger refused the command) keep their payload for an operator to inspect; a redelivery
-- of an `unresolved` event is tried again.
CREATE TABLE stripe_events (
    event_id     text        PRIMARY KEY,
    event_type   text        NOT NULL,
    team_id      text,
    status       text        NOT NULL CHECK (status IN ('applied', 'ignored', 'unresolved', 'rejected')),
    detail       text,
    payload      text,
    created_at   timestamptz NOT NULL,
    received_at  timestamptz NOT NULL
);
CREATE INDEX stripe_events_status_idx ON stripe_events (status, received_at);

-- Which team a Stripe customer pays for, learnt from signed events whose metadata names
-- the team (Kiln puts it there at checkout). Resolves invoices and subscriptions that
-- carry no team metadata of their own, and lets a team's next checkout reuse its customer.
CREATE TABLE stripe_customers (
    customer_id  text        PRIMARY KEY,
    team_id      text        NOT NULL,
    recorded_at  timestamptz NOT NULL
);
CREATE INDEX stripe_customers_team_idx ON stripe_customers (team_id, recorded_at);

-- The last known status of each subscription (from the newest event about it), so that
-- ending one subscription does not put a team on Free while another still pays, and a
-- team with a live subscription is not sold a second one.
CREATE TABLE stripe_subscriptions (
    subscription_id  text        PRIMARY KEY,
    team_id          text        NOT NULL,
    status           text        NOT NULL,
    status_at        timestamptz NOT NULL
);
CREATE INDEX stripe_subscriptions_team_idx ON stripe_subscriptions (team_id, status);
