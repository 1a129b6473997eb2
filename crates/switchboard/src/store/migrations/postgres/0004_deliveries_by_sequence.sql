-- Deliveries are unique per (subscription, event sequence) and found by event through the
-- sequence, no longer through the event id: sequences only grow, so both indexes take appends,
-- where random GUIDs scattered every insert over the whole index.
ALTER TABLE deliveries DROP CONSTRAINT deliveries_subscription_id_event_id_key;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_subscription_sequence UNIQUE (subscription_id, sequence);
DROP INDEX deliveries_event;
CREATE INDEX deliveries_event ON deliveries (tenant_id, sequence);
