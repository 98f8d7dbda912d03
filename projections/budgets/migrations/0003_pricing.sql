-- Calls that came without a cost are priced from the model catalog in force at their time; the
-- catalog is folded here from its own events (a projection never reads another's tables).
ALTER TABLE budgets.spend ADD COLUMN unpriced_calls bigint NOT NULL DEFAULT 0;

CREATE TABLE budgets.catalog (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    seq       bigint NOT NULL,
    models    jsonb  NOT NULL
);

-- The tokens of the calls Kairos priced, per project, month, model and UTC day (a price holds
-- for whole UTC days, so a day's tokens price exactly as its calls do): what a price correction
-- dated in the past re-prices. cost_nanos is NULL while the model has no price that day.
CREATE TABLE budgets.priced (
    project       text   NOT NULL,
    period        text   NOT NULL,
    model         text   NOT NULL,
    day           date   NOT NULL,
    calls         bigint NOT NULL,
    input_tokens  bigint NOT NULL,
    output_tokens bigint NOT NULL,
    cost_nanos    bigint,
    PRIMARY KEY (project, period, model, day)
);
CREATE INDEX priced_by_model ON budgets.priced (model);
