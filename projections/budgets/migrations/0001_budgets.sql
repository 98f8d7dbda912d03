-- The budgets projection: limits per project, spend per project and calendar month, and the
-- thresholds each project crossed in each month.
CREATE SCHEMA IF NOT EXISTS budgets;

CREATE TABLE budgets.limits (
    project             text PRIMARY KEY,
    monthly_limit_nanos bigint   NOT NULL CHECK (monthly_limit_nanos >= 0),
    warn_at_percent     smallint NOT NULL CHECK (warn_at_percent BETWEEN 1 AND 100),
    on_exceeded         text     NOT NULL CHECK (on_exceeded IN ('fallback_to_local', 'block')),
    fallback_model      text,
    set_by              text,
    set_seq             bigint      NOT NULL,
    set_at              timestamptz NOT NULL
);

CREATE TABLE budgets.spend (
    project       text   NOT NULL,
    period        text   NOT NULL,
    spent_nanos   bigint NOT NULL CHECK (spent_nanos >= 0),
    calls         bigint NOT NULL,
    failed_calls  bigint NOT NULL,
    input_tokens  bigint NOT NULL,
    output_tokens bigint NOT NULL,
    last_seq      bigint NOT NULL,
    PRIMARY KEY (project, period)
);

CREATE TABLE budgets.crossings (
    project     text        NOT NULL,
    period      text        NOT NULL,
    threshold   text        NOT NULL CHECK (threshold IN ('warning', 'exceeded')),
    limit_nanos bigint      NOT NULL,
    spent_nanos bigint      NOT NULL,
    seq         bigint      NOT NULL,
    crossed_at  timestamptz NOT NULL,
    PRIMARY KEY (project, period, threshold)
);
