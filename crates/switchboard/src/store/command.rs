//! The writer's protocol: what callers queue ([`Command`]), what one turn takes ([`Group`]:
//! every command already queued, up to a bound) and how each is answered after the commit.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{Accepted, Claimed, IngestError, IngestJob, Outcome, StoreError, SystemEvent};

/// Most events (and outcomes) one turn takes; more wait for the next. Small enough that a turn
/// stays short, so claims and outcomes queued behind a burst of ingest are not kept waiting.
pub(super) const MAX_GROUP_EVENTS: usize = 2_000;
/// Commands waiting for the writer before senders queue up behind them.
pub(super) const QUEUE_DEPTH: usize = 4096;

pub(super) type JobResult = Result<Vec<Accepted>, IngestError>;
type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

pub(super) enum Command {
    Ingest(IngestJob, oneshot::Sender<JobResult>),
    Claim(ClaimJob, Reply<Vec<Claimed>>),
    /// Write back finished attempts.
    Record(Vec<Outcome>, Reply<()>),
    /// Store a System event and its deliveries.
    System(SystemEvent, Reply<Vec<Claimed>>),
    /// Answer once a transaction with a probe write (`Dialect::probe`) committed: the writer
    /// can write.
    Ping(Reply<()>),
    /// One batch of retention's purge.
    Purge(PurgeJob, Reply<PurgeStep>),
    /// One page of a replay.
    Replay(ReplayJob, Reply<ReplayStep>),
    /// One batch folding a tenant's log into the agents projection; true if more remain.
    CatchUpAgents(String, Reply<bool>),
    /// Fold the Agent events the writer has deferred (sent now and then; see `agents.rs`).
    FoldAgents,
    /// Bring `events_by_username` up to date (sent now and then; see `usernames.rs`).
    IndexUsernames,
    /// The rules tick (sent now and then, or by a test that steps it; see `rules.rs`); it also
    /// folds a batch of each tenant's log into the intervals projection (`intervals.rs`).
    Rules(Option<Reply<()>>),
    /// One batch folding a tenant's log into the intervals projection; true if more remain.
    FoldIntervals(String, Reply<bool>),
    /// Commit what is queued, then stop.
    Shutdown,
}

/// A claim: up to `n` due deliveries of each listed subscription, leased until `lease_until`,
/// due by `now` (unix ms, the dispatcher's clock).
pub(super) struct ClaimJob {
    /// `(subscription, n, resume)`: see [`super::Store::claim`].
    pub subs: Vec<(String, u32, bool)>,
    pub lease_until: i64,
    pub now: i64,
}

/// One batch of the purge: events of `tenant` after sequence `after` (or, with no tenant, System
/// events) received before `cutoff` (unix ms).
pub(super) struct PurgeJob {
    pub tenant: Option<String>,
    pub after: i64,
    pub cutoff: i64,
}

/// One page of a replay to `sub`: the events of `tenant` after sequence `after`, created
/// (`CreationDateUtc`, yyyyMMddHHmmss) from `since` to `until`, that the subscription's filter
/// matches now — or, `only_failed`, its failed deliveries of that window, all at once.
pub(super) struct ReplayJob {
    pub tenant: String,
    pub sub: std::sync::Arc<super::decide::OutboxSub>,
    pub since: i64,
    pub until: i64,
    pub after: i64,
    /// The last sequence in scope (a job's: the tenant's last when it was created).
    pub bound: i64,
    pub only_failed: bool,
    /// The job this page belongs to: its progress commits with the page.
    pub job: Option<JobMark>,
}

/// A job's page in a writer turn: the job's `done` and resume point are written in the same
/// transaction as the page, its lease renewed to `lease_until` — while it is still running.
pub(super) struct JobMark {
    pub id: String,
    /// The lease the runner holds the job under: the page is written only under it.
    pub held: i64,
    pub lease_until: i64,
}

/// What a replay page did: deliveries requeued or created, how many of those were not
/// pending already (what a job counts), and where the next page starts (`None`: that was the
/// last); for a job's page, whether the job was still running (not canceled meanwhile).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct ReplayStep {
    pub requeued: u64,
    pub fresh: u64,
    pub next: Option<i64>,
    pub running: bool,
}

/// What a purge batch did: whether more may follow, where the next starts, what went.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct PurgeStep {
    pub more: bool,
    pub last: i64,
    pub purged: super::Purged,
}

