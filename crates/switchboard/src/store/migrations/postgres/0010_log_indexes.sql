-- DESIGN §23: log queries by Username or Code are served by an index, not a scan of the
-- tenant's log.
--
-- Code: an index on events, built by the next migration CONCURRENTLY and outside a
-- transaction, so that ingest goes on while a large log is indexed (its schema_compat row is
-- written here, first, so that a node stopped between the two still judges the schema right).
-- Username: an index kept beside the log, not on it. An index on (tenant, username, sequence)
-- written with every event touches a page per agent in every commit and halved batch ingest on
-- SQLite (docs/BENCHMARKS.md); events_by_username is written by the writer about once a second,
-- each batch in username order, and tenants.usernames_through says how far it reaches: a query
-- reads it up to there and scans the log's tail after it. It also serves an agent's history
-- (as_of, timelines), which events_agent served by scanning all of the tenant's Agent events;
-- events_agent goes (no statement names an index: the previous release runs on without it).
DROP INDEX IF EXISTS events_agent;
CREATE TABLE events_by_username (
    tenant_id TEXT NOT NULL,
    username  TEXT NOT NULL,
    sequence  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, username, sequence)
);
ALTER TABLE tenants ADD COLUMN usernames_through BIGINT NOT NULL DEFAULT 0;

INSERT INTO schema_compat (version, previous_may_run) VALUES (10, TRUE);
INSERT INTO schema_compat (version, previous_may_run) VALUES (11, TRUE);
