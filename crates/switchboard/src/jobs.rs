//! The job runner (DESIGN §16): every node runs one; it takes queued jobs (and jobs whose
//! node died: their lease ran out) and works them a page at a time, in turn — at most
//! [`MAX_ACTIVE`] at once and one per tenant, so one tenant's month-long replay does not hold
//! up another's. The SQL, and what a page is, are the store's (`store/jobs.rs`).
//!
//! A job is first counted (its `total`; a dry run ends there), then worked. Each page commits
//! with the job's progress, so a restart resumes after the last page; a `DELETE` is seen at the
//! next page (pages take milliseconds), which is how a cancel lands within a second.

use std::collections::VecDeque;
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;

use crate::clock::Clock;
use crate::store::{JobRecord, JobSpec, Store, StoreError, SubscriptionRecord};

/// Jobs one node works at once, page by page in turn.
pub const MAX_ACTIVE: usize = 4;

/// How long a node holds a job without a page: another node takes it over after that. Every
/// page renews it.
pub const LEASE: Duration = Duration::from_secs(30);

/// How often an idle runner looks for jobs created on other nodes, or left by a dead one.
const POLL: Duration = Duration::from_secs(1);

pub struct Runner {
    store: Store,
    clock: Clock,
    active: VecDeque<Active>,
}

/// A job this runner holds.
struct Active {
    job: JobRecord,
    spec: JobSpec,
    /// The subscription it works on (none for an erasure, which works on the tenant).
    sub: Option<SubscriptionRecord>,
    /// While counting: where the next count page starts, and the count so far.
    counting: Option<(i64, i64)>,
    /// The lease this runner holds it under (the runner's clock, unix ms): every write of the
    /// job is made only under it, so a runner that lost it (another node took over) stops.
    lease_until: i64,
    /// Pages failed in a row.
    errors: u32,
    /// An erasure past its events: the latest lease an attempt that may carry the value can
    /// hold (see `erase_step`).
    in_flight: Option<i64>,
}

/// Pages of one job failing in a row before it is failed.
const MAX_ERRORS: u32 = 5;

/// What a page left.
enum Next {
    More,
    /// Finished, canceled or failed: the runner lets it go.
    Over,
}

impl Runner {
    pub fn new(store: Store, clock: Clock) -> Self {
        Runner {
            store,
            clock,
            active: VecDeque::new(),
        }
    }

