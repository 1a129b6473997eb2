-- Deliveries by status, without the succeeded ones: `deliveries_not_succeeded` replaces
-- `deliveries_by_status` (see SQLite's migration 19 for why and what reads it). Built by the
-- next migration CONCURRENTLY and outside a transaction, and the old index dropped by the one
-- after it the same way, so that the nodes still running the previous release go on writing
-- deliveries while a large table is indexed. Their schema_compat rows are written here, first,
-- so that a node stopped between them still judges the schema right. The previous release
-- runs on this schema (its reads by status lose their index: slower, not wrong).
INSERT INTO schema_compat (version, previous_may_run) VALUES (19, TRUE);
INSERT INTO schema_compat (version, previous_may_run) VALUES (20, TRUE);
INSERT INTO schema_compat (version, previous_may_run) VALUES (21, TRUE);
