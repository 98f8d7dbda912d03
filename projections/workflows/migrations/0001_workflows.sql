-- The workflows projection: sessions (workflow runs) folded from task events, and the counts of
-- the next-task model: per project, how often each context (an abstraction of a session's
-- prefix, see kairos_workflows::next) was followed by each task, or by the session's end.
CREATE SCHEMA IF NOT EXISTS workflows;

-- One row per session incarnation: a workflow id idle for longer than [workflows] idle_seconds
-- of stream time starts a new incarnation (a new row, keyed by the sequence of its first event).
CREATE TABLE workflows.sessions (
    project     text        NOT NULL,
    workflow_id text        NOT NULL,
    started_seq bigint      NOT NULL,
    -- The sequence of its last event: its end is learned at it.
    last_seq    bigint      NOT NULL,
    actor       text,
    open        boolean     NOT NULL,
    first_at    timestamptz NOT NULL,
    last_at     timestamptz NOT NULL,
    -- When the stream stored its last event: idle expiry runs on stream time, which a producer
    -- cannot set and a replay sees again.
    last_stored timestamptz NOT NULL,
    -- Task types in order (the last [workflows] max_session_tasks of them), with their times.
    tasks       text[]        NOT NULL,
    times       timestamptz[] NOT NULL,
    -- The ids of the last tasks, so a completion matches its start.
    task_ids    text[]      NOT NULL,
    steps       integer     NOT NULL CHECK (steps >= 0),
    errors      integer     NOT NULL CHECK (errors >= 0),
    PRIMARY KEY (project, workflow_id, started_seq)
);
-- At most one open run per workflow id (the fold keeps it so; not a unique index, since one
-- statement ends a run and opens the next).
CREATE INDEX sessions_open ON workflows.sessions (project, workflow_id) WHERE open;
-- A suggestion names the session by its workflow id alone.
CREATE INDEX sessions_id ON workflows.sessions (workflow_id);
CREATE INDEX sessions_idle ON workflows.sessions (last_stored) WHERE open;
CREATE INDEX sessions_recent ON workflows.sessions (project, last_stored DESC);

-- The next-task model's counts: context `context` of project `project` was followed by `next`
-- (a task type, or '' for the session's end) `count` times. `context` is the 64-bit FNV-1a hash
-- of the context's key (kairos_workflows::projection::stored_key): a fixed-width key keeps the
-- index small, and a read hashes the keys of its prefix's chain the same way.
CREATE TABLE workflows.counts (
    project text   NOT NULL,
    context bigint NOT NULL,
    next    text   NOT NULL,
    count   bigint NOT NULL CHECK (count > 0),
    PRIMARY KEY (project, context, next)
);

-- Per project: how many counts and sessions it holds, so the bounds are checked without a
-- count(*), and how many steps and ends it has learned from.
CREATE TABLE workflows.projects (
    project  text   PRIMARY KEY,
    counts   bigint NOT NULL CHECK (counts >= 0),
    sessions bigint NOT NULL CHECK (sessions >= 0),
    learned  bigint NOT NULL CHECK (learned >= 0)
);

CREATE TABLE workflows.watermark (
    id          boolean PRIMARY KEY DEFAULT true CHECK (id),
    last_stored timestamptz NOT NULL
);
