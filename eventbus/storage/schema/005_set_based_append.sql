-- Migration 5: appends are one set-based statement now (APPEND_SQL in eventbus.storage.events), which creates
-- or updates the channel row in the same statement that inserts its
-- events, and channels are never deleted: the foreign key cannot be
-- violated, and its per-row check was half of an append's execution time.
DROP FUNCTION IF EXISTS eventbus_append_many(text[], text[], text[], text[]);
DROP FUNCTION IF EXISTS eventbus_append(text, text, text, json);
ALTER TABLE events DROP CONSTRAINT IF EXISTS events_channel_id_fkey;
