-- The live state of every agent (DESIGN §9), written by the writer in the same transaction as
-- the events it derives from. `state` is the agent object as the API shows it; the columns
-- beside it are what lists filter and streams follow.
CREATE TABLE agents (
    tenant_id         TEXT NOT NULL,
    username          TEXT NOT NULL,
    last_sequence     BIGINT NOT NULL,         -- the event that last changed it
    signed_in         BOOLEAN NOT NULL,
    availability_code BIGINT,
    state             TEXT NOT NULL,           -- JSON
    PRIMARY KEY (tenant_id, username)
) WITHOUT ROWID;
-- Streams follow changes in sequence order.
CREATE INDEX agents_changes ON agents (tenant_id, last_sequence);

-- What retention purged, folded: an agent's state after its last purged event. `as_of` and
-- timelines rebuild from it plus the events still in the log.
CREATE TABLE agent_bases (
    tenant_id        TEXT NOT NULL,
    username         TEXT NOT NULL,
    through_sequence BIGINT NOT NULL,
    state            TEXT NOT NULL,            -- JSON, as in agents
    PRIMARY KEY (tenant_id, username)
);

-- The last sequence the projection holds. Existing logs are folded in when the store opens
-- (in batches, by the writer); from then on each turn keeps it equal to last_sequence.
ALTER TABLE tenants ADD COLUMN agents_through BIGINT NOT NULL DEFAULT 0;

-- The Agent events in sequence order with their agent, for rebuilds (`as_of`, timelines): a
-- rebuild reads this range from the agent's base on, not the events' bodies. Keyed by sequence
-- so that each new entry goes at the end: keyed by username, every turn wrote a page per agent
-- and ingest lost a third of its throughput.
CREATE INDEX events_agent ON events (tenant_id, sequence, username) WHERE category = 1;
