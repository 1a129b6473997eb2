-- Deliveries by status, without the succeeded ones. A delivery that succeeds leaves the index
-- instead of moving within it: on SQLite one entry deleted instead of one deleted and one
-- inserted; on PostgreSQL, where an outcome's update writes a new row version with an entry in
-- every index whose condition it meets, one index fewer per outcome (docs/BENCHMARKS.md,
-- "a partial deliveries_by_status"). Listings by another status are served as before (their
-- statements name the status, so that the database can see the condition holds); a listing
-- of the succeeded ones walks the subscription's deliveries in id order, like the listing
-- of all of them; the heartbeat's last delivered sequence walks the (subscription, sequence)
-- index back. The previous release's statements run unchanged on this schema.
DROP INDEX IF EXISTS deliveries_by_status;
CREATE INDEX deliveries_by_status ON deliveries (subscription_id, status, id)
    WHERE status <> 'succeeded';
INSERT INTO schema_compat (version, previous_may_run) VALUES (19, TRUE);
