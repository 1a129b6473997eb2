//! Per-tenant ingest limits (DESIGN §11): a token bucket per tenant on this node, holding a
//! second's worth of its `ingest_rate_limit_per_sec`; the rate is read from the tenant's row at
//! most once a second (and at once after a `PATCH` on this node). On PostgreSQL each node
//! enforces the limit on what it receives.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::store::{Store, StoreError};

/// How long a tenant's rate is trusted before it is read again.
const REFRESH: Duration = Duration::from_secs(1);
/// Most tenants remembered; past this the memory starts over.
const MAX_TENANTS: usize = 100_000;

#[derive(Default)]
pub struct TenantLimits(Mutex<HashMap<String, Bucket>>);

struct Bucket {
    /// Events per second; None: no limit.
    rate: Option<f64>,
    read_at: Instant,
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    /// [`Bucket::take`] of `n()` tokens, counted only when there is a limit (none: nothing
    /// to take).
    fn take_counted(&mut self, n: impl FnOnce() -> usize, now: Instant) -> Result<(), u64> {
        match (self.rate, self.rate.map(|_| n())) {
            (Some(_), Some(n)) if n > 0 => self.take(n as f64, now),
            _ => Ok(()),
        }
    }

    /// Takes `n` tokens at `now`, or says how many seconds until they are there. A full bucket
    /// lets a batch larger than the rate through, into debt that later requests wait out.
    fn take(&mut self, n: f64, now: Instant) -> Result<(), u64> {
        let Some(rate) = self.rate else { return Ok(()) };
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.refilled = now;
        if self.tokens >= n || self.tokens >= rate {
            self.tokens -= n;
            Ok(())
        } else {
            Err(((n.min(rate) - self.tokens) / rate).ceil().max(1.0) as u64)
        }
    }
}

impl TenantLimits {
    /// Takes `n()` events' worth of `tenant`'s limit; `Ok(Err(secs))` when over it, with the
    /// seconds to wait. `n` is called only when the tenant has a limit (counting a batch costs a
    /// parse, which unlimited tenants are spared).
    pub async fn take(
        &self,
        store: &Store,
        tenant: &str,
        n: impl FnOnce() -> usize,
    ) -> Result<Result<(), u64>, StoreError> {
        let now = Instant::now();
        if let Some(b) = self.lock().get_mut(tenant)
            && now.duration_since(b.read_at) < REFRESH
        {
            return Ok(b.take_counted(n, now));
        }
        // A missing tenant has no limit: the ingest answers 404 for it. A database that cannot
        // be read keeps the rate last known: the ingest itself says whether it can be written.
        let rate = match store.get_tenant(tenant).await {
            Ok(t) => t
                .and_then(|t| t.ingest_rate_limit_per_sec)
                .map(|r| r as f64),
            Err(e) => match self.lock().get_mut(tenant) {
                Some(b) => return Ok(b.take_counted(n, now)),
                None if matches!(e, StoreError::Unavailable(_)) => return Ok(Ok(())),
                None => return Err(e),
            },
        };
        let mut buckets = self.lock();
        if buckets.len() >= MAX_TENANTS {
            buckets.clear();
        }
        let bucket = buckets.entry(tenant.to_string()).or_insert(Bucket {
            rate,
            read_at: now,
            tokens: rate.unwrap_or(0.0),
            refilled: now,
        });
        if bucket.rate != rate {
            bucket.tokens = rate.unwrap_or(0.0);
            bucket.refilled = now;
        }
        bucket.rate = rate;
        bucket.read_at = now;
        Ok(bucket.take_counted(n, now))
    }

    /// Reads `tenant`'s rate again on its next request.
    pub fn forget(&self, tenant: &str) {
        self.lock().remove(tenant);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Bucket>> {
        // Buckets are only counters: one left half-updated by a panic is still usable.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_of_burst_then_the_rate_and_a_large_batch_into_debt() {
        let t0 = Instant::now();
        let mut b = Bucket {
            rate: Some(50.0),
            read_at: t0,
            tokens: 50.0,
            refilled: t0,
        };
        for _ in 0..50 {
            assert_eq!(b.take(1.0, t0), Ok(()));
        }
        assert_eq!(b.take(1.0, t0), Err(1), "over the limit");
        let later = t0 + Duration::from_millis(100);
        assert_eq!(b.take(5.0, later), Ok(()), "5 tokens back in 100 ms");
        assert_eq!(b.take(1.0, later), Err(1));
        // Full again: a batch of 120 passes, and the next requests wait about 2.4 s.
        let full = later + Duration::from_secs(2);
        assert_eq!(b.take(120.0, full), Ok(()));
        assert_eq!(b.take(1.0, full), Err(2));
        let none = Bucket { rate: None, ..b };
        let mut none = none;
        assert_eq!(none.take(1e9, full), Ok(()));
    }
}
