-- The model_counts test module (tests/tests/registry.rs): LLM calls counted per model.
CREATE SCHEMA IF NOT EXISTS model_counts;

CREATE TABLE model_counts.counts (
    model text PRIMARY KEY,
    calls bigint NOT NULL CHECK (calls > 0)
);
