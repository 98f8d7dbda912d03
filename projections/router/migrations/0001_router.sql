-- The router projection: every route decision (a kairos.router.decision.v1 each), with the
-- inputs it was decided on in `record`.
CREATE SCHEMA IF NOT EXISTS router;

CREATE TABLE router.decisions (
    id                   text PRIMARY KEY,
    seq                  bigint      NOT NULL,
    project              text        NOT NULL,
    decided_at           timestamptz NOT NULL,
    outcome              text        NOT NULL,
    rule                 text        NOT NULL,
    model                text,
    estimated_cost_nanos bigint,
    reserved_nanos       bigint,
    record               jsonb       NOT NULL
);
CREATE INDEX decisions_by_project ON router.decisions (project, decided_at, id);
CREATE INDEX decisions_by_time ON router.decisions (decided_at, id);
