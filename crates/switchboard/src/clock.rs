//! Time as the dispatcher sees it: the system clock in production, a clock the test moves by
//! hand in tests of time-dependent behaviour (retry delays, `Retry-After`, rate limits, leases),
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
            None => crate::store::now_millis(),
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

#[cfg(test)]
mod tests {
    use super::*;

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
