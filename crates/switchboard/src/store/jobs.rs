//! Jobs (DESIGN §16): long work — a replay of a month, cancelling a backlog — tracked,
//! cancellable, and resumed after a restart. The `jobs` table holds each job's state and
//! progress; a node's runner (`crate::jobs`) holds a job by its lease and works it a page at a
//! time through the operations here.
//!
//! A job first counts what it will do (`total`, on the read pool, nothing written), then works
//! page by page; each page commits with the job's progress (`done`, where to resume), so a job
//! interrupted anywhere resumes after its last page, and a page written after a `DELETE`
//! canceled the job is the last one. A replay's pages go through the writer like every replay
//! (deliveries are created only there); a cancel's pages are plain updates on the read pool.
//! Each job's scope is fixed when it is created (`bound`: the tenant's last sequence for a
//! replay, the subscription's newest pending delivery for a cancel), so its count holds for
//! its run whatever arrives meanwhile.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::command::{Command, JobMark, ReplayJob};
use super::db::{Row, Select, Tx, args};
use super::decide::{self, OutboxSub};
use super::{Store, StoreError, SubscriptionRecord, sql, turn};
use crate::clock::now_millis;
use crate::event::Timestamp;

/// Deliveries a cancel page ends.
const CANCEL_PAGE: i64 = 1000;

/// A job's kind and parameters, as created.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
// Read tolerantly: a newer release's parameters are ignored (the API's body is strict).
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobSpec {
    /// As `POST …/replay`, for windows of any size.
    Replay {
        subscription_id: String,
        since: Timestamp,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<Timestamp>,
        #[serde(default)]
        only_failed: bool,
    },
    /// Ends the subscription's pending deliveries of events created before `before` (all, if
    /// absent) with status `canceled`.
    CancelPending {
        subscription_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<Timestamp>,
    },
    /// Erases every stored occurrence of `value` in the tenant's `AdditionalFields[field]`
    /// (DESIGN §19); `value` itself becomes `"[erased]"` when the job ends.
    Erase {
        field: String,
        value: String,
        /// Whether the catalog marks the field as personal data (said in the receipt).
        #[serde(default)]
        pii: bool,
    },
}

impl JobSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            JobSpec::Replay { .. } => "replay",
            JobSpec::CancelPending { .. } => "cancel_pending",
            JobSpec::Erase { .. } => "erase",
        }
    }

    /// The subscription the job works on (an erasure works on the whole tenant).
    pub fn subscription_id(&self) -> Option<&str> {
        match self {
            JobSpec::Replay {
                subscription_id, ..
            }
            | JobSpec::CancelPending {
                subscription_id, ..
            } => Some(subscription_id),
            JobSpec::Erase { .. } => None,
        }
    }

    /// The kinds this release runs (a newer release's stored jobs are listed, not run).
    const KINDS: &'static str = "('replay', 'cancel_pending', 'erase')";
}

/// An erasure is not counted first nor worked by these pages: `Store::erase_step` works it.
fn not_paged() -> StoreError {
    StoreError::Db("an erase job is worked by its own steps".into())
}

/// A job as stored.
#[derive(Clone, Debug)]
pub struct JobRecord {
    pub id: String,
    pub tenant_id: String,
    pub kind: String,
    /// The kind's parameters (with `kind`), as stored: JSON.
    pub params: serde_json::Value,
    pub dry_run: bool,
    /// `queued`, `running`, `done`, `canceled` or `failed`.
    pub state: String,
    /// The last sequence (replay) or delivery id (cancel) in scope.
    pub bound: i64,
    /// What the job does in all; `None` while it is being counted.
    pub total: Option<i64>,
    pub done: i64,
    /// Where the next page starts (after it); `i64::MAX` once the last page is done.
    pub resume_after: i64,
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
}

impl JobRecord {
    /// The parameters as this release reads them; `None` for a kind it does not know.
    pub fn spec(&self) -> Option<JobSpec> {
        serde_json::from_value(self.params.clone()).ok()
    }

    pub fn finished(&self) -> bool {
        matches!(self.state.as_str(), "done" | "canceled" | "failed")
    }
}

/// What a `DELETE` of a job found.
#[derive(Debug)]
pub enum CancelJob {
    /// Canceled now.
    Canceled(JobRecord),
    /// It had finished already.
    Finished(JobRecord),
    NotFound,
}

