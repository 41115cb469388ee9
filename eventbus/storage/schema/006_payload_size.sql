-- Migration 6: the size of each payload, so reads can stop at a byte budget
-- (a page of history, an SSE catch-up, a wake-up's read-ahead) without
-- fetching, or even detoasting, the payloads they leave out: PostgreSQL
-- cannot tell the length of a json value without reading it.  Octets of
-- the payload's JSON text as stored, computed by PostgreSQL for every row,
-- whoever writes it.  Adding it rewrites the table once (a few seconds per
-- gigabyte of payloads).
ALTER TABLE events
    ADD COLUMN payload_size integer GENERATED ALWAYS AS (octet_length(payload::text)) STORED;
