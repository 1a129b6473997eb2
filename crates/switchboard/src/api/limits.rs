//! Per-tenant limits on this node.
//!
//! - Ingest (DESIGN §11): a token bucket per tenant, holding a second's worth of its
//!   `ingest_rate_limit_per_sec`; the rate is read from the tenant's row at most once a second
//!   (and at once after a `PATCH` on this node). On PostgreSQL each node enforces the limit on
//!   what it receives.
//! - Expensive reads (DESIGN §23): turns per tenant ([`Reads`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;
use crate::store::{Store, StoreError};

/// How long a read waits for its tenant's turn before it is refused.
pub const READ_WAIT: Duration = Duration::from_secs(10);

/// Fairness between tenants on the read pool: each tenant runs at most `per_tenant` expensive
/// reads at once (log pages, agent rebuilds); more wait, in order, for up to `wait`, then get
/// `429` naming `max_reads_per_tenant`. The writer has a connection of its own, so reads never
/// hold up ingest; this keeps one tenant's reads from holding every read connection.
pub struct Reads {
    per_tenant: usize,
    wait: Duration,
    tenants: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// A tenant's turn at an expensive read; the next waiting read goes when it is dropped.
pub struct ReadTurn(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

impl Reads {
    /// `per_tenant` 0: no limit.
    pub fn new(per_tenant: u32, wait: Duration) -> Self {
        Reads {
            per_tenant: per_tenant as usize,
            wait,
            tenants: Mutex::default(),
        }
    }

    /// Waits for `tenant`'s turn, or says it waited too long.
    pub async fn enter(&self, tenant: &str) -> Result<ReadTurn, ApiError> {
        if self.per_tenant == 0 {
            return Ok(ReadTurn(None));
        }
        let turns = {
            let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
            if tenants.len() >= MAX_TENANTS {
                // Forget the tenants with no read running or waiting.
                tenants.retain(|_, s| Arc::strong_count(s) > 1);
            }
            tenants
                .entry(tenant.to_string())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_tenant)))
                .clone()
        };
        match tokio::time::timeout(self.wait, turns.acquire_owned()).await {
            Ok(Ok(permit)) => Ok(ReadTurn(Some(permit))),
            _ => Err(ApiError::LimitReached {
                limit: "max_reads_per_tenant",
                detail: format!(
                    "the tenant runs {} log or history reads at once already, the most \
                     max_reads_per_tenant allows, and none ended within {} s; try again",
                    self.per_tenant,
                    self.wait.as_secs()
                ),
            }),
        }
    }
}

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
        let n = match self.cached(tenant, now, n) {
            Ok(answer) => return Ok(answer),
            Err(n) => n,
        };
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

    /// The answer from `tenant`'s bucket when its rate need not be read now: it was read
    /// within [`REFRESH`], or another request is reading it again. The first request to find
    /// it stale claims the read by moving `read_at` to `now`, and the others keep the rate
    /// last read meanwhile: one read a tenant a refresh, not one for every request that
    /// arrives while it is under way (a tenant posting from a thousand connections read its
    /// rate a thousand times a second). `Err(n)`: this request reads it; a tenant not seen
    /// yet is read by each of its first requests.
    fn cached<N: FnOnce() -> usize>(
        &self,
        tenant: &str,
        now: Instant,
        n: N,
    ) -> Result<Result<(), u64>, N> {
        match self.lock().get_mut(tenant) {
            Some(b) if now.saturating_duration_since(b.read_at) < REFRESH => {
                Ok(b.take_counted(n, now))
            }
            Some(b) => {
                b.read_at = now;
                Err(n)
            }
            None => Err(n),
        }
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

    /// A tenant over its turns waits, in order, and is refused after the wait; another tenant
    /// goes at once meanwhile.
    #[tokio::test(start_paused = true)]
    async fn a_tenant_over_its_reads_waits_its_turn_while_another_goes_at_once() {
        let reads = Arc::new(Reads::new(2, Duration::from_secs(10)));
        let t0 = tokio::time::Instant::now();
        let a1 = reads.enter("a").await.unwrap();
        let _a2 = reads.enter("a").await.unwrap();
        let _b = reads.enter("b").await.unwrap();
        assert_eq!(t0.elapsed(), Duration::ZERO, "within the limit: at once");

        let refused = reads
            .enter("a")
            .await
            .err()
            .expect("a third read of a waits, then is refused");
        assert_eq!(t0.elapsed(), Duration::from_secs(10));
        assert!(matches!(
            refused,
            ApiError::LimitReached {
                limit: "max_reads_per_tenant",
                ..
            }
        ));

        // A waiting read goes as soon as one ends.
        let waiting = tokio::spawn({
            let reads = reads.clone();
            async move { reads.enter("a").await.map(|_| tokio::time::Instant::now()) }
        });
        tokio::time::sleep(Duration::from_secs(3)).await;
        let ended = tokio::time::Instant::now();
        drop(a1);
        let entered = waiting.await.unwrap().expect("its turn");
        assert_eq!(entered, ended);

        // No limit: nothing waits.
        let free = Reads::new(0, Duration::from_secs(10));
        let held: Vec<_> = enter_many(&free, 50).await;
        assert_eq!(held.len(), 50);
        assert_eq!(tokio::time::Instant::now(), ended);
    }

    /// `n` turns of tenant `a`, one after the other.
    async fn enter_many(reads: &Reads, n: usize) -> Vec<ReadTurn> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(reads.enter("a").await.unwrap());
        }
        out
    }

    /// A stale rate is read again by one request; the others arriving meanwhile keep the rate
    /// last read rather than each reading it too.
    #[test]
    fn a_stale_rate_is_read_again_by_one_request_not_by_every_one() {
        let limits = TenantLimits::default();
        let t0 = Instant::now();
        let must_read = |at: Instant| limits.cached("a", at, || 1).is_err();
        assert!(must_read(t0), "a tenant not seen yet is read");
        assert!(must_read(t0), "by each of its first requests");
        limits.lock().insert(
            "a".into(),
            Bucket {
                rate: Some(10.0),
                read_at: t0,
                tokens: 10.0,
                refilled: t0,
            },
        );
        assert!(!must_read(t0 + REFRESH / 2), "fresh: the bucket answers");
        let stale = t0 + REFRESH;
        assert!(
            must_read(stale),
            "the first request after the refresh reads it"
        );
        let counted = std::cell::Cell::new(0);
        for _ in 0..50 {
            let answer = limits.cached("a", stale, || {
                counted.set(counted.get() + 1);
                1
            });
            assert!(answer.is_ok(), "the others use the rate last read");
        }
        assert_eq!(counted.get(), 50, "and are counted against it");
        assert!(
            matches!(limits.cached("a", stale, || 1), Ok(Err(1))),
            "over the limit of 10"
        );
        assert!(
            must_read(stale + REFRESH),
            "read again a refresh after the claim"
        );
        limits.forget("a");
        assert!(
            must_read(stale + REFRESH),
            "forgotten: read on the next request"
        );
    }

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