const JOB_COLUMNS: &str = "SELECT id, tenant_id, kind, params, dry_run, state, bound, total, \
    done, resume_after, result, error, created_at, updated_at, finished_at FROM jobs";

fn job_record(mut r: Row) -> Result<JobRecord, StoreError> {
    let params = r.text(3)?;
    let result = r.opt_text(10)?;
    Ok(JobRecord {
        id: r.text(0)?,
        tenant_id: r.text(1)?,
        kind: r.text(2)?,
        // A job's stored form is only ever written by a release; one that does not parse is
        // shown as `null` rather than failing the listing.
        params: serde_json::from_str(&params).unwrap_or_default(),
        dry_run: r.bool(4)?,
        state: r.text(5)?,
        bound: r.int(6)?,
        total: r.opt_int(7)?,
        done: r.int(8)?,
        resume_after: r.int(9)?,
        result: result.and_then(|t| serde_json::from_str(&t).ok()),
        error: r.opt_text(11)?,
        created_at: r.int(12)?,
        updated_at: r.int(13)?,
        finished_at: r.opt_int(14)?,
    })
}

impl Store {
    /// Stores a new job, `queued`, its scope fixed now; the runner is told.
    pub async fn create_job(
        &self,
        tenant: &str,
        spec: &JobSpec,
        dry_run: bool,
    ) -> Result<JobRecord, StoreError> {
        let bound = match spec {
            JobSpec::Replay { .. } | JobSpec::Erase { .. } => self.last_sequence(tenant).await?,
            JobSpec::CancelPending {
                subscription_id, ..
            } => {
                let row = self
                    .0
                    .db
                    .query_one(
                        "SELECT MAX(id) FROM deliveries WHERE subscription_id = $1 \
                         AND status = 'pending' AND status <> 'succeeded'",
                        &args![subscription_id.as_str()],
                    )
                    .await?;
                row.map(|r| r.opt_int(0))
                    .transpose()?
                    .flatten()
                    .unwrap_or(0)
            }
        };
        let now = now_millis();
        let id = format!("job_{}", uuid::Uuid::new_v4().simple());
        let params = serde_json::to_value(spec).expect("a job's parameters serialize");
        let text = params.to_string();
        self.0
            .db
            .execute(
                "INSERT INTO jobs (id, tenant_id, kind, params, dry_run, state, bound, \
                 created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 'queued', $6, $7, $8)",
                &args![
                    id.as_str(),
                    tenant,
                    spec.kind(),
                    text.as_str(),
                    dry_run,
                    bound,
                    now,
                    now
                ],
            )
            .await?;
        self.0.jobs.notify_one();
        Ok(JobRecord {
            id,
            tenant_id: tenant.to_string(),
            kind: spec.kind().to_string(),
            params,
            dry_run,
            state: "queued".into(),
            bound,
            total: None,
            done: 0,
            resume_after: 0,
            result: None,
            error: None,
            created_at: now,
            updated_at: now,
            finished_at: None,
        })
    }

    /// The tenant's jobs not finished yet (queued or running).
    pub async fn unfinished_jobs(&self, tenant: &str) -> Result<i64, StoreError> {
        let row = self
            .0
            .db
            .query_one(
                "SELECT COUNT(*) FROM jobs WHERE tenant_id = $1 \
                 AND state IN ('queued', 'running')",
                &args![tenant],
            )
            .await?;
        Ok(row.map(|r| r.int(0)).transpose()?.unwrap_or(0))
    }

    /// The tenant's jobs, newest first; after `before` (a job id of the previous page), the
    /// ones created before it.
    pub async fn list_jobs(
        &self,
        tenant: &str,
        before: Option<&JobRecord>,
        limit: u32,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let (at, id) = before.map_or((i64::MAX, ""), |j| (j.created_at, j.id.as_str()));
        let rows = self
            .0
            .db
            .query(
                &format!(
                    "{JOB_COLUMNS} WHERE tenant_id = $1 AND (created_at < $2 OR \
                     (created_at = $2 AND id < $3)) ORDER BY created_at DESC, id DESC LIMIT $4"
                ),
                &args![tenant, at, id, i64::from(limit)],
            )
            .await?;
        rows.into_iter().map(job_record).collect()
    }

