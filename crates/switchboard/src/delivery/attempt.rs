//! One attempt, whoever makes it (the dispatcher, the API's Test action): the message signed
//! for the subscription, handed to its [`Destination`], and the answer turned into an
//! [`Outcome`] by the outcome policy — logged and counted the same way every time.
//!
//! A destination only carries a message and says what became of it; what that means for the
//! delivery (retry when, fail, disable) is decided here, once for every kind of destination.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::Instrument;

use super::retry::{self, Next};
use super::signing::{self, Secret};
use crate::clock::Clock;
use crate::otel;
use crate::redact::Redactor;
use crate::store::{Claimed, NextState, Outcome, SubscriptionRecord};

/// What one attempt gave.
#[derive(Clone, Debug, Default)]
pub struct AttemptResult {
    /// Unix ms.
    pub started_at: i64,
    pub duration_ms: i64,
    pub status: Option<u16>,
    pub retry_after: Option<Duration>,
    pub error: Option<String>,
    pub response_body: Option<String>,
    /// The destination asks for the next attempt at once (see [`Answer::again_now`]).
    pub again_now: bool,
}

/// What a destination answers about one message: the timing is the attempt's business.
#[derive(Clone, Debug, Default)]
pub struct Answer {
    /// The receiver's status, where the destination has one (HTTP).
    pub status: Option<u16>,
    pub retry_after: Option<Duration>,
    /// Why the message was not taken; `None` means it was.
    pub error: Option<String>,
    /// The start of the receiver's answer, kept in the attempt log.
    pub response_body: Option<String>,
    /// A failure the next attempt may well not meet, so it is made at once rather than on the
    /// retry schedule: a 401 to a cached OAuth 2 token, now dropped (DESIGN §20).
    pub again_now: bool,
}

impl Answer {
    pub fn failed(error: impl Into<String>) -> Self {
        Answer {
            error: Some(error.into()),
            ..Answer::default()
        }
    }
}

/// One delivery made ready to go: the stored event and the headers every destination carries
/// (Standard Webhooks' three, and Switchboard's own).
pub struct Message {
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

impl Message {
    /// `c` signed with `target`'s live secrets at `now_ms`.
    fn new(target: &Target, c: &Claimed, now_ms: i64) -> Self {
        let body = target.body(&c.body);
        let timestamp = now_ms / 1000;
        let signature =
            signing::signature_header(target.live_secrets(now_ms), &c.event_id, timestamp, &body);
        let mut headers = vec![
            ("webhook-id", c.event_id.clone()),
            ("webhook-timestamp", timestamp.to_string()),
            ("webhook-signature", signature),
            ("switchboard-sequence", c.sequence.to_string()),
            ("switchboard-attempt", c.attempt.to_string()),
        ];
        if c.superseded > 0 {
            headers.push(("switchboard-superseded", c.superseded.to_string()));
        }
        headers.extend(target.scheme_header(now_ms, &body));
        Message { headers, body }
    }
}

impl Message {
    /// `members` (in sequence order, at least one) as one batch: a JSON array of their events,
    /// `webhook-id` `batch_<delivery id of the first>`, signed once; `switchboard-sequence` and
    /// `switchboard-attempt` are the first member's, `switchboard-batch-size` their number.
    fn batch(target: &Target, members: &[Claimed], now_ms: i64) -> Self {
        let first = &members[0];
        let mut body =
            Vec::with_capacity(members.iter().map(|c| c.body.len() + 1).sum::<usize>() + 2);
        body.push(b'[');
        for (i, c) in members.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&target.body(&c.body));
        }
        body.push(b']');
        let id = format!("batch_{}", first.delivery_id);
        let timestamp = now_ms / 1000;
        let signature =
            signing::signature_header(target.live_secrets(now_ms), &id, timestamp, &body);
        let mut headers = vec![
            ("webhook-id", id),
            ("webhook-timestamp", timestamp.to_string()),
            ("webhook-signature", signature),
            ("switchboard-sequence", first.sequence.to_string()),
            ("switchboard-attempt", first.attempt.to_string()),
            ("switchboard-batch-size", members.len().to_string()),
        ];
        headers.extend(target.scheme_header(now_ms, &body));
        Message {
            headers,
            body: Bytes::from(body),
        }
    }
}

/// A future a destination returns; boxed so that destinations of every kind fit one `Target`.
pub type Sending<'a> = Pin<Box<dyn Future<Output = Answer> + Send + 'a>>;

/// Where a subscription's deliveries go: HTTP today (`sender::Http`). One per subscription,
/// built when it changes and reused by every attempt, so a destination may keep a connection.
pub trait Destination: Send + Sync {
    /// Carries one message; never an error: the answer says what became of it.
    fn send<'a>(&'a self, message: &'a Message) -> Sending<'a>;
}

