//! Reads of a tenant's event log.

use uuid::Uuid;

use super::db::{Db, Row, Select, args};
use super::usernames::{self, Part};
use super::{EventQuery, Store, StoreError, StoredEvent};

fn stored_event(mut r: Row) -> Result<StoredEvent, StoreError> {
    Ok(StoredEvent {
        sequence: r.int(0)?,
        received_at: r.int(1)?,
        body: r.text(2)?,
    })
}

/// The filters of a log query other than `username` (and `after`), on `e.` columns.
fn filters<'a>(q: &'a EventQuery, sql: &mut Select<'a>) {
    if let Some(c) = q.category {
        sql.push(" AND e.category = ", i64::from(c));
    }
    if let Some(c) = q.code {
        sql.push(" AND e.code = ", i64::from(c));
    }
    if let Some(t) = q.since {
        sql.push(" AND e.created >= ", t.as_i64());
    }
    if let Some(t) = q.until {
        sql.push(" AND e.created <= ", t.as_i64());
    }
}

/// The statement of [`Store::list_events`] without `username` (`code` is served by
/// `events_code`); with one, see `usernames::page`.
fn list_events_sql<'a>(tenant: &'a str, q: &'a EventQuery) -> Select<'a> {
    let mut sql = Select::new("SELECT e.sequence, e.received_at, e.body FROM events e");
    sql.push(" WHERE e.tenant_id = ", tenant)
        .push(" AND e.sequence > ", q.after);
    filters(q, &mut sql);
    if let Some(s) = q.through {
        sql.push(" AND e.sequence <= ", s);
    }
    sql.push(" ORDER BY e.sequence LIMIT ", i64::from(q.limit));
    sql
}

const COLUMNS: &str = "e.sequence, e.received_at, e.body";

impl Store {
    pub async fn list_events(
        &self,
        tenant: &str,
        q: &EventQuery,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let Some(username) = &q.username else {
            let sql = list_events_sql(tenant, q);
            let rows = self.0.db.query(&sql.sql, &sql.args).await?;
            return rows.into_iter().map(stored_event).collect();
        };
        let indexed = self.usernames_through(tenant).await?;
        let through = q.through.unwrap_or(i64::MAX);
        let limit = i64::from(q.limit);
        let mut out = Vec::new();
        for part in [Part::Indexed, Part::Tail] {
            let left = limit - out.len() as i64;
            if left <= 0 || (part == Part::Indexed && indexed <= q.after) {
                continue;
            }
            let sql = usernames::page(
                part,
                COLUMNS,
                tenant,
                username,
                q.after,
                through,
                indexed,
                left,
                |sql| filters(q, sql),
            );
            let rows = self.0.db.query(&sql.sql, &sql.args).await?;
            for row in rows {
                out.push(stored_event(row)?);
            }
        }
        Ok(out)
    }

    /// How far `tenant`'s events are in `events_by_username` (see `usernames.rs`).
    pub(super) async fn usernames_through(&self, tenant: &str) -> Result<i64, StoreError> {
        let row = self
            .0
            .db
            .query_one(usernames::THROUGH, &args![tenant])
            .await?;
        row.map_or(Ok(0), |r| r.int(0))
    }

    /// The database's plan for [`Store::list_events`] (`EXPLAIN`), one line per step: for the
    /// tests that check a query is served by an index, and for diagnosis.
    #[doc(hidden)]
    pub async fn list_events_plan(
        &self,
        tenant: &str,
        q: &EventQuery,
    ) -> Result<String, StoreError> {
        let sql = match &q.username {
            None => list_events_sql(tenant, q),
            Some(username) => usernames::page(
                Part::Indexed,
                COLUMNS,
                tenant,
                username,
                q.after,
                q.through.unwrap_or(i64::MAX),
                i64::MAX,
                i64::from(q.limit),
                |sql| filters(q, sql),
            ),
        };
        self.plan(&sql).await
    }

    /// On PostgreSQL, the database's plans (`EXPLAIN`) for the writer's lookups of `tenant`'s
    /// stored events by 256 `Id`s and by 256 sequences (a busy turn's), one line per step, the two separated by a
    /// blank line; empty on SQLite. For the test that checks they probe an index whatever the
    /// statistics say.
    #[doc(hidden)]
    pub async fn writer_lookup_plans(&self, tenant: &str) -> Result<String, StoreError> {
        let Db::Postgres(pool) = &self.0.db else {
            return Ok(String::new());
        };
        let ids: Vec<String> = (0..256).map(|_| uuid::Uuid::new_v4().to_string()).collect();
        let sequences: Vec<i64> = (1..=256).collect();
        let explain = |sql: &str| format!("EXPLAIN {sql}");
        let (by_id, by_sequence) = (
            explain(super::postgres::FIND_STORED),
            explain(super::postgres::CLAIMED_BODIES),
        );
        let by_id: Vec<(String,)> = sqlx::query_as(&by_id)
            .bind(tenant)
            .bind(&ids)
            .fetch_all(pool)
            .await
            .map_err(super::db::sqlx_error)?;
        let by_sequence: Vec<(String,)> = sqlx::query_as(&by_sequence)
            .bind(tenant)
            .bind(&sequences)
            .fetch_all(pool)
            .await
            .map_err(super::db::sqlx_error)?;
        let lines = |rows: Vec<(String,)>| {
            rows.into_iter()
                .map(|(l,)| l)
                .collect::<Vec<_>>()
                .join("\n")
        };
        Ok(format!("{}\n\n{}", lines(by_id), lines(by_sequence)))
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
    /// When the event of `tenant` with `sequence` was received (unix ms), if the log holds it.
    pub async fn received_at(
        &self,
        tenant: &str,
        sequence: i64,
    ) -> Result<Option<i64>, StoreError> {
        let row = self
            .0
            .db
            .query_one(
                "SELECT received_at FROM events WHERE tenant_id = $1 AND sequence = $2",
                &args![tenant, sequence],
            )
            .await?;
        row.map(|r| r.int(0)).transpose()
    }

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