    pub async fn get_job(&self, tenant: &str, id: &str) -> Result<Option<JobRecord>, StoreError> {
        let row = self
            .0
            .db
            .query_one(
                &format!("{JOB_COLUMNS} WHERE tenant_id = $1 AND id = $2"),
                &args![tenant, id],
            )
            .await?;
        row.map(job_record).transpose()
    }

    /// Cancels a queued or running job: its runner stops after the page it is on (what was
    /// done stays done).
    pub async fn cancel_job(&self, tenant: &str, id: &str) -> Result<CancelJob, StoreError> {
        let now = now_millis();
        let canceled = self
            .0
            .db
            .execute(
                "UPDATE jobs SET state = 'canceled', finished_at = $1, updated_at = $2, \
                 lease_until = NULL WHERE tenant_id = $3 AND id = $4 \
                 AND state IN ('queued', 'running')",
                &args![now, now, tenant, id],
            )
            .await?;
        if canceled > 0 {
            // An erasure's value is not kept past its end, whatever the end.
            self.forget_erase_value(id).await?;
        }
        Ok(match self.get_job(tenant, id).await? {
            None => CancelJob::NotFound,
            Some(job) if canceled > 0 => CancelJob::Canceled(job),
            Some(job) => CancelJob::Finished(job),
        })
    }

    /// Resolves when a job was created on this node (or at once if one was since the last
    /// wait): the runner's wake-up.
    pub async fn job_created(&self) {
        self.0.jobs.notified().await;
    }

    /// Takes the oldest runnable job — queued, or running with its lease run out (its node
    /// died) — of a tenant not among `busy`, leased until `lease_until`: `running` from now.
    pub async fn claim_job(
        &self,
        now: i64,
        lease_until: i64,
        busy: &[&str],
    ) -> Result<Option<JobRecord>, StoreError> {
        // Looked for first, then taken by a conditional update: most calls find nothing, and
        // on SQLite a read takes no write lock. Of two nodes racing, one update wins.
        let mut select = Select::new(&format!(
            "SELECT id FROM jobs WHERE state IN ('queued', 'running') AND kind IN {kinds} \
             AND (lease_until IS NULL OR lease_until < ",
            kinds = JobSpec::KINDS,
        ));
        select.push("", now).text(")");
        for tenant in busy {
            select.push(" AND tenant_id <> ", *tenant);
        }
        select.text(" ORDER BY created_at, id LIMIT 1");
        let found = self.0.db.query_one(&select.sql, &select.args).await?;
        let Some(mut found) = found else {
            return Ok(None);
        };
        let id = found.text(0)?;
        let taken = self
            .0
            .db
            .execute(
                "UPDATE jobs SET state = 'running', lease_until = $1, updated_at = $2 \
                 WHERE id = $3 AND state IN ('queued', 'running') \
                 AND (lease_until IS NULL OR lease_until < $4)",
                &args![lease_until, now, id.as_str(), now],
            )
            .await?;
        if taken == 0 {
            return Ok(None);
        }
        let row = self
            .0
            .db
            .query_one(&format!("{JOB_COLUMNS} WHERE id = $1"), &args![id.as_str()])
            .await?;
        row.map(job_record).transpose()
    }

