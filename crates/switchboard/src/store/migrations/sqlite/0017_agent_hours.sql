-- DESIGN §18: intervals for WFM kept by a projection of the log (agent/intervals/kept.rs), so
-- that a month of a tenant's agents is read as rows instead of re-folded from the log. New
-- tables and a new column with a default: the release before this one reads none of them, so
-- it may still run against this schema (its writes then leave the projection behind the log,
-- which the next start of this release folds in).

-- One agent's hour, final: the figures of its four quarters and the revisions of the intervals
-- within it, as JSON. Beside it, what reads filter on.
CREATE TABLE agent_hours (
    tenant_id TEXT NOT NULL,
    username TEXT NOT NULL,
    -- Unix seconds, a multiple of 3600.
    start BIGINT NOT NULL,
    signed_in_secs BIGINT NOT NULL,
    -- The last sequence that changed the hour.
    changed_by BIGINT NOT NULL,
    figures TEXT NOT NULL,
    PRIMARY KEY (tenant_id, username, start)
) WITHOUT ROWID;

-- Retention purges a tenant's hours with the events that made them.
CREATE INDEX agent_hours_by_change ON agent_hours (tenant_id, changed_by);

-- Each agent's part that can still change: its state as this projection folded it, the hour
-- in progress and the revisions still running, as JSON.
CREATE TABLE agent_tails (
    tenant_id TEXT NOT NULL,
    username TEXT NOT NULL,
    tail TEXT NOT NULL,
    PRIMARY KEY (tenant_id, username)
) WITHOUT ROWID;

-- The last sequence the projection holds, and where its hours start (unix seconds: retention
-- purged those before).
ALTER TABLE tenants ADD COLUMN intervals_through BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tenants ADD COLUMN intervals_from BIGINT NOT NULL DEFAULT 0;

INSERT INTO schema_compat (version, previous_may_run) VALUES (17, TRUE);
