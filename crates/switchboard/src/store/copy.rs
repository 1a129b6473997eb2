//! `switchboard copy --to postgres://…` (DESIGN §15): an embedded deployment moved, whole, into
//! an empty PostgreSQL database.
//!
//! Both sides are checked before anything changes: the source must be a Switchboard database
//! this binary may run on, with no server holding its data directory; the target must be
//! reachable, of a schema this binary may run on, and empty (no Switchboard tables, or only the
//! untouched `default` tenant the migrations create). Then the target is migrated and every
//! table streamed into it with `COPY … FROM STDIN` in one transaction — a failure leaves it as
//! the migrations left it. Last, each table is read back with `COPY … TO STDOUT` in primary-key
//! order and compared with what was sent: the row count and a SHA-256 of the rows in COPY's
//! text form, which the source side writes exactly as PostgreSQL prints it.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rusqlite::types::ValueRef;
use rusqlite::{Connection as Sqlite, OpenFlags};
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Connection as _, Executor as _};
use tokio::sync::mpsc;

use super::db::{self, Embedded};
use super::{embedded, postgres};

/// The tables copied, in order, each with its primary key (the order rows are compared in).
pub const TABLES: &[(&str, &[&str])] = &[
    ("tenants", &["id"]),
    ("api_keys", &["id"]),
    ("subscriptions", &["id"]),
    ("events", &["tenant_id", "sequence"]),
    ("deliveries", &["id"]),
    ("attempts", &["delivery_id", "number"]),
    ("system_events", &["id"]),
    ("agents", &["tenant_id", "username"]),
    ("agent_bases", &["tenant_id", "username"]),
    ("events_by_username", &["tenant_id", "username", "sequence"]),
    ("jobs", &["id"]),
    ("pull_cursors", &["subscription_id", "partition_no"]),
    ("rules", &["tenant_id", "id"]),
    ("rule_episodes", &["tenant_id", "subject", "rule_id"]),
    ("agent_hours", &["tenant_id", "username", "start"]),
    ("agent_tails", &["tenant_id", "username"]),
    ("portal_links", &["id"]),
    // The source's keys replace any the target made for itself: hashes stay as they were.
    ("instance_keys", &["name"]),
];

/// SQLite tables not copied: sqlx's and the schema's bookkeeping (the target has its own), the
/// readiness probe's scratch row, and the id index PostgreSQL keeps on `events` itself.
pub const NOT_COPIED: &[&str] = &[
    "_sqlx_migrations",
    "schema_compat",
    "write_probe",
    "event_ids",
];

/// Columns whose value is not carried over: leases die with the process that took them.
const DROPPED: &[(&str, &str)] = &[("deliveries", "lease_until"), ("jobs", "lease_until")];

/// Tables whose `id` PostgreSQL generates: their sequences continue after the copied ids.
const GENERATED_IDS: &[&str] = &["deliveries", "system_events"];

