-- The number the next new series gets. Series idle at max_series are forgotten (deleted), so the
-- largest sid left is not enough to tell it: a process that reloads must number new series as
-- the one that folded them would have.
ALTER TABLE anomalies.memory ADD COLUMN next_sid integer NOT NULL DEFAULT 0;
