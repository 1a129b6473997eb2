-- Due deliveries in claim order (due time, then sequence), so a claim reads only the rows it
-- takes however many are pending; the old index left the sequence tie-break to a sort of every
-- due row.
DROP INDEX deliveries_due;
CREATE INDEX deliveries_due ON deliveries (subscription_id, next_attempt_at, sequence)
    WHERE status = 'pending';

-- Leased rows (attempts in flight) only, so that voiding leases at start is cheap however many
-- deliveries are pending.
CREATE INDEX deliveries_leased ON deliveries (lease_until) WHERE lease_until IS NOT NULL;
