// The backend-independent half of a store, included by `sqlite.rs` and `postgres.rs`. Each of
// them defines, before including this file: `Db` (the sqlx database), `Conn`, `DbRow`, `DbPool`,
// `DIALECT` (the few statements that differ) and `MIGRATIONS`. The SQL here is written once,
// with `$N` placeholders that both SQLite and PostgreSQL accept.

/// Most events one group commit takes; more wait for the next. Small enough that a turn stays
/// short, so the dispatcher's claims and outcomes, queued behind it, are not kept waiting long.
const MAX_GROUP_EVENTS: usize = 2_000;
/// Requests waiting for the writer before `ingest` callers queue up behind them.
const QUEUE_DEPTH: usize = 4096;
/// Rows per multi-row statement: powers of two, largest first, so any count takes at most one
/// statement of each size and the few statement shapes stay in the prepared-statement cache.
const INSERT_CHUNKS: [usize; 10] = [512, 256, 128, 64, 32, 16, 8, 4, 2, 1];

#[derive(Debug)]
struct Embedded;

impl MigrationSource<'static> for Embedded {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, sqlx::error::BoxDynError>> {
        Box::pin(async {
            Ok(MIGRATIONS
                .iter()
                .map(|&(version, name, sql)| {
                    Migration::new(
                        version,
                        Cow::Borrowed(name),
                        MigrationType::Simple,
                        Cow::Borrowed(sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

type Reply = oneshot::Sender<Result<Vec<Accepted>, IngestError>>;
type ClaimReply = oneshot::Sender<Result<Vec<Claimed>, StoreError>>;

enum Command {
    Ingest(IngestJob, Reply),
    /// Claim up to `n` due deliveries of each listed subscription, leased until the given ms.
    Claim(
        Vec<(String, u32)>,
        i64,
        oneshot::Sender<Result<Vec<Claimed>, StoreError>>,
    ),
    /// Write back finished attempts.
    Record(Vec<Outcome>, oneshot::Sender<Result<(), StoreError>>),
    /// Commit what is queued, then stop.
    Shutdown,
}

/// The backend handle; cheap to clone.
#[derive(Clone)]
pub struct Backend {
    read: DbPool,
    writer: mpsc::Sender<Command>,
    /// Signalled after a commit that made deliveries due, to wake the dispatcher.
    wake: Arc<Notify>,
    /// Bumped on every subscription change made through this handle.
    subs_version: Arc<AtomicU64>,
    writer_task: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Backend {
    /// Starts the writer task on `conn`; reads and administrative writes use `read`.
    fn start(conn: Conn, read: DbPool) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let wake = Arc::new(Notify::new());
        let task = tokio::spawn(writer(conn, rx, wake.clone()));
        Self {
            read,
            writer: tx,
            wake,
            subs_version: Arc::new(AtomicU64::new(0)),
            writer_task: Arc::new(Mutex::new(Some(task))),
        }
    }

    /// Commits the events of one request, all or nothing; returns once they are durable.
    pub async fn ingest(
        &self,
        tenant: &str,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Accepted>, IngestError> {
        let (reply, answer) = oneshot::channel();
        let job = IngestJob {
            tenant: tenant.to_string(),
            events,
        };
        self.writer
            .send(Command::Ingest(job, reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Commits what is queued and closes the database.
    pub async fn close(&self) {
        let task = self.writer_task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let _ = self.writer.send(Command::Shutdown).await;
            let _ = task.await;
        }
        self.read.close().await;
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.read.execute("SELECT 1").await?;
        Ok(())
    }

    pub async fn list_events(
        &self,
        tenant: &str,
        q: &EventQuery,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let mut sql = QueryBuilder::<Db>::new(
            "SELECT sequence, received_at, body FROM events WHERE tenant_id = ",
        );
        sql.push_bind(tenant)
            .push(" AND sequence > ")
            .push_bind(q.after);
        if let Some(c) = q.category {
            sql.push(" AND category = ").push_bind(i64::from(c));
        }
        if let Some(c) = q.code {
            sql.push(" AND code = ").push_bind(i64::from(c));
        }
        if let Some(u) = &q.username {
            sql.push(" AND username = ").push_bind(u);
        }
        if let Some(t) = q.since {
            sql.push(" AND created >= ").push_bind(t.as_i64());
        }
        if let Some(t) = q.until {
            sql.push(" AND created <= ").push_bind(t.as_i64());
        }
        sql.push(" ORDER BY sequence LIMIT ")
            .push_bind(i64::from(q.limit));
        let rows = sql.build().fetch_all(&self.read).await?;
        Ok(rows.iter().map(stored_event).collect())
    }

    pub async fn get_event(
        &self,
        tenant: &str,
        id: Uuid,
    ) -> Result<Option<StoredEvent>, StoreError> {
        let row = sqlx::query(
            "SELECT sequence, received_at, body FROM events WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant)
        .bind(id.to_string())
        .fetch_optional(&self.read)
        .await?;
        Ok(row.as_ref().map(stored_event))
    }

    pub async fn create_tenant(&self, id: &str, name: &str) -> Result<Tenant, CreateError> {
        let created_at = now_millis();
        let done = sqlx::query(
            "INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(name)
        .bind(created_at)
        .execute(&self.read)
        .await?;
        if done.rows_affected() == 0 {
            return Err(CreateError::Exists);
        }
        Ok(Tenant {
            id: id.into(),
            name: name.into(),
            created_at,
        })
    }

    pub async fn get_tenant(&self, id: &str) -> Result<Option<Tenant>, StoreError> {
        let row = sqlx::query("SELECT id, name, created_at FROM tenants WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
        Ok(row.as_ref().map(tenant))
    }

    pub async fn list_tenants(&self, after: &str, limit: u32) -> Result<Vec<Tenant>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, created_at FROM tenants WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        Ok(rows.iter().map(tenant).collect())
    }

    /// Deletes a tenant with its keys and events; false if there was none.
    pub async fn delete_tenant(&self, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.read.begin_with(DIALECT.begin_write).await?;
        let gone = sqlx::query("DELETE FROM tenants WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM deliveries WHERE tenant_id = $1)",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        for table in ["api_keys", "events", "subscriptions", "deliveries"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE tenant_id = $1"))
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(gone.rows_affected() > 0)
    }

    /// Stores a key under its hash.
    pub async fn create_key(
        &self,
        tenant: &str,
        name: &str,
        scopes: &[Scope],
        id: &str,
        key_hash: &str,
    ) -> Result<KeyRecord, CreateError> {
        let created_at = now_millis();
        let done = sqlx::query(
            "INSERT INTO api_keys (id, tenant_id, name, scopes, key_hash, created_at) \
             SELECT $1, $2, $3, $4, $5, $6 WHERE EXISTS (SELECT 1 FROM tenants WHERE id = $7)",
        )
        .bind(id)
        .bind(tenant)
        .bind(name)
        .bind(scopes_to_text(scopes))
        .bind(key_hash)
        .bind(created_at)
        .bind(tenant)
        .execute(&self.read)
        .await?;
        if done.rows_affected() == 0 {
            return Err(CreateError::TenantNotFound);
        }
        Ok(KeyRecord {
            id: id.into(),
            tenant_id: tenant.into(),
            name: name.into(),
            scopes: scopes.to_vec(),
            created_at,
        })
    }

    pub async fn list_keys(
        &self,
        tenant: &str,
        after: &str,
        limit: u32,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, tenant_id, name, scopes, created_at FROM api_keys \
             WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(tenant)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        Ok(rows.iter().map(key_record).collect())
    }

    pub async fn delete_key(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM api_keys WHERE tenant_id = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .execute(&self.read)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The key with this hash, if any.
    pub async fn find_key(&self, key_hash: &str) -> Result<Option<KeyRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT id, tenant_id, name, scopes, created_at FROM api_keys WHERE key_hash = $1",
        )
        .bind(key_hash)
        .fetch_optional(&self.read)
        .await?;
        Ok(row.as_ref().map(key_record))
    }
}

impl Backend {
    /// The dispatcher waits on this; it is signalled when deliveries may have become due.
    pub fn wake_handle(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Changes whenever a subscription is created, changed or deleted through this store.
    pub fn subscriptions_version(&self) -> u64 {
        self.subs_version.load(AtomicOrdering::SeqCst)
    }

    fn subscriptions_changed(&self) {
        self.subs_version.fetch_add(1, AtomicOrdering::SeqCst);
        self.wake.notify_one();
    }

    /// Leases up to `n` due deliveries of each listed subscription until `lease_until` (ms).
    pub async fn claim(
        &self,
        subs: Vec<(String, u32)>,
        lease_until: i64,
    ) -> Result<Vec<Claimed>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(Command::Claim(subs, lease_until, reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Writes back finished attempts with their deliveries' new state.
    pub async fn record(&self, outcomes: Vec<Outcome>) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(Command::Record(outcomes, reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// When the earliest pending delivery of an enabled subscription is due (unix ms).
    pub async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        let due: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(d.next_attempt_at) FROM deliveries d \
             JOIN subscriptions s ON s.id = d.subscription_id \
             WHERE d.status = 'pending' AND s.enabled = TRUE \
               AND (d.lease_until IS NULL OR d.lease_until < $1)",
        )
        .bind(now_millis())
        .fetch_one(&self.read)
        .await?;
        Ok(due)
    }

    pub async fn create_subscription(&self, rec: &SubscriptionRecord) -> Result<(), CreateError> {
        let done = sqlx::query(
            "INSERT INTO subscriptions (id, tenant_id, spec, enabled, disabled_reason, created_at, \
             updated_at) SELECT $1, $2, $3, $4, $5, $6, $7 WHERE EXISTS (SELECT 1 FROM tenants WHERE id = $8)",
        )
        .bind(&rec.id)
        .bind(&rec.tenant_id)
        .bind(spec_json(&rec.spec))
        .bind(rec.spec.enabled)
        .bind(&rec.disabled_reason)
        .bind(rec.created_at)
        .bind(rec.updated_at)
        .bind(&rec.tenant_id)
        .execute(&self.read)
        .await?;
        if done.rows_affected() == 0 {
            return Err(CreateError::TenantNotFound);
        }
        self.subscriptions_changed();
        Ok(())
    }

    pub async fn get_subscription(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<SubscriptionRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "{SUBSCRIPTION_COLUMNS} WHERE tenant_id = $1 AND id = $2"
        ))
        .bind(tenant)
        .bind(id)
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(subscription_record).transpose()
    }

    pub async fn list_subscriptions(
        &self,
        tenant: &str,
        after: &str,
        limit: u32,
    ) -> Result<Vec<SubscriptionRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "{SUBSCRIPTION_COLUMNS} WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3"
        ))
        .bind(tenant)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(subscription_record).collect()
    }

    /// Every enabled subscription of every tenant, for the dispatcher.
    pub async fn enabled_subscriptions(&self) -> Result<Vec<SubscriptionRecord>, StoreError> {
        let rows = sqlx::query(&format!("{SUBSCRIPTION_COLUMNS} WHERE enabled = TRUE"))
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(subscription_record).collect()
    }

    /// Replaces a subscription's body, state and secrets.
    pub async fn update_subscription(&self, rec: &SubscriptionRecord) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE subscriptions SET spec = $1, enabled = $2, disabled_reason = $3, old_secret = $4, \
             old_secret_expires_at = $5, updated_at = $6, \
             failing_since = CASE WHEN $7 THEN NULL ELSE failing_since END, \
             failures = CASE WHEN $8 THEN 0 ELSE failures END \
             WHERE tenant_id = $9 AND id = $10",
        )
        .bind(spec_json(&rec.spec))
        .bind(rec.spec.enabled)
        .bind(&rec.disabled_reason)
        .bind(&rec.old_secret)
        .bind(rec.old_secret_expires_at)
        .bind(rec.updated_at)
        .bind(rec.spec.enabled)
        .bind(rec.spec.enabled)
        .bind(&rec.tenant_id)
        .bind(&rec.id)
        .execute(&self.read)
        .await?;
        self.subscriptions_changed();
        Ok(done.rows_affected() > 0)
    }

    /// Deletes a subscription with its deliveries and their attempts.
    pub async fn delete_subscription(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.read.begin_with(DIALECT.begin_write).await?;
        let gone = sqlx::query("DELETE FROM subscriptions WHERE tenant_id = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if gone.rows_affected() > 0 {
            sqlx::query(
                "DELETE FROM attempts WHERE delivery_id IN \
                 (SELECT id FROM deliveries WHERE subscription_id = $1)",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM deliveries WHERE subscription_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.subscriptions_changed();
        Ok(gone.rows_affected() > 0)
    }

    pub async fn list_deliveries(
        &self,
        tenant: &str,
        subscription: &str,
        status: Option<DeliveryStatus>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        let mut sql = QueryBuilder::<Db>::new(DELIVERY_COLUMNS);
        sql.push(" WHERE tenant_id = ").push_bind(tenant);
        sql.push(" AND subscription_id = ").push_bind(subscription);
        if let Some(s) = status {
            sql.push(" AND status = ").push_bind(s.as_str());
        }
        sql.push(" AND id > ").push_bind(after);
        sql.push(" ORDER BY id LIMIT ").push_bind(i64::from(limit));
        let rows = sql.build().fetch_all(&self.read).await?;
        Ok(rows.iter().map(delivery_record).collect())
    }

    pub async fn deliveries_of_event(
        &self,
        tenant: &str,
        event_id: Uuid,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "{DELIVERY_COLUMNS} WHERE tenant_id = $1 AND event_id = $2 ORDER BY id"
        ))
        .bind(tenant)
        .bind(event_id.to_string())
        .fetch_all(&self.read)
        .await?;
        Ok(rows.iter().map(delivery_record).collect())
    }

    /// A delivery with its attempts, oldest first.
    pub async fn get_delivery(
        &self,
        tenant: &str,
        id: i64,
    ) -> Result<Option<(DeliveryRecord, Vec<AttemptRecord>)>, StoreError> {
        let row = sqlx::query(&format!(
            "{DELIVERY_COLUMNS} WHERE tenant_id = $1 AND id = $2"
        ))
        .bind(tenant)
        .bind(id)
        .fetch_optional(&self.read)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let attempts = sqlx::query(
            "SELECT number, started_at, duration_ms, status_code, error, response_body \
             FROM attempts WHERE delivery_id = $1 ORDER BY number",
        )
        .bind(id)
        .fetch_all(&self.read)
        .await?;
        let attempts = attempts
            .iter()
            .map(|r| AttemptRecord {
                number: r.get(0),
                started_at: r.get(1),
                duration_ms: r.get(2),
                status_code: r.get(3),
                error: r.get(4),
                response_body: r.get(5),
            })
            .collect();
        Ok(Some((delivery_record(&row), attempts)))
    }

    /// Makes a delivery due now for one more attempt (a finished one gets exactly one).
    pub async fn retry_delivery(
        &self,
        tenant: &str,
        id: i64,
        one_attempt_round: i64,
    ) -> Result<bool, StoreError> {
        let now = now_millis();
        let done = sqlx::query(
            "UPDATE deliveries SET next_attempt_at = $1, lease_until = NULL, updated_at = $2, \
             round_attempts = CASE WHEN status = 'pending' THEN round_attempts ELSE $3 END, \
             status = 'pending' WHERE tenant_id = $4 AND id = $5",
        )
        .bind(now)
        .bind(now)
        .bind(one_attempt_round)
        .bind(tenant)
        .bind(id)
        .execute(&self.read)
        .await?;
        self.wake.notify_one();
        Ok(done.rows_affected() > 0)
    }

    /// Requeues, for a fresh round of attempts, every event of the window that the
    /// subscription's filter matches now — creating deliveries for events it never had (older
    /// than the subscription, or filtered out then). With `only_failed`, only failed deliveries
    /// are requeued. Returns how many deliveries were requeued or created.
    pub async fn replay(
        &self,
        sub: &SubscriptionRecord,
        since: Timestamp,
        until: Option<Timestamp>,
        only_failed: bool,
    ) -> Result<u64, StoreError> {
        let now = now_millis();
        let until = until.map_or(i64::MAX, Timestamp::as_i64);
        let mut total = 0;
        if only_failed {
            let mut tx = self.read.begin_with(DIALECT.begin_write).await?;
            let done = sqlx::query(
                "UPDATE deliveries SET status = 'pending', round_attempts = 0, next_attempt_at = $1, \
                 lease_until = NULL, updated_at = $2 WHERE subscription_id = $3 AND status = 'failed' \
                 AND sequence IN (SELECT sequence FROM events WHERE tenant_id = $4 \
                   AND created >= $5 AND created <= $6)",
            )
            .bind(now)
            .bind(now)
            .bind(&sub.id)
            .bind(&sub.tenant_id)
            .bind(since.as_i64())
            .bind(until)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            total = done.rows_affected();
        } else {
            // A page per transaction, so that ingest is never held up for long.
            let mut after = 0i64;
            loop {
                let mut tx = self.read.begin_with(DIALECT.begin_write).await?;
                let rows = sqlx::query(
                    "SELECT sequence, body FROM events WHERE tenant_id = $1 AND created >= $2 \
                     AND created <= $3 AND sequence > $4 ORDER BY sequence LIMIT 1000",
                )
                .bind(&sub.tenant_id)
                .bind(since.as_i64())
                .bind(until)
                .bind(after)
                .fetch_all(&mut *tx)
                .await?;
                let Some(last) = rows.last() else { break };
                after = last.get(0);
                for row in &rows {
                    let event = Event::from_canonical_json(row.get(1))
                        .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
                    if !subscription::matches(sub.spec.filter.as_ref(), &event) {
                        continue;
                    }
                    let agent = match sub.spec.ordering {
                        Ordering::PerAgent => event.agent_key().map(str::to_owned),
                        Ordering::None => None,
                    };
                    let done = sqlx::query(
                        "INSERT INTO deliveries (tenant_id, subscription_id, event_id, sequence, \
                         agent, status, next_attempt_at, created_at, updated_at) \
                         VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $8) \
                         ON CONFLICT (subscription_id, event_id) DO UPDATE SET status = 'pending', \
                         round_attempts = 0, next_attempt_at = excluded.next_attempt_at, \
                         lease_until = NULL, agent = excluded.agent, updated_at = excluded.updated_at",
                    )
                    .bind(&sub.tenant_id)
                    .bind(&sub.id)
                    .bind(event.id.to_string())
                    .bind(row.get::<i64, _>(0))
                    .bind(agent)
                    .bind(now)
                    .bind(now)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    total += done.rows_affected();
                }
                tx.commit().await?;
            }
        }
        self.wake.notify_one();
        Ok(total)
    }
}

const SUBSCRIPTION_COLUMNS: &str = "SELECT id, tenant_id, spec, enabled, disabled_reason, old_secret, \
     old_secret_expires_at, created_at, updated_at FROM subscriptions";

const DELIVERY_COLUMNS: &str = "SELECT id, event_id, subscription_id, sequence, status, attempt_count, \
     next_attempt_at, last_status_code, last_error, created_at, updated_at FROM deliveries";

fn spec_json(spec: &SubscriptionSpec) -> String {
    serde_json::to_string(spec).unwrap_or_default()
}

fn subscription_record(row: &DbRow) -> Result<SubscriptionRecord, StoreError> {
    let mut spec: SubscriptionSpec = serde_json::from_str(row.get(2))
        .map_err(|e| StoreError::Db(sqlx::Error::Decode(Box::new(e))))?;
    spec.enabled = row.get(3);
    Ok(SubscriptionRecord {
        id: row.get(0),
        tenant_id: row.get(1),
        spec,
        disabled_reason: row.get(4),
        old_secret: row.get(5),
        old_secret_expires_at: row.get(6),
        created_at: row.get(7),
        updated_at: row.get(8),
    })
}

fn delivery_record(row: &DbRow) -> DeliveryRecord {
    DeliveryRecord {
        id: row.get(0),
        event_id: row.get(1),
        subscription_id: row.get(2),
        sequence: row.get(3),
        status: DeliveryStatus::parse(row.get(4)).unwrap_or(DeliveryStatus::Pending),
        attempt_count: row.get(5),
        next_attempt_at: row.get(6),
        last_status_code: row.get(7),
        last_error: row.get(8),
        created_at: row.get(9),
        updated_at: row.get(10),
    }
}

fn stored_event(row: &DbRow) -> StoredEvent {
    StoredEvent {
        sequence: row.get(0),
        received_at: row.get(1),
        body: row.get(2),
    }
}

fn tenant(row: &DbRow) -> Tenant {
    Tenant {
        id: row.get(0),
        name: row.get(1),
        created_at: row.get(2),
    }
}

fn key_record(row: &DbRow) -> KeyRecord {
    KeyRecord {
        id: row.get(0),
        tenant_id: row.get(1),
        name: row.get(2),
        scopes: scopes_from_text(row.get(3)),
        created_at: row.get(4),
    }
}

/// A claim request: up to `n` deliveries per listed subscription, leased until `lease_until`.
struct ClaimJob(Vec<(String, u32)>, i64, ClaimReply);

/// Everything one writer turn commits.
#[derive(Default)]
struct Group {
    ingests: Vec<(IngestJob, Reply)>,
    outcomes: Vec<Outcome>,
    outcome_replies: Vec<oneshot::Sender<Result<(), StoreError>>>,
    claims: Vec<ClaimJob>,
    events: usize,
}

impl Group {
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
            Command::Claim(subs, lease, reply) => self.claims.push(ClaimJob(subs, lease, reply)),
            Command::Shutdown => return true,
        }
        false
    }

    fn is_empty(&self) -> bool {
        self.ingests.is_empty() && self.outcome_replies.is_empty() && self.claims.is_empty()
    }
}

/// What a committed turn hands back.
struct Committed {
    ingests: Vec<JobResult>,
    claims: Vec<Vec<Claimed>>,
    deliveries_added: bool,
}

/// The writer task: group commit. Each turn takes every command already queued (up to about
/// [`MAX_GROUP_EVENTS`] events and outcomes), commits them in one transaction, then answers
/// each. A request that conflicts or names a missing tenant is refused alone; a database error
/// fails the whole turn, and nothing of it is stored.
async fn writer(mut conn: Conn, mut rx: mpsc::Receiver<Command>, wake: Arc<Notify>) {
    let mut stopping = false;
    while !stopping {
        let Some(first) = rx.recv().await else { break };
        let mut group = Group::default();
        let mut next = Some(first);
        while let Some(cmd) = next.take() {
            stopping |= group.add(cmd);
            // After a shutdown request, drain everything that was queued before it.
            if group.events < MAX_GROUP_EVENTS || stopping {
                next = rx.try_recv().ok();
            }
        }
        if group.is_empty() {
            continue;
        }
        match commit_group(&mut conn, &group).await {
            Ok(done) => {
                if done.deliveries_added {
                    wake.notify_one();
                }
                for ((_, reply), result) in group.ingests.into_iter().zip(done.ingests) {
                    let _ = reply.send(result);
                }
                for (ClaimJob(_, _, reply), claimed) in group.claims.into_iter().zip(done.claims) {
                    let _ = reply.send(Ok(claimed));
                }
                for reply in group.outcome_replies {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, requests = group.ingests.len(), "group commit failed");
                let failed = || StoreError::GroupCommit(e.to_string());
                for (_, reply) in group.ingests {
                    let _ = reply.send(Err(IngestError::Store(failed())));
                }
                for ClaimJob(_, _, reply) in group.claims {
                    let _ = reply.send(Err(failed()));
                }
                for reply in group.outcome_replies {
                    let _ = reply.send(Err(failed()));
                }
            }
        }
    }
    let _ = conn.close().await;
}

type JobResult = Result<Vec<Accepted>, IngestError>;

/// Commits a group. A group without ingest holds nothing a client was promised — claims and
/// outcomes; losing them in a crash only means an attempt is made again — so its commit does
/// not wait for the disk. The next durable commit flushes it anyway.
async fn commit_group(conn: &mut Conn, group: &Group) -> Result<Committed, sqlx::Error> {
    let relaxed = group.ingests.is_empty();
    if let (true, Some(sql)) = (relaxed, DIALECT.relax_before_begin) {
        conn.execute(sql).await?;
    }
    conn.execute(DIALECT.begin_write).await?;
    let result = match write_group(conn, group, relaxed).await {
        Ok(done) => conn.execute("COMMIT").await.map(|_| done),
        Err(e) => Err(e),
    };
    if result.is_err() {
        let _ = conn.execute("ROLLBACK").await;
    }
    if let (true, Some(sql)) = (relaxed, DIALECT.restore_after_end) {
        conn.execute(sql).await?;
    }
    result
}

async fn write_group(
    conn: &mut Conn,
    group: &Group,
    relaxed: bool,
) -> Result<Committed, sqlx::Error> {
    if let (true, Some(sql)) = (relaxed, DIALECT.relax_in_transaction) {
        conn.execute(sql).await?;
    }
    let now = now_millis();
    let jobs: Vec<&IngestJob> = group.ingests.iter().map(|(job, _)| job).collect();
    let (ingests, deliveries_added) = write_ingests(conn, &jobs, now).await?;
    // One order for row locks across concurrent writers: by subscription, then delivery.
    let mut outcomes: Vec<&Outcome> = group.outcomes.iter().collect();
    outcomes.sort_by(|a, b| {
        (&a.subscription_id, a.delivery_id).cmp(&(&b.subscription_id, b.delivery_id))
    });
    record_outcomes(conn, &outcomes, now).await?;
    let mut claims = Vec::with_capacity(group.claims.len());
    for ClaimJob(subs, lease_until, _) in &group.claims {
        claims.push(claim(conn, subs, *lease_until, now).await?);
    }
    let deliveries_added = deliveries_added || !group.outcomes.is_empty();
    if let (true, Some(notify)) = (deliveries_added, DIALECT.notify) {
        // Other nodes' dispatchers wake when this commits.
        conn.execute(notify).await?;
    }
    Ok(Committed {
        ingests,
        claims,
        deliveries_added,
    })
}

/// Decides every ingest request of the group, then writes the accepted events and their
/// deliveries (the outbox rows) in a few statements.
async fn write_ingests(
    conn: &mut Conn,
    jobs: &[&IngestJob],
    received_at: i64,
) -> Result<(Vec<JobResult>, bool), sqlx::Error> {
    let now = Timestamp::now();
    // Per tenant: the last sequence as of this group; and the events this group adds, which
    // later requests of the group must see when they look for duplicates.
    let mut last: HashMap<&str, i64> = HashMap::new();
    let mut added: HashMap<(&str, Uuid), (i64, Event)> = HashMap::new();
    let mut results = Vec::with_capacity(jobs.len());

    // Lock every tenant of the group in one order, so that concurrent writers (other nodes)
    // can wait on each other but never deadlock; the lock serialises sequences per tenant.
    let tenants: std::collections::BTreeSet<&str> =
        jobs.iter().map(|j| j.tenant.as_str()).collect();
    for tenant in tenants {
        let row = sqlx::query(DIALECT.lock_tenant)
            .bind(tenant)
            .fetch_optional(&mut *conn)
            .await?;
        if let Some(row) = row {
            last.insert(tenant, row.get(0));
        }
    }

    let stored = find_stored(conn, jobs).await?;
    for job in jobs {
        let tenant = job.tenant.as_str();
        let Some(&base) = last.get(tenant) else {
            results.push(Err(IngestError::TenantNotFound));
            continue;
        };

        let mut seq = base;
        let mut accepted = Vec::with_capacity(job.events.len());
        let mut conflicts = Vec::new();
        let mut mine: HashMap<Uuid, (i64, Event)> = HashMap::new();
        for (index, ev) in job.events.iter().enumerate() {
            let prior = stored
                .get(&(tenant, ev.id))
                .or_else(|| added.get(&(tenant, ev.id)))
                .or_else(|| mine.get(&ev.id));
            match prior {
                Some((sequence, existing)) if ev.same_as(existing) => accepted.push(Accepted {
                    id: ev.id,
                    sequence: *sequence,
                    duplicate: true,
                }),
                Some(_) => conflicts.push((index, ev.id)),
                None => {
                    seq += 1;
                    mine.insert(ev.id, (seq, ev.complete(now)));
                    accepted.push(Accepted {
                        id: ev.id,
                        sequence: seq,
                        duplicate: false,
                    });
                }
            }
        }
        if conflicts.is_empty() {
            last.insert(tenant, seq);
            added.extend(mine.into_iter().map(|(id, v)| ((tenant, id), v)));
            results.push(Ok(accepted));
        } else {
            last.insert(tenant, base);
            results.push(Err(IngestError::Conflict(conflicts)));
        }
    }

    let rows: Vec<_> = added.iter().collect();
    for chunk in fixed_chunks(&rows) {
        insert_events(conn, chunk, received_at).await?;
    }

    // The outbox: one delivery per new event and matching enabled subscription.
    let mut deliveries = Vec::new();
    for &tenant in last.keys() {
        let subs = enabled_filters(conn, tenant).await?;
        if subs.is_empty() {
            continue;
        }
        for ((t, id), (seq, ev)) in &added {
            if t != &tenant {
                continue;
            }
            for (sub_id, filter, ordering) in &subs {
                if subscription::matches(filter.as_ref(), ev) {
                    let agent = match ordering {
                        Ordering::PerAgent => ev.agent_key().map(str::to_owned),
                        Ordering::None => None,
                    };
                    deliveries.push(NewDelivery {
                        tenant,
                        subscription_id: sub_id.clone(),
                        event_id: id.to_string(),
                        sequence: *seq,
                        agent,
                    });
                }
            }
        }
    }
    for chunk in fixed_chunks(&deliveries) {
        insert_deliveries(conn, chunk, received_at).await?;
    }

    for (tenant, seq) in last {
        sqlx::query("UPDATE tenants SET last_sequence = $1 WHERE id = $2 AND last_sequence < $3")
            .bind(seq)
            .bind(tenant)
            .bind(seq)
            .execute(&mut *conn)
            .await?;
    }
    Ok((results, !deliveries.is_empty()))
}

/// Splits `rows` into chunks of the sizes in [`INSERT_CHUNKS`], so that multi-row statements
/// come in a handful of shapes that stay in the prepared-statement cache.
fn fixed_chunks<T>(rows: &[T]) -> Vec<&[T]> {
    let mut out = Vec::new();
    let mut rest = rows;
    for size in INSERT_CHUNKS {
        while rest.len() >= size {
            let (chunk, tail) = rest.split_at(size);
            out.push(chunk);
            rest = tail;
        }
    }
    out
}

/// The enabled subscriptions of a tenant: id, filter and ordering.
async fn enabled_filters(
    conn: &mut Conn,
    tenant: &str,
) -> Result<Vec<(String, Option<Filter>, Ordering)>, sqlx::Error> {
    let rows =
        sqlx::query("SELECT id, spec FROM subscriptions WHERE tenant_id = $1 AND enabled = TRUE")
            .bind(tenant)
            .fetch_all(&mut *conn)
            .await?;
    rows.iter()
        .map(|row| {
            let spec: SubscriptionSpec =
                serde_json::from_str(row.get(1)).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            Ok((row.get(0), spec.filter, spec.ordering))
        })
        .collect()
}

struct NewDelivery<'a> {
    tenant: &'a str,
    subscription_id: String,
    event_id: String,
    sequence: i64,
    agent: Option<String>,
}

async fn insert_deliveries(
    conn: &mut Conn,
    rows: &[NewDelivery<'_>],
    now: i64,
) -> Result<(), sqlx::Error> {
    let mut sql = QueryBuilder::<Db>::new(
        "INSERT INTO deliveries (tenant_id, subscription_id, event_id, sequence, agent, status, \
         next_attempt_at, created_at, updated_at) ",
    );
    sql.push_values(rows, |mut b, d| {
        b.push_bind(d.tenant)
            .push_bind(&d.subscription_id)
            .push_bind(&d.event_id)
            .push_bind(d.sequence)
            .push_bind(&d.agent)
            .push_bind("pending")
            .push_bind(now)
            .push_bind(now)
            .push_bind(now);
    });
    sql.build().execute(&mut *conn).await?;
    Ok(())
}

/// Writes attempts and their deliveries' new state (the same transaction, always), a chunk of
/// rows per statement, then each subscription's health once.
async fn record_outcomes(
    conn: &mut Conn,
    outcomes: &[&Outcome],
    now: i64,
) -> Result<(), sqlx::Error> {
    for chunk in fixed_chunks(outcomes) {
        let mut sql = QueryBuilder::<Db>::new(
            "INSERT INTO attempts (delivery_id, number, started_at, duration_ms, status_code, \
             error, response_body) ",
        );
        sql.push_values(chunk, |mut b, o| {
            b.push_bind(o.delivery_id)
                .push_bind(i64::from(o.attempt))
                .push_bind(o.started_at)
                .push_bind(o.duration_ms)
                .push_bind(o.status_code.map(i64::from))
                .push_bind(&o.error)
                .push_bind(&o.response_body);
        });
        sql.push(" ON CONFLICT DO NOTHING");
        sql.build().execute(&mut *conn).await?;

        // VALUES columns are column1, column2, … on both backends.
        let mut sql = QueryBuilder::<Db>::new(
            "UPDATE deliveries SET status = v.column2, \
             attempt_count = CASE WHEN attempt_count > v.column3 THEN attempt_count ELSE v.column3 END, \
             round_attempts = v.column4, next_attempt_at = v.column5, lease_until = NULL, \
             last_status_code = v.column6, last_error = v.column7, updated_at = ",
        );
        sql.push_bind(now).push(" FROM (");
        sql.push_values(chunk, |mut b, o| {
            let (status, next_at) = match o.next {
                NextState::Succeeded => (DeliveryStatus::Succeeded, None),
                NextState::RetryAt(at) => (DeliveryStatus::Pending, Some(at)),
                NextState::Failed => (DeliveryStatus::Failed, None),
            };
            b.push_bind(o.delivery_id)
                .push_bind(status.as_str())
                .push_bind(i64::from(o.attempt))
                .push_bind(i64::from(o.round_attempt))
                .push_bind(next_at)
                .push_bind(o.status_code.map(i64::from))
                .push_bind(&o.error);
        });
        sql.push(") AS v WHERE id = v.column1");
        sql.build().execute(&mut *conn).await?;
    }

    // Subscription health: 410 disables at once; failing everything for 72 h with at least
    // 10 attempts disables too; any success resets the count. `outcomes` is sorted by
    // subscription, so rows are locked in one order.
    for group in outcomes.chunk_by(|a, b| a.subscription_id == b.subscription_id) {
        let sub = &group[0].subscription_id;
        let failures = group
            .iter()
            .filter(|o| o.next != NextState::Succeeded)
            .count() as i64;
        if let Some(reason) = group.iter().find_map(|o| o.disable.as_ref()) {
            sqlx::query(
                "UPDATE subscriptions SET enabled = FALSE, disabled_reason = $1, updated_at = $2 \
                 WHERE id = $3 AND enabled = TRUE",
            )
            .bind(reason)
            .bind(now)
            .bind(sub)
            .execute(&mut *conn)
            .await?;
        } else if failures < group.len() as i64 {
            sqlx::query(
                "UPDATE subscriptions SET failing_since = NULL, failures = 0 WHERE id = $1 AND failures > 0",
            )
            .bind(sub)
            .execute(&mut *conn)
            .await?;
        } else {
            sqlx::query(
                "UPDATE subscriptions SET failing_since = COALESCE(failing_since, $1), \
                 failures = failures + $2 WHERE id = $3",
            )
            .bind(now)
            .bind(failures)
            .bind(sub)
            .execute(&mut *conn)
            .await?;
            sqlx::query(
                "UPDATE subscriptions SET enabled = FALSE, updated_at = $1, \
                 disabled_reason = 'every attempt failed for 72 hours' \
                 WHERE id = $2 AND enabled = TRUE AND failures >= $3 AND failing_since <= $4",
            )
            .bind(now)
            .bind(sub)
            .bind(AUTO_DISABLE_ATTEMPTS)
            .bind(now - AUTO_DISABLE_AFTER_MS)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

/// A subscription failing everything this long, with at least this many attempts, is disabled.
const AUTO_DISABLE_AFTER_MS: i64 = 72 * 3600 * 1000;
const AUTO_DISABLE_ATTEMPTS: i64 = 10;

/// Leases up to `n` due deliveries of each subscription and returns them with their bodies.
/// For `per_agent` subscriptions a delivery is due only when no earlier pending delivery of the
/// same agent exists, so an agent's events go out one at a time, in sequence order.
async fn claim(
    conn: &mut Conn,
    subs: &[(String, u32)],
    lease_until: i64,
    now: i64,
) -> Result<Vec<Claimed>, sqlx::Error> {
    let mut out = Vec::new();
    for (sub_id, n) in subs {
        let rows = sqlx::query(DIALECT.claim)
            .bind(lease_until)
            .bind(sub_id)
            .bind(now)
            .bind(i64::from(*n))
            .fetch_all(&mut *conn)
            .await?;
        let Some(first) = rows.first() else { continue };
        let tenant: String = first.get(1);
        let mut bodies: HashMap<i64, String> = HashMap::with_capacity(rows.len());
        let sequences: Vec<i64> = rows.iter().map(|row| row.get(3)).collect();
        let mut sql =
            QueryBuilder::<Db>::new("SELECT sequence, body FROM events WHERE tenant_id = ");
        sql.push_bind(&tenant).push(" AND sequence IN (");
        push_padded_list(&mut sql, &sequences);
        for row in sql.build().fetch_all(&mut *conn).await? {
            bodies.insert(row.get(0), row.get(1));
        }
        for row in rows {
            let sequence: i64 = row.get(3);
            let attempts: i64 = row.get(4);
            let round: i64 = row.get(5);
            let body = bodies.remove(&sequence).ok_or(sqlx::Error::RowNotFound)?;
            out.push(Claimed {
                delivery_id: row.get(0),
                subscription_id: sub_id.clone(),
                event_id: row.get(2),
                sequence,
                attempt: attempts as u32 + 1,
                round_attempt: round as u32 + 1,
                body: body.into(),
            });
        }
    }
    out.sort_by_key(|c| c.sequence);
    Ok(out)
}

/// The already stored events among those the producers of a group gave ids to, by tenant and
/// id: one query per tenant (and per [`IN_LIST`] ids), whatever the number of requests.
async fn find_stored<'a>(
    conn: &mut Conn,
    jobs: &[&'a IngestJob],
) -> Result<HashMap<(&'a str, Uuid), (i64, Event)>, sqlx::Error> {
    let mut given: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for job in jobs {
        let ids = given.entry(job.tenant.as_str()).or_default();
        ids.extend(
            job.events
                .iter()
                .filter(|e| e.id_given)
                .map(|e| e.id.to_string()),
        );
    }
    let mut found = HashMap::new();
    for (tenant, ids) in given {
        for chunk in ids.chunks(IN_LIST) {
            let mut sql =
                QueryBuilder::<Db>::new("SELECT sequence, body FROM events WHERE tenant_id = ");
            sql.push_bind(tenant).push(" AND id IN (");
            push_padded_list(&mut sql, chunk);
            for row in sql.build().fetch_all(&mut *conn).await? {
                let body: &str = row.get(1);
                let event = Event::from_canonical_json(body)
                    .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
                found.insert((tenant, event.id), (row.get(0), event));
            }
        }
    }
    Ok(found)
}

/// Most values in one `IN (…)` list.
const IN_LIST: usize = 512;

/// Binds `items` as the values of an `IN (…)` list and closes it. The list is padded to a power
/// of two with copies of its last value (which change nothing), so that lists of any length
/// take one of a few statement shapes, prepared once each.
fn push_padded_list<'a, T>(sql: &mut QueryBuilder<'a, Db>, items: &'a [T])
where
    T: sqlx::Encode<'a, Db> + sqlx::Type<Db> + Send + Sync + 'a,
    &'a T: sqlx::Encode<'a, Db> + sqlx::Type<Db> + Send,
{
    let Some(last) = items.last() else {
        sql.push("NULL)");
        return;
    };
    let mut list = sql.separated(", ");
    for item in items {
        list.push_bind(item);
    }
    for _ in items.len()..items.len().next_power_of_two() {
        list.push_bind(last);
    }
    sql.push(")");
}

/// An event this group adds: `((tenant, id), (sequence, event))`.
type NewRow<'a> = (&'a (&'a str, Uuid), &'a (i64, Event));

async fn insert_events(
    conn: &mut Conn,
    rows: &[NewRow<'_>],
    received_at: i64,
) -> Result<(), sqlx::Error> {
    let mut sql = QueryBuilder::<Db>::new(
        "INSERT INTO events \
         (tenant_id, sequence, id, created, category, code, username, received_at, body) ",
    );
    sql.push_values(rows, |mut b, ((tenant, id), (seq, ev))| {
        b.push_bind(*tenant)
            .push_bind(*seq)
            .push_bind(id.to_string())
            .push_bind(ev.creation.as_i64())
            .push_bind(i64::from(ev.category))
            .push_bind(i64::from(ev.code))
            .push_bind(ev.username().map(str::to_owned))
            .push_bind(received_at)
            .push_bind(ev.to_canonical_json());
    });
    sql.build().execute(&mut *conn).await?;
    Ok(())
}
