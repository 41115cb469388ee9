-- Migration 8: retention (eventbus.storage.retention, eventbus.storage.channels).
--
-- Per channel: its retention overrides (NULL: the server's default) and
-- pruned_to, the highest id deleted by retention (0: none).  The events of
-- a channel stored are exactly pruned_to+1 .. channels.last_id.  A table of
-- its own rather than columns of channels: every append updates the
-- channel row, and the pruner must never wait for (or block) a publish.
CREATE TABLE channel_retention (
    channel_id  bigint PRIMARY KEY,
    max_age_s   float8 CHECK (max_age_s > 0),
    max_events  bigint CHECK (max_events >= 1),
    pruned_to   bigint NOT NULL DEFAULT 0 CHECK (pruned_to >= 0)
);

-- Which server process prunes: one row, a lease on the database's clock
-- (as webhook subscriptions are held), renewed every round.
CREATE TABLE retention_pruner (
    id          boolean PRIMARY KEY DEFAULT true CHECK (id),
    owner       text,
    lease_until timestamptz
);
INSERT INTO retention_pruner DEFAULT VALUES;

-- Events retention deleted before a consumer (or a webhook cursor) got to
-- them: expired counts them all; missed those not yet reported (the next
-- lease, or the next delivery, carries it and resets it).
ALTER TABLE consumers
    ADD COLUMN expired bigint NOT NULL DEFAULT 0,
    ADD COLUMN missed  bigint NOT NULL DEFAULT 0;
ALTER TABLE webhook_cursors
    ADD COLUMN expired bigint NOT NULL DEFAULT 0,
    ADD COLUMN missed  bigint NOT NULL DEFAULT 0;
