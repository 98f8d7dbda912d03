-- The projection runtime's own bookkeeping. Every projection's checkpoint and outbox live here,
-- written in the same transaction as the projection's tables; each projection keeps the
-- CloudEvent identities it folded in its own schema (`<schema>.kairos_applied`, made by the
-- runtime). Projection modules bring their own migrations (`projections/<name>/migrations/`).
CREATE SCHEMA IF NOT EXISTS kairos;

-- The stream sequence each projection has applied up to, inclusive.
CREATE TABLE kairos.checkpoints (
    projection     text PRIMARY KEY,
    last_seq       bigint NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    events_applied bigint NOT NULL DEFAULT 0,
    duplicates     bigint NOT NULL DEFAULT 0,
    dead_lettered  bigint NOT NULL DEFAULT 0,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- Events a projection emits (threshold crossings, alerts), written with the state change that
-- caused them and published after commit; ids are deterministic, so a re-publish is a duplicate.
CREATE TABLE kairos.outbox (
    id         bigserial PRIMARY KEY,
    projection text        NOT NULL,
    event      bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Which stream this database's projections were built from: a database serves one stream, and
-- start-up refuses a configuration that points it at another. `key_secret` is the HMAC key for
-- API keys and invitation tokens when `auth.key_secret` is not configured: generated once, on
-- first start, and kept outside every projection's schema, so a rebuild never loses it.
CREATE TABLE kairos.instance (
    singleton      boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    stream         text        NOT NULL,
    subject_prefix text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    key_secret     bytea
);

-- Periodic copies of a projection's whole state, each at the stream sequence it reflects, so a
-- point-in-time read folds only the events after the nearest snapshot. `stored_at` (when the
-- stream stored the message the snapshot was taken at) makes snapshots double as an index from
-- time to stream sequence.
CREATE TABLE kairos.snapshots (
    projection text        NOT NULL,
    seq        bigint      NOT NULL,
    taken_at   timestamptz NOT NULL DEFAULT now(),
    state      jsonb       NOT NULL,
    stored_at  timestamptz,
    PRIMARY KEY (projection, seq)
);
CREATE INDEX snapshots_stored_at ON kairos.snapshots (stored_at);
