//! Reads of a tenant's event log.

use uuid::Uuid;

use super::db::{Db, Row, Select, args};
use super::{EventQuery, Store, StoreError, StoredEvent};

fn stored_event(mut r: Row) -> Result<StoredEvent, StoreError> {
    Ok(StoredEvent {
        sequence: r.int(0)?,
        received_at: r.int(1)?,
        body: r.text(2)?,
    })
}

/// The statement of [`Store::list_events`]. `username` is served by `events_username`, `code`
/// by `events_code` (both ordered by sequence after their key, as the page is).
fn list_events_sql<'a>(tenant: &'a str, q: &'a EventQuery) -> Select<'a> {
    let mut sql = Select::new("SELECT sequence, received_at, body FROM events");
    sql.push(" WHERE tenant_id = ", tenant)
        .push(" AND sequence > ", q.after);
    if let Some(c) = q.category {
        sql.push(" AND category = ", i64::from(c));
    }
    if let Some(c) = q.code {
        sql.push(" AND code = ", i64::from(c));
    }
    if let Some(u) = &q.username {
        sql.push(" AND username = ", u.as_str());
    }
    if let Some(t) = q.since {
        sql.push(" AND created >= ", t.as_i64());
    }
    if let Some(t) = q.until {
        sql.push(" AND created <= ", t.as_i64());
    }
    if let Some(s) = q.through {
        sql.push(" AND sequence <= ", s);
    }
    sql.push(" ORDER BY sequence LIMIT ", i64::from(q.limit));
    sql
}

impl Store {
    pub async fn list_events(
        &self,
        tenant: &str,
        q: &EventQuery,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let sql = list_events_sql(tenant, q);
        let rows = self.0.db.query(&sql.sql, &sql.args).await?;
        rows.into_iter().map(stored_event).collect()
    }

    /// The database's plan for [`Store::list_events`] (`EXPLAIN`), one line per step: for the
    /// tests that check a query is served by an index, and for diagnosis.
    #[doc(hidden)]
    pub async fn list_events_plan(
        &self,
        tenant: &str,
        q: &EventQuery,
    ) -> Result<String, StoreError> {
        let sql = list_events_sql(tenant, q);
        self.plan(&sql).await
    }

    /// `EXPLAIN` of a statement, one line per step.
    pub(super) async fn plan(&self, sql: &Select<'_>) -> Result<String, StoreError> {
        let (explain, column) = match self.0.db {
            Db::Sqlite(_) => ("EXPLAIN QUERY PLAN ", 3),
            Db::Postgres(_) => ("EXPLAIN ", 0),
        };
        let rows = self
            .0
            .db
            .query(&format!("{explain}{}", sql.sql), &sql.args)
            .await?;
        let mut lines = Vec::with_capacity(rows.len());
        for mut row in rows {
            lines.push(row.text(column)?);
        }
        Ok(lines.join("\n"))
    }

    /// `tenant`'s last sequence: every event up to it is committed and readable.
    pub async fn last_sequence(&self, tenant: &str) -> Result<i64, StoreError> {
        let row = self
            .0
            .db
            .query_one(
                "SELECT last_sequence FROM tenants WHERE id = $1",
                &args![tenant],
            )
            .await?;
        row.map_or(Ok(0), |r| r.int(0))
    }

    pub async fn get_event(
        &self,
        tenant: &str,
        id: Uuid,
    ) -> Result<Option<StoredEvent>, StoreError> {
        let Some(sequence) = self.sequence_of(tenant, id).await? else {
            return Ok(None);
        };
        let row = self
            .0
            .db
            .query_one(
                "SELECT sequence, received_at, body FROM events \
                 WHERE tenant_id = $1 AND sequence = $2",
                &args![tenant, sequence],
            )
            .await?;
        row.map(stored_event).transpose()
    }

    /// The sequence `tenant`'s event `id` is stored under. On SQLite memory is asked first: an
    /// `Id` leaves it only once `event_ids` has it (see `sqlite/ids.rs`).
    pub(super) async fn sequence_of(
        &self,
        tenant: &str,
        id: Uuid,
    ) -> Result<Option<i64>, StoreError> {
        let text = id.to_string();
        let row = match &self.0.ids {
            Some(ids) => {
                let hint = ids.hint(tenant, &id).unwrap_or(-1);
                let query = "SELECT sequence FROM events \
                     WHERE tenant_id = $1 AND sequence = $2 AND id = $3 \
                     UNION ALL SELECT sequence FROM event_ids WHERE tenant_id = $1 AND id = $4 \
                     LIMIT 1";
                let bytes = id.as_bytes().as_slice();
                let args = args![tenant, hint, text.as_str(), super::db::Arg::Blob(bytes)];
                self.0.db.query_one(query, &args).await?
            }
            None => {
                let query = "SELECT sequence FROM events WHERE tenant_id = $1 AND id = $2";
                self.0
                    .db
                    .query_one(query, &args![tenant, text.as_str()])
                    .await?
            }
        };
        row.map(|r| r.int(0)).transpose()
    }
}
