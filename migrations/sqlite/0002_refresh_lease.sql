-- Refresh single flight across replicas without a row lock held across the
-- provider call: a short lease on the connection, fenced by token_version at
-- commit, and the journal of the attempt in progress (who, since when).
-- A lease left behind by a replica that died is how an interrupted refresh
-- is detected. refreshed_at: the last successful refresh (keep-alive).
ALTER TABLE connections ADD COLUMN refresh_owner TEXT;
ALTER TABLE connections ADD COLUMN refresh_started_at BIGINT;
ALTER TABLE connections ADD COLUMN refresh_lease_until BIGINT;
ALTER TABLE connections ADD COLUMN refreshed_at BIGINT;
