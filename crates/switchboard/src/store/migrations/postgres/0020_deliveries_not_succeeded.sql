-- no-transaction
CREATE INDEX CONCURRENTLY IF NOT EXISTS deliveries_not_succeeded
    ON deliveries (subscription_id, status, id) WHERE status <> 'succeeded'
