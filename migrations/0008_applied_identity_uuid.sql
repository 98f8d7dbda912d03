-- Applied identities are kept as 16-byte uuids (the first half of the SHA-256 of source NUL id)
-- instead of the 32-byte digest: a fixed-width key, half the index, cheaper to insert and
-- compare. Every schema's kairos_applied (live tables, a generation left by a replay, kept old
-- generations) is converted in place; the runtime does the same for any it meets later.
DO $$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT table_schema
        FROM information_schema.columns
        WHERE table_name = 'kairos_applied' AND column_name = 'identity' AND data_type = 'bytea'
    LOOP
        EXECUTE format('ALTER TABLE %I.kairos_applied DROP CONSTRAINT IF EXISTS kairos_applied_identity_check',
                       t.table_schema);
        EXECUTE format('ALTER TABLE %I.kairos_applied ALTER COLUMN identity TYPE uuid
                            USING encode(substring(identity FROM 1 FOR 16), ''hex'')::uuid',
                       t.table_schema);
    END LOOP;
END
$$;
