-- System events (Category 0: Test, Heartbeat, SubscriptionFailing, …): Switchboard's own,
-- never in a tenant's log, but delivered, signed and retried like any event. Their bodies live
-- here; a delivery of one points to it with `sequence = -id` (tenant events have sequences
-- from 1), so deliveries stay unique per (subscription, sequence) and the claim needs no new
-- column.
CREATE TABLE system_events (
    id         INTEGER PRIMARY KEY,
    tenant_id  TEXT NOT NULL,
    event_id   TEXT NOT NULL,                  -- the generated GUID, the webhook-id
    created_at INTEGER NOT NULL,               -- unix milliseconds
    body       TEXT NOT NULL                   -- the canonical JSON, delivered byte for byte
);
CREATE INDEX system_events_tenant ON system_events (tenant_id, id);

-- SubscriptionFailing is sent once per failing period: whether it was, kept with the failing
-- count so that a restart neither repeats nor forgets it.
ALTER TABLE subscriptions ADD COLUMN failing_sent BOOLEAN NOT NULL DEFAULT FALSE;

-- A tenant's ingest limit in events per second (NULL: none), enforced by each node.
ALTER TABLE tenants ADD COLUMN ingest_rate_limit_per_sec BIGINT;
