-- Event ids move out of the events table into an index of their own, filled in bulk by the
-- writer: random GUIDs scattered the inserts of a unique index on (tenant_id, id) over all its
-- pages, a page written per event, the biggest cost of ingest. The writer keeps the ids of
-- recent events in memory and copies them into `event_ids` many thousands at a time, in key
-- order; `ids_through` is the tenant's last sequence known to be copied (the writer reads the
-- events above it back into memory when it starts). SQLite cannot drop a table's UNIQUE
-- constraint, so the events table is rebuilt, its rows kept.
CREATE TABLE events_new (
    tenant_id   TEXT NOT NULL,
    sequence    INTEGER NOT NULL,
    id          TEXT NOT NULL,                 -- lower-case hyphenated GUID
    created     INTEGER NOT NULL,              -- CreationDateUtc as the number yyyyMMddHHmmss
    category    INTEGER NOT NULL,
    code        INTEGER NOT NULL,
    username    TEXT,                          -- AdditionalFields.Username, for filtering
    received_at INTEGER NOT NULL,              -- unix milliseconds
    body        TEXT NOT NULL,                 -- the canonical JSON, delivered byte for byte
    PRIMARY KEY (tenant_id, sequence)
);
INSERT INTO events_new SELECT tenant_id, sequence, id, created, category, code, username,
    received_at, body FROM events;
DROP TABLE events;
ALTER TABLE events_new RENAME TO events;

CREATE TABLE event_ids (
    tenant_id TEXT NOT NULL,
    id        BLOB NOT NULL,                   -- the GUID's 16 bytes
    sequence  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id)
) WITHOUT ROWID;
INSERT INTO event_ids SELECT tenant_id, unhex(replace(id, '-', '')), sequence FROM events
    ORDER BY 1, 2;

ALTER TABLE tenants ADD COLUMN ids_through INTEGER NOT NULL DEFAULT 0;
UPDATE tenants SET ids_through = last_sequence;
