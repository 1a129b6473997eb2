//! Erasure by data subject (DESIGN §19): the steps of an `erase` job, run by the job runner
//! (`crate::jobs`) under the job's lease.
//!
//! 1. The tenant's events up to the job's `bound`, a window of sequences per page: a `LIKE`
//!    on the body finds the candidates (cheap, in the database), the value is checked in
//!    `AdditionalFields[field]` and replaced by `"[erased]"`; the page commits with the job's
//!    progress. Pending deliveries read their body from the event when claimed, so they go out
//!    erased from then on.
//! 2. Attempts in flight (claimed before step 1 ended, with the value in memory) are waited
//!    out, and so is the agents projection's fold of the erased events.
//! 3. What else holds the value — attempts' stored answers and errors, the agents view and its
//!    bases, `Username` ordering keys and the username index, the job's own parameters — is
//!    rewritten in one transaction.
//! 4. No copy left behind: SQLite checkpoints the WAL with `TRUNCATE` (every connection runs
//!    with `secure_delete`, so freed space is zeroed); PostgreSQL vacuums the tables touched.

use std::time::Duration;

use serde_json::Value;

use super::db::{Tx, args};
use super::{JobRecord, JobSpec, Store, StoreError};
use crate::clock::now_millis;

/// What an erased value becomes.
pub const ERASED: &str = "[erased]";

/// Sequences of the log one page of an erasure looks through.
const ERASE_WINDOW: i64 = 50_000;

/// How the database is left with no copy of an erased value (DESIGN §19).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Settle {
    /// SQLite: `PRAGMA wal_checkpoint(TRUNCATE)`, until no reader holds it back.
    Checkpoint,
    /// PostgreSQL: `VACUUM` of the tables an erasure rewrites.
    Vacuum,
}

/// The tables an erasure rewrites, vacuumed after it on PostgreSQL.
const REWRITTEN: [&str; 12] = [
    "events",
    "attempts",
    "agents",
    "agent_bases",
    "agent_tails",
    "agent_hours",
    "deliveries",
    "events_by_username",
    "jobs",
    "subscriptions",
    "system_events",
    "instance_keys",
];

/// What step 3 erased.
#[derive(Debug, Default, Clone, Copy)]
pub struct Scrubbed {
    pub attempts: i64,
    pub agents: i64,
}

impl Scrubbed {
    /// The job's receipt: `{events, attempts, agents, pii}`.
    pub fn receipt(&self, events: i64, spec: &JobSpec) -> Value {
        let pii = matches!(spec, JobSpec::Erase { pii: true, .. });
        serde_json::json!({"events": events, "attempts": self.attempts,
                           "agents": self.agents, "pii": pii})
    }
}

/// `value` as it appears inside a JSON string (escaped, without the quotes).
fn json_inner(value: &str) -> String {
    let quoted = Value::String(value.to_string()).to_string();
    quoted[1..quoted.len() - 1].to_string()
}

