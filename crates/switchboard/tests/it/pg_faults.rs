//! PostgreSQL faults, against a PostgreSQL cluster of the test's own (initdb into a temporary
//! directory, its own port on loopback): a database restart (fast, and a crash), every connection
//! of the node terminated, a database down for a while, a node started before its database.
//! Every event that got a `202` is kept and delivered; while the database is away answers are
//! `503`, never `500`; the node recovers by itself.

use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::support::TestApp;
use crate::support::app::{ADMIN_KEY, agent_event, guid};
use crate::support::receiver::{TestReceiver, eventually, eventually_within};

const BIN: &str = "/usr/lib/postgresql/15/bin";

/// A PostgreSQL cluster in a temporary directory, on a port of its own; stopped when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    port: u16,
}

/// Runs a PostgreSQL program as the `postgres` user when this is root (initdb refuses root).
fn pg(program: &str, args: &[&str]) -> std::process::Output {
    let path = format!("{BIN}/{program}");
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let mut cmd = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", &path]);
        c
    } else {
        Command::new(&path)
    };
    let out = cmd
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{path}: {e} (PostgreSQL 15's programs are needed)"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Cluster {
    /// A new cluster, initialised; started unless `started` is false.
    fn new(started: bool) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = free.local_addr().unwrap().port();
        drop(free);
        // The postgres user must own the directory.
        let _ = Command::new("chown")
            .args(["-R", "postgres", dir.path().to_str().unwrap()])
            .status();
        let data = dir.path().join("data");
        pg(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
            ],
        );
        let cluster = Cluster { dir, port };
        if started {
            cluster.start();
        }
        cluster
    }

    fn data(&self) -> String {
        self.dir.path().join("data").to_str().unwrap().to_string()
    }

    fn options(&self) -> String {
        format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.dir.path().display()
        )
    }

    fn start(&self) {
        let log = self.dir.path().join("log");
        pg(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &self.options(),
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        );
    }

    fn stop(&self, mode: &str) {
        pg("pg_ctl", &["-D", &self.data(), "-m", mode, "-w", "stop"]);
    }

    fn restart(&self, mode: &str) {
        self.stop(mode);
        self.start();
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Terminates every connection but the caller's.
    async fn terminate_all(&self) -> u64 {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&self.url()).await.unwrap();
        let killed: Vec<(bool,)> = sqlx::query_as(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        killed.len() as u64
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--", &format!("{BIN}/pg_ctl")])
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .output();
    }
}

/// What the clients saw: the ids that got a 202, and every status answered.
#[derive(Default)]
struct Seen {
    accepted: Vec<String>,
    statuses: HashSet<u16>,
    last_202: Option<Instant>,
    transport_errors: Vec<String>,
}

/// Eight clients posting single events until `stop`.
fn load(
    app: &TestApp,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..8)
        .map(|c| {
            let (client, url) = (app.client.clone(), app.url("/v1/tenants/default/events"));
            let (stop, seen) = (stop.clone(), seen.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let id = guid();
                    let r = client
                        .post(&url)
                        .bearer_auth(ADMIN_KEY)
                        .json(&agent_event(&id, 1, &format!("agent{c}")))
                        .timeout(Duration::from_secs(20))
                        .send()
                        .await;
                    let mut seen = seen.lock().await;
                    match r {
                        Ok(r) => {
                            let status = r.status();
                            seen.statuses.insert(status.as_u16());
                            if status == StatusCode::ACCEPTED {
                                seen.accepted.push(id);
                                seen.last_202 = Some(Instant::now());
                            } else {
                                assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "never a 500");
                                let retry = r.headers().get("retry-after").cloned();
                                assert!(retry.is_some(), "503 carries Retry-After");
                                let p: Value = r.json().await.unwrap();
                                assert_eq!(p["title"], "Database unavailable");
                            }
                        }
                        // A connection dropped in transit is not an answer: counted, with its
                        // cause, and bounded below (a node that stopped answering fails the
                        // test by never accepting again).
                        Err(e) => seen.transport_errors.push(format!("{e:?}")),
                    }
                }
            })
        })
        .collect()
}

/// Waits until some client got a 202 after `since`; panics after 5 s.
async fn accepting_again(seen: &Mutex<Seen>, since: Instant, what: &str) {
    let again = || async {
        seen.lock()
            .await
            .last_202
            .is_some_and(|t| t > since)
            .then_some(())
    };
    eventually_within(
        &format!("a 202 after {what}"),
        Duration::from_secs(5),
        again,
    )
    .await;
}

async fn node_on(cluster: &Cluster) -> TestApp {
    let url = cluster.url();
    TestApp::spawn_with(move |c| {
        c.database_url = url;
        // Outcomes lost with a connection come back when the lease ends: 2 × 2 s + 5 s.
        c.delivery_timeout_secs = 2;
    })
    .await
}

/// Every accepted id is in the log and reached the receiver.
async fn all_kept_and_delivered(app: &TestApp, rx: &TestReceiver, accepted: &[String]) {
    let want: HashSet<&str> = accepted.iter().map(String::as_str).collect();
    rx.wait_until(
        |got| {
            let ids: HashSet<String> = got.iter().map(|r| r.event_id()).collect();
            want.iter().all(|id| ids.contains(*id))
        },
        "every accepted event delivered",
    )
    .await;
    let log: HashSet<String> = app
        .all_events("default")
        .await
        .iter()
        .map(|e| e["event"]["Id"].as_str().unwrap().to_string())
        .collect();
    for id in &want {
        assert!(log.contains(*id), "{id} got a 202 but is not in the log");
    }
}

