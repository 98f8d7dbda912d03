-- The chain's length and what the last signed checkpoint covered: the audit projection appends a
-- signed kairos.audit.checkpoint.v1 to the stream every `audit.checkpoint_every` entries or
-- `audit.checkpoint_interval_secs` seconds of stream time.
CREATE TABLE audit.chain (
    one            boolean PRIMARY KEY DEFAULT true CHECK (one),
    entries        bigint NOT NULL,
    signed_entries bigint NOT NULL DEFAULT 0,
    signed_at      timestamptz
);

INSERT INTO audit.chain (entries) SELECT count(*) FROM audit.entries;
