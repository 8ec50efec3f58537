-- The upstream account a connection belongs to (issue 14): learned after each
-- code exchange from the provider's catalog `account` source. NULL for
-- connections made before this version (and for providers without a
-- source) until their next consent learns it. Several accounts of one
-- provider per user: the unique key becomes (tenant, user, provider,
-- account). SQLite cannot drop a table constraint, so the table is rebuilt
-- (https://www.sqlite.org/lang_altertable.html#otheralter). Migrations run
-- in a transaction, where foreign keys cannot be turned off: dropping the old
-- table deletes the access tokens that reference it (ON DELETE CASCADE), so
-- they are kept aside and put back. Every existing connection is kept.
CREATE TEMP TABLE access_tokens_kept AS SELECT * FROM access_tokens;
CREATE TABLE connections_rebuilt (
    id              TEXT   PRIMARY KEY,
    tenant_id       TEXT   NOT NULL,
    user_id         TEXT   NOT NULL,
    provider        TEXT   NOT NULL,
    granted_scopes  TEXT   NOT NULL DEFAULT '',
    status          TEXT   NOT NULL,
    status_reason   TEXT,
    dek_id          TEXT,
    refresh_token   BLOB,
    token_version   BIGINT NOT NULL DEFAULT 0,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    last_used_at    BIGINT,
    refresh_owner   TEXT,
    refresh_started_at BIGINT,
    refresh_lease_until BIGINT,
    refreshed_at    BIGINT,
    provider_revocation TEXT,
    provider_revocation_at BIGINT,
    provider_revocation_detail TEXT,
    provider_revocation_page TEXT,
    provider_revocation_error_kind TEXT,
    account_subject TEXT,
    account_display TEXT,
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, user_id) ON DELETE CASCADE
);
INSERT INTO connections_rebuilt (id, tenant_id, user_id, provider, granted_scopes, status, status_reason, dek_id,
    refresh_token, token_version, created_at, updated_at, last_used_at, refresh_owner, refresh_started_at,
    refresh_lease_until, refreshed_at, provider_revocation, provider_revocation_at, provider_revocation_detail,
    provider_revocation_page, provider_revocation_error_kind)
SELECT id, tenant_id, user_id, provider, granted_scopes, status, status_reason, dek_id,
    refresh_token, token_version, created_at, updated_at, last_used_at, refresh_owner, refresh_started_at,
    refresh_lease_until, refreshed_at, provider_revocation, provider_revocation_at, provider_revocation_detail,
    provider_revocation_page, provider_revocation_error_kind
FROM connections;
DROP TABLE connections;
ALTER TABLE connections_rebuilt RENAME TO connections;
CREATE INDEX connections_status ON connections (status, updated_at);
CREATE INDEX connections_dek_id ON connections (dek_id);
CREATE UNIQUE INDEX connections_account ON connections (tenant_id, user_id, provider, COALESCE(account_subject, ''));
INSERT INTO access_tokens SELECT * FROM access_tokens_kept;
DROP TABLE access_tokens_kept;
