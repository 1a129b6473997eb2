//! The embedded database as files (DESIGN §15): the lock a server holds on its data directory,
//! a backup made while it serves, and a restore while it is stopped.
//!
//! A backup is `VACUUM INTO` a temporary file beside the target: one read transaction, so the
//! copy is the database as of one instant, and in WAL mode a reader never blocks the writer —
//! ingest goes on (the WAL grows meanwhile and is checkpointed after). SQLite's online backup
//! API was the other choice; it restarts from scratch whenever another connection writes,
//! which under steady ingest means never finishing.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rusqlite::{Connection, OpenFlags};

use super::{db, sqlite};

/// The lock file's name in the data directory.
const LOCK_FILE: &str = "switchboard.lock";

/// The data directory held by a running server: an advisory lock on `switchboard.lock`, which
/// the kernel drops with the process (a `kill -9` leaves nothing to clean up).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// Takes the data directory's lock, or says who holds it.
pub fn hold(dir: &Path) -> anyhow::Result<DirLock> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating data dir {}", dir.display()))?;
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {
            // For whoever looks: which process holds it.
            file.set_len(0)?;
            writeln!(file, "{}", std::process::id())?;
            Ok(DirLock { _file: file })
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let pid = std::fs::read_to_string(&path).unwrap_or_default();
            bail!(
                "a switchboard server (pid {}) holds the data directory {}; stop it first",
                pid.trim(),
                dir.display()
            )
        }
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// What a backup or restore did.
#[derive(Debug)]
pub struct Summary {
    pub path: PathBuf,
    pub events: i64,
    pub bytes: u64,
    pub schema: i64,
}

/// Opens `path` as a Switchboard database without changing it and checks that this binary may
/// run on its schema, and with `whole` every page of it (`integrity_check`).
pub(super) fn check(path: &Path, whole: bool) -> anyhow::Result<Summary> {
    let not_ours =
        |why: &str| anyhow::anyhow!("{} is not a Switchboard database ({why})", path.display());
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if !meta.is_file() {
        return Err(not_ours("not a file"));
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| not_ours(&e.to_string()))?;
    let tables: Vec<String> = column(&conn, "SELECT name FROM sqlite_master WHERE type = 'table'")
        .map_err(|e| not_ours(&e.to_string()))?;
    for needed in ["_sqlx_migrations", "tenants", "events", "deliveries"] {
        if !tables.iter().any(|t| t == needed) {
            return Err(not_ours(&format!("it has no {needed} table")));
        }
    }
    let verdict: Vec<String> = match whole {
        false => vec!["ok".into()],
        true => column(&conn, "PRAGMA integrity_check").map_err(|e| not_ours(&e.to_string()))?,
    };
    if verdict != ["ok"] {
        bail!(
            "{} is damaged: integrity_check says {}",
            path.display(),
            verdict.join("; ")
        );
    }
    let applied: Vec<i64> = column(&conn, "SELECT version FROM _sqlx_migrations WHERE success")?;
    let allowed: Vec<i64> = if tables.iter().any(|t| t == "schema_compat") {
        column(
            &conn,
            "SELECT version FROM schema_compat WHERE previous_may_run",
        )?
    } else {
        Vec::new()
    };
    db::judge_schema(&applied, &allowed, sqlite::MIGRATIONS)?;
    let events: i64 = conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))?;
    Ok(Summary {
        path: path.to_path_buf(),
        events,
        bytes: meta.len(),
        schema: applied.iter().max().copied().unwrap_or(0),
    })
}

/// The first column of `sql`'s rows.
pub(super) fn column<T: rusqlite::types::FromSql>(
    conn: &Connection,
    sql: &str,
) -> anyhow::Result<Vec<T>> {
    Ok(conn
        .prepare(sql)?
        .query_map([], |r| r.get(0))?
        .collect::<Result<Vec<T>, _>>()?)
}

