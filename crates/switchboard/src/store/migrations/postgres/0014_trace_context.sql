-- DESIGN §21: the W3C trace context an event came with — the producer's `traceparent` and
-- `tracestate`, or its `ingest` span's context when traces are exported — sent with every
-- attempt of its deliveries. NULL: the event came without one. New nullable columns: the
-- release before this one reads and writes events as it did.
ALTER TABLE events ADD COLUMN traceparent TEXT;
ALTER TABLE events ADD COLUMN tracestate TEXT;

INSERT INTO schema_compat (version, previous_may_run) VALUES (14, TRUE);
