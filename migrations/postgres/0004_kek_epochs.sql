-- KEK epochs: each key-encryption key that has been active, in the key
-- database. The newest one not retired is the active KEK; the others are
-- retired (re-wrapped away from in the background) and destroyed in the
-- keyring after keys.destroy_retired_after_days. Destroyed rows stay as the
-- record of what was destroyed and when its material was gone.
CREATE TABLE kek_epochs (
    kek_id        TEXT   PRIMARY KEY,
    backend       TEXT   NOT NULL,
    activated_at  BIGINT NOT NULL,
    retired_at    BIGINT,
    destroyed_at  BIGINT,
    gone_at       BIGINT,
    last_error    TEXT
);
