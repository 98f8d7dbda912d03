-- Dashboard sessions. The cookie holds a random token; only its SHA-256 is kept, with the id of
-- the API key the session signed in with (never the key) and the session's CSRF token.
CREATE SCHEMA IF NOT EXISTS dashboard;

CREATE TABLE dashboard.sessions (
    token_sha256 BYTEA PRIMARY KEY,
    key_id       TEXT NOT NULL,
    csrf         TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ NOT NULL
);

CREATE INDEX sessions_expiry ON dashboard.sessions (expires_at);
CREATE INDEX sessions_key ON dashboard.sessions (key_id);
