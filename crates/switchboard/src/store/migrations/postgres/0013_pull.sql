-- DESIGN §16: pull subscriptions. Their events are read from the log, never copied into
-- deliveries: a pull subscription is marked so the outbox and the dispatcher pass it by, and
-- each of its partitions keeps a durable committed cursor (a sequence of the tenant's log).
ALTER TABLE subscriptions ADD COLUMN pull BOOLEAN NOT NULL DEFAULT FALSE;
-- The last messages, commit or seek call (unix ms; NULL: none since creation), for the
-- auto-disable of an abandoned pull subscription.
ALTER TABLE subscriptions ADD COLUMN pulled_at BIGINT;
-- The pull subscriptions alone, for the once-in-10-seconds look for abandoned ones.
CREATE INDEX subscriptions_pull ON subscriptions (tenant_id) WHERE pull = TRUE;
CREATE TABLE pull_cursors (
    tenant_id       TEXT NOT NULL,
    subscription_id TEXT NOT NULL,
    partition_no    BIGINT NOT NULL,
    cursor          BIGINT NOT NULL,
    PRIMARY KEY (subscription_id, partition_no)
);
CREATE INDEX pull_cursors_tenant ON pull_cursors (tenant_id, cursor);

INSERT INTO schema_compat (version, previous_may_run) VALUES (13, TRUE);
