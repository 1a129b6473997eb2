-- DESIGN §18: rules, and the episodes they have open (a condition holding, waiting to fire or
-- fired and not yet cleared). New tables and a new column with a default: the release before
-- this one reads neither, so it may still run against this schema.
CREATE TABLE rules (
    tenant_id TEXT NOT NULL,
    id TEXT NOT NULL,
    -- The rule's body (name, kind, criteria, for_secs, enabled) as JSON, read tolerantly.
    spec TEXT NOT NULL,
    -- Moves on with every change: episodes opened under an older revision are over.
    revision BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    -- Set by DELETE: the writer clears the rule's episodes, then removes the row.
    deleted_at BIGINT,
    PRIMARY KEY (tenant_id, id)
);

CREATE TABLE rule_episodes (
    tenant_id TEXT NOT NULL,
    rule_id TEXT NOT NULL,
    -- The agent's username, or the group's value.
    subject TEXT NOT NULL,
    revision BIGINT NOT NULL,
    -- When the condition began (unix ms), and the sequence that opened the episode (derived
    -- events' ids are made from it).
    since_ms BIGINT NOT NULL,
    start_seq BIGINT NOT NULL,
    -- since_ms + for_secs: when RuleFired is due.
    due_ms BIGINT NOT NULL,
    fired BOOLEAN NOT NULL,
    -- By subject first: a commit looks up the episodes of the agents (and groups) it changed.
    PRIMARY KEY (tenant_id, subject, rule_id)
);

-- The timers: unfired episodes by when they are due.
CREATE INDEX rule_episodes_due ON rule_episodes (due_ms) WHERE NOT fired;

-- Moves on with every change of the tenant's rules: writers reload them.
ALTER TABLE tenants ADD COLUMN rules_version BIGINT NOT NULL DEFAULT 0;

INSERT INTO schema_compat (version, previous_may_run) VALUES (16, TRUE);