/// Everything one writer turn commits.
#[derive(Default)]
pub(super) struct Group {
    pub ingests: Vec<(IngestJob, oneshot::Sender<JobResult>)>,
    pub outcomes: Vec<Outcome>,
    outcome_replies: Vec<Reply<()>>,
    pub claims: Vec<(ClaimJob, Reply<Vec<Claimed>>)>,
    pub system: Vec<(SystemEvent, Reply<Vec<Claimed>>)>,
    pings: Vec<Reply<()>>,
    pub purges: Vec<(PurgeJob, Reply<PurgeStep>)>,
    pub replays: Vec<(ReplayJob, Reply<ReplayStep>)>,
    pub catch_ups: Vec<(String, Reply<bool>)>,
    pub interval_folds: Vec<(String, Reply<bool>)>,
    /// A `FoldAgents` was among the commands.
    pub folds: bool,
    /// An `IndexUsernames` was among the commands.
    pub indexes: bool,
    /// A `Rules` was among the commands.
    pub rules: bool,
    rules_replies: Vec<Reply<()>>,
    /// A `Shutdown` was among the commands: this is the last turn.
    pub stopping: bool,
    events: usize,
}

/// What a committed turn hands back, in the order of the group's commands.
#[derive(Default)]
pub(super) struct Committed {
    pub ingests: Vec<JobResult>,
    pub claims: Vec<Vec<Claimed>>,
    pub system: Vec<Vec<Claimed>>,
    pub purges: Vec<PurgeStep>,
    pub replays: Vec<ReplayStep>,
    pub catch_ups: Vec<bool>,
    pub interval_folds: Vec<bool>,
    /// The new events' `Id`s with their sequences, by tenant.
    pub new_ids: Vec<(String, Vec<(Uuid, i64)>)>,
    /// Deliveries may have become due that nobody holds: the dispatcher should claim.
    pub due: bool,
    /// Deliveries committed leased to this node's dispatcher (`handoff.rs`).
    pub handed: Vec<Claimed>,
    /// Deliveries that ended `superseded` or `expired` (counted once committed).
    pub superseded: u64,
    pub expired: u64,
    /// Tenants whose deferred agents a fold of this turn wrote: their streams wake.
    pub folded: Vec<String>,
}

impl Group {
    /// `first` and every command queued behind it, up to about [`MAX_GROUP_EVENTS`]; true if a
    /// shutdown was among them (everything queued before it is then taken).
    pub fn collect(first: Command, rx: &mut mpsc::Receiver<Command>) -> (Group, bool) {
        let mut group = Group::default();
        let mut stopping = false;
        let mut next = Some(first);
        while let Some(cmd) = next.take() {
            stopping |= group.add(cmd);
            if group.events < MAX_GROUP_EVENTS || stopping {
                next = rx.try_recv().ok();
            }
        }
        group.stopping = stopping;
        (group, stopping)
    }

