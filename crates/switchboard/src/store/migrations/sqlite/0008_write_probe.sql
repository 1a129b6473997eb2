-- Readiness asks the writer for a real write after the database failed to take one (a full
-- disk): an empty transaction commits even then. The probe adds a 64 KiB row, which needs room
-- in the file (or its free pages), and removes the one before it.
CREATE TABLE write_probe (
    at     BIGINT NOT NULL,                    -- unix milliseconds
    filler BLOB NOT NULL
);
