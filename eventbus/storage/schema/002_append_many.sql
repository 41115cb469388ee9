-- Migration 2: group commit -- several appends (any channels) in one statement and
-- one transaction, applied in array order.
CREATE FUNCTION eventbus_append_many(p_contexts text[], p_channels text[],
                                     p_issuers text[], p_payloads text[])
RETURNS TABLE (ord int, first_id bigint, ts float8)
LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1 .. coalesce(array_length(p_contexts, 1), 0) LOOP
        RETURN QUERY
            SELECT i, a.first_id, a.ts
              FROM eventbus_append(p_contexts[i], p_channels[i], p_issuers[i],
                                   p_payloads[i]::json) AS a;
    END LOOP;
END
$$;
