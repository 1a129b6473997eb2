-- DESIGN §15: versions side by side. From this migration on, each migration records here
-- whether the release before it may still run on the database it leaves (expand/contract:
-- new columns have defaults, nothing the previous release uses is dropped or renamed). A
-- binary that finds applied migrations it does not know starts only when each of them has
-- previous_may_run; no row means not allowed. Every later migration ends with its own row.
CREATE TABLE schema_compat (
    version BIGINT PRIMARY KEY,
    previous_may_run BOOLEAN NOT NULL
);

INSERT INTO schema_compat (version, previous_may_run) VALUES (9, TRUE);