/// A `LIKE` pattern (`ESCAPE '!'`, the same on both databases) matching any text that
/// contains `text`. SQLite's `LIKE` ignores ASCII case: it is a prefilter, the exact test
/// follows it.
fn containing(text: &str) -> String {
    let mut p = String::with_capacity(text.len() + 2);
    p.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '!') {
            p.push('!');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// The body with `AdditionalFields[field]` erased, when it holds `value` (a string equal to
/// it, or a number whose decimal text is it).
pub(crate) fn erased_body(body: &str, field: &str, value: &str) -> Option<String> {
    let mut event: Value = serde_json::from_str(body).ok()?;
    let slot = event.get_mut("AdditionalFields")?.get_mut(field)?;
    let holds = match slot {
        Value::String(s) => s == value,
        Value::Number(n) => n.to_string() == value,
        _ => false,
    };
    if !holds {
        return None;
    }
    *slot = Value::String(ERASED.into());
    Some(event.to_string())
}

/// A job's parameters with its value erased.
fn erased_params(spec: &JobSpec) -> Option<String> {
    match spec {
        JobSpec::Erase { field, pii, .. } => Some(
            serde_json::to_string(&JobSpec::Erase {
                field: field.clone(),
                value: ERASED.into(),
                pii: *pii,
            })
            .expect("a job's parameters serialize"),
        ),
        _ => None,
    }
}

/// Whether job `$1` is running under the lease `$2`.
const RUNNING: &str = "SELECT 1 FROM jobs WHERE id = $1 AND state = 'running' AND lease_until = $2";

/// A transaction in which job `id` holds the lease `held`; `None` if it does not (canceled,
/// or taken over by another node).
async fn holding(store: &Store, id: &str, held: i64) -> Result<Option<Tx>, StoreError> {
    let mut tx: Tx = store.0.db.begin(store.0.dialect).await?;
    let check = format!("{RUNNING}{}", store.0.dialect.skip_locked);
    let rows = tx.query(&check, &args![id, held]).await?;
    Ok((!rows.is_empty()).then_some(tx))
}

impl Store {
    /// Step 1, one page: the events after the job's `resume_after` (a window of the log up to
    /// its `bound`) holding `value` in `field`, erased, with the job's progress. How many,
    /// and where the next page starts (the `bound` once the log is done); `None` when the job
    /// is no longer running under `held`.
    pub async fn erase_events_page(
        &self,
        job: &JobRecord,
        field: &str,
        value: &str,
        held: i64,
        lease_until: i64,
    ) -> Result<Option<(i64, i64)>, StoreError> {
        let tenant = job.tenant_id.as_str();
        let after = job.resume_after;
        let upto = after.saturating_add(ERASE_WINDOW).min(job.bound);
        let Some(mut tx) = holding(self, &job.id, held).await? else {
            return Ok(None);
        };
        let pattern = containing(&json_inner(value));
        let rows = tx
            .query(
                "SELECT sequence, body FROM events WHERE tenant_id = $1 AND sequence > $2 \
                 AND sequence <= $3 AND body LIKE $4 ESCAPE '!'",
                &args![tenant, after, upto, pattern.as_str()],
            )
            .await?;
        let mut erased = 0;
        for mut row in rows {
            let (sequence, body) = (row.int(0)?, row.text(1)?);
            let Some(body) = erased_body(&body, field, value) else {
                continue;
            };
            // A `Username` leaves the column the log filters on too (its index: step 3).
            let username = (field == "Username").then_some(ERASED);
            tx.execute(
                "UPDATE events SET body = $1, username = COALESCE($2, username) \
                 WHERE tenant_id = $3 AND sequence = $4",
                &args![body.as_str(), username, tenant, sequence],
            )
            .await?;
            erased += 1;
        }
        let now = now_millis();
        let running = tx
            .execute(
                super::sql::JOB_PAGE_DONE,
                &args![erased, upto, lease_until, now, job.id.as_str(), held],
            )
            .await?;
        tx.commit().await?;
        Ok((running > 0).then_some((erased, upto)))
    }

    /// The latest lease the tenant's deliveries are claimed under now (unix ms): every attempt
    /// that may still carry a value read before now holds a lease no later than this.
    pub async fn latest_lease(&self, tenant: &str, now: i64) -> Result<i64, StoreError> {
        let row = self
            .0
            .db
            .query_one(
                "SELECT MAX(lease_until) FROM deliveries WHERE tenant_id = $1 \
                 AND lease_until > $2",
                &args![tenant, now],
            )
            .await?;
        let in_rows = row.map(|r| r.opt_int(0)).transpose()?.flatten();
        // SQLite's writer holds some claims in memory: their latest lease counts too.
        let held = self.0.wake.held_lease(tenant, now);
        Ok(in_rows.max(held).unwrap_or(0))
    }

    /// Step 2: whether an erasure must wait — an attempt claimed under a lease until
    /// `until` or earlier is still in flight at `now`, or the agents projection has not
    /// folded the log up to `bound`.
    pub async fn erase_must_wait(
        &self,
        tenant: &str,
        until: i64,
        bound: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        let row = self
            .0
            .db
            .query_one(
                "SELECT 1 FROM deliveries WHERE tenant_id = $1 AND lease_until > $2 \
                 AND lease_until <= $3 LIMIT 1",
                &args![tenant, now, until],
            )
            .await?;
        // A claim held in memory (SQLite's) is known only by the tenant's latest such lease:
        // while one may be in flight, the wait lasts until `until` has passed.
        let held = self.0.wake.held_lease(tenant, now).is_some() && now < until;
        Ok(row.is_some() || held || self.agents_through(tenant).await? < bound)
    }

    /// Step 3: the value erased from everything but the events, and from the job's own
    /// parameters, in one transaction. `None` when the job is no longer running under `held`.
    pub async fn erase_the_rest(
        &self,
        job: &JobRecord,
        spec: &JobSpec,
        held: i64,
    ) -> Result<Option<Scrubbed>, StoreError> {
        let JobSpec::Erase { field, value, .. } = spec else {
            return Err(StoreError::Db("not an erase job".into()));
        };
        let (tenant, value) = (job.tenant_id.as_str(), value.as_str());
        let inner = json_inner(value);
        let (raw, escaped) = (containing(value), containing(&inner));
        let Some(mut tx) = holding(self, &job.id, held).await? else {
            return Ok(None);
        };
        if field == "Username" {
            // The writers count the tenant's groups again (DESIGN §18; the agent's episodes
            // go below). First, as the writer takes the tenant's row before its agents'.
            tx.execute(
                "UPDATE tenants SET rules_version = rules_version + 1 \
                 WHERE id = $1 AND rules_version > 0",
                &args![tenant],
            )
            .await?;
        }
        // Text wherever the value appears, as a JSON string's contents or as it is: attempts'
        // recorded answers and errors, and the errors copied from them.
        let replaced =
            |col: &str| format!("REPLACE(REPLACE({col}, $1, '[erased]'), $2, '[erased]')");
        let changed = |col: &str| {
            format!(
                "({col} LIKE $3 ESCAPE '!' OR {col} LIKE $4 ESCAPE '!') AND {} <> {col}",
                replaced(col)
            )
        };
        let texts = args![
            value,
            inner.as_str(),
            raw.as_str(),
            escaped.as_str(),
            tenant
        ];
        let attempts = tx
            .execute(
                &format!(
                    "UPDATE attempts SET response_body = COALESCE({}, response_body), \
                     error = COALESCE({}, error) WHERE delivery_id IN \
                     (SELECT id FROM deliveries WHERE tenant_id = $5) AND (({}) OR ({}))",
                    replaced("response_body"),
                    replaced("error"),
                    changed("response_body"),
                    changed("error")
                ),
                &texts,
            )
            .await? as i64;
        for (table, col) in [
            ("deliveries", "last_error"),
            ("subscriptions", "last_error"),
            ("system_events", "body"),
        ] {
            tx.execute(
                &format!(
                    "UPDATE {table} SET {col} = {} WHERE tenant_id = $5 AND {}",
                    replaced(col),
                    changed(col)
                ),
                &texts,
            )
            .await?;
        }
        // Ordering keys (`Username`, else `SessionId`): a placeholder of this job's own, so
        // that two erased agents are neither ordered nor coalesced together.
        let placeholder = format!("{ERASED}:{}", job.id);
        for col in ["agent", "coalesce_key"] {
            tx.execute(
                &format!("UPDATE deliveries SET {col} = $1 WHERE tenant_id = $2 AND {col} = $3"),
                &args![placeholder.as_str(), tenant, value],
            )
            .await?;
        }
        let agents = if field == "Username" {
            // The agent leaves the view: its state, its base, its index entries and its
            // intervals go.
            let gone = tx
                .execute(
                    "DELETE FROM agents WHERE tenant_id = $1 AND username = $2",
                    &args![tenant, value],
                )
                .await? as i64;
            for table in [
                "agent_bases",
                "events_by_username",
                "agent_tails",
                "agent_hours",
            ] {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE tenant_id = $1 AND username = $2"),
                    &args![tenant, value],
                )
                .await?;
            }
            // Its rules' episodes end without a word (a RuleCleared would name it), and the
            // writers count the tenant's groups again (DESIGN §18).
            tx.execute(
                "DELETE FROM rule_episodes WHERE tenant_id = $1 AND subject = $2",
                &args![tenant, value],
            )
            .await?;
            gone
        } else {
            // The states hold the event's fields as JSON strings.
            let quoted = Value::String(value.to_string()).to_string();
            let pattern = containing(&quoted);
            let mut changed = 0;
            // (The intervals projection's tails hold the agent's state too.)
            for (table, state) in [
                ("agents", "state"),
                ("agent_bases", "state"),
                ("agent_tails", "tail"),
            ] {
                let n = tx
                    .execute(
                        &format!(
                            "UPDATE {table} SET {state} = REPLACE({state}, $1, '\"[erased]\"') \
                             WHERE tenant_id = $2 AND {state} LIKE $3 ESCAPE '!' \
                             AND REPLACE({state}, $1, '\"[erased]\"') <> {state}"
                        ),
                        &args![quoted.as_str(), tenant, pattern.as_str()],
                    )
                    .await? as i64;
                if table == "agents" {
                    changed = n;
                }
            }
            changed
        };
        let scrubbed = Scrubbed { attempts, agents };
        // The job's own value goes, and the receipt is kept with it: a node that takes the job
        // over after this finishes it from the receipt rather than erasing "[erased]".
        if let Some(params) = erased_params(spec) {
            let receipt = scrubbed.receipt(job.done, spec).to_string();
            tx.execute(
                "UPDATE jobs SET params = $1, result = $2 WHERE id = $3",
                &args![params.as_str(), receipt.as_str(), job.id.as_str()],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(Some(scrubbed))
    }

    /// Step 4: no copy of what was rewritten left in the database's files (SQLite) or dead
    /// rows (PostgreSQL).
    pub async fn erase_settle(&self) -> Result<(), StoreError> {
        self.settle(&REWRITTEN).await
    }

    /// No old version of `tables`' rewritten rows left: SQLite checkpoints its WAL (every
    /// table at once), PostgreSQL vacuums them.
    pub(super) async fn settle(&self, tables: &[&str]) -> Result<(), StoreError> {
        match self.0.dialect.settle {
            Settle::Checkpoint => {
                // Readers hold a checkpoint back; the busy timeout waits for each, and a
                // checkpoint that still could not finish is tried again.
                let mut tries = 0;
                loop {
                    let row = self
                        .0
                        .db
                        .query_one("PRAGMA wal_checkpoint(TRUNCATE)", &args![])
                        .await;
                    match row {
                        Ok(Some(r)) if r.int(0)? == 0 => return Ok(()),
                        Ok(_) | Err(_) if tries < 100 => {}
                        Ok(_) => {
                            return Err(StoreError::Contended(
                                "the WAL could not be checkpointed: readers held it".into(),
                            ));
                        }
                        Err(e) => return Err(e),
                    }
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            Settle::Vacuum => {
                for table in tables {
                    self.0
                        .db
                        .execute(&format!("VACUUM {table}"), &args![])
                        .await?;
                }
                Ok(())
            }
        }
    }

    /// An erase job's value, erased from its parameters (a job that ended otherwise than
    /// `done`: canceled or failed).
    pub(crate) async fn forget_erase_value(&self, id: &str) -> Result<(), StoreError> {
        let row = self
            .0
            .db
            .query_one("SELECT params FROM jobs WHERE id = $1", &args![id])
            .await?;
        let Some(mut row) = row else { return Ok(()) };
        let spec = serde_json::from_str::<JobSpec>(&row.text(0)?).ok();
        if let Some(params) = spec.as_ref().and_then(erased_params) {
            self.0
                .db
                .execute(
                    "UPDATE jobs SET params = $1 WHERE id = $2",
                    &args![params.as_str(), id],
                )
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_field_holding_the_value_is_erased() {
        let body = r#"{"Id":"x","Category":1,"AdditionalFields":{"PhoneNo":"+1555","Note":"+1555","ExitCode":12}}"#;
        let out = erased_body(body, "PhoneNo", "+1555").unwrap();
        assert_eq!(
            out,
            r#"{"Id":"x","Category":1,"AdditionalFields":{"PhoneNo":"[erased]","Note":"+1555","ExitCode":12}}"#
        );
        assert!(erased_body(body, "PhoneNo", "+1556").is_none());
        assert!(erased_body(body, "Nope", "+1555").is_none());
        let n = erased_body(body, "ExitCode", "12").unwrap();
        assert!(n.contains(r#""ExitCode":"[erased]""#), "{n}");
    }

    #[test]
    fn patterns_escape_like_wildcards() {
        assert_eq!(containing("50%_a!b"), "%50!%!_a!!b%");
        assert_eq!(json_inner("say \"hi\""), "say \\\"hi\\\"");
    }
}
