-- no-transaction
CREATE INDEX CONCURRENTLY IF NOT EXISTS events_username ON events (tenant_id, username, sequence) WHERE username IS NOT NULL