/// A subscription made ready to send to, once per change of it rather than per attempt: its
/// destination built, its signing secrets decoded.
pub struct Target {
    pub sub: SubscriptionRecord,
    destination: Box<dyn Destination>,
    /// Each secret, with when it stops signing (unix ms; None: never).
    secrets: Vec<(Secret, Option<i64>)>,
    /// Its `redact`, when it has one (DESIGN §19).
    redactor: Option<Redactor>,
}

impl Target {
    pub fn new(
        sub: SubscriptionRecord,
        destination: Box<dyn Destination>,
        redactor: Option<Redactor>,
    ) -> Self {
        let current = sub.spec.secret.as_deref().map(|s| (s, None));
        let old = match (&sub.old_secret, sub.old_secret_expires_at) {
            (Some(s), Some(until)) => Some((s.as_str(), Some(until))),
            _ => None,
        };
        let secrets = current
            .into_iter()
            .chain(old)
            .filter_map(|(s, until)| Some((Secret::parse(s).ok()?, until)))
            .collect();
        Target {
            sub,
            destination,
            secrets,
            redactor,
        }
    }

    /// What the receiver is sent of a stored event's body: as stored, or redacted.
    fn body(&self, stored: &Bytes) -> Bytes {
        match self.redactor.as_ref().and_then(|r| r.apply(stored)) {
            Some(redacted) => Bytes::from(redacted),
            None => stored.clone(),
        }
    }

    /// The header the subscription's `signature_scheme` adds to Standard Webhooks' (`github`,
    /// `stripe`), signed at `now_ms`.
    fn scheme_header(&self, now_ms: i64, body: &[u8]) -> Option<(&'static str, String)> {
        let scheme = self.sub.spec.signature_scheme;
        signing::scheme_headers(scheme, self.live_secrets(now_ms), now_ms / 1000, body)
    }

    /// The secrets that sign at `now_ms`: the current one, and the previous one during its grace.
    pub fn live_secrets(&self, now_ms: i64) -> impl Iterator<Item = &Secret> {
        self.secrets
            .iter()
            .filter(move |(_, until)| until.is_none_or(|t| t > now_ms))
            .map(|(s, _)| s)
    }
}

impl Target {
    /// Its destination's type, as metrics label it.
    fn kind(&self) -> &'static str {
        self.sub
            .spec
            .destination
            .as_ref()
            .map_or("http", |d| d.kind())
    }

    /// Sends `message` (made at the attempt's start, unix ms by `clock`) through the
    /// destination, timed, as a `delivery.attempt` span in the trace of `lead` (the delivery,
    /// or a batch's first) whose context the message carries (DESIGN §21); logs a refusal or
    /// a failure of `what` (an event id, or a batch's).
    async fn send(
        &self,
        clock: &Clock,
        lead: &Claimed,
        what: &str,
        message: impl FnOnce(i64) -> Message,
    ) -> AttemptResult {
        let (span, trace) = otel::attempt_span(
            lead.trace.as_deref(),
            &self.sub.tenant_id,
            &self.sub.id,
            what,
            &lead.event_id,
            lead.attempt,
        );
        let started = Instant::now();
        let started_at = clock.now_ms();
        let mut message = message(started_at);
        if let Some(trace) = &trace {
            message.headers.extend(trace.headers());
        }
        let answer = self
            .destination
            .send(&message)
            .instrument(span.clone())
            .await;
        otel::attempt_status(&span, answer.status);
        let result = AttemptResult {
            started_at,
            duration_ms: started.elapsed().as_millis() as i64,
            status: answer.status,
            retry_after: answer.retry_after,
            error: answer.error,
            response_body: answer.response_body,
            again_now: answer.again_now,
        };
        let subscription_id = &self.sub.id;
        if let Some(status) = result.status.filter(|s| !(200..300).contains(s)) {
            tracing::warn!(%subscription_id, event_id = %what, status, "receiver refused a delivery");
        } else if let Some(err) = &result.error {
            tracing::warn!(%subscription_id, event_id = %what, error = %err, "delivery attempt failed");
        }
        result
    }
}

/// Makes one attempt of `c` to `target`, stamped by `clock`: sends it, logs a refusal or a
/// failure, decides what it means and counts it in the metrics. The outcome is the caller's to
/// record.
pub async fn attempt(target: &Target, c: &Claimed, clock: &Clock) -> Outcome {
    let result = target
        .send(clock, c, &c.event_id, |now| Message::new(target, c, now))
        .await;
    let outcome = decide(&target.sub, c, result);
    record_metrics(c, &outcome, target.kind());
    outcome
}

