-- The projection runtime's own bookkeeping. Every projection's checkpoint, applied-event identities
-- and outbox live here, written in the same transaction as the projection's tables.
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

-- CloudEvent identities (sha256 of source NUL id) a projection has folded. Outlives JetStream's
-- duplicate window: a producer's retry hours later is still recognised.
CREATE TABLE kairos.applied_events (
    projection text   NOT NULL,
    identity   bytea  NOT NULL CHECK (length(identity) = 32),
    seq        bigint NOT NULL,
    PRIMARY KEY (projection, identity)
);

-- Events a projection emits (threshold crossings, alerts), written with the state change that
-- caused them and published after commit; ids are deterministic, so a re-publish is a duplicate.
CREATE TABLE kairos.outbox (
    id         bigserial PRIMARY KEY,
    projection text        NOT NULL,
    event      bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
