-- DESIGN §19: keys the instance keeps for itself, by name. `redact_hash`: the random key each
-- tenant's key for `redact: hash` is derived from, written by the first node that needs it, so
-- every node and every restart hashes alike (`switchboard copy` carries it over). A new table:
-- the release before this one does not read it.
CREATE TABLE instance_keys (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

INSERT INTO schema_compat (version, previous_may_run) VALUES (15, TRUE);