    fn add(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Ingest(job, reply) => {
                self.events += job.events.len();
                self.ingests.push((job, reply));
            }
            Command::Record(outcomes, reply) => {
                self.events += outcomes.len();
                self.outcomes.extend(outcomes);
                self.outcome_replies.push(reply);
            }
            Command::Claim(job, reply) => self.claims.push((job, reply)),
            Command::System(event, reply) => self.system.push((event, reply)),
            Command::Ping(reply) => self.pings.push(reply),
            Command::Purge(job, reply) => self.purges.push((job, reply)),
            Command::Replay(job, reply) => self.replays.push((job, reply)),
            Command::CatchUpAgents(tenant, reply) => self.catch_ups.push((tenant, reply)),
            Command::FoldIntervals(tenant, reply) => self.interval_folds.push((tenant, reply)),
            Command::FoldAgents => self.folds = true,
            Command::IndexUsernames => self.indexes = true,
            Command::Rules(reply) => {
                self.rules = true;
                self.rules_replies.extend(reply);
            }
            Command::Shutdown => return true,
        }
        false
    }

    pub fn is_empty(&self) -> bool {
        !self.has_work() && !self.folds
    }

    /// Readiness asked whether the database takes writes.
    pub fn pinged(&self) -> bool {
        !self.pings.is_empty()
    }

    /// Whether the group holds a command other than the periodic fold (which may be absent).
    pub fn has_work(&self) -> bool {
        !(self.ingests.is_empty()
            && self.outcome_replies.is_empty()
            && self.claims.is_empty()
            && self.system.is_empty()
            && self.pings.is_empty()
            && self.purges.is_empty()
            && self.replays.is_empty()
            && self.catch_ups.is_empty()
            && self.interval_folds.is_empty()
            && !self.indexes
            && !self.rules
            && !self.stopping)
    }

    /// A group without ingest holds nothing a client was promised — claims and outcomes; losing
    /// them in a crash only means an attempt is made again — so its commit need not wait for
    /// the disk. The next durable commit flushes it anyway. (System events are not promised
    /// either: the condition that raised one raises it again.)
    pub fn durable(&self) -> bool {
        // A replay was answered too: what it requeued must survive a crash.
        !self.ingests.is_empty() || !self.replays.is_empty()
    }

    pub fn jobs(&self) -> Vec<&IngestJob> {
        self.ingests.iter().map(|(job, _)| job).collect()
    }

    /// The outcomes in the one order every writer locks rows in: by subscription, then delivery.
    pub fn sorted_outcomes(&self) -> Vec<&Outcome> {
        let mut outcomes: Vec<&Outcome> = self.outcomes.iter().collect();
        outcomes.sort_by(|a, b| {
            (&a.subscription_id, a.delivery_id).cmp(&(&b.subscription_id, b.delivery_id))
        });
        outcomes
    }

    /// Answers every command of the group: with its part of `result`, or with the error that
    /// failed the whole turn (nothing of it was stored). `writable` is set to whether the
    /// database could be written, and `wake` told what the dispatcher is to claim or take.
    pub fn answer(
        self,
        result: Result<Committed, StoreError>,
        wake: &super::Handoff,
        writable: &AtomicBool,
    ) {
        // Only a turn that wrote what clients sent says the database takes writes again: a
        // periodic fold or index with nothing to write commits even on a full disk.
        match &result {
            Err(StoreError::Unavailable(_)) => writable.store(false, Ordering::SeqCst),
            Ok(_) if !(self.ingests.is_empty() && self.pings.is_empty()) => {
                writable.store(true, Ordering::SeqCst)
            }
            _ => {}
        }
        match result {
            Ok(done) => {
                if done.due {
                    wake.due();
                }
                wake.hand(done.handed);
                for tenant in &done.folded {
                    wake.committed(Some(tenant));
                }
                let finished = [(done.superseded, "superseded"), (done.expired, "expired")];
                for (n, status) in finished.into_iter().filter(|(n, _)| *n > 0) {
                    metrics::counter!(crate::telemetry::DELIVERIES_ENDED, "status" => status)
                        .increment(n);
                }
                for ((_, reply), result) in self.ingests.into_iter().zip(done.ingests) {
                    let _ = reply.send(result);
                }
                for ((_, reply), claimed) in self.claims.into_iter().zip(done.claims) {
                    let _ = reply.send(Ok(claimed));
                }
                for ((_, reply), claimed) in self.system.into_iter().zip(done.system) {
                    let _ = reply.send(Ok(claimed));
                }
                for ((_, reply), step) in self.purges.into_iter().zip(done.purges) {
                    let _ = reply.send(Ok(step));
                }
                for ((_, reply), step) in self.replays.into_iter().zip(done.replays) {
                    let _ = reply.send(Ok(step));
                }
                for ((_, reply), more) in self.catch_ups.into_iter().zip(done.catch_ups) {
                    let _ = reply.send(Ok(more));
                }
                for ((_, reply), more) in (self.interval_folds.into_iter()).zip(done.interval_folds)
                {
                    let _ = reply.send(Ok(more));
                }
                for reply in (self.outcome_replies.into_iter())
                    .chain(self.pings)
                    .chain(self.rules_replies)
                {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(e) => {
                match &e {
                    StoreError::Unavailable(_) => {
                        tracing::warn!(error = %e, requests = self.ingests.len(), "group commit failed: database unavailable")
                    }
                    _ => {
                        tracing::error!(error = %e, requests = self.ingests.len(), "group commit failed")
                    }
                }
                for (_, reply) in self.ingests {
                    let _ = reply.send(Err(IngestError::Store(e.clone())));
                }
                for (_, reply) in self.claims {
                    let _ = reply.send(Err(e.clone()));
                }
                for (_, reply) in self.system {
                    let _ = reply.send(Err(e.clone()));
                }
                for (_, reply) in self.purges {
                    let _ = reply.send(Err(e.clone()));
                }
                for (_, reply) in self.replays {
                    let _ = reply.send(Err(e.clone()));
                }
                for (_, reply) in self.catch_ups.into_iter().chain(self.interval_folds) {
                    let _ = reply.send(Err(e.clone()));
                }
                for reply in (self.outcome_replies.into_iter())
                    .chain(self.pings)
                    .chain(self.rules_replies)
                {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}
