-- Migration 7: access tokens (eventbus.storage.tokens).  Only the SHA-256 of
-- a token is stored; the secret itself is shown once, when it is created.
CREATE TABLE tokens (
    name      text PRIMARY KEY,
    digest    text NOT NULL UNIQUE,     -- hex SHA-256 of the token
    scopes    text[] NOT NULL,          -- ACTION:CONTEXT/CHANNEL
    issuers   text[],                   -- NULL: any issuer
    created   timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires   timestamptz,              -- NULL: never
    last_used timestamptz               -- coarse (see eventbus.tokens)
);
