-- The catalog projection: every version of the model catalog (a kairos.catalog.changed.v1 each),
-- by stream sequence; the latest is the catalog in force.
CREATE SCHEMA IF NOT EXISTS catalog;

CREATE TABLE catalog.versions (
    seq        bigint PRIMARY KEY,
    changed_at timestamptz NOT NULL,
    actor      text,
    models     jsonb NOT NULL
);
