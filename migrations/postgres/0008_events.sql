-- The event log (connection.*, consent.*, user.*), written in the same
-- transaction as the change it records. seq (the cursor) is drawn in commit order
-- (see src/store/trail.rs) and never reused.
CREATE TABLE events (
    seq            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id             TEXT NOT NULL UNIQUE,
    event_type     TEXT NOT NULL,
    tenant_id      TEXT NOT NULL,
    user_id        TEXT,
    connection_id  TEXT,
    occurred_at    BIGINT NOT NULL,
    data           TEXT NOT NULL
);
-- Id, tenant, user and connection of each event; data is its small typed
-- payload as JSON (never a token, code or secret). Kept
-- events.retention_days, purged by the retention sweeper in batches.
CREATE INDEX events_tenant_cursor ON events (tenant_id, seq);
CREATE INDEX events_occurred_at ON events (occurred_at);

-- The highest cursor the retention sweeper has purged: a watcher resuming
-- below it has missed events (OUT_OF_RANGE).
CREATE TABLE event_log_state (
    id              INTEGER PRIMARY KEY,
    purged_through  BIGINT NOT NULL
);
INSERT INTO event_log_state (id, purged_through) VALUES (1, 0);

-- Webhook endpoints of a tenant. event_types lists the wanted types as
-- ",a,b," (empty: every type). The signing secret is sealed under the
-- endpoint's own data key (dek_id), bound to the endpoint and the secret's
-- version; after a rotation the previous secret keeps signing beside the
-- new one until previous_until.
CREATE TABLE webhook_endpoints (
    id                       TEXT PRIMARY KEY,
    tenant_id                TEXT NOT NULL,
    url                      TEXT NOT NULL,
    description              TEXT NOT NULL,
    event_types              TEXT NOT NULL,
    dek_id                   TEXT NOT NULL,
    secret                   BYTEA NOT NULL,
    secret_version           BIGINT NOT NULL,
    previous_secret          BYTEA,
    previous_secret_version  BIGINT,
    previous_until           BIGINT,
    created_by               TEXT NOT NULL,
    created_at               BIGINT NOT NULL,
    updated_at               BIGINT NOT NULL
);
CREATE INDEX webhook_endpoints_tenant ON webhook_endpoints (tenant_id);

-- One delivery of one event to one endpoint, queued in the event's own
-- transaction: pending until the endpoint answers 2xx (delivered) or the
-- give-up time passes (failed). claim_token fences the worker holding it.
CREATE TABLE webhook_deliveries (
    endpoint_id       TEXT NOT NULL,
    event_id          TEXT NOT NULL,
    tenant_id         TEXT NOT NULL,
    status            TEXT NOT NULL,
    attempts          INTEGER NOT NULL,
    next_attempt_at   BIGINT NOT NULL,
    created_at        BIGINT NOT NULL,
    finished_at       BIGINT,
    last_status_code  INTEGER,
    last_error        TEXT,
    claim_token       TEXT,
    PRIMARY KEY (endpoint_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
CREATE INDEX webhook_deliveries_created ON webhook_deliveries (created_at);

-- Every delivery attempt: when, the HTTP status (NULL when none came back),
-- how long it took, and what went wrong.
CREATE TABLE webhook_attempts (
    id           TEXT PRIMARY KEY,
    endpoint_id  TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    attempted_at BIGINT NOT NULL,
    status_code  INTEGER,
    latency_ms   BIGINT NOT NULL,
    error        TEXT
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (endpoint_id, event_id, attempted_at);
