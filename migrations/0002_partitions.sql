-- A projection that scales out runs as several partitions (`projections.partitions`), each
-- folding the projects that hash to it, with its own checkpoint (`<name>/<k>of<n>`). Inside a
-- partition's transaction the runtime sets `kairos.partition` to `<k>/<n>`; a projection's SQL
-- that touches rows of many projects at once keeps to its own with `kairos.in_partition`.

-- The partition a transaction writes for (`<k>/<n>`), or '' outside partitioned runs.
CREATE FUNCTION kairos.partition() RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT coalesce(current_setting('kairos.partition', true), '') $$;

-- The partition (of `n`) a project belongs to: the first four bytes of the SHA-256 of its id,
-- big-endian, modulo n. The Rust side (kairos_runtime::partition_of) computes the same.
CREATE FUNCTION kairos.partition_of(project text, n integer) RETURNS integer
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT (('x' || left(encode(sha256(convert_to(project, 'UTF8')), 'hex'), 8))::bit(32)::bigint % n)::integer $$;

-- Whether `project` is the current transaction's to write: always outside partitioned runs.
CREATE FUNCTION kairos.in_partition(project text) RETURNS boolean
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT CASE WHEN kairos.partition() = '' THEN true
                      ELSE kairos.partition_of(project, split_part(kairos.partition(), '/', 2)::integer)
                           = split_part(kairos.partition(), '/', 1)::integer END $$;
