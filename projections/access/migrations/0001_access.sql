-- The access projection: members, their roles, invitations and API keys, folded from the
-- member.*, role.assigned and api_key.* events. Secrets are never stored: invitation tokens and
-- API keys only as HMAC-SHA256 under the server's key secret.
CREATE SCHEMA IF NOT EXISTS access;

CREATE TABLE access.members (
    member_id     text PRIMARY KEY,
    email         text NOT NULL,
    name          text,
    role          text NOT NULL CHECK (role IN ('admin', 'developer', 'viewer')),
    -- NULL: every project; otherwise the projects the role is narrowed to.
    projects      text[],
    status        text NOT NULL CHECK (status IN ('active', 'removed')),
    invitation_id text,
    joined_at     timestamptz NOT NULL,
    joined_by     text NOT NULL,
    removed_at    timestamptz,
    updated_seq   bigint NOT NULL
);
CREATE INDEX members_email ON access.members (lower(email));

CREATE TABLE access.invitations (
    invitation_id text PRIMARY KEY,
    email         text NOT NULL,
    role          text NOT NULL,
    projects      text[],
    token_hash    bytea NOT NULL,
    expires_at    timestamptz NOT NULL,
    invited_by    text NOT NULL,
    invited_at    timestamptz NOT NULL,
    accepted_at   timestamptz,
    member_id     text,
    seq           bigint NOT NULL
);
CREATE INDEX invitations_token ON access.invitations (token_hash);

CREATE TABLE access.api_keys (
    key_id     text PRIMARY KEY,
    member_id  text NOT NULL,
    name       text NOT NULL,
    -- First 16 hex digits of HMAC-SHA256(key secret, "lookup:" + key): finds the row whose HMAC
    -- of the key is then compared; without the secret it reveals nothing.
    lookup     text NOT NULL,
    hash       bytea NOT NULL CHECK (length(hash) = 32),
    created_at timestamptz NOT NULL,
    created_by text NOT NULL,
    expires_at timestamptz,
    revoked_at timestamptz,
    revoked_by text,
    seq        bigint NOT NULL
);
CREATE INDEX api_keys_lookup ON access.api_keys (lookup);
CREATE INDEX api_keys_member ON access.api_keys (member_id);
