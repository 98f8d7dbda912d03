-- A key may be bound to the CloudEvent source prefixes it publishes under
-- (kairos.api_key.issued.v1 `allowed_sources`); NULL: any source.
ALTER TABLE access.api_keys ADD COLUMN allowed_sources text[];
