-- Which stream this database's projections were built from: a database serves one stream, and
-- start-up refuses a configuration that points it at another.
CREATE TABLE kairos.instance (
    singleton      boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    stream         text        NOT NULL,
    subject_prefix text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
