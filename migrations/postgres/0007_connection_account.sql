-- The upstream account a connection belongs to (issue 14): learned after each
-- code exchange from the provider's catalog `account` source. NULL for
-- connections made before this version (and for providers without a
-- source) until their next consent learns it.
ALTER TABLE connections ADD COLUMN account_subject TEXT;
ALTER TABLE connections ADD COLUMN account_display TEXT;
-- Several accounts of one provider per user: one connection per account.
-- Every existing connection is kept (its account unknown, i.e. '').
ALTER TABLE connections DROP CONSTRAINT IF EXISTS connections_tenant_id_user_id_provider_key;
CREATE UNIQUE INDEX connections_account ON connections (tenant_id, user_id, provider, (COALESCE(account_subject, '')));