/// Copies the database at `db` (which a server may be writing) to `to`: into a temporary file
/// beside it, checked, then renamed. `progress` hears how far the copy is, about twice a
/// second.
pub fn backup(
    db: &Path,
    to: &Path,
    force: bool,
    mut progress: impl FnMut(u64, u64),
) -> anyhow::Result<Summary> {
    if to.exists() && !force {
        bail!(
            "{} exists; give --force to replace it, or another name",
            to.display()
        );
    }
    // The source is checked first: what this binary may not read, it does not copy.
    let source = check(db, false)?;
    let name = to
        .file_name()
        .with_context(|| format!("{} names no file", to.display()))?;
    let temp = to.with_file_name(format!(
        ".{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&temp);
    let result = (|| {
        // Read-write so that it shares the server's WAL index; it writes nothing here.
        let conn = Connection::open_with_flags(
            db,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(10))?;
        let into = temp.to_str().context("the backup's path must be UTF-8")?;
        // The copy is not synced as it is written (the final sync_all is ours); instead the
        // loop below flushes it every 100 ms, so the disk never takes the whole file at once
        // while the server's commits wait for their own fsyncs behind it.
        conn.pragma_update(None, "synchronous", "OFF")?;
        std::thread::scope(|scope| {
            let copying = scope.spawn(move || conn.execute("VACUUM INTO ?1", [into]));
            let mut told = Instant::now();
            let mut file = None;
            while !copying.is_finished() {
                std::thread::sleep(Duration::from_millis(100));
                if file.is_none() {
                    file = File::open(&temp).ok();
                }
                if let Some(f) = &file {
                    let _ = f.sync_data();
                }
                if told.elapsed() >= Duration::from_millis(500) {
                    let written = std::fs::metadata(&temp).map_or(0, |m| m.len());
                    progress(written, source.bytes);
                    told = Instant::now();
                }
            }
            copying.join().expect("the copying thread does not panic")
        })?;
        File::open(&temp)?.sync_all()?;
        let copy = check(&temp, true)?;
        std::fs::rename(&temp, to)?;
        if let Some(dir) = to.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        anyhow::Ok(Summary {
            path: to.to_path_buf(),
            ..copy
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result.with_context(|| format!("backing up {} to {}", db.display(), to.display()))
}

/// Puts the backup `from` in place of the database at `db` of the data directory `dir`, which
/// no server may hold; the current database (with its WAL) is moved aside to
/// `<name>.before-restore-<yyyyMMddHHmmss>`, returned with the summary.
pub fn restore(
    dir: &Path,
    db: &Path,
    from: &Path,
    now: &str,
) -> anyhow::Result<(Summary, Option<PathBuf>)> {
    let _held = hold(dir)?;
    let summary = check(from, true)?;
    let name = db
        .file_name()
        .with_context(|| format!("{} names no file", db.display()))?
        .to_string_lossy()
        .into_owned();
    let incoming = db.with_file_name(format!(".{name}.restoring"));
    std::fs::copy(from, &incoming)
        .with_context(|| format!("copying {} to {}", from.display(), incoming.display()))?;
    File::open(&incoming)?.sync_all()?;
    let aside = if db.exists() {
        let aside = db.with_file_name(format!("{name}.before-restore-{now}"));
        std::fs::rename(db, &aside)?;
        for suffix in ["-wal", "-shm"] {
            let side = db.with_file_name(format!("{name}{suffix}"));
            if side.exists() {
                let to = aside.with_file_name(format!(
                    "{}{suffix}",
                    aside.file_name().unwrap_or_default().to_string_lossy()
                ));
                std::fs::rename(&side, to)?;
            }
        }
        Some(aside)
    } else {
        None
    };
    std::fs::rename(&incoming, db)?;
    if let Some(parent) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(parent)?.sync_all()?;
    }
    Ok((
        Summary {
            path: db.to_path_buf(),
            ..summary
        },
        aside,
    ))
}
