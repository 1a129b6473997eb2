-- DESIGN §22: portal links, short-lived tokens a platform hands its own customers so that they
-- manage their subscriptions in `/portal`. Only the token's hash is kept, like API keys'. A new
-- table: the release before this one never reads it, so it may still run against this schema.
CREATE TABLE portal_links (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    -- JSON array of subscription ids the link is limited to; NULL: all of the tenant's.
    subscription_ids TEXT,
    read_only BOOLEAN NOT NULL,
    -- Unix milliseconds.
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE INDEX portal_links_by_tenant ON portal_links (tenant_id, id);

INSERT INTO schema_compat (version, previous_may_run) VALUES (18, TRUE);
