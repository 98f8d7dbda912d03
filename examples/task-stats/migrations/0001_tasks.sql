CREATE SCHEMA IF NOT EXISTS task_stats;

-- One row per project and task type: how its completed tasks ended, and how long the ones
-- that reported a duration took in all.
CREATE TABLE task_stats.tasks (
    project text NOT NULL,
    task_type text NOT NULL,
    ok bigint NOT NULL DEFAULT 0,
    failed bigint NOT NULL DEFAULT 0,
    cancelled bigint NOT NULL DEFAULT 0,
    timed bigint NOT NULL DEFAULT 0,
    duration_ms bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (project, task_type)
);
