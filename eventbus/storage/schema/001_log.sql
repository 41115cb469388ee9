-- Migration 1: the log
CREATE TABLE channels (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    context  text NOT NULL,
    channel  text NOT NULL,
    last_id  bigint NOT NULL,
    last_ts  timestamptz NOT NULL,
    UNIQUE (context, channel)
);
CREATE TABLE events (
    channel_id bigint NOT NULL REFERENCES channels (id),
    id         bigint NOT NULL,
    ts         timestamptz NOT NULL,
    issuer     text NOT NULL,
    payload    json NOT NULL,
    PRIMARY KEY (channel_id, id)
);
CREATE INDEX events_channel_ts ON events (channel_id, ts, id);

-- Append a JSON array of payloads to a channel; returns the first new id
-- and the shared timestamp.  See the docstring of eventbus.storage.events.
CREATE FUNCTION eventbus_append(p_context text, p_channel text,
                                p_issuer text, p_payloads json)
RETURNS TABLE (first_id bigint, ts float8)
LANGUAGE plpgsql AS $$
DECLARE
    n   bigint := json_array_length(p_payloads);
    cid bigint;
    top bigint;
    t   timestamptz;
BEGIN
    UPDATE channels
       SET last_id = last_id + n,
           last_ts = greatest(last_ts, clock_timestamp())
     WHERE context = p_context AND channel = p_channel
    RETURNING id, last_id, last_ts INTO cid, top, t;
    IF NOT FOUND THEN
        INSERT INTO channels AS c (context, channel, last_id, last_ts)
        VALUES (p_context, p_channel, n, clock_timestamp())
        ON CONFLICT (context, channel) DO UPDATE
           SET last_id = c.last_id + n,
               last_ts = greatest(c.last_ts, clock_timestamp())
        RETURNING c.id, c.last_id, c.last_ts INTO cid, top, t;
    END IF;
    INSERT INTO events (channel_id, id, ts, issuer, payload)
    SELECT cid, top - n + p.ord, t, p_issuer, p.value
      FROM json_array_elements(p_payloads) WITH ORDINALITY AS p(value, ord);
    PERFORM pg_notify('eventbus', p_context || '/' || p_channel || '/' || top);
    RETURN QUERY SELECT top - n + 1, extract(epoch FROM t)::float8;
END
$$;
