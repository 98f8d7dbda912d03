-- Layout 2 of an entry: when the stream stored its event (`recorded_at`, which no producer
-- chooses), and what a producer's user action claims about who acted (`claimed`), kept apart
-- from the actor Kairos authenticated. Entries already written stay layout 1, hashed as before.
ALTER TABLE audit.entries
    ADD COLUMN recorded_at timestamptz,
    ADD COLUMN claimed     jsonb,
    ADD COLUMN layout      smallint NOT NULL DEFAULT 1;

-- Time filters use the stream's time; a layout-1 entry has only its event's.
CREATE INDEX entries_recorded ON audit.entries ((COALESCE(recorded_at, occurred_at)));
CREATE INDEX entries_claimed_actor ON audit.entries ((claimed->>'actor'), seq);
