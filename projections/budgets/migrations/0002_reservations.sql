-- Open reservations: worst-case costs POST /v1/route holds against a project's month until the
-- LLM call carrying the decision id settles them, or they expire. A closed one is deleted.
CREATE TABLE budgets.reservations (
    project        text        NOT NULL,
    reservation_id text        NOT NULL,
    period         text        NOT NULL,
    model          text        NOT NULL,
    amount_nanos   bigint      NOT NULL CHECK (amount_nanos >= 0),
    expires_at     timestamptz NOT NULL,
    seq            bigint      NOT NULL,
    PRIMARY KEY (project, reservation_id)
);
CREATE INDEX reservations_by_period ON budgets.reservations (project, period);
CREATE INDEX reservations_by_expiry ON budgets.reservations (expires_at);
