-- tokenvault schema, PostgreSQL.
-- Portable types on purpose (text ids, bigint epoch milliseconds, bytea), so
-- one set of statements serves PostgreSQL and SQLite. Secrets are stored only
-- sealed (AES-256-GCM under a per-connection data key).

CREATE TABLE users (
    tenant_id   TEXT   NOT NULL,
    user_id     TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    deleted_at  BIGINT,
    purge_at    BIGINT,
    PRIMARY KEY (tenant_id, user_id)
);
CREATE INDEX users_purge_at ON users (purge_at) WHERE purge_at IS NOT NULL;

-- Wrapped data keys. May live in a separate database (key_database_url);
-- deleting a row crypto-shreds everything sealed under it.
CREATE TABLE data_keys (
    id          TEXT   PRIMARY KEY,
    kek_id      TEXT   NOT NULL,
    wrapped     BYTEA  NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX data_keys_kek_id ON data_keys (kek_id);

CREATE TABLE connections (
    id              TEXT   PRIMARY KEY,
    tenant_id       TEXT   NOT NULL,
    user_id         TEXT   NOT NULL,
    provider        TEXT   NOT NULL,
    granted_scopes  TEXT   NOT NULL DEFAULT '',
    status          TEXT   NOT NULL,
    status_reason   TEXT,
    dek_id          TEXT,
    refresh_token   BYTEA,
    token_version   BIGINT NOT NULL DEFAULT 0,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    last_used_at    BIGINT,
    UNIQUE (tenant_id, user_id, provider),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, user_id) ON DELETE CASCADE
);
CREATE INDEX connections_status ON connections (status, updated_at);
CREATE INDEX connections_dek_id ON connections (dek_id);

CREATE TABLE access_tokens (
    connection_id  TEXT   NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    scope_key      TEXT   NOT NULL,
    token          BYTEA  NOT NULL,
    token_type     TEXT   NOT NULL,
    scopes         TEXT   NOT NULL,
    expires_at     BIGINT NOT NULL,
    token_version  BIGINT NOT NULL,
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (connection_id, scope_key)
);

CREATE TABLE consent_requests (
    id                TEXT    PRIMARY KEY,
    state_hash        TEXT    NOT NULL UNIQUE,
    tenant_id         TEXT    NOT NULL,
    user_id           TEXT    NOT NULL,
    provider          TEXT    NOT NULL,
    capabilities      TEXT    NOT NULL,
    requested_scopes  TEXT    NOT NULL,
    asked_scopes      TEXT    NOT NULL,
    incremental       INTEGER NOT NULL,
    return_url        TEXT,
    redirect_uri      TEXT    NOT NULL,
    dek_id            TEXT    NOT NULL,
    pkce_verifier     BYTEA,
    state             TEXT    NOT NULL,
    connection_id     TEXT,
    error             TEXT,
    created_at        BIGINT  NOT NULL,
    expires_at        BIGINT  NOT NULL,
    completed_at      BIGINT,
    actor             TEXT    NOT NULL,
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, user_id) ON DELETE CASCADE
);
CREATE INDEX consent_requests_expires_at ON consent_requests (expires_at);
CREATE INDEX consent_requests_user ON consent_requests (tenant_id, user_id);
CREATE INDEX consent_requests_dek_id ON consent_requests (dek_id);

-- Append-only; kept 90 days. No foreign keys: the record outlives what it describes.
CREATE TABLE audit_events (
    id             TEXT   PRIMARY KEY,
    occurred_at    BIGINT NOT NULL,
    tenant_id      TEXT,
    user_id        TEXT,
    connection_id  TEXT,
    actor          TEXT   NOT NULL,
    action         TEXT   NOT NULL,
    outcome        TEXT   NOT NULL,
    detail         TEXT   NOT NULL,
    request_id     TEXT
);
CREATE INDEX audit_events_occurred_at ON audit_events (occurred_at);
CREATE INDEX audit_events_tenant ON audit_events (tenant_id, user_id, id);
CREATE INDEX audit_events_connection ON audit_events (connection_id, id);

-- Provider revocations (RFC 7009) still to be made. The token stays sealed
-- under the revoked connection's data key until the entry finishes.
CREATE TABLE revocation_outbox (
    id               TEXT   PRIMARY KEY,
    connection_id    TEXT   NOT NULL,
    tenant_id        TEXT   NOT NULL,
    user_id          TEXT   NOT NULL,
    provider         TEXT   NOT NULL,
    dek_id           TEXT   NOT NULL,
    token            BYTEA,
    token_type_hint  TEXT   NOT NULL,
    binding_record   TEXT   NOT NULL,
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT NOT NULL,
    give_up_at       BIGINT NOT NULL,
    status           TEXT   NOT NULL,
    last_error       TEXT,
    created_at       BIGINT NOT NULL,
    finished_at      BIGINT
);
CREATE INDEX revocation_outbox_due ON revocation_outbox (status, next_attempt_at);
CREATE INDEX revocation_outbox_connection ON revocation_outbox (connection_id);
CREATE INDEX revocation_outbox_dek_id ON revocation_outbox (dek_id);
