-- The upstream account a connection belongs to (issue 14): learned after each
-- code exchange from the provider's catalog `account` source. NULL for
-- connections made before this version (and for providers without a
-- source) until their next consent learns it.
ALTER TABLE connections ADD COLUMN account_subject TEXT;
ALTER TABLE connections ADD COLUMN account_display TEXT;