    /// Works jobs until `stop` turns true. A stop between pages leaves the job running with its
    /// lease: this node (SQLite: at its next start) or another resumes it.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        while !*stop.borrow() {
            let worked = tokio::select! {
                worked = self.run_once() => worked,
                _ = stop.changed() => return,
            };
            match worked {
                Ok(true) => {
                    tokio::task::yield_now().await;
                    continue;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "a job's page failed; trying again"),
            }
            tokio::select! {
                _ = self.store.job_created() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// One page: of a job this runner holds (in turn), after taking a new one when it holds
    /// fewer than [`MAX_ACTIVE`]. False when there was nothing to do.
    pub async fn run_once(&mut self) -> Result<bool, StoreError> {
        if self.active.len() < MAX_ACTIVE {
            let now = self.clock.now_ms();
            let lease_until = now + LEASE.as_millis() as i64;
            let busy: Vec<&str> = self
                .active
                .iter()
                .map(|a| a.job.tenant_id.as_str())
                .collect();
            if let Some(job) = self.store.claim_job(now, lease_until, &busy).await? {
                self.take(job, lease_until).await?;
            }
        }
        let Some(mut active) = self.active.pop_front() else {
            return Ok(false);
        };
        match self.page(&mut active).await {
            Ok(Next::More) => {
                active.errors = 0;
                self.active.push_back(active);
            }
            Ok(Next::Over) => {}
            Err(e) => {
                // Kept, to be tried again: the database may be away for a moment. A page that
                // keeps failing (a stored event that does not decode) ends the job.
                active.errors += 1;
                if active.errors >= MAX_ERRORS {
                    let why = format!("a page failed {MAX_ERRORS} times: {e}");
                    tracing::error!(job = %active.job.id, error = %e, "job failed");
                    self.store
                        .fail_job(&active.job.id, &why, active.lease_until)
                        .await?;
                } else {
                    self.active.push_back(active);
                }
                return Err(e);
            }
        }
        Ok(true)
    }

    /// Starts holding `job`, taken with the lease `lease_until`, or fails it when it cannot run
    /// at all.
    async fn take(&mut self, job: JobRecord, lease_until: i64) -> Result<(), StoreError> {
        let Some(spec) = job.spec() else {
            let why = "its parameters do not decode";
            return self.store.fail_job(&job.id, why, lease_until).await;
        };
        let found = match spec.subscription_id() {
            Some(id) => self.store.get_subscription(&job.tenant_id, id).await?,
            None => None,
        };
        let sub = match found {
            _ if spec.subscription_id().is_none() => None,
            Some(Ok(sub)) => Some(sub),
            Some(Err(_)) => {
                let why = "its subscription's stored form does not decode";
                return self.store.fail_job(&job.id, why, lease_until).await;
            }
            None => {
                let why = "its subscription was deleted";
                return self.store.fail_job(&job.id, why, lease_until).await;
            }
        };
        let counting = (job.total.is_none() && sub.is_some()).then_some((0, 0));
        tracing::info!(job = %job.id, tenant = %job.tenant_id, kind = %job.kind, "job running");
        self.active.push_back(Active {
            job,
            spec,
            sub,
            counting,
            lease_until,
            errors: 0,
            in_flight: None,
        });
        Ok(())
    }

    async fn page(&self, a: &mut Active) -> Result<Next, StoreError> {
        let Some(sub) = a.sub.clone() else {
            return self.erase_step(a).await;
        };
        let now = self.clock.now_ms();
        let lease_until = now + LEASE.as_millis() as i64;
        let id = a.job.id.as_str();
        if let Some((after, counted)) = a.counting {
            let (n, next) = self
                .store
                .count_job_page(&a.job, &a.spec, &sub, after)
                .await?;
            let counted = counted + n;
            if let Some(next) = next {
                a.counting = Some((next, counted));
                // Counting writes nothing: the lease is renewed once a third of it is gone
                // (a write, and on PostgreSQL a commit to wait for), and otherwise a read says
                // whether the job was canceled meanwhile.
                let held = a.lease_until;
                let running = if held - now < LEASE.as_millis() as i64 * 2 / 3 {
                    a.lease_until = lease_until;
                    self.store.renew_job(id, held, lease_until).await?
                } else {
                    self.store.job_running(id, held, &sub.id).await?
                };
                return Ok(if running { Next::More } else { Next::Over });
            }
            if a.job.dry_run {
                let result = json!({ would(&a.spec): counted });
                let held = a.lease_until;
                self.store
                    .finish_job(id, &result, Some(counted), held)
                    .await?;
                tracing::info!(job = %id, total = counted, "dry run done");
                return Ok(Next::Over);
            }
            let held = a.lease_until;
            if !self
                .store
                .job_counted(id, counted, held, lease_until)
                .await?
            {
                return Ok(Next::Over);
            }
            a.lease_until = lease_until;
            a.job.total = Some(counted);
            a.counting = None;
            return Ok(Next::More);
        }
        if a.job.resume_after != i64::MAX {
            let held = a.lease_until;
            let Some((n, next)) = self
                .store
                .work_job_page(&a.job, &a.spec, &sub, held, lease_until)
                .await?
            else {
                // Canceled, taken over, or its subscription deleted: then it ends `failed`.
                let sub = (self.store)
                    .get_subscription(&a.job.tenant_id, &sub.id)
                    .await?;
                if sub.is_none() {
                    let why = "its subscription was deleted";
                    self.store.fail_job(id, why, held).await?;
                }
                tracing::info!(job = %id, done = a.job.done, "job no longer running here");
                return Ok(Next::Over);
            };
            a.job.done += n;
            a.job.resume_after = next.unwrap_or(i64::MAX);
            a.lease_until = lease_until;
            if next.is_some() {
                return Ok(Next::More);
            }
        }
        let result = json!({ did(&a.spec): a.job.done });
        self.store
            .finish_job(id, &result, None, a.lease_until)
            .await?;
        tracing::info!(job = %id, done = a.job.done, "job done");
        Ok(Next::Over)
    }
}

impl Runner {
    /// One step of an `erase` job (DESIGN §19; the steps are `store/erase.rs`'s): a page of
    /// the log; then, while attempts claimed before the log was done are in flight (or the
    /// agents view has not caught up), a pause; then everything else, the files settled, the
    /// receipt and System event 8 `Erased`.
    async fn erase_step(&self, a: &mut Active) -> Result<Next, StoreError> {
        let JobSpec::Erase { field, value, .. } = a.spec.clone() else {
            return Err(StoreError::Db("not an erase job".into()));
        };
        let now = self.clock.now_ms();
        let lease_until = now + LEASE.as_millis() as i64;
        let (id, tenant) = (a.job.id.clone(), a.job.tenant_id.clone());
        let held = a.lease_until;
        if value == crate::store::ERASED {
            // Its value went in step 3, with the receipt: a node that took it over (or this
            // one, restarted) only finishes it.
            let Some(receipt) = a.job.result.clone() else {
                let why = "its value was erased before its receipt was kept; run it again";
                self.store.fail_job(&id, why, held).await?;
                return Ok(Next::Over);
            };
            return self.erase_finish(a, &field, receipt).await;
        }
        if a.job.resume_after < a.job.bound {
            let page = (self.store)
                .erase_events_page(&a.job, &field, &value, held, lease_until)
                .await?;
            let Some((n, next)) = page else {
                tracing::info!(job = %id, "erase job no longer running here");
                return Ok(Next::Over);
            };
            a.job.done += n;
            a.job.resume_after = next;
            a.lease_until = lease_until;
            return Ok(Next::More);
        }
        let until = match a.in_flight {
            Some(until) => until,
            None => {
                // A claim that read a body before the last page committed commits its lease
                // within its turn: looked for once such turns are over.
                tokio::time::sleep(CLAIMS_SETTLE).await;
                let now = self.clock.now_ms();
                *a.in_flight
                    .insert(self.store.latest_lease(&tenant, now).await?)
            }
        };
        if (self.store)
            .erase_must_wait(&tenant, until, a.job.bound, self.clock.now_ms())
            .await?
        {
            if !self.store.renew_job(&id, held, lease_until).await? {
                return Ok(Next::Over);
            }
            a.lease_until = lease_until;
            // Attempts take up to a delivery timeout: looked at again shortly (the runner's
            // other jobs wait for this pause; it is short).
            tokio::time::sleep(ERASE_WAIT).await;
            return Ok(Next::More);
        }
        let Some(rest) = self.store.erase_the_rest(&a.job, &a.spec, held).await? else {
            return Ok(Next::Over);
        };
        let receipt = rest.receipt(a.job.done, &a.spec);
        self.erase_finish(a, &field, receipt).await
    }

