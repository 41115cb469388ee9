-- Migration 3: durable consumers (eventbus.storage.consumers)
CREATE TABLE consumers (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    context        text NOT NULL,
    channel        text NOT NULL,
    name           text NOT NULL,
    mode           text NOT NULL CHECK (mode IN ('ordered', 'shared')),
    lease_s        float8 NOT NULL CHECK (lease_s > 0),
    max_deliveries integer NOT NULL CHECK (max_deliveries >= 1),
    -- lowest event id never delivered; every id below it without a row
    -- in consumer_events is acked
    next_new       bigint NOT NULL CHECK (next_new >= 1),
    UNIQUE (context, channel, name)
);
CREATE TABLE consumer_events (
    consumer_id  bigint NOT NULL REFERENCES consumers (id) ON DELETE CASCADE,
    event_id     bigint NOT NULL,
    state        text NOT NULL CHECK (state IN ('leased', 'available', 'dead')),
    deliveries   integer NOT NULL,
    lease_token  text,
    lease_until  timestamptz,
    available_at timestamptz,
    PRIMARY KEY (consumer_id, event_id)
);
-- the leasing transaction reads only the live rows; dead ones accumulate
CREATE INDEX consumer_events_live ON consumer_events (consumer_id, event_id)
    WHERE state <> 'dead';
