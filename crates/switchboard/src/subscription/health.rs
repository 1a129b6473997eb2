//! Subscription health: how a run of failed attempts is counted, when it disables the
//! subscription, and which System events tell the tenant's monitors (DESIGN §5, §11). Pure: the
//! store reads the health it holds, asks [`Policy`], and records the verdict — and stores the
//! event it names — in the same transaction as the attempts.

use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::event::{Event, Timestamp, catalog};

/// SubscriptionFailing is sent once this many attempts in a row have failed.
pub const FAILING_AFTER: i64 = 5;

/// What is kept per subscription: since when every attempt failed, and how many did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// Unix ms of the first failure since the last success; None while healthy.
    pub failing_since: Option<i64>,
    pub failures: i64,
    /// SubscriptionFailing was sent for this failing period.
    pub failing_sent: bool,
}

/// One finished attempt, as health sees it.
#[derive(Clone, Copy, Debug)]
pub struct Attempt<'a> {
    /// When it started, unix ms.
    pub at: i64,
    pub succeeded: bool,
    /// The receiver asked to be disabled (410 Gone), with this reason.
    pub gone: Option<&'a str>,
    /// Why it failed.
    pub error: Option<&'a str>,
}

/// What the tenant's monitoring subscriptions are told (System events 3, 4, 5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// The last [`FAILING_AFTER`] attempts failed: since when, and the last error.
    Failing {
        since: i64,
        last_error: String,
    },
    Disabled {
        reason: String,
    },
    /// The first success after a Failing was sent.
    Recovered,
    /// Its oldest pending delivery passed its lag budget (DESIGN §16): how old, and how many
    /// wait.
    Lagging {
        oldest_pending_age_secs: i64,
        pending: i64,
    },
    /// Back under half its budget: how long the episode lasted.
    CaughtUp {
        lagged_secs: i64,
    },
}

impl Notice {
    /// The System event telling of `subscription`, created at `now_ms`.
    pub fn event(&self, subscription: &str, now_ms: i64) -> Event {
        let mut fields = Map::new();
        fields.insert("SubscriptionId".into(), Value::String(subscription.into()));
        let code = match self {
            Notice::Failing { since, last_error } => {
                let since = Timestamp::from_unix_ms(*since).to_string();
                fields.insert("FailingSince".into(), Value::String(since));
                fields.insert("LastError".into(), Value::String(last_error.clone()));
                catalog::system::SUBSCRIPTION_FAILING
            }
            Notice::Disabled { reason } => {
                fields.insert("Reason".into(), Value::String(reason.clone()));
                catalog::system::SUBSCRIPTION_DISABLED
            }
            Notice::Recovered => catalog::system::SUBSCRIPTION_RECOVERED,
            Notice::Lagging {
                oldest_pending_age_secs,
                pending,
            } => {
                let age = Value::from(*oldest_pending_age_secs);
                fields.insert("OldestPendingAgeSecs".into(), age);
                fields.insert("Pending".into(), Value::from(*pending));
                catalog::system::SUBSCRIPTION_LAGGING
            }
            Notice::CaughtUp { lagged_secs } => {
                fields.insert("LaggedSecs".into(), Value::from(*lagged_secs));
                catalog::system::SUBSCRIPTION_CAUGHT_UP
            }
        };
        Event::system(code, fields, now_ms)
    }
}

/// What the store records after a turn's attempts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub health: Health,
    /// Disable the subscription, with this reason.
    pub disable: Option<String>,
    /// Tell the tenant's monitors, in this order.
    pub notices: Vec<Notice>,
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
        let mut notices = Vec::new();
        for a in &sorted {
            if a.succeeded {
                if health.failing_sent {
                    notices.push(Notice::Recovered);
                }
                health = Health::default();
            } else {
                health.failures += 1;
                let since = *health.failing_since.get_or_insert(a.at);
                if health.failures >= FAILING_AFTER && !health.failing_sent {
                    health.failing_sent = true;
                    let last_error = a.error.unwrap_or("the attempt failed").to_string();
                    notices.push(Notice::Failing { since, last_error });
                }
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
        if let Some(reason) = &disable {
            notices.push(Notice::Disabled {
                reason: reason.clone(),
            });
        }
        Verdict {
            health,
            disable,
            notices,
        }
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
            error: Some("HTTP 500"),
        }
    }

    fn ok(at: i64) -> Attempt<'static> {
        Attempt {
            at,
            succeeded: true,
            gone: None,
            error: None,
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
            failing_sent: false,
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
            failing_sent: true,
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
            error: Some("HTTP 410 Gone"),
        };
        let v = Policy::default().judge(Health::default(), &[gone], 1);
        assert_eq!(v.disable.as_deref(), Some("the endpoint answered 410 Gone"));
        assert_eq!(
            v.notices,
            [Notice::Disabled {
                reason: "the endpoint answered 410 Gone".into()
            }]
        );
    }

    #[test]
    fn failing_is_told_once_per_period_and_recovery_once_after_it() {
        let p = Policy::default();
        let four = p.judge(Health::default(), &[fail(1), fail(2), fail(3), fail(4)], 4);
        assert!(four.notices.is_empty(), "four failures are not yet failing");
        let five = p.judge(four.health, &[fail(5)], 5);
        assert_eq!(
            five.notices,
            [Notice::Failing {
                since: 1,
                last_error: "HTTP 500".into()
            }]
        );
        let more = p.judge(five.health, &[fail(6), fail(7)], 7);
        assert!(more.notices.is_empty(), "once per failing period");
        let back = p.judge(more.health, &[ok(8), ok(9)], 9);
        assert_eq!(back.notices, [Notice::Recovered], "once");
        assert_eq!(back.health, Health::default());
        // A success that follows failures never told of tells nothing.
        let quiet = p.judge(Health::default(), &[fail(1), ok(2)], 2);
        assert!(quiet.notices.is_empty());
    }

    #[test]
    fn notices_are_system_events_with_their_fields() {
        let e = Notice::Failing {
            since: 0,
            last_error: "HTTP 500".into(),
        }
        .event("sub_1", 1_000);
        assert_eq!((e.category, e.code), (0, 3));
        assert_eq!(e.fields["SubscriptionId"], "sub_1");
        assert_eq!(e.fields["FailingSince"], "19700101000000");
        assert_eq!(e.fields["LastError"], "HTTP 500");
        let e = Notice::Recovered.event("sub_1", 0);
        assert_eq!((e.code, e.fields.len()), (5, 1));
    }
}
