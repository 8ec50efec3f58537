-- What happened at the provider when a connection was revoked, reported on
-- the connection: pending, done, unsupported (with the reason and the
-- provider's page where the user revokes the app) or failed (with the last
-- error kind). NULL while the connection is not revoked.
ALTER TABLE connections ADD COLUMN provider_revocation TEXT;
ALTER TABLE connections ADD COLUMN provider_revocation_at BIGINT;
ALTER TABLE connections ADD COLUMN provider_revocation_detail TEXT;
ALTER TABLE connections ADD COLUMN provider_revocation_page TEXT;
ALTER TABLE connections ADD COLUMN provider_revocation_error_kind TEXT;

-- The outbox: each attempt runs under its own claim (claim_token), so a
-- worker whose lease ran out cannot finish an entry another worker holds;
-- purpose says whether the entry is the connection's revocation (its
-- outcome is reported on the connection) or a credential replaced by a
-- re-consent or obtained by a refresh that lost to a revocation;
-- rotation_uncertain is set when a refresh made while revoking may have
-- rotated the refresh token without our hearing the answer, so that a later
-- invalid_grant is not taken for proof that the grant is gone.
ALTER TABLE revocation_outbox ADD COLUMN claim_token TEXT;
ALTER TABLE revocation_outbox ADD COLUMN purpose TEXT NOT NULL DEFAULT 'revocation';
ALTER TABLE revocation_outbox ADD COLUMN rotation_uncertain INTEGER NOT NULL DEFAULT 0;
ALTER TABLE revocation_outbox ADD COLUMN error_kind TEXT;
