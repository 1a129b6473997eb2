//! The retry policy (DESIGN §5) as pure functions: what to do after an attempt.

use std::time::Duration;

/// Delays after the immediate first attempt: 5 s, 30 s, 2 m, 10 m, 30 m, 1 h, 2 h, 4 h, 8 h, 12 h.
pub const DEFAULT_SCHEDULE_SECS: [u64; 10] =
    [5, 30, 120, 600, 1800, 3600, 7200, 14_400, 28_800, 43_200];

/// ±20 % jitter.
pub const JITTER: f64 = 0.2;

/// A receiver's `Retry-After` is honoured between these bounds.
pub const RETRY_AFTER_MIN: Duration = Duration::from_secs(1);
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(3600);

/// What a finished attempt means for its delivery.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Next {
    Delivered,
    /// Try again after this delay.
    Retry(Duration),
    /// The schedule is exhausted.
    Failed,
}

/// Decides the next step after attempt number `attempt` (1-based, counted in this round) of a
/// delivery whose receiver answered `status` (None: no HTTP answer). `jitter` gives a sample
/// from [-1, 1], scaled to ±20 %, taken only for a retry (a success costs no random bytes);
/// `retry_after` is the receiver's header on 429 and 503.
pub fn next_step(
    schedule: &[u64],
    attempt: u32,
    status: Option<u16>,
    retry_after: Option<Duration>,
    jitter: impl FnOnce() -> f64,
) -> Next {
    if status.is_some_and(|s| (200..300).contains(&s)) {
        return Next::Delivered;
    }
    let Some(&base) = schedule.get(attempt.saturating_sub(1) as usize) else {
        return Next::Failed;
    };
    let honour = matches!(status, Some(429 | 503));
    if let (true, Some(after)) = (honour, retry_after) {
        return Next::Retry(after.clamp(RETRY_AFTER_MIN, RETRY_AFTER_MAX));
    }
    // A sample outside [-1, 1] is clamped; NaN (which `clamp` keeps) counts as none (found
    // by the property tests below: it made the delay NaN and `Duration` panic).
    let sample = jitter();
    let sample = if sample.is_nan() {
        0.0
    } else {
        sample.clamp(-1.0, 1.0)
    };
    let factor = 1.0 + JITTER * sample;
    Next::Retry(Duration::from_secs_f64(base as f64 * factor))
}

