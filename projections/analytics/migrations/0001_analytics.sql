-- The model analytics projection: LLM calls per (bucket start, project, model, provider) at three
-- granularities (UTC minutes, hours, days), and the model catalog in force, folded from the
-- catalog's own events (a projection never reads another projection's tables).
--
-- Counts, tokens and money are exact integers (money in nano-dollars). The catalog-derived
-- columns (catalog_cost_nanos, cost_nanos, unpriced_calls) of a minute are the catalog in force
-- applied to the minute's token sums; those of an hour or a day are the sums of its minutes'.
-- latency is a DDSketch (relative accuracy 0.01) in the serde form of the sketches-ddsketch crate.
CREATE SCHEMA IF NOT EXISTS analytics;

-- The catalog in force: one row, the stream sequence of its kairos.catalog.changed.v1.
CREATE TABLE analytics.catalog (
    id     boolean PRIMARY KEY DEFAULT true CHECK (id),
    seq    bigint NOT NULL,
    models jsonb  NOT NULL
);

CREATE TABLE analytics.minutes (
    bucket                   timestamptz NOT NULL,
    project                  text   NOT NULL,
    model                    text   NOT NULL,
    provider                 text   NOT NULL,
    calls                    bigint NOT NULL CHECK (calls > 0),
    errors                   bigint NOT NULL CHECK (errors BETWEEN 0 AND calls),
    input_tokens             bigint NOT NULL CHECK (input_tokens >= 0),
    output_tokens            bigint NOT NULL CHECK (output_tokens >= 0),
    reported_calls           bigint NOT NULL CHECK (reported_calls BETWEEN 0 AND calls),
    reported_cost_nanos      bigint NOT NULL CHECK (reported_cost_nanos >= 0),
    unreported_input_tokens  bigint NOT NULL CHECK (unreported_input_tokens >= 0),
    unreported_output_tokens bigint NOT NULL CHECK (unreported_output_tokens >= 0),
    catalog_cost_nanos       bigint NOT NULL CHECK (catalog_cost_nanos >= 0),
    cost_nanos               bigint NOT NULL CHECK (cost_nanos >= 0),
    unpriced_calls           bigint NOT NULL CHECK (unpriced_calls BETWEEN 0 AND calls),
    latency                  jsonb  NOT NULL,
    PRIMARY KEY (bucket, project, model, provider)
);
-- Minutes are most of the rows and written most: only their key is indexed (reads and re-pricing
-- scan a range of bucket starts). Hours and days are read by model or project over long ranges.
CREATE TABLE analytics.hours (LIKE analytics.minutes INCLUDING ALL);
CREATE INDEX hours_model ON analytics.hours (model, bucket);
CREATE INDEX hours_project ON analytics.hours (project, bucket);
CREATE TABLE analytics.days (LIKE analytics.minutes INCLUDING ALL);
CREATE INDEX days_model ON analytics.days (model, bucket);
CREATE INDEX days_project ON analytics.days (project, bucket);
