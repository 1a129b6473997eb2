-- Deliveries are unique per (subscription, event sequence) and found by event through the
-- sequence, no longer through the event id: sequences only grow, so both indexes take appends,
-- where random GUIDs scattered every insert over the whole index (a page written per event per
-- index, the biggest cost of ingest). SQLite cannot drop a table's UNIQUE constraint, so the
-- table is rebuilt, rows and ids kept.
CREATE TABLE deliveries_new (
    id              INTEGER PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    subscription_id TEXT NOT NULL,
    event_id        TEXT NOT NULL,
    sequence        INTEGER NOT NULL,             -- the event's sequence
    agent           TEXT,                         -- ordering key, set only for per_agent
    status          TEXT NOT NULL,                -- pending | succeeded | failed
    attempt_count   INTEGER NOT NULL DEFAULT 0,
    round_attempts  INTEGER NOT NULL DEFAULT 0,   -- attempts since the last (re)queue
    next_attempt_at INTEGER,                      -- unix ms; NULL once finished
    lease_until     INTEGER,                      -- unix ms; claimed by a dispatcher until then
    last_status_code INTEGER,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    UNIQUE (subscription_id, sequence)
);
INSERT INTO deliveries_new SELECT id, tenant_id, subscription_id, event_id, sequence, agent, status,
    attempt_count, round_attempts, next_attempt_at, lease_until, last_status_code, last_error,
    created_at, updated_at FROM deliveries;
DROP TABLE deliveries;
ALTER TABLE deliveries_new RENAME TO deliveries;
CREATE INDEX deliveries_due ON deliveries (subscription_id, next_attempt_at, sequence)
    WHERE status = 'pending';
CREATE INDEX deliveries_agent ON deliveries (subscription_id, agent, sequence)
    WHERE status = 'pending' AND agent IS NOT NULL;
CREATE INDEX deliveries_by_status ON deliveries (subscription_id, status, id);
CREATE INDEX deliveries_event ON deliveries (tenant_id, sequence);
CREATE INDEX deliveries_leased ON deliveries (lease_until) WHERE lease_until IS NOT NULL;
