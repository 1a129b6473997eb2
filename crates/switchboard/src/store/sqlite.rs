//! The embedded SQLite backend.
//!
//! SQLite has one writer at a time, so ingest has exactly one: a task that owns a connection,
//! takes every request queued on its channel, and commits them in one `BEGIN IMMEDIATE`
//! transaction — one fsync (WAL, `synchronous=FULL`) for many requests. A request's reply is
//! sent only after `COMMIT` returns, which is what makes a 202 durable. Reads and the rare
//! administrative writes use a separate pool; those writes wait on SQLite's lock (busy timeout).

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_core::future::BoxFuture;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Connection, Executor, QueryBuilder, Row, Sqlite};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::{
    Accepted, CreateError, EventQuery, IngestError, IngestJob, KeyRecord, StoreError, StoredEvent,
    Tenant, now_millis, scopes_from_text, scopes_to_text,
};
use crate::auth::Scope;
use crate::event::{Event, NewEvent, Timestamp};

/// The migrations, compiled in; versions only ever grow.
const MIGRATIONS: &[(i64, &str, &str)] =
    &[(1, "init", include_str!("migrations/sqlite/0001_init.sql"))];

/// Most events one group commit takes; more wait for the next.
const MAX_GROUP_EVENTS: usize = 10_000;
/// Requests waiting for the writer before `ingest` callers queue up behind them.
const QUEUE_DEPTH: usize = 4096;
/// Insert this many rows per statement (then smaller), so a handful of statements are cached.
const INSERT_CHUNKS: [usize; 3] = [128, 16, 1];

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

enum Command {
    Ingest(IngestJob, Reply),
    /// Commit what is queued, then stop.
    Shutdown,
}

/// The store handle; cheap to clone.
#[derive(Clone)]
pub struct Store {
    read: SqlitePool,
    writer: mpsc::Sender<Command>,
    writer_task: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a committed transaction survives power loss, not only a process crash.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .pragma("cache_size", "-32000");

        let mut conn = SqliteConnection::connect_with(&options).await?;
        Migrator::new(Embedded).await?.run_direct(&mut conn).await?;

        let read = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .connect_with(options)
            .await?;
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let task = tokio::spawn(writer(conn, rx));
        Ok(Self {
            read,
            writer: tx,
            writer_task: Arc::new(Mutex::new(Some(task))),
        })
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
        let mut sql = QueryBuilder::<Sqlite>::new(
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
            "SELECT sequence, received_at, body FROM events WHERE tenant_id = ? AND id = ?",
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
            "INSERT INTO tenants (id, name, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
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
        let row = sqlx::query("SELECT id, name, created_at FROM tenants WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
        Ok(row.as_ref().map(tenant))
    }

    pub async fn list_tenants(&self, after: &str, limit: u32) -> Result<Vec<Tenant>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, created_at FROM tenants WHERE id > ? ORDER BY id LIMIT ?",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        Ok(rows.iter().map(tenant).collect())
    }

    /// Deletes a tenant with its keys and events; false if there was none.
    pub async fn delete_tenant(&self, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.read.begin().await?;
        let gone = sqlx::query("DELETE FROM tenants WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        for table in ["api_keys", "events"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE tenant_id = ?"))
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
             SELECT ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM tenants WHERE id = ?)",
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
             WHERE tenant_id = ? AND id > ? ORDER BY id LIMIT ?",
        )
        .bind(tenant)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        Ok(rows.iter().map(key_record).collect())
    }

    pub async fn delete_key(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM api_keys WHERE tenant_id = ? AND id = ?")
            .bind(tenant)
            .bind(id)
            .execute(&self.read)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The key with this hash, if any.
    pub async fn find_key(&self, key_hash: &str) -> Result<Option<KeyRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT id, tenant_id, name, scopes, created_at FROM api_keys WHERE key_hash = ?",
        )
        .bind(key_hash)
        .fetch_optional(&self.read)
        .await?;
        Ok(row.as_ref().map(key_record))
    }
}

fn stored_event(row: &sqlx::sqlite::SqliteRow) -> StoredEvent {
    StoredEvent {
        sequence: row.get(0),
        received_at: row.get(1),
        body: row.get(2),
    }
}

fn tenant(row: &sqlx::sqlite::SqliteRow) -> Tenant {
    Tenant {
        id: row.get(0),
        name: row.get(1),
        created_at: row.get(2),
    }
}

fn key_record(row: &sqlx::sqlite::SqliteRow) -> KeyRecord {
    KeyRecord {
        id: row.get(0),
        tenant_id: row.get(1),
        name: row.get(2),
        scopes: scopes_from_text(row.get(3)),
        created_at: row.get(4),
    }
}

