-- DESIGN §23: log queries by Username or Code are served by an index, not a scan of the
-- tenant's log. events_username also serves an agent's history (as_of, timelines), which
-- events_agent served by scanning all of the tenant's Agent events; events_agent goes (an
-- index is never named by a statement, so the previous release runs on without it).
DROP INDEX IF EXISTS events_agent;
CREATE INDEX events_username ON events (tenant_id, username, sequence) WHERE username IS NOT NULL;
CREATE INDEX events_code ON events (tenant_id, code, sequence);

INSERT INTO schema_compat (version, previous_may_run) VALUES (11, TRUE);
