-- Deliveries by status, without the succeeded ones: `deliveries_not_succeeded` replaces
-- `deliveries_by_status`. A delivery that succeeds leaves the index instead of moving within
-- it: on SQLite one entry deleted instead of one deleted and one inserted; on PostgreSQL, where
-- an outcome's update writes a new row version with an entry in every index whose condition it
-- meets, one index fewer per outcome (docs/BENCHMARKS.md, "a partial deliveries_by_status").
-- Listings by another status and the cancel jobs' pages are served as before: their
-- statements name the status and repeat `status <> 'succeeded'`, since SQLite uses a partial
-- index only for a statement holding its condition's own terms. A
-- listing of the succeeded ones walks the subscription's deliveries in id order, like the
-- listing of all of them; a Heartbeat's last delivered sequence is read from the subscription's
-- latest deliveries by sequence. The previous release's statements run on this schema, those
-- that read by status without an index (slower, not wrong) until it is replaced.
DROP INDEX IF EXISTS deliveries_by_status;
CREATE INDEX deliveries_not_succeeded ON deliveries (subscription_id, status, id)
    WHERE status <> 'succeeded';
INSERT INTO schema_compat (version, previous_may_run) VALUES (19, TRUE);
