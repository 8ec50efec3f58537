-- Sealed-value format 2 binds a record version into each ciphertext's
-- additional data (a connection's token_version for its refresh token, an
-- access token row's token_version for it). An outbox entry that copies a
-- connection's ciphertext keeps the version it was sealed for, so that it
-- still opens once the connection has moved on. 0 for a credential sealed to
-- the entry itself, and for entries from before format 2 (format 1 binds no
-- version).
ALTER TABLE revocation_outbox ADD COLUMN binding_version BIGINT NOT NULL DEFAULT 0;
