-- Periodic copies of a projection's whole state, each at the stream sequence it reflects, so a
-- point-in-time read folds only the events after the nearest snapshot.
CREATE TABLE kairos.snapshots (
    projection text        NOT NULL,
    seq        bigint      NOT NULL,
    taken_at   timestamptz NOT NULL DEFAULT now(),
    state      jsonb       NOT NULL,
    PRIMARY KEY (projection, seq)
);
