-- Tenants, keys and the event log.

CREATE TABLE tenants (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    created_at    BIGINT NOT NULL,             -- unix milliseconds
    last_sequence BIGINT NOT NULL DEFAULT 0    -- the tenant's highest event sequence
);

CREATE TABLE api_keys (
    id         TEXT PRIMARY KEY,
    tenant_id  TEXT NOT NULL,
    name       TEXT NOT NULL,
    scopes     TEXT NOT NULL,                  -- comma-separated
    key_hash   TEXT NOT NULL UNIQUE,           -- SHA-256 of the key; the key itself is never stored
    created_at BIGINT NOT NULL
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id, id);

CREATE TABLE events (
    tenant_id   TEXT NOT NULL,
    sequence    BIGINT NOT NULL,
    id          TEXT NOT NULL,                 -- lower-case hyphenated GUID
    created     BIGINT NOT NULL,               -- CreationDateUtc as the number yyyyMMddHHmmss
    category    BIGINT NOT NULL,
    code        BIGINT NOT NULL,
    username    TEXT,                          -- AdditionalFields.Username, for filtering
    received_at BIGINT NOT NULL,               -- unix milliseconds
    body        TEXT NOT NULL,                 -- the canonical JSON, delivered byte for byte
    PRIMARY KEY (tenant_id, sequence),
    UNIQUE (tenant_id, id)
);

INSERT INTO tenants (id, name, created_at)
VALUES ('default', 'Default', (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT);
