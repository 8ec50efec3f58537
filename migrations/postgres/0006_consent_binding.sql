-- Consent that belongs to its user (issue 14). StartConsent hands out a
-- single-purpose start handle (stored hashed); /oauth/start/{handle} binds
-- the browser (a cookie whose value is stored hashed) and only then makes
-- the state the provider sees. The exchanged grant waits, sealed under the
-- request's own data key, until the platform confirms it with the one-time
-- completion code (stored hashed); the account the grant belongs to is
-- kept with it.
ALTER TABLE consent_requests ADD COLUMN start_hash TEXT;
ALTER TABLE consent_requests ADD COLUMN binding_hash TEXT;
ALTER TABLE consent_requests ADD COLUMN completion_hash TEXT;
ALTER TABLE consent_requests ADD COLUMN pending_grant BYTEA;
ALTER TABLE consent_requests ADD COLUMN account_subject TEXT;
ALTER TABLE consent_requests ADD COLUMN account_display TEXT;
ALTER TABLE consent_requests ADD COLUMN target_connection_id TEXT;
ALTER TABLE consent_requests ADD COLUMN account_hint TEXT;
CREATE UNIQUE INDEX consent_requests_start_hash ON consent_requests (start_hash);