/// Makes one attempt of a batch (`members` in sequence order, at least one) to `target`: one
/// request, one outcome for all. Every member gets the first's verdict (so they come due
/// again together); only the first's outcome counts for the breaker, the others are marked
/// `batched`.
pub async fn attempt_batch(target: &Target, members: &[Claimed], clock: &Clock) -> Vec<Outcome> {
    let what = format!("batch_{}", members[0].delivery_id);
    let result = target
        .send(clock, &members[0], &what, |now| {
            Message::batch(target, members, now)
        })
        .await;
    let lead = decide(&target.sub, &members[0], result);
    let mut outcomes = Vec::with_capacity(members.len());
    for (i, c) in members.iter().enumerate() {
        let mut o = lead.clone();
        o.delivery_id = c.delivery_id;
        o.attempt = c.attempt;
        o.round_attempt = c.round_attempt;
        o.lease_until = c.lease_until;
        o.batched = i > 0;
        record_metrics(c, &o, target.kind());
        outcomes.push(o);
    }
    outcomes
}

/// Counts a finished attempt in the process's metrics.
fn record_metrics(c: &Claimed, o: &Outcome, destination: &'static str) {
    use crate::telemetry::{ATTEMPT_DURATION, DELIVERY_ATTEMPTS, DELIVERY_LATENCY};
    let outcome = match o.next {
        NextState::Succeeded => "succeeded",
        NextState::RetryAt(_) => "retrying",
        NextState::Failed => "failed",
        NextState::Expired => "expired",
    };
    metrics::counter!(DELIVERY_ATTEMPTS, "outcome" => outcome, "destination" => destination)
        .increment(1);
    metrics::histogram!(ATTEMPT_DURATION).record(o.duration_ms as f64 / 1000.0);
    if o.next == NextState::Succeeded {
        let finished = o.started_at + o.duration_ms;
        metrics::histogram!(DELIVERY_LATENCY)
            .record((finished - c.created_at).max(0) as f64 / 1000.0);
    }
}

/// The outcome of a delivery that would start at `now`, more than its subscription's
/// `max_age_secs` after its event was received: no attempt, it ends `expired`. `None` when it
/// may go.
pub fn expired(sub: &SubscriptionRecord, c: &Claimed, now: i64) -> Option<Outcome> {
    let max_age = sub.spec.max_age_secs?;
    let age = now - c.received_at;
    (age > max_age as i64 * 1000).then(|| Outcome {
        delivery_id: c.delivery_id,
        subscription_id: c.subscription_id.clone(),
        // Not an attempt: the counts stay as they were.
        attempt: c.attempt - 1,
        round_attempt: c.round_attempt - 1,
        started_at: now,
        duration_ms: 0,
        status_code: None,
        error: Some(format!(
            "expired: not attempted {:.1} s after the event was received (max_age_secs {max_age})",
            age as f64 / 1000.0
        )),
        response_body: None,
        next: NextState::Expired,
        disable: None,
        lease_until: c.lease_until,
        probe: false,
        batched: false,
        again_now: false,
    })
}

/// What an attempt means for its delivery and subscription: the outcome policy.
pub fn decide(sub: &SubscriptionRecord, c: &Claimed, r: AttemptResult) -> Outcome {
    // A destination without a status (a broker) took the message when it says no error.
    let step = if r.error.is_none() && r.status.is_none() {
        Next::Delivered
    } else {
        retry::next_step(
            sub.spec.schedule(),
            c.round_attempt,
            r.status,
            r.retry_after,
            crate::clock::jitter,
        )
    };
    let step = match step {
        Next::Retry(_) if r.again_now => Next::Retry(Duration::ZERO),
        other => other,
    };
    let finished_at = r.started_at + r.duration_ms;
    let next = match step {
        Next::Delivered => NextState::Succeeded,
        Next::Retry(delay) => NextState::RetryAt(finished_at + delay.as_millis() as i64),
        Next::Failed => NextState::Failed,
    };
    let disable = (r.status == Some(410)).then(|| "the endpoint answered 410 Gone".to_string());
    Outcome {
        delivery_id: c.delivery_id,
        subscription_id: c.subscription_id.clone(),
        attempt: c.attempt,
        round_attempt: c.round_attempt,
        started_at: r.started_at,
        duration_ms: r.duration_ms,
        status_code: r.status,
        error: r.error,
        response_body: r.response_body,
        next,
        disable,
        lease_until: c.lease_until,
        probe: false,
        batched: false,
        again_now: r.again_now && matches!(next, NextState::RetryAt(_)),
    }
}
