//! Subscription health: how a run of failed attempts is counted, and when it disables the
//! subscription (DESIGN §5, §11). Pure: the store reads the health it holds, asks [`Policy`],
//! and records the verdict in the same transaction as the attempts.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// What is kept per subscription: since when every attempt failed, and how many did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// Unix ms of the first failure since the last success; None while healthy.
    pub failing_since: Option<i64>,
    pub failures: i64,
}

/// One finished attempt, as health sees it.
#[derive(Clone, Copy, Debug)]
pub struct Attempt<'a> {
    /// When it started, unix ms.
    pub at: i64,
    pub succeeded: bool,
    /// The receiver asked to be disabled (410 Gone), with this reason.
    pub gone: Option<&'a str>,
}

/// What the store records after a turn's attempts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub health: Health,
    /// Disable the subscription, with this reason.
    pub disable: Option<String>,
}

/// When failures disable a subscription: after failing everything for `disable_after_ms` with at
/// least `min_attempts` attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub disable_after_ms: i64,
    pub min_attempts: i64,
}

impl Default for Policy {
    /// 72 hours and 10 attempts (DESIGN §5).
    fn default() -> Self {
        Policy {
            disable_after_ms: 72 * 3600 * 1000,
            min_attempts: 10,
        }
    }
}

impl Policy {
    /// The health after `attempts` (any order), starting from `before`, at `now` (unix ms).
    pub fn judge(&self, before: Health, attempts: &[Attempt<'_>], now: i64) -> Verdict {
        let mut sorted: Vec<&Attempt> = attempts.iter().collect();
        sorted.sort_by_key(|a| a.at);
        let mut health = before;
        for a in &sorted {
            if a.succeeded {
                health = Health::default();
            } else {
                health.failures += 1;
                health.failing_since.get_or_insert(a.at);
            }
        }
        let disable = if let Some(reason) = sorted.iter().find_map(|a| a.gone) {
            Some(reason.to_string())
        } else {
            match health.failing_since {
                Some(since)
                    if health.failures >= self.min_attempts
                        && now - since >= self.disable_after_ms =>
                {
                    Some(format!("failing since {}", rfc3339(since)))
                }
                _ => None,
            }
        };
        Verdict { health, disable }
    }
}

fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3600 * 1000;

    fn fail(at: i64) -> Attempt<'static> {
        Attempt {
            at,
            succeeded: false,
            gone: None,
        }
    }

    fn ok(at: i64) -> Attempt<'static> {
        Attempt {
            at,
            succeeded: true,
            gone: None,
        }
    }

    fn check(before: Health, attempts: &[Attempt], now: i64, health: Health, disabled: bool) {
        let v = Policy::default().judge(before, attempts, now);
        assert_eq!(v.health, health, "{attempts:?}");
        assert_eq!(
            v.disable.is_some(),
            disabled,
            "{attempts:?}: {:?}",
            v.disable
        );
    }

    #[test]
    fn failures_count_from_the_first_and_a_success_starts_over() {
        let healthy = Health::default();
        let failing = |since, failures| Health {
            failing_since: Some(since),
            failures,
        };
        check(healthy, &[fail(5), fail(7)], 8, failing(5, 2), false);
        check(failing(1, 3), &[fail(5)], 8, failing(1, 4), false);
        check(failing(1, 3), &[ok(5)], 8, healthy, false);
        // Order is by time, not by position: the success came last.
        check(failing(1, 3), &[ok(9), fail(5)], 10, healthy, false);
        check(failing(1, 3), &[ok(5), fail(9)], 10, failing(9, 1), false);
    }

    #[test]
    fn disabled_after_72_hours_with_10_attempts() {
        let long = Health {
            failing_since: Some(0),
            failures: 9,
        };
        let at = 72 * HOUR;
        check(
            long,
            &[fail(at)],
            at,
            Health {
                failures: 10,
                ..long
            },
            true,
        );
        // Nine attempts are not enough, however long.
        check(
            Health {
                failures: 8,
                ..long
            },
            &[fail(at)],
            at,
            Health {
                failures: 9,
                ..long
            },
            false,
        );
        // Ten attempts within 72 hours are not either.
        check(
            long,
            &[fail(at - 1)],
            at - 1,
            Health {
                failures: 10,
                ..long
            },
            false,
        );
        let v = Policy::default().judge(long, &[fail(at)], at);
        assert_eq!(
            v.disable.as_deref(),
            Some("failing since 1970-01-01T00:00:00Z")
        );
    }

    #[test]
    fn gone_disables_at_once_with_its_reason() {
        let gone = Attempt {
            at: 1,
            succeeded: false,
            gone: Some("the endpoint answered 410 Gone"),
        };
        let v = Policy::default().judge(Health::default(), &[gone], 1);
        assert_eq!(v.disable.as_deref(), Some("the endpoint answered 410 Gone"));
    }
}
