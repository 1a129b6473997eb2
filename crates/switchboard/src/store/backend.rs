// The backend-independent half of a store, included by `sqlite.rs` and `postgres.rs`: reads and
// administrative writes through an sqlx pool, and the handle on the backend's writer (its own
// `writer.rs`; what the writers share is in `group.rs`). Each backend defines, before including
// this file: `Db` (the sqlx database), `DbRow`, `DbPool`, `DIALECT` (the few statements that
// differ) and `MIGRATIONS`. The SQL here is written once, with `$N` placeholders that both
// SQLite and PostgreSQL accept.

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

/// The backend handle; cheap to clone.
#[derive(Clone)]
pub struct Backend {
    read: DbPool,
    writer: mpsc::Sender<Command>,
    /// Signalled after a commit that made deliveries due, to wake the dispatcher.
    wake: Arc<Notify>,
    /// Bumped on every subscription change made through this handle (and, on PostgreSQL, on
    /// every node's).
    subs_version: Arc<AtomicU64>,
    /// API keys by hash, as authentication found them.
    keys: Arc<super::KeyCache>,
    /// Resolves when the writer has committed its last turn and closed its connection.
    writer_done: Arc<Mutex<Option<oneshot::Receiver<()>>>>,
    /// What the backend keeps of event ids outside its tables, if anything.
    ids: Ids,
}

impl Backend {
    /// A handle on a started writer (`writer`, answering on `writer_done`) and the read pool.
    fn start(
        read: DbPool,
        writer: mpsc::Sender<Command>,
        wake: Arc<Notify>,
        writer_done: oneshot::Receiver<()>,
        ids: Ids,
    ) -> Self {
        Self {
            read,
            writer,
            wake,
            subs_version: Arc::new(AtomicU64::new(0)),
            keys: Arc::default(),
            writer_done: Arc::new(Mutex::new(Some(writer_done))),
            ids,
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
        let done = self.writer_done.lock().ok().and_then(|mut t| t.take());
        if let Some(done) = done {
            let _ = self.writer.send(Command::Shutdown).await;
            let _ = done.await;
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
        let Some(sequence) = self.sequence_of(tenant, id).await? else {
            return Ok(None);
        };
        let row = sqlx::query(
            "SELECT sequence, received_at, body FROM events WHERE tenant_id = $1 AND sequence = $2",
        )
        .bind(tenant)
        .bind(sequence)
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
        for table in DIALECT.tenant_tables {
            sqlx::query(&format!("DELETE FROM {table} WHERE tenant_id = $1"))
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.ids.forget(id);
        self.announce(super::Change::Keys).await;
        self.announce(super::Change::Subscriptions).await;
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
        self.announce(super::Change::Keys).await;
        Ok(done.rows_affected() > 0)
    }

    /// The key with this hash, if any; from memory when it was found recently.
    pub async fn find_key(&self, key_hash: &str) -> Result<Option<KeyRecord>, StoreError> {
        if let Some(key) = self.keys.get(key_hash) {
            return Ok(Some(key));
        }
        // Read before the query: a deletion announced meanwhile makes this entry stale.
        let version = self.keys.version();
        let row = sqlx::query(
            "SELECT id, tenant_id, name, scopes, created_at FROM api_keys WHERE key_hash = $1",
        )
        .bind(key_hash)
        .fetch_optional(&self.read)
        .await?;
        let key = row.as_ref().map(key_record);
        if let Some(key) = &key {
            self.keys.put(key_hash, key.clone(), version);
        }
        Ok(key)
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

    /// Something nodes keep in memory changed: this node forgets it at once, and on PostgreSQL
    /// every other node does when the notification arrives.
    async fn announce(&self, change: super::Change) {
        self.changed(change);
        if let Some(sql) = DIALECT.announce
            && let Err(e) = sqlx::query(sql)
                .bind(change.as_str())
                .execute(&self.read)
                .await
        {
            tracing::warn!(error = %e, "could not notify the other nodes; they catch up by themselves");
        }
    }

    /// Forgets what `change` made stale.
    fn changed(&self, change: super::Change) {
        match change {
            super::Change::Subscriptions => {
                self.subs_version.fetch_add(1, AtomicOrdering::SeqCst);
                self.wake.notify_one();
            }
            super::Change::Keys => self.keys.invalidate(),
        }
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

    /// Gives back the leases of claimed deliveries that were not attempted (rare: a
    /// subscription disabled, a shutdown), outside the writer.
    pub async fn release_leases(&self, ids: Vec<i64>) -> Result<(), StoreError> {
        for chunk in ids.chunks(500) {
            let mut sql =
                QueryBuilder::<Db>::new("UPDATE deliveries SET lease_until = NULL WHERE id IN (");
            let mut list = sql.separated(", ");
            for id in chunk {
                list.push_bind(*id);
            }
            sql.push(")");
            sql.build().execute(&self.read).await?;
        }
        Ok(())
    }

    pub async fn stats(&self) -> Result<Stats, StoreError> {
        let pending: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM deliveries WHERE status = 'pending'")
                .fetch_one(&self.read)
                .await?;
        let row = sqlx::query(
            "SELECT COALESCE(SUM(CASE WHEN enabled THEN 1 ELSE 0 END), 0), COUNT(*) \
             FROM subscriptions",
        )
        .fetch_one(&self.read)
        .await?;
        Ok(Stats {
            pending,
            subscriptions_enabled: row.get(0),
            subscriptions: row.get(1),
        })
    }

    /// When the earliest pending delivery of an enabled subscription is due (unix ms).
    pub async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        let due: Option<i64> = sqlx::query_scalar(
            // Per subscription, the first unleased row in due order (an index walk that stops
            // there), not a scan of every pending row.
            "SELECT MIN((SELECT d.next_attempt_at FROM deliveries d \
               WHERE d.subscription_id = s.id AND d.status = 'pending' \
                 AND (d.lease_until IS NULL OR d.lease_until < $1) \
               ORDER BY d.next_attempt_at LIMIT 1)) \
             FROM subscriptions s WHERE s.enabled = TRUE",
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
        self.announce(super::Change::Subscriptions).await;
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
        self.announce(super::Change::Subscriptions).await;
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
        self.announce(super::Change::Subscriptions).await;
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
        let Some(sequence) = self.sequence_of(tenant, event_id).await? else {
            return Ok(Vec::new());
        };
        let rows = sqlx::query(&format!(
            "{DELIVERY_COLUMNS} WHERE tenant_id = $1 AND sequence = $2 ORDER BY id"
        ))
        .bind(tenant)
        .bind(sequence)
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
                    let Some(agent) =
                        group::delivery_agent(&event, sub.spec.filter.as_ref(), sub.spec.ordering)
                    else {
                        continue;
                    };
                    let done = sqlx::query(
                        "INSERT INTO deliveries (tenant_id, subscription_id, event_id, sequence, \
                         agent, status, next_attempt_at, created_at, updated_at) \
                         VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $8) \
                         ON CONFLICT (subscription_id, sequence) DO UPDATE SET status = 'pending', \
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
