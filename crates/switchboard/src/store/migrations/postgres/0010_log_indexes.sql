-- DESIGN §23: log queries by Username or Code are served by an index, not a scan of the
-- tenant's log. events_username also serves an agent's history (as_of, timelines), which
-- events_agent served by scanning all of the tenant's Agent events; events_agent goes (an
-- index is never named by a statement, so the previous release runs on without it).
--
-- The two indexes are built by the next two migrations, each CONCURRENTLY and outside a
-- transaction, so that ingest goes on while a large log is indexed; their schema_compat rows
-- are written here, first, so that a node stopped between them still judges the schema right.
DROP INDEX IF EXISTS events_agent;

INSERT INTO schema_compat (version, previous_may_run) VALUES (10, TRUE);
INSERT INTO schema_compat (version, previous_may_run) VALUES (11, TRUE);
INSERT INTO schema_compat (version, previous_may_run) VALUES (12, TRUE);
