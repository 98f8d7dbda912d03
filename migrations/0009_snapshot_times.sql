-- When the stream stored the message each snapshot was taken at: snapshots double as an index
-- from time to stream sequence, so a point-in-time read finds its sequence between two of them
-- instead of searching the whole stream.
ALTER TABLE kairos.snapshots ADD COLUMN stored_at timestamptz;
CREATE INDEX snapshots_stored_at ON kairos.snapshots (stored_at);
