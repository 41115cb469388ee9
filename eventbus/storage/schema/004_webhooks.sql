-- Migration 4: webhook subscriptions (eventbus.storage.webhooks)
CREATE TABLE webhook_subscriptions (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    context         text NOT NULL,
    channel         text NOT NULL,  -- a channel name, or '*': every channel of the context
    url             text NOT NULL,
    secret          text NOT NULL,
    created         timestamptz NOT NULL DEFAULT clock_timestamp(),
    disabled_at     timestamptz,
    disabled_reason text,
    -- The delivering process and how long its claim holds; see eventbus.storage.webhooks.
    owner           text,
    lease_until     timestamptz
);
CREATE TABLE webhook_cursors (
    subscription_id bigint NOT NULL REFERENCES webhook_subscriptions (id) ON DELETE CASCADE,
    channel         text NOT NULL,
    delivered_id    bigint NOT NULL,  -- the last event id acknowledged with a 2xx
    failures        integer NOT NULL DEFAULT 0,
    failing_since   timestamptz,
    last_attempt    timestamptz,
    last_status     integer,
    last_error      text,
    PRIMARY KEY (subscription_id, channel)
);