async fn readyz(app: &TestApp) -> StatusCode {
    app.client
        .get(app.url("/readyz"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap()
        .status()
}

/// A node on `cluster` with a subscription, eight clients posting to it; `fault` is done to the
/// database (each time, new events get a 202 within 5 s after it); then every event that got a
/// 202 is in the log and delivered, and every answer was a 202 or a 503.
async fn under_load<F: AsyncFnMut(&Cluster) -> String>(
    cluster: &Cluster,
    rounds: usize,
    mut fault: F,
) {
    let app = node_on(cluster).await;
    let rx = TestReceiver::start().await;
    app.subscribe(json!({"url": rx.url("/"), "retry_schedule_secs": [0, 1, 1, 1, 1]}))
        .await;
    let (stop, seen) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(Mutex::new(Seen::default())),
    );
    let clients = load(&app, stop.clone(), seen.clone());
    accepting_again(&seen, Instant::now(), "the start").await;
    for _ in 0..rounds {
        let what = fault(cluster).await;
        accepting_again(&seen, Instant::now(), &what).await;
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let seen = seen.lock().await;
    assert!(seen.accepted.len() > 20, "{} accepted", seen.accepted.len());
    assert!(
        seen.transport_errors.len() <= 8,
        "{:?}",
        seen.transport_errors
    );
    if !seen.transport_errors.is_empty() {
        eprintln!("transport errors: {:?}", seen.transport_errors);
    }
    all_kept_and_delivered(&app, &rx, &seen.accepted).await;
    assert_eq!(readyz(&app).await, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_survives_database_restarts_fast_and_crash() {
    let cluster = Cluster::new(true);
    let mut modes = ["fast", "immediate"].into_iter();
    under_load(&cluster, 2, async |c: &Cluster| {
        let mode = modes.next().unwrap();
        tokio::task::block_in_place(|| c.restart(mode));
        format!("a restart -m {mode}")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_survives_its_connections_being_terminated() {
    let cluster = Cluster::new(true);
    let mut round = 0;
    under_load(&cluster, 2, async |c: &Cluster| {
        round += 1;
        let killed = c.terminate_all().await;
        // The first time the writer's, the pool's and the listener's; the next time at least
        // the writer's (accepting again needs only it: the others come back when used, and on
        // a busy machine may not be back yet).
        let least = if round == 1 { 2 } else { 1 };
        assert!(
            killed >= least,
            "round {round}: the writer and the pool's connections: {killed}"
        );
        "every connection terminated".to_string()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_and_ingest_answer_503_while_the_database_is_down() {
    let cluster = Cluster::new(true);
    let app = node_on(&cluster).await;
    assert_eq!(readyz(&app).await, StatusCode::OK);
    tokio::task::block_in_place(|| cluster.stop("fast"));
    assert_eq!(readyz(&app).await, StatusCode::SERVICE_UNAVAILABLE);
    let r = app
        .publish("default", &agent_event(&guid(), 1, "jdoe"))
        .await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().contains_key("retry-after"));
    tokio::task::block_in_place(|| cluster.start());
    let back = Instant::now();
    eventually("readyz to say 200 again", || async {
        (readyz(&app).await == StatusCode::OK).then_some(())
    })
    .await;
    assert!(
        back.elapsed() < Duration::from_secs(5),
        "ready again after {:?}",
        back.elapsed()
    );
    let r = app
        .publish("default", &agent_event(&guid(), 1, "jdoe"))
        .await;
    let status = r.status();
    assert_eq!(status, StatusCode::ACCEPTED, "{}", r.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_before_its_database_serves_once_it_is_up() {
    let cluster = Cluster::new(false);
    let url = cluster.url();
    let mut starting =
        tokio::spawn(async move { TestApp::spawn_with(move |c| c.database_url = url).await });
    // Not ready without its database (a bound on the wait, not a sleep to synchronise).
    let early = tokio::time::timeout(Duration::from_millis(500), &mut starting).await;
    assert!(
        early.is_err(),
        "the node was ready before its database existed"
    );
    tokio::task::block_in_place(|| cluster.start());
    let app = starting
        .await
        .expect("the node starts once the database is up");
    let r = app
        .publish("default", &agent_event(&guid(), 1, "jdoe"))
        .await;
    let status = r.status();
    assert_eq!(status, StatusCode::ACCEPTED, "{}", r.text().await.unwrap());
}

/// A node whose database cannot be opened exits with a message naming it, and never says it is
/// listening.
#[test]
fn a_node_that_cannot_open_its_database_never_says_it_is_listening() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        // Nothing listens on port 1 of loopback: refused at once.
        .args(["--database-url", "postgres://postgres@127.0.0.1:1/none"])
        .env("SWITCHBOARD_DATABASE_CONNECT_TIMEOUT_SECS", "0")
        .env("SWITCHBOARD_ADMIN_KEY", ADMIN_KEY)
        .output()
        .expect("run switchboard");
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stdout.contains("listening"), "{stdout}");
    assert!(stderr.contains("opening database"), "{stderr}");
}