/// What a copy did, table by table.
#[derive(Debug, Default)]
pub struct Report {
    /// `(table, rows, seconds)`.
    pub tables: Vec<(&'static str, u64, f64)>,
    pub seconds: f64,
}

impl Report {
    pub fn rows(&self, table: &str) -> u64 {
        self.tables.iter().find(|t| t.0 == table).map_or(0, |t| t.1)
    }
}

/// Copies the embedded database `source` (of the data directory `dir`) into the PostgreSQL
/// database at `url`. `force_empty` empties the target's Switchboard tables first (to run
/// again after a failure). `progress` hears a line now and then.
pub async fn run(
    dir: &Path,
    source: &Path,
    url: &str,
    force_empty: bool,
    mut progress: impl FnMut(String),
) -> anyhow::Result<Report> {
    let started = Instant::now();
    // The source: present, ours, readable by this binary, and no server on it.
    if !dir.is_dir() {
        bail!("the data directory {} does not exist", dir.display());
    }
    if !source.is_file() {
        bail!(
            "{} holds no Switchboard database ({} is missing)",
            dir.display(),
            source.display()
        );
    }
    let _held = embedded::hold(dir)?;
    embedded::check(source, false)?;
    let sqlite = Sqlite::open_with_flags(source, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let tables: Vec<String> = embedded::column(
        &sqlite,
        "SELECT name FROM sqlite_master WHERE type = 'table'",
    )?;
    if let Some(unknown) = tables
        .iter()
        .find(|t| !NOT_COPIED.contains(&t.as_str()) && !TABLES.iter().any(|(n, _)| n == t))
    {
        bail!("this release does not know how to copy the table {unknown}");
    }

    // The target: reachable, a schema this binary may run on, empty.
    let options: PgConnectOptions = url
        .parse()
        .with_context(|| format!("--to {}", crate::config::mask_password(url)))?;
    let masked = crate::config::mask_password(url);
    let mut pg = tokio::time::timeout(
        Duration::from_secs(10),
        PgConnection::connect_with(&options),
    )
    .await
    .map_err(|_| anyhow::anyhow!("{masked} did not answer within 10 s"))?
    .with_context(|| format!("connecting to {masked}"))?;
    let (applied, allowed) = postgres::schema_state(&mut pg).await?;
    let unknown = db::judge_schema(&applied, &allowed, postgres::MIGRATIONS)?;
    if !applied.is_empty() && !force_empty {
        let found = contents(&mut pg).await?;
        if !found.is_empty() {
            bail!(
                "{masked} is not empty: it holds {}; copy only into an empty database, or give --force-empty to empty its Switchboard tables first",
                found.join(", ")
            );
        }
    }
    let mut migrator = sqlx::migrate::Migrator::new(Embedded(postgres::MIGRATIONS)).await?;
    migrator.set_ignore_missing(!unknown.is_empty());
    migrator.run_direct(&mut pg).await?;

    // The copy, in one transaction.
    let mut report = Report::default();
    let mut sent = Vec::new();
    let mut tx = pg.begin().await?;
    let all: Vec<&str> = TABLES.iter().map(|(t, _)| *t).collect();
    // What the migrations put there (the default tenant), or what --force-empty empties.
    tx.execute(format!("TRUNCATE {}", all.join(", ")).as_str())
        .await?;
    for &(table, key) in TABLES {
        let t0 = Instant::now();
        let columns = shared_columns(&sqlite, &mut tx, table).await?;
        let types: Vec<bool> = columns.iter().map(|(_, t)| t == "boolean").collect();
        let list = columns
            .iter()
            .map(|(c, _)| c.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let mut copy_in = tx
            .copy_in_raw(&format!("COPY {table} ({list}) FROM STDIN"))
            .await?;
        let (chunks_tx, mut chunks) = mpsc::channel::<Vec<u8>>(8);
        let reader = tokio::task::spawn_blocking({
            let source = source.to_path_buf();
            let order = key.join(", ");
            let dropped: Vec<bool> = columns
                .iter()
                .map(|(c, _)| DROPPED.contains(&(table, c.as_str())))
                .collect();
            let select = format!("SELECT {list} FROM {table} ORDER BY {order}");
            move || read_rows(&source, &select, &types, &dropped, chunks_tx)
        });
        let (mut rows_sent, mut told) = (0u64, Instant::now());
        while let Some(chunk) = chunks.recv().await {
            rows_sent += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
            copy_in.send(chunk).await?;
            if told.elapsed() >= Duration::from_secs(1) {
                progress(format!("  {table}: {rows_sent} rows so far"));
                told = Instant::now();
            }
        }
        let (rows, digest) = reader.await??;
        let copied = copy_in.finish().await?;
        if copied != rows {
            bail!("{table}: {rows} rows read, {copied} written");
        }
        let secs = t0.elapsed().as_secs_f64();
        progress(format!("{table}: {rows} rows in {secs:.1} s"));
        report.tables.push((table, rows, secs));
        let order: Vec<String> = key.iter().map(|k| order_by(k, &columns)).collect();
        sent.push((table, order.join(", "), list, rows, digest));
    }
    for table in GENERATED_IDS {
        tx.execute(
            format!(
                "SELECT setval(pg_get_serial_sequence('{table}', 'id'), \
                 COALESCE((SELECT max(id) FROM {table}), 0) + 1, false)"
            )
            .as_str(),
        )
        .await?;
    }
    tx.commit().await?;

    // Read back and compared.
    for (table, order, list, rows, digest) in sent {
        let (back_rows, back) = read_back(
            &mut pg,
            &format!("COPY (SELECT {list} FROM {table} ORDER BY {order}) TO STDOUT"),
        )
        .await?;
        if (back_rows, back) != (rows, digest) {
            bail!(
                "{table}: the copy differs from the source ({rows} rows sent, {back_rows} read back, checksums {}); give --force-empty to copy again",
                if back == digest { "equal" } else { "differ" }
            );
        }
    }
    progress("row counts and checksums equal on every table".into());
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// A key column as PostgreSQL must sort it to match SQLite: text by bytes.
fn order_by(column: &str, columns: &[(String, String)]) -> String {
    match columns.iter().any(|(c, t)| c == column && t == "text") {
        true => format!("{column} COLLATE \"C\""),
        false => column.to_string(),
    }
}

/// The columns of `table` both sides have, in the source's order (a column only the source
/// has, such as SQLite's `ids_through`, stays behind), each with its PostgreSQL type.
async fn shared_columns(
    sqlite: &Sqlite,
    pg: &mut PgConnection,
    table: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let source: Vec<String> = embedded::column(
        sqlite,
        &format!("SELECT name FROM pragma_table_info('{table}')"),
    )?;
    let target: Vec<(String, String)> = sqlx::query_as(
        "SELECT column_name::text, data_type::text FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = $1",
    )
    .bind(table)
    .fetch_all(&mut *pg)
    .await?;
    Ok(source
        .into_iter()
        .filter_map(|c| target.iter().find(|(t, _)| *t == c).cloned())
        .collect())
}

/// Reads `select` from the SQLite file and sends its rows, in COPY's text form, in chunks of
/// about 256 KiB; answers the row count and the SHA-256 of everything sent.
fn read_rows(
    source: &Path,
    select: &str,
    boolean: &[bool],
    dropped: &[bool],
    out: mpsc::Sender<Vec<u8>>,
) -> anyhow::Result<(u64, [u8; 32])> {
    const CHUNK: usize = 256 * 1024;
    let conn = Sqlite::open_with_flags(source, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut statement = conn.prepare(select)?;
    let mut rows = statement.query([])?;
    let (mut count, mut hash, mut buf) = (0u64, Sha256::new(), Vec::with_capacity(CHUNK + 4096));
    while let Some(row) = rows.next()? {
        for i in 0..boolean.len() {
            if i > 0 {
                buf.push(b'\t');
            }
            let value = if dropped[i] {
                ValueRef::Null
            } else {
                row.get_ref(i)?
            };
            encode(&mut buf, value, boolean[i])?;
        }
        buf.push(b'\n');
        count += 1;
        if buf.len() >= CHUNK {
            hash.update(&buf);
            if out.blocking_send(std::mem::take(&mut buf)).is_err() {
                bail!("the copy stopped");
            }
            buf.reserve(CHUNK + 4096);
        }
    }
    if !buf.is_empty() {
        hash.update(&buf);
        if out.blocking_send(buf).is_err() {
            bail!("the copy stopped");
        }
    }
    Ok((count, hash.finalize().into()))
}

/// One value in COPY's text form, exactly as PostgreSQL prints it back.
fn encode(buf: &mut Vec<u8>, value: ValueRef<'_>, boolean: bool) -> anyhow::Result<()> {
    use std::io::Write;
    match value {
        ValueRef::Null => buf.extend_from_slice(b"\\N"),
        ValueRef::Integer(n) if boolean => buf.push(if n != 0 { b't' } else { b'f' }),
        ValueRef::Integer(n) => write!(buf, "{n}")?,
        ValueRef::Real(x) => write!(buf, "{x}")?,
        ValueRef::Text(text) => {
            for &b in text {
                match b {
                    b'\\' => buf.extend_from_slice(b"\\\\"),
                    b'\n' => buf.extend_from_slice(b"\\n"),
                    b'\r' => buf.extend_from_slice(b"\\r"),
                    b'\t' => buf.extend_from_slice(b"\\t"),
                    0x08 => buf.extend_from_slice(b"\\b"),
                    0x0c => buf.extend_from_slice(b"\\f"),
                    0x0b => buf.extend_from_slice(b"\\v"),
                    _ => buf.push(b),
                }
            }
        }
        ValueRef::Blob(_) => bail!("a blob column cannot be copied"),
    }
    Ok(())
}

/// Runs a `COPY … TO STDOUT` and answers its row count and the SHA-256 of its output.
async fn read_back(pg: &mut PgConnection, copy: &str) -> anyhow::Result<(u64, [u8; 32])> {
    let mut stream = pg.copy_out_raw(copy).await?;
    let (mut rows, mut hash) = (0u64, Sha256::new());
    while let Some(chunk) =
        std::future::poll_fn(|cx| futures_core::Stream::poll_next(stream.as_mut(), cx)).await
    {
        let chunk = chunk?;
        rows += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        hash.update(&chunk);
    }
    Ok((rows, hash.finalize().into()))
}

/// What the target holds beyond what the migrations create, named for the refusal.
async fn contents(pg: &mut PgConnection) -> anyhow::Result<Vec<String>> {
    let mut found = Vec::new();
    for (table, what) in [
        ("events", "events"),
        ("subscriptions", "subscriptions"),
        ("api_keys", "API keys"),
        ("deliveries", "deliveries"),
        ("system_events", "System events"),
        ("agents", "agents"),
    ] {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(table)
            .fetch_one(&mut *pg)
            .await?;
        if exists {
            let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
                .fetch_one(&mut *pg)
                .await?;
            if n > 0 {
                found.push(format!("{n} {what}"));
            }
        }
    }
    let tenants: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM tenants WHERE id <> 'default' OR last_sequence <> 0 ORDER BY id",
    )
    .fetch_all(&mut *pg)
    .await
    .unwrap_or_default();
    if !tenants.is_empty() {
        found.push(format!("tenant(s) {}", tenants.join(", ")));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_embedded_table_is_copied_or_deliberately_left() {
        let conn = Sqlite::open_in_memory().unwrap();
        for (_, _, sql) in super::super::sqlite::MIGRATIONS {
            conn.execute_batch(sql).unwrap();
        }
        let tables: Vec<String> =
            embedded::column(&conn, "SELECT name FROM sqlite_master WHERE type = 'table'").unwrap();
        for table in tables {
            assert!(
                NOT_COPIED.contains(&table.as_str()) || TABLES.iter().any(|(t, _)| *t == table),
                "the table {table} is neither copied by `switchboard copy` nor listed as left behind"
            );
        }
    }

    #[test]
    fn values_are_written_as_postgresql_prints_them() {
        let mut buf = Vec::new();
        for (value, boolean) in [
            (ValueRef::Null, false),
            (ValueRef::Integer(-42), false),
            (ValueRef::Integer(1), true),
            (ValueRef::Integer(0), true),
            (ValueRef::Text(b"a\\b\tc\nd\re\x08\x0c\x0b\x01"), false),
        ] {
            encode(&mut buf, value, boolean).unwrap();
            buf.push(b'|');
        }
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "\\N|-42|t|f|a\\\\b\\tc\\nd\\re\\b\\f\\v\u{1}|"
        );
    }
}