/// The writer task: group commit. Each turn takes every request already queued (up to
/// [`MAX_GROUP_EVENTS`]), commits them in one transaction, then answers each. A request that
/// conflicts or names a missing tenant is refused alone; a database error fails the whole group,
/// and nothing of it is stored.
async fn writer(mut conn: SqliteConnection, mut rx: mpsc::Receiver<Command>) {
    let mut stopping = false;
    while !stopping {
        let Some(first) = rx.recv().await else { break };
        let mut group = Vec::new();
        let mut events = 0;
        let mut next = Some(first);
        while let Some(cmd) = next.take() {
            match cmd {
                Command::Ingest(job, reply) => {
                    events += job.events.len();
                    group.push((job, reply));
                }
                Command::Shutdown => stopping = true,
            }
            // After a shutdown request, drain everything that was queued before it.
            if events < MAX_GROUP_EVENTS || stopping {
                next = rx.try_recv().ok();
            }
        }
        if group.is_empty() {
            continue;
        }
        let jobs: Vec<&IngestJob> = group.iter().map(|(job, _)| job).collect();
        match commit_group(&mut conn, &jobs).await {
            Ok(results) => {
                for ((_, reply), result) in group.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, requests = group.len(), "group commit failed");
                for (_, reply) in group {
                    let failed = StoreError::GroupCommit(e.to_string());
                    let _ = reply.send(Err(IngestError::Store(failed)));
                }
            }
        }
    }
    let _ = conn.close().await;
}

type JobResult = Result<Vec<Accepted>, IngestError>;

async fn commit_group(
    conn: &mut SqliteConnection,
    jobs: &[&IngestJob],
) -> Result<Vec<JobResult>, sqlx::Error> {
    conn.execute("BEGIN IMMEDIATE").await?;
    let result = match write_group(conn, jobs).await {
        Ok(results) => conn.execute("COMMIT").await.map(|_| results),
        Err(e) => Err(e),
    };
    if result.is_err() {
        let _ = conn.execute("ROLLBACK").await;
    }
    result
}

/// Decides every request of the group, then writes the accepted events in a few statements.
async fn write_group(
    conn: &mut SqliteConnection,
    jobs: &[&IngestJob],
) -> Result<Vec<JobResult>, sqlx::Error> {
    let received_at = now_millis();
    let now = Timestamp::now();
    // Per tenant: the last sequence as of this group; and the events this group adds, which
    // later requests of the group must see when they look for duplicates.
    let mut last: HashMap<&str, i64> = HashMap::new();
    let mut added: HashMap<(&str, Uuid), (i64, Event)> = HashMap::new();
    let mut results = Vec::with_capacity(jobs.len());

    for job in jobs {
        let tenant = job.tenant.as_str();
        let base = match last.get(tenant) {
            Some(&seq) => seq,
            None => {
                let row = sqlx::query("SELECT last_sequence FROM tenants WHERE id = ?")
                    .bind(tenant)
                    .fetch_optional(&mut *conn)
                    .await?;
                match row {
                    Some(row) => row.get(0),
                    None => {
                        results.push(Err(IngestError::TenantNotFound));
                        continue;
                    }
                }
            }
        };
        let stored = find_stored(conn, tenant, &job.events).await?;

        let mut seq = base;
        let mut accepted = Vec::with_capacity(job.events.len());
        let mut conflicts = Vec::new();
        let mut mine: HashMap<Uuid, (i64, Event)> = HashMap::new();
        for (index, ev) in job.events.iter().enumerate() {
            let prior = stored
                .get(&ev.id)
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
    let mut rest = rows.as_slice();
    for size in INSERT_CHUNKS {
        while rest.len() >= size {
            let (chunk, tail) = rest.split_at(size);
            insert_events(conn, chunk, received_at).await?;
            rest = tail;
        }
    }
    for (tenant, seq) in last {
        sqlx::query("UPDATE tenants SET last_sequence = ? WHERE id = ? AND last_sequence < ?")
            .bind(seq)
            .bind(tenant)
            .bind(seq)
            .execute(&mut *conn)
            .await?;
    }
    Ok(results)
}

/// The already stored events among those the producer gave ids to.
async fn find_stored(
    conn: &mut SqliteConnection,
    tenant: &str,
    events: &[NewEvent],
) -> Result<HashMap<Uuid, (i64, Event)>, sqlx::Error> {
    let mut found = HashMap::new();
    let given: Vec<String> = events
        .iter()
        .filter(|e| e.id_given)
        .map(|e| e.id.to_string())
        .collect();
    for chunk in given.chunks(500) {
        let mut sql =
            QueryBuilder::<Sqlite>::new("SELECT sequence, body FROM events WHERE tenant_id = ");
        sql.push_bind(tenant).push(" AND id IN (");
        let mut list = sql.separated(", ");
        for id in chunk {
            list.push_bind(id);
        }
        sql.push(")");
        for row in sql.build().fetch_all(&mut *conn).await? {
            let body: &str = row.get(1);
            let event =
                Event::from_canonical_json(body).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            found.insert(event.id, (row.get(0), event));
        }
    }
    Ok(found)
}

/// An event this group adds: `((tenant, id), (sequence, event))`.
type NewRow<'a> = (&'a (&'a str, Uuid), &'a (i64, Event));

async fn insert_events(
    conn: &mut SqliteConnection,
    rows: &[NewRow<'_>],
    received_at: i64,
) -> Result<(), sqlx::Error> {
    let mut sql = QueryBuilder::<Sqlite>::new(
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
