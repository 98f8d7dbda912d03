-- Invitations can be revoked before they are accepted (kairos.member.invitation_revoked.v1).
ALTER TABLE access.invitations ADD COLUMN revoked_at timestamptz, ADD COLUMN revoked_by text;
