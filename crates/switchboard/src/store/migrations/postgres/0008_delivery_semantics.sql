-- Delivery semantics for contact centers (DESIGN §14). Deliveries may now end `expired` (too old
-- for the subscription's max_age_secs) or `superseded` (coalesce: latest_status), beside
-- pending, succeeded and failed. A StatusChanged delivery of a coalescing subscription carries
-- its agent in coalesce_key, and how many deliveries it replaced in superseded.
ALTER TABLE deliveries ADD COLUMN coalesce_key TEXT;
ALTER TABLE deliveries ADD COLUMN superseded BIGINT NOT NULL DEFAULT 0;
CREATE INDEX deliveries_coalesce ON deliveries (subscription_id, coalesce_key, sequence)
    WHERE status = 'pending' AND coalesce_key IS NOT NULL;
