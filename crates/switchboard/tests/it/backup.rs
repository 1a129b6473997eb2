//! `switchboard backup` while the server serves and `restore` while it is stopped (DESIGN §15):
//! the copy holds every event acknowledged before it began, and a restored node delivers what
//! was pending. On PostgreSQL both refuse and point to the guide.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use sqlx::Connection;

use crate::support::TestReceiver;
use crate::support::app::{ADMIN_KEY, agent_event, guid};
use crate::support::db::TestData;
use crate::support::process::{Server, post_to};

/// `switchboard <args>` over `data`, as an operator runs it.
fn switchboard(data: &TestData, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(args)
        .arg("--data-dir")
        .arg(data.dir.path())
        .arg("--database-url")
        .arg(data.database_url())
        .env("SWITCHBOARD_ADMIN_KEY", ADMIN_KEY)
        .output()
        .expect("run switchboard")
}

/// The one line a failed command printed, after checking it failed with one line.
fn one_line_error(out: &Output) -> String {
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<_> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    lines[0].to_string()
}

/// The event `Id`s a database file holds.
async fn ids_in(file: &Path) -> HashSet<String> {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(file)
        .read_only(true);
    let mut conn = sqlx::SqliteConnection::connect_with(&options)
        .await
        .unwrap();
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(check, "ok");
    let bodies: Vec<String> = sqlx::query_scalar("SELECT body FROM events")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    bodies
        .iter()
        .map(|b| serde_json::from_str::<serde_json::Value>(b).unwrap()["Id"].to_string())
        .map(|id| id.trim_matches('"').to_string())
        .collect()
}

#[tokio::test]
async fn a_backup_under_load_holds_what_was_acknowledged_and_a_restore_delivers_what_was_pending() {
    let data = TestData::new().await;
    let file = data.dir.path().join("backup.db");
    let to = file.to_str().unwrap();
    if !data.database_url().is_empty() {
        for args in [&["backup", "--to", to][..], &["restore", "--from", to]] {
            let line = one_line_error(&switchboard(&data, args));
            assert!(line.contains("pg_dump"), "{line}");
        }
        return;
    }

    let receiver = TestReceiver::with(|_, _| (503, Duration::ZERO)).await;
    let server = Server::start(&data);
    let client = reqwest::Client::new();
    let r = server
        .post(
            &client,
            "/v1/tenants/default/subscriptions",
            &json!({"url": receiver.url("/"), "retry_schedule_secs": vec![1; 50]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);

    // A steady load, each acknowledged Id noted.
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn({
        let (acknowledged, stop, base) = (acknowledged.clone(), stop.clone(), server.base.clone());
        async move {
            let client = reqwest::Client::new();
            while !stop.load(Ordering::Relaxed) {
                let id = guid();
                let body = agent_event(&id, 1, "jdoe");
                let r = post_to(&client, &base, "/v1/tenants/default/events", &body).await;
                assert_eq!(r.status(), StatusCode::ACCEPTED);
                acknowledged.lock().unwrap().push(id);
            }
        }
    });
    crate::support::receiver::eventually("some events in", || async {
        (acknowledged.lock().unwrap().len() >= 200).then_some(())
    })
    .await;

    // Refused while the server holds the data directory.
    let line = one_line_error(&switchboard(&data, &["restore", "--from", to]));
    assert!(line.contains("holds the data directory"), "{line}");

    let before: HashSet<String> = acknowledged.lock().unwrap().iter().cloned().collect();
    let out = tokio::task::spawn_blocking({
        let data_dir = data.dir.path().to_path_buf();
        let to = to.to_string();
        move || {
            Command::new(env!("CARGO_BIN_EXE_switchboard"))
                .args(["backup", "--to", &to, "--data-dir"])
                .arg(data_dir)
                .env("SWITCHBOARD_ADMIN_KEY", ADMIN_KEY)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let during = acknowledged.lock().unwrap().len() - before.len();
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    eprintln!("{during} events acknowledged while the backup ran");

    // Every event acknowledged before the backup began is in it; the copy is whole.
    let copied = ids_in(&file).await;
    assert!(
        before.is_subset(&copied),
        "{} missing",
        before.difference(&copied).count()
    );
    // A second backup to the same name needs --force.
    let line = one_line_error(&switchboard(&data, &["backup", "--to", to]));
    assert!(line.contains("--force"), "{line}");

    // Restore with the server stopped: what was pending in the copy is delivered.
    drop(server);
    let seen = receiver.received().len();
    receiver.set_behaviour(|_, _| (204, Duration::ZERO));
    let out = switchboard(&data, &["restore", "--from", to]);
    assert!(out.status.success(), "{out:?}");
    let asides: Vec<_> = std::fs::read_dir(data.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("switchboard.db.before-restore-"))
        .filter(|n| !n.ends_with("-wal") && !n.ends_with("-shm"))
        .collect();
    assert_eq!(asides.len(), 1, "{asides:?}");
    // The database moved aside kept its WAL: it holds everything acknowledged.
    let all: HashSet<String> = acknowledged.lock().unwrap().iter().cloned().collect();
    assert_eq!(ids_in(&data.dir.path().join(&asides[0])).await, all);
    let server = Server::start(&data);
    assert_eq!(server.event_ids(&client).await, copied);
    receiver
        .wait_until(
            |got| {
                let ids: HashSet<String> = got[seen..].iter().map(|r| r.event_id()).collect();
                copied.is_subset(&ids)
            },
            "every restored event delivered",
        )
        .await;
}

/// Bad input stops with one line and changes nothing.
#[tokio::test]
async fn a_restore_from_what_is_not_a_switchboard_database_changes_nothing() {
    let data = TestData::new().await;
    if !data.database_url().is_empty() {
        return; // PostgreSQL: the test above checks the refusal.
    }
    let mut server = Server::start(&data);
    server.publish_one().await;
    server.kill();
    let listing = || {
        let mut names: Vec<_> = std::fs::read_dir(data.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let db = data.dir.path().join("switchboard.db");
    let (files, bytes) = (listing(), std::fs::read(&db).unwrap());

    let text = data.dir.path().join("notes.txt");
    std::fs::write(&text, "not a database at all\n".repeat(100)).unwrap();
    let other = data.dir.path().join("other.db");
    {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&other)
            .create_if_missing(true);
        let mut conn = sqlx::SqliteConnection::connect_with(&options)
            .await
            .unwrap();
        sqlx::query("CREATE TABLE notes (body TEXT)")
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let (files, bytes) = (
        [files, vec!["notes.txt".into(), "other.db".into()]].concat(),
        bytes,
    );
    for (from, says) in [
        (text.to_str().unwrap(), "not a Switchboard database"),
        (other.to_str().unwrap(), "no _sqlx_migrations table"),
        ("/nonexistent/backup.db", "/nonexistent/backup.db"),
    ] {
        let line = one_line_error(&switchboard(&data, &["restore", "--from", from]));
        assert!(line.contains(says), "{line}");
        let mut now = listing();
        now.retain(|n| n != "switchboard.lock");
        let mut was = files.clone();
        was.sort();
        was.retain(|n| n != "switchboard.lock");
        assert_eq!(now, was);
        assert_eq!(std::fs::read(&db).unwrap(), bytes);
    }
}