/// Parses `Retry-After` as delay-seconds (HTTP dates are not honoured).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(
        schedule: &[u64],
        attempt: u32,
        status: Option<u16>,
        after: Option<u64>,
        jitter: f64,
        want: Next,
    ) {
        let got = next_step(
            schedule,
            attempt,
            status,
            after.map(Duration::from_secs),
            || jitter,
        );
        assert_eq!(
            got, want,
            "schedule {schedule:?} attempt {attempt} status {status:?}"
        );
    }

    fn secs(s: f64) -> Next {
        Next::Retry(Duration::from_secs_f64(s))
    }

    #[test]
    fn default_schedule() {
        let d = &DEFAULT_SCHEDULE_SECS;
        check(d, 1, Some(500), None, 0.0, secs(5.0));
        check(d, 2, None, None, 0.0, secs(30.0));
        check(d, 10, Some(404), None, 0.0, secs(43_200.0));
        check(d, 11, Some(500), None, 0.0, Next::Failed);
        check(d, 3, Some(200), None, 0.0, Next::Delivered);
        check(d, 11, Some(204), None, 0.0, Next::Delivered);
        check(d, 1, Some(302), None, 0.0, secs(5.0));
    }

    #[test]
    fn jitter_is_twenty_percent() {
        let d = &DEFAULT_SCHEDULE_SECS;
        check(d, 2, Some(500), None, 1.0, secs(36.0));
        check(d, 2, Some(500), None, -1.0, secs(24.0));
        check(d, 2, Some(500), None, 7.0, secs(36.0));
        check(d, 2, Some(500), None, f64::NAN, secs(30.0));
        for _ in 0..1000 {
            let j = crate::clock::jitter();
            assert!((-1.0..=1.0).contains(&j));
        }
    }

    #[test]
    fn custom_schedule_counts_attempts_after_the_first() {
        // [1, 1]: three attempts in all.
        check(&[1, 1], 1, Some(500), None, 0.0, secs(1.0));
        check(&[1, 1], 2, Some(500), None, 0.0, secs(1.0));
        check(&[1, 1], 3, Some(500), None, 0.0, Next::Failed);
        check(&[], 1, Some(500), None, 0.0, Next::Failed);
    }

    #[test]
    fn retry_after_within_bounds() {
        let d = &DEFAULT_SCHEDULE_SECS;
        check(d, 1, Some(429), Some(60), 0.5, secs(60.0));
        check(d, 1, Some(503), Some(0), 0.0, secs(1.0));
        check(d, 1, Some(503), Some(86_400), 0.0, secs(3600.0));
        check(d, 1, Some(500), Some(60), 0.0, secs(5.0));
        check(d, 11, Some(429), Some(60), 0.0, Next::Failed);
        assert_eq!(parse_retry_after(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    /// Properties over any schedule a subscription may have (up to 50 delays of at most a
    /// week), any answer and any jitter sample, NaN and infinities included.
    mod properties {
        use proptest::prelude::*;

        use super::*;

        fn schedule() -> impl Strategy<Value = Vec<u64>> {
            prop::collection::vec(0u64..=604_800, 0..=50)
        }

        fn answer() -> impl Strategy<Value = Option<u16>> {
            prop::option::of(prop_oneof![100u16..600, Just(429), Just(503), Just(200)])
        }

        proptest! {
            /// A delivery that always fails is attempted exactly `len + 1` times (the first at
            /// once, then one per delay) and then fails; a 2xx ends it at any attempt.
            #[test]
            fn a_failing_delivery_gets_one_attempt_per_delay_plus_the_first(
                schedule in schedule(),
                status in prop::option::of(300u16..600),
                jitter in prop::num::f64::ANY,
            ) {
                let mut attempts = 1;
                while let Next::Retry(_) = next_step(&schedule, attempts, status, None, || jitter) {
                    attempts += 1;
                    prop_assert!(attempts as usize <= schedule.len() + 1);
                }
                prop_assert_eq!(attempts as usize, schedule.len() + 1);
                prop_assert_eq!(
                    next_step(&schedule, attempts, Some(204), None, || jitter),
                    Next::Delivered
                );
            }

            /// Every delay is the schedule's within ±20 %, or the receiver's `Retry-After`
            /// (only on 429 and 503) within its bounds; it never panics.
            #[test]
            fn delays_stay_within_their_bounds(
                schedule in schedule(),
                attempt in 0u32..60,
                status in answer(),
                retry_after in prop::option::of(0u64..10_000_000),
                jitter in prop::num::f64::ANY,
            ) {
                let after = retry_after.map(Duration::from_secs);
                let next = next_step(&schedule, attempt, status, after, || jitter);
                let index = attempt.saturating_sub(1) as usize;
                match next {
                    Next::Delivered => {
                        prop_assert!(status.is_some_and(|s| (200..300).contains(&s)))
                    }
                    Next::Failed => prop_assert!(index >= schedule.len()),
                    Next::Retry(delay) => {
                        let base = schedule[index] as f64;
                        match (status, after) {
                            (Some(429 | 503), Some(_)) => prop_assert!(
                                (RETRY_AFTER_MIN..=RETRY_AFTER_MAX).contains(&delay)
                            ),
                            _ => {
                                let secs = delay.as_secs_f64();
                                prop_assert!(secs >= base * 0.8 - 1e-6, "{secs} < {base}");
                                prop_assert!(secs <= base * 1.2 + 1e-6, "{secs} > {base}");
                            }
                        }
                    }
                }
            }
        }
    }
}
