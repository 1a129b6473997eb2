//! Time as the writer, the dispatcher and attempts see it: the system clock in production, a
//! clock the test moves by hand in tests of time-dependent behaviour (retry delays, `Retry-After`, rate limits, leases),
//! so they step through hours without waiting for them.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// Unix milliseconds, from the system or from a hand-moved counter; cheap to clone (clones of a
/// manual clock move together).
#[derive(Clone, Debug, Default)]
pub struct Clock(Option<Arc<AtomicI64>>);

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Clock(None)
    }

    /// A clock that shows `start_ms` until moved with [`Clock::advance`].
    pub fn manual(start_ms: i64) -> Self {
        Clock(Some(Arc::new(AtomicI64::new(start_ms))))
    }

    /// Now, in unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        match &self.0 {
            None => now_millis(),
            Some(ms) => ms.load(Ordering::SeqCst),
        }
    }

    /// Moves a manual clock forward; the system clock cannot be moved.
    pub fn advance(&self, by: Duration) {
        match &self.0 {
            None => panic!("the system clock cannot be moved"),
            Some(ms) => {
                ms.fetch_add(by.as_millis() as i64, Ordering::SeqCst);
            }
        }
    }
}

/// The system clock's now, in unix milliseconds.
pub fn now_millis() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// A uniform sample from [-1, 1], from the operating system's random source.
pub fn jitter() -> f64 {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).expect("the operating system's random source works");
    f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX) * 2.0 - 1.0
}

/// Waits after consecutive failures: `first`, doubling up to `max`, each lengthened by up to a
/// quarter at random so that nodes failing together do not retry in step.
#[derive(Clone, Debug)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub const fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max,
            failures: 0,
        }
    }

    /// One more failure: how long to wait before the next try.
    pub fn failed(&mut self) -> Duration {
        let base = self
            .first
            .saturating_mul(1 << self.failures.min(16))
            .min(self.max);
        self.failures = self.failures.saturating_add(1);
        base.mul_f64(1.0 + 0.25 * jitter().abs())
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// A success: the next failure waits `first` again.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_bound_with_a_quarter_of_jitter_and_starts_over() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        for base in [100, 200, 350, 350] {
            let wait = b.failed().as_millis() as u64;
            assert!((base..=base * 5 / 4).contains(&wait), "{wait} for {base}");
        }
        assert_eq!(b.failures(), 4);
        b.succeeded();
        assert!(b.failed() <= Duration::from_millis(125));
        let j = jitter();
        assert!((-1.0..=1.0).contains(&j));
    }

    #[test]
    fn a_manual_clock_moves_only_by_hand_and_its_clones_with_it() {
        let clock = Clock::manual(1_000);
        let other = clock.clone();
        assert_eq!(clock.now_ms(), 1_000);
        other.advance(Duration::from_secs(2));
        assert_eq!(clock.now_ms(), 3_000);
        let system = Clock::system().now_ms();
        assert!(system > 1_700_000_000_000, "{system}");
    }
}
