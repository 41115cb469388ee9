-- Migration 9: conditional appends (eventbus.storage.conditional): the
-- Idempotency-Key records, and the function that appends a group of
-- publishes carrying a key or an Expected-Last-Id.
--
-- A key's record is written in the transaction that stores its events, under
-- its channel's row lock, so it exists exactly when its events do.
CREATE TABLE idempotency_keys (
    channel_id bigint NOT NULL,
    key        text NOT NULL,
    body_hash  bytea NOT NULL,        -- SHA-256 of the request body, byte for byte
    issuer     text NOT NULL,
    first_id   bigint NOT NULL,       -- the events stored: first_id .. first_id + count - 1
    count      integer NOT NULL,
    ts         timestamptz NOT NULL,  -- their timestamp; the window counts from it
    PRIMARY KEY (channel_id, key)
);
CREATE INDEX idempotency_keys_ts ON idempotency_keys (ts);

-- One group of conditional appends, in one call.  The arrays hold one
-- element per request, sorted by (context, channel) in the order the plain
-- group commit locks channels (so neither can deadlock the other), arrival
-- order within a channel, with at most one request per (channel, key).  Per
-- channel, under its row lock: each request is a replay (its key is known
-- and younger than the window), a mismatch (known, another body or issuer),
-- a conflict (its expectation is not the running last id) or stored; only
-- stored requests take ids, so a failed one never fails its neighbours.
-- p_payloads holds every event of every request; p_ereq/p_epos say whose
-- and where.  The caller sends the notifications (``head`` is set on the
-- last row of each channel that stored events).
CREATE FUNCTION eventbus_append_checked(
    p_ctx text[], p_ch text[], p_key text[], p_hash text[], p_issuer text[],
    p_expected bigint[], p_n integer[], p_payloads json, p_ereq integer[],
    p_epos integer[], p_window float8)
RETURNS TABLE (ord integer, outcome text, first_id bigint, ts float8, last_id bigint,
               context text, channel text, head bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    total   integer := coalesce(array_length(p_ctx, 1), 0);
    horizon timestamptz := clock_timestamp() - make_interval(secs => p_window);
    r_out   text[] := array_fill(NULL::text, ARRAY[total]);
    r_first bigint[] := array_fill(NULL::bigint, ARRAY[total]);
    r_ts    timestamptz[] := array_fill(NULL::timestamptz, ARRAY[total]);
    r_last  bigint[] := array_fill(NULL::bigint, ARRAY[total]);
    r_cid   bigint[] := array_fill(NULL::bigint, ARRAY[total]);
    r_head  bigint[] := array_fill(NULL::bigint, ARRAY[total]);
    i       integer := 1;
    j       integer;
    m       integer;
    cid     bigint;
    top     bigint;
    base    bigint;
    t       timestamptz;
    seen    boolean;
    k_hash  bytea;
    k_iss   text;
    k_first bigint;
    k_ts    timestamptz;
BEGIN
    WHILE i <= total LOOP
        j := i;  -- requests i .. j-1 are this channel's
        WHILE j <= total AND p_ctx[j] = p_ctx[i] AND p_ch[j] = p_ch[i] LOOP
            j := j + 1;
        END LOOP;
        LOOP  -- decide under the channel's row lock (again if it was created meanwhile)
            SELECT c.id, c.last_id, c.last_ts INTO cid, top, t
              FROM channels c
             WHERE c.context = p_ctx[i] AND c.channel = p_ch[i]
               FOR UPDATE;
            IF NOT FOUND THEN
                cid := NULL;
                top := 0;
                t := NULL;
            END IF;
            base := top;
            FOR m IN i .. j - 1 LOOP
                seen := false;
                IF p_key[m] IS NOT NULL AND cid IS NOT NULL THEN
                    SELECT x.body_hash, x.issuer, x.first_id, x.ts
                      INTO k_hash, k_iss, k_first, k_ts
                      FROM idempotency_keys x
                     WHERE x.channel_id = cid AND x.key = p_key[m] AND x.ts > horizon;
                    seen := FOUND;
                END IF;
                r_first[m] := NULL;
                r_last[m] := NULL;
                IF seen THEN
                    IF k_hash = decode(p_hash[m], 'hex') AND k_iss = p_issuer[m] THEN
                        r_out[m] := 'replay';
                        r_first[m] := k_first;
                        r_ts[m] := k_ts;
                    ELSE
                        r_out[m] := 'mismatch';
                    END IF;
                ELSIF p_expected[m] IS NOT NULL AND p_expected[m] <> top THEN
                    r_out[m] := 'conflict';
                    r_last[m] := top;
                ELSE
                    r_out[m] := 'stored';
                    r_first[m] := top + 1;
                    top := top + p_n[m];
                END IF;
            END LOOP;
            EXIT WHEN top = base;  -- nothing to store in this channel
            t := greatest(t, clock_timestamp());
            IF cid IS NULL THEN
                INSERT INTO channels AS c (context, channel, last_id, last_ts)
                VALUES (p_ctx[i], p_ch[i], top, t)
                ON CONFLICT (context, channel) DO NOTHING
                RETURNING c.id INTO cid;
                CONTINUE WHEN cid IS NULL;  -- another transaction created it: decide again
            ELSE
                UPDATE channels c SET last_id = top, last_ts = t WHERE c.id = cid;
            END IF;
            FOR m IN i .. j - 1 LOOP
                IF r_out[m] = 'stored' THEN
                    r_cid[m] := cid;
                    r_ts[m] := t;
                END IF;
            END LOOP;
            r_head[j - 1] := top;
            EXIT;
        END LOOP;
        i := j;
    END LOOP;

    INSERT INTO events (channel_id, id, ts, issuer, payload)
    SELECT r_cid[e.req], r_first[e.req] + e.pos - 1, r_ts[e.req], p_issuer[e.req], e.payload
      FROM ROWS FROM (json_array_elements(p_payloads), unnest(p_ereq), unnest(p_epos))
           AS e(payload, req, pos)
     WHERE r_out[e.req] = 'stored';

    INSERT INTO idempotency_keys AS x (channel_id, key, body_hash, issuer, first_id, count, ts)
    SELECT r_cid[s.m], p_key[s.m], decode(p_hash[s.m], 'hex'), p_issuer[s.m], r_first[s.m],
           p_n[s.m], r_ts[s.m]
      FROM generate_series(1, total) AS s(m)
     WHERE r_out[s.m] = 'stored' AND p_key[s.m] IS NOT NULL
    ON CONFLICT (channel_id, key) DO UPDATE  -- an expired record nobody pruned yet
       SET body_hash = EXCLUDED.body_hash, issuer = EXCLUDED.issuer,
           first_id = EXCLUDED.first_id, count = EXCLUDED.count, ts = EXCLUDED.ts;

    RETURN QUERY
        SELECT s.m, r_out[s.m], r_first[s.m], extract(epoch FROM r_ts[s.m])::float8,
               r_last[s.m], p_ctx[s.m], p_ch[s.m], r_head[s.m]
          FROM generate_series(1, total) AS s(m);
END
$$;
