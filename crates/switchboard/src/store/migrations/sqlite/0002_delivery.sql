-- Subscriptions, the delivery queue (the transactional outbox) and the attempt log.

CREATE TABLE subscriptions (
    id                    TEXT PRIMARY KEY,
    tenant_id             TEXT NOT NULL,
    spec                  TEXT NOT NULL,          -- the subscription body as JSON, secret included
    enabled               INTEGER NOT NULL,       -- mirrors spec.enabled, for the ingest fan-out
    disabled_reason       TEXT,
    old_secret            TEXT,                   -- still signing until old_secret_expires_at
    old_secret_expires_at INTEGER,
    failing_since         INTEGER,                -- first failure since the last success
    failures              INTEGER NOT NULL DEFAULT 0,
    created_at            INTEGER NOT NULL,
    updated_at            INTEGER NOT NULL
);
CREATE INDEX subscriptions_tenant ON subscriptions (tenant_id, enabled);

CREATE TABLE deliveries (
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
    UNIQUE (subscription_id, event_id)
);
CREATE INDEX deliveries_due ON deliveries (subscription_id, next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_agent ON deliveries (subscription_id, agent, sequence)
    WHERE status = 'pending' AND agent IS NOT NULL;
CREATE INDEX deliveries_by_status ON deliveries (subscription_id, status, id);
CREATE INDEX deliveries_event ON deliveries (tenant_id, event_id);

CREATE TABLE attempts (
    delivery_id   INTEGER NOT NULL,
    number        INTEGER NOT NULL,
    started_at    INTEGER NOT NULL,               -- unix ms
    duration_ms   INTEGER NOT NULL,
    status_code   INTEGER,
    error         TEXT,
    response_body TEXT,                           -- first 4 KiB
    PRIMARY KEY (delivery_id, number)
);