    /// Counts a page of what `job` will do, from `after` (nothing is written): how many, and
    /// where the next page starts (`None`: that was the last).
    pub async fn count_job_page(
        &self,
        job: &JobRecord,
        spec: &JobSpec,
        sub: &SubscriptionRecord,
        after: i64,
    ) -> Result<(i64, Option<i64>), StoreError> {
        let db = &self.0.db;
        let tenant = job.tenant_id.as_str();
        match spec {
            JobSpec::Replay {
                since,
                until,
                only_failed: true,
                ..
            } => {
                let until = until.map_or(i64::MAX, Timestamp::as_i64);
                let window = args![sub.id.as_str(), job.bound, tenant, since.as_i64(), until];
                let row = db.query_one(sql::COUNT_FAILED, &window).await?;
                Ok((row.map(|r| r.int(0)).transpose()?.unwrap_or(0), None))
            }
            JobSpec::Replay { since, until, .. } => {
                let until = until.map_or(i64::MAX, Timestamp::as_i64);
                let upto = turn::page_end(after, job.bound);
                let page = args![
                    tenant,
                    since.as_i64(),
                    until,
                    after,
                    upto,
                    sql::REPLAY_PAGE_EVENTS
                ];
                let rows = db.query(sql::REPLAY_PAGE, &page).await?;
                let (events, next) = turn::replay_events(tenant, rows, upto, job.bound)?;
                let outbox = Arc::new(OutboxSub::of(sub));
                let rows = decide::outbox(&events, tenant, std::slice::from_ref(&outbox));
                let pending = match (events.first(), events.last()) {
                    (Some(first), Some(last)) => {
                        let range = args![sub.id.as_str(), first.sequence, last.sequence];
                        turn::pending_sequences(db.query(sql::PENDING_SEQUENCES, &range).await?)?
                    }
                    _ => Default::default(),
                };
                Ok((decide::fresh(&rows, &pending) as i64, next))
            }
            JobSpec::CancelPending { before, .. } => {
                let before = before.map_or(i64::MAX, Timestamp::as_i64);
                let row = db
                    .query_one(
                        "SELECT COUNT(*) FROM deliveries d WHERE subscription_id = $1 \
                         AND status = 'pending' AND status <> 'succeeded' AND id <= $2 AND EXISTS (SELECT 1 FROM events e \
                         WHERE e.tenant_id = $3 AND e.sequence = d.sequence AND e.created < $4)",
                        &args![sub.id.as_str(), job.bound, tenant, before],
                    )
                    .await?;
                Ok((row.map(|r| r.int(0)).transpose()?.unwrap_or(0), None))
            }
            JobSpec::Erase { .. } => Err(not_paged()),
        }
    }

    /// Records the count of `job`: its `total`, and the lease renewed. False if the job is no
    /// longer running (canceled).
    pub async fn job_counted(
        &self,
        id: &str,
        total: i64,
        held: i64,
        lease_until: i64,
    ) -> Result<bool, StoreError> {
        let done = self
            .0
            .db
            .execute(
                "UPDATE jobs SET total = $1, lease_until = $2, updated_at = $3 \
                 WHERE id = $4 AND state = 'running' AND lease_until = $5",
                &args![total, lease_until, now_millis(), id, held],
            )
            .await?;
        Ok(done > 0)
    }

    /// Whether job `id` is still running under lease `held` (not canceled, not taken over) and
    /// its subscription `sub` still exists, read without writing.
    pub async fn job_running(&self, id: &str, held: i64, sub: &str) -> Result<bool, StoreError> {
        let row = self
            .0
            .db
            .query_one(sql::JOB_RUNNING, &args![id, held, sub])
            .await?;
        Ok(row.is_some())
    }

    /// Renews the lease of a running job; false if it is no longer running (canceled).
    pub async fn renew_job(
        &self,
        id: &str,
        held: i64,
        lease_until: i64,
    ) -> Result<bool, StoreError> {
        let done = self
            .0
            .db
            .execute(
                "UPDATE jobs SET lease_until = $1 WHERE id = $2 AND state = 'running' \
                 AND lease_until = $3",
                &args![lease_until, id, held],
            )
            .await?;
        Ok(done > 0)
    }

    /// Works one page of a counted job from where it stands, its progress committed with it:
    /// how many it did, and where the next page starts (`None`: that was the last). `None` if
    /// the job is no longer running (a page that ran meanwhile stays done).
    pub async fn work_job_page(
        &self,
        job: &JobRecord,
        spec: &JobSpec,
        sub: &SubscriptionRecord,
        held: i64,
        lease_until: i64,
    ) -> Result<Option<(i64, Option<i64>)>, StoreError> {
        match spec {
            JobSpec::Replay {
                since,
                until,
                only_failed,
                ..
            } => {
                let page = ReplayJob {
                    tenant: job.tenant_id.clone(),
                    sub: Arc::new(OutboxSub::of(sub)),
                    since: since.as_i64(),
                    until: until.map_or(i64::MAX, Timestamp::as_i64),
                    after: job.resume_after,
                    bound: job.bound,
                    only_failed: *only_failed,
                    job: Some(JobMark {
                        id: job.id.clone(),
                        held,
                        lease_until,
                    }),
                };
                let (reply, answer) = oneshot::channel();
                let step = self.turn(Command::Replay(page, reply), answer).await?;
                if step.requeued > 0 {
                    self.0.wake.due();
                }
                Ok(step.running.then_some((step.fresh as i64, step.next)))
            }
            JobSpec::CancelPending { before, .. } => {
                let before = before.map_or(i64::MAX, Timestamp::as_i64);
                self.cancel_page(job, sub, before, held, lease_until).await
            }
            JobSpec::Erase { .. } => Err(not_paged()),
        }
    }

