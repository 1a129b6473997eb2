-- DESIGN §23: log queries by Username or Code are served by an index, not a scan of the
-- tenant's log.
--
-- Code: an index on events. Username: an index kept beside the log, not on it. An index on
-- (tenant, username, sequence) written with every event touches a page per agent in every
-- commit and halved batch ingest (docs/BENCHMARKS.md); events_by_username is written by the
-- writer about once a second, each batch in username order, and tenants.usernames_through
-- says how far it reaches: a query reads it up to there and scans the log's tail after it.
-- It also serves an agent's history (as_of, timelines), which events_agent served by scanning
-- all of the tenant's Agent events; events_agent goes (no statement names an index, so the
-- previous release runs on without it).
DROP INDEX IF EXISTS events_agent;
CREATE INDEX events_code ON events (tenant_id, code, sequence);
CREATE TABLE events_by_username (
    tenant_id TEXT NOT NULL,
    username  TEXT NOT NULL,
    sequence  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, username, sequence)
) WITHOUT ROWID;
ALTER TABLE tenants ADD COLUMN usernames_through INTEGER NOT NULL DEFAULT 0;

INSERT INTO schema_compat (version, previous_may_run) VALUES (11, TRUE);
