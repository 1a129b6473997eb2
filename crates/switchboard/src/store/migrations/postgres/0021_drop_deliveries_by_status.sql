-- no-transaction
DROP INDEX CONCURRENTLY IF EXISTS deliveries_by_status
