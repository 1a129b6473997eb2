-- no-transaction
CREATE INDEX CONCURRENTLY IF NOT EXISTS events_code ON events (tenant_id, code, sequence)