    /// An erasure's end: the files settled (under a renewed lease), the job `done` with its
    /// receipt, System event 8 `Erased` (never the value).
    async fn erase_finish(
        &self,
        a: &mut Active,
        field: &str,
        receipt: serde_json::Value,
    ) -> Result<Next, StoreError> {
        let id = a.job.id.clone();
        let lease_until = self.clock.now_ms() + LEASE.as_millis() as i64;
        if !self
            .store
            .renew_job(&id, a.lease_until, lease_until)
            .await?
        {
            return Ok(Next::Over);
        }
        a.lease_until = lease_until;
        self.store.erase_settle().await?;
        let events = receipt["events"].as_i64().unwrap_or(a.job.done);
        if !self
            .store
            .finish_job(&id, &receipt, Some(events), a.lease_until)
            .await?
        {
            return Ok(Next::Over);
        }
        let fields = json!({"JobId": id, "Field": field, "Events": events,
                            "Attempts": receipt["attempts"], "Agents": receipt["agents"]});
        let serde_json::Value::Object(fields) = fields else {
            unreachable!("an object")
        };
        let now = self.clock.now_ms();
        let event = crate::event::Event::system(crate::event::catalog::system::ERASED, fields, now);
        self.store
            .system_event(crate::store::SystemEvent {
                tenant: a.job.tenant_id.clone(),
                event,
                to: crate::store::Recipients::MonitorsBut(String::new()),
                lease_until: None,
                retried: true,
            })
            .await?;
        tracing::info!(job = %id, %receipt, "erase job done");
        Ok(Next::Over)
    }
}

/// How long an erasure waits, once its log is done, before it reads which attempts may still
/// hold a value read before: claim turns take milliseconds.
const CLAIMS_SETTLE: Duration = Duration::from_millis(500);

/// How long an erasure waits before looking again at attempts in flight.
const ERASE_WAIT: Duration = Duration::from_millis(100);

/// The result's key of a dry run.
fn would(spec: &JobSpec) -> &'static str {
    match spec {
        JobSpec::Replay { .. } => "would_requeue",
        JobSpec::CancelPending { .. } => "would_cancel",
        JobSpec::Erase { .. } => "would_erase",
    }
}

/// The result's key of a run.
fn did(spec: &JobSpec) -> &'static str {
    match spec {
        JobSpec::Replay { .. } => "requeued",
        JobSpec::CancelPending { .. } => "canceled",
        JobSpec::Erase { .. } => "events",
    }
}
