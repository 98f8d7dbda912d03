-- The anomalies projection: one streaming detector per series, the score of every point, the
-- alerts raised and resolved from them, and the circuit breakers and lowered limits they drive.
CREATE SCHEMA IF NOT EXISTS anomalies;

-- One row per series, discovered from the events (see kairos_anomalies::series).
CREATE TABLE anomalies.series (
    id           text        PRIMARY KEY,
    -- A small number the points are kept under, given in the order series appear.
    sid          integer     NOT NULL UNIQUE,
    kind         text        NOT NULL,
    project      text,
    model        text,
    metric       text,
    labels       jsonb,
    first_at     timestamptz NOT NULL,
    last_at      timestamptz NOT NULL,
    points       bigint      NOT NULL CHECK (points >= 0),
    last_value   double precision NOT NULL,
    last_score   double precision NOT NULL,
    open_alert   text,
    -- The detector and alerting state (JSON bytes) as of its first `state_points` points: the
    -- points after them are folded into it again from `points` after a restart.
    state        bytea,
    state_points bigint      NOT NULL DEFAULT 0,
    -- Points that came out of order (not after the last one): not scored.
    dropped      bigint      NOT NULL DEFAULT 0
);
CREATE INDEX series_project ON anomalies.series (project, id);

-- Every scored point (the newest [anomalies] keep_points of each series).
-- One index only: a batch writes thousands of points, and reads by time scan a series' newest.
CREATE TABLE anomalies.points (
    sid    integer          NOT NULL,
    n      bigint           NOT NULL,
    at     timestamptz      NOT NULL,
    value  double precision NOT NULL,
    score  double precision NOT NULL,
    PRIMARY KEY (sid, n)
);

-- What the fold keeps between batches besides the series: the open buckets of the derived
-- series, and the sequence it has folded through (a process whose memory was made at another
-- sequence reloads it).
CREATE TABLE anomalies.memory (
    id     integer PRIMARY KEY CHECK (id = 1),
    mark   bigint  NOT NULL,
    groups bytea   NOT NULL,
    -- The model catalog last folded: calls without a cost are priced with it.
    catalog jsonb
);

CREATE TABLE anomalies.alerts (
    id              text        PRIMARY KEY,
    series          text        NOT NULL,
    kind            text        NOT NULL,
    project         text,
    model           text,
    severity        text        NOT NULL,
    status          text        NOT NULL CHECK (status IN ('open', 'resolved')),
    raised_at       timestamptz NOT NULL,
    resolved_at     timestamptz,
    value           double precision NOT NULL,
    expected_low    double precision,
    expected_high   double precision,
    score           double precision NOT NULL,
    peak            double precision NOT NULL,
    action          text        NOT NULL,
    resolve_reason  text,
    acknowledged_by text,
    acknowledged_at timestamptz,
    raised_seq      bigint      NOT NULL
);
CREATE INDEX alerts_status ON anomalies.alerts (status, raised_at DESC);
CREATE INDEX alerts_series ON anomalies.alerts (series, raised_at DESC);

-- A model taken out of routing by open alerts on its error-rate or latency series.
CREATE TABLE anomalies.breakers (
    model      text        PRIMARY KEY,
    state      text        NOT NULL CHECK (state IN ('open', 'half_open')),
    alerts     text[]      NOT NULL,
    since      timestamptz NOT NULL,
    changed_at timestamptz NOT NULL,
    reason     text        NOT NULL,
    -- Half-open: how many probe calls each API process lets through per window.
    probe_calls     integer NOT NULL,
    probe_window_ms bigint  NOT NULL
);

-- A project whose effective budget limit an open cost alert lowered, until an admin acknowledges.
CREATE TABLE anomalies.limits (
    project  text        PRIMARY KEY,
    alert_id text        NOT NULL,
    factor   double precision NOT NULL CHECK (factor > 0 AND factor <= 1),
    since    timestamptz NOT NULL
);