    /// A page of a `cancel_pending` job: the subscription's next pending deliveries in id
    /// order, those of events before `before` ended `canceled` — with the job's progress, in
    /// one transaction.
    async fn cancel_page(
        &self,
        job: &JobRecord,
        sub: &SubscriptionRecord,
        before: i64,
        held: i64,
        lease_until: i64,
    ) -> Result<Option<(i64, Option<i64>)>, StoreError> {
        let now = now_millis();
        let mut tx: Tx = self.0.db.begin(self.0.dialect).await?;
        // Nothing is done for a job after its `DELETE` answered (see `JOB_RUNNING`).
        let check = format!("{}{}", sql::JOB_RUNNING, self.0.dialect.skip_locked);
        let running = args![job.id.as_str(), held, sub.id.as_str()];
        if tx.query(&check, &running).await?.is_empty() {
            return Ok(None);
        }
        let rows = tx
            .query(
                "SELECT id FROM deliveries WHERE subscription_id = $1 AND status = 'pending' \
                 AND status <> 'succeeded' AND id > $2 AND id <= $3 ORDER BY id LIMIT $4",
                &args![sub.id.as_str(), job.resume_after, job.bound, CANCEL_PAGE],
            )
            .await?;
        let ids: Vec<i64> = rows.iter().map(|r| r.int(0)).collect::<Result<_, _>>()?;
        let more = ids.len() as i64 == CANCEL_PAGE;
        let (mut canceled, last) = (0, ids.last().copied().unwrap_or(i64::MAX));
        if let (Some(first), Some(last)) = (ids.first(), ids.last()) {
            // The lease goes too: an attempt in flight ends as it ends (it is logged), but its
            // outcome no longer changes the delivery (`UPDATE_DELIVERIES` is fenced by lease,
            // and by the status: no longer pending).
            canceled = tx
                .execute(
                    "UPDATE deliveries SET status = 'canceled', next_attempt_at = NULL, \
                     lease_until = NULL, updated_at = $1 WHERE subscription_id = $2 \
                     AND status = 'pending' AND status <> 'succeeded' AND id >= $3 \
                     AND id <= $4 AND EXISTS (SELECT 1 FROM events e \
                     WHERE e.tenant_id = $5 AND e.sequence = deliveries.sequence \
                     AND e.created < $6)",
                    &args![
                        now,
                        sub.id.as_str(),
                        *first,
                        *last,
                        job.tenant_id.as_str(),
                        before
                    ],
                )
                .await? as i64;
        }
        let next = if more { last } else { i64::MAX };
        let running = tx
            .execute(
                sql::JOB_PAGE_DONE,
                &args![canceled, next, lease_until, now, job.id.as_str(), held],
            )
            .await?;
        tx.commit().await?;
        Ok((running > 0).then_some((canceled, more.then_some(last))))
    }

    /// Ends a running job `done` with its `result` (and its `total`, when the job's count is
    /// what it did: a dry run). False if it was no longer running.
    pub async fn finish_job(
        &self,
        id: &str,
        result: &serde_json::Value,
        total: Option<i64>,
        held: i64,
    ) -> Result<bool, StoreError> {
        let now = now_millis();
        let text = result.to_string();
        let done = self
            .0
            .db
            .execute(
                "UPDATE jobs SET state = 'done', result = $1, total = COALESCE($2, total), \
                 done = COALESCE($3, done), finished_at = $4, updated_at = $5, \
                 lease_until = NULL WHERE id = $6 AND state = 'running' AND lease_until = $7",
                &args![text.as_str(), total, total, now, now, id, held],
            )
            .await?;
        Ok(done > 0)
    }

    /// Ends a job running under lease `held` `failed`, saying why.
    pub async fn fail_job(&self, id: &str, error: &str, held: i64) -> Result<(), StoreError> {
        let now = now_millis();
        let failed = self
            .0
            .db
            .execute(
                "UPDATE jobs SET state = 'failed', error = $1, finished_at = $2, \
                 updated_at = $3, lease_until = NULL WHERE id = $4 AND state = 'running' \
                 AND lease_until = $5",
                &args![error, now, now, id, held],
            )
            .await?;
        // Only the job's holder forgets its value (another may still be erasing with it).
        if failed > 0 {
            self.forget_erase_value(id).await?;
        }
        Ok(())
    }
}
