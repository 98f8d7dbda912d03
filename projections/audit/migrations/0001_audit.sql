-- The audit projection: one entry per auditable event, in stream order, hash-chained. Each entry
-- stores the hash of the previous entry and its own hash over (previous hash, canonical form), so
-- any update, delete, insert or reorder breaks the chain at the first entry touched.
CREATE SCHEMA IF NOT EXISTS audit;

CREATE TABLE audit.entries (
    seq          bigint PRIMARY KEY,
    occurred_at  timestamptz NOT NULL,
    actor        text NOT NULL,
    actor_role   text,
    action       text NOT NULL,
    resource     text NOT NULL,
    outcome      text NOT NULL,
    ip           text,
    request_id   text,
    reason       text,
    event_id     text NOT NULL,
    event_source text NOT NULL,
    event_type   text NOT NULL,
    prev_hash    bytea NOT NULL CHECK (length(prev_hash) = 32),
    hash         bytea NOT NULL CHECK (length(hash) = 32)
);

CREATE INDEX entries_actor ON audit.entries (actor, seq);
CREATE INDEX entries_action ON audit.entries (action, seq);
CREATE INDEX entries_occurred ON audit.entries (occurred_at);
