-- DESIGN §16: jobs — long work (a replay of a month, cancelling a backlog) tracked,
-- cancellable and resumed after a restart. A runner on some node holds a job by its lease and
-- works it a page at a time; each page commits with the job's progress (`done`, `cursor`), so a
-- job interrupted anywhere resumes where its last page ended.
CREATE TABLE jobs (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    kind        TEXT NOT NULL,              -- replay | cancel_pending
    params      TEXT NOT NULL,              -- the kind's parameters, JSON
    dry_run     BOOLEAN NOT NULL DEFAULT FALSE,
    state       TEXT NOT NULL,              -- queued | running | done | canceled | failed
    bound       BIGINT NOT NULL,           -- the last sequence (replay) or delivery id (cancel) in scope
    total       BIGINT,                    -- NULL until counted
    done        BIGINT NOT NULL DEFAULT 0,
    resume_after BIGINT NOT NULL DEFAULT 0, -- where the next page starts (after it)
    result      TEXT,                       -- JSON
    error       TEXT,
    lease_until BIGINT,                    -- unix ms; held by a node's runner until then
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    finished_at BIGINT
);
CREATE INDEX jobs_tenant ON jobs (tenant_id, created_at);
CREATE INDEX jobs_open ON jobs (created_at) WHERE state IN ('queued', 'running');

-- Lag (DESIGN §16): when a delivery became pending again (a replay, a retry asked for);
-- NULL: when it was created. And the lagging episode a subscription is in (since when its
-- oldest pending delivery passed its lag budget; NULL: none), so that each episode is told once
-- whichever node sees it.
ALTER TABLE deliveries ADD COLUMN pending_since BIGINT;
ALTER TABLE subscriptions ADD COLUMN lagging_since BIGINT;

-- The circuit breaker (DESIGN §16): the last failed attempt's error while failing, and, while
-- open (5 failures in a row or more), when the next probe may start and how many probes failed.
ALTER TABLE subscriptions ADD COLUMN last_error TEXT;
ALTER TABLE subscriptions ADD COLUMN probe_at BIGINT;
ALTER TABLE subscriptions ADD COLUMN probes BIGINT NOT NULL DEFAULT 0;

INSERT INTO schema_compat (version, previous_may_run) VALUES (12, TRUE);
