//! The client commands against a real server: each one's `--json` output is the API's answer;
//! a validation error exits 1 with every field error; a usage error exits 2.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

use crate::support::TestApp;
use crate::support::app::{ADMIN_KEY, agent_event, guid, json_ok};

struct Cli {
    server: String,
}

impl Cli {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        c.args(args)
            .args(["--server", &self.server, "--key", ADMIN_KEY])
            .env_remove("SWITCHBOARD_KEY");
        c
    }

    fn output(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run switchboard")
    }

    /// Runs `args --json`; it must succeed; its output parsed.
    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.output(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {stderr}");
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {:?}", out.stdout))
    }
}

async fn get(app: &TestApp, path: &str) -> Value {
    json_ok(app.get(path, ADMIN_KEY).await).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_command_answers_what_the_api_answers() {
    let app = TestApp::spawn().await;
    let cli = Cli {
        server: app.url(""),
    };
    let run = |args: Vec<&'static str>| {
        let cli = Cli {
            server: cli.server.clone(),
        };
        async move {
            tokio::task::spawn_blocking(move || cli.json(&args))
                .await
                .unwrap()
        }
    };

    // Tenants.
    let created = run(vec!["tenants", "create", "acme", "--name", "Acme"]).await;
    assert_eq!(created, get(&app, "/v1/tenants/acme").await);
    assert_eq!(run(vec!["tenants", "get", "acme"]).await, created);
    assert_eq!(
        run(vec!["tenants", "list"]).await,
        get(&app, "/v1/tenants").await
    );

    // Keys.
    let key = run(vec![
        "keys", "create", "--name", "ci", "--scope", "read", "--scope", "publish",
    ])
    .await;
    assert!(key["key"].as_str().unwrap().starts_with("sb_"));
    assert_eq!(key["scopes"], json!(["publish", "read"]));
    let keys = run(vec!["keys", "list"]).await;
    assert_eq!(keys, get(&app, "/v1/tenants/default/keys").await);
    let id = key["id"].as_str().unwrap().to_string();
    let out = cli.output(&["keys", "delete", &id]);
    assert!(out.status.success());
    assert_eq!(
        get(&app, "/v1/tenants/default/keys").await["data"],
        json!([])
    );

    // Events: send from a file (an array), list, get.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.json");
    let (a, b) = (guid(), guid());
    std::fs::write(
        &file,
        json!([agent_event(&a, 1, "jdoe"), agent_event(&b, 3, "jdoe")]).to_string(),
    )
    .unwrap();
    let sent = cli.json(&["events", "send", file.to_str().unwrap()]);
    assert_eq!(sent["events"][1]["id"], b.as_str());
    assert_eq!(
        run(vec!["events", "list", "--username", "jdoe"]).await,
        get(&app, "/v1/tenants/default/events?username=jdoe").await
    );
    assert_eq!(
        cli.json(&["events", "get", &a]),
        get(&app, &format!("/v1/tenants/default/events/{a}")).await
    );
    // NDJSON from stdin.
    let mut child = cli
        .command(&["events", "send", "-", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{}", agent_event(&guid(), 3, "kim")).unwrap();
        writeln!(stdin, "{}", agent_event(&guid(), 3, "lee")).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let sent: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(sent["events"].as_array().unwrap().len(), 2);

    // Agents.
    assert_eq!(
        run(vec!["agents", "list"]).await,
        get(&app, "/v1/tenants/default/agents").await
    );
    assert_eq!(
        run(vec!["agents", "get", "jdoe", "--as-of", "1"]).await,
        get(&app, "/v1/tenants/default/agents/jdoe?as_of=1").await
    );
    let counts = run(vec!["agents", "counts"]).await;
    assert_eq!(counts, get(&app, "/v1/tenants/default/agents/counts").await);
    assert!(
        counts["groups"][0]["signed_in"].as_u64().unwrap() > 0,
        "{counts}"
    );
    let (since, until) = ("20000101000000", "20000131000000");
    assert_eq!(
        run(vec![
            "agents",
            "intervals",
            "--since",
            since,
            "--until",
            until,
            "--size",
            "3600",
            "--limit",
            "5"
        ])
        .await,
        get(
            &app,
            &format!(
                "/v1/tenants/default/agents/intervals?since={since}&until={until}&size=3600&limit=5"
            )
        )
        .await
    );

    // Subscriptions.
    let sub = run(vec![
        "subscriptions",
        "create",
        "--url",
        "http://127.0.0.1:9/hooks",
    ])
    .await;
    let sid = sub["id"].as_str().unwrap().to_string();
    let path = format!("/v1/tenants/default/subscriptions/{sid}");
    assert_eq!(sub, get(&app, &path).await);
    assert_eq!(cli.json(&["subscriptions", "get", &sid]), sub);
    assert_eq!(
        run(vec!["subscriptions", "list"]).await,
        get(&app, "/v1/tenants/default/subscriptions").await
    );
    let updated = cli.json(&["subscriptions", "update", &sid, "--description", "CRM"]);
    assert_eq!(updated["description"], "CRM");
    assert_eq!(updated, get(&app, &path).await);
    let rotated = cli.json(&["subscriptions", "rotate", &sid, "--grace-secs", "60"]);
    assert_eq!(rotated["secret"], get(&app, &path).await["secret"]);
    let tested = cli.json(&["subscriptions", "test", &sid]);
    assert_eq!(tested["delivered"], false, "nothing listens on port 9");
    let replayed = cli.json(&[
        "subscriptions",
        "replay",
        &sid,
        "--since",
        "20261123000000",
        "--only-failed",
    ]);
    assert!(replayed["requeued"].is_u64());

    // Jobs.
    let job = cli.json(&[
        "jobs",
        "create",
        "replay",
        "--subscription",
        &sid,
        "--since",
        "20261123000000",
        "--dry-run",
    ]);
    assert_eq!(
        (&job["kind"], &job["dry_run"]),
        (&json!("replay"), &json!(true))
    );
    let jid = job["id"].as_str().unwrap().to_string();
    let jobs_path = format!("/v1/tenants/default/jobs/{jid}");
    let done = crate::support::receiver::eventually("the dry run to end", || async {
        let seen = get(&app, &jobs_path).await;
        (seen["state"] == "done").then_some(seen)
    })
    .await;
    assert_eq!(cli.json(&["jobs", "get", &jid]), done);
    assert_eq!(
        run(vec!["jobs", "list"]).await,
        get(&app, "/v1/tenants/default/jobs").await
    );
    let out = cli.output(&["jobs", "cancel", &jid]);
    assert_eq!(out.status.code(), Some(1), "a finished job: 409");
    let job = cli.json(&["jobs", "create", "cancel_pending", "--subscription", &sid]);
    assert_eq!(job["kind"], "cancel_pending");

    // Deliveries.
    let deliveries = cli.json(&["deliveries", "list", "--subscription", &sid]);
    assert_eq!(deliveries, get(&app, &format!("{path}/deliveries")).await);
    let did = deliveries["data"][0]["id"].to_string();
    let one = cli.json(&["deliveries", "get", &did]);
    assert_eq!(one["id"], deliveries["data"][0]["id"]);
    assert!(one["attempts"].is_array());
    let retried = cli.json(&["deliveries", "retry", &did]);
    assert_eq!(retried["status"], "pending");

    // Events tail: from the start of the log, one line per event.
    let log = app.all_events("default").await;
    let mut child = cli
        .command(&["events", "tail", "--after", "0", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for item in &log {
        let line: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert_eq!(&line, item);
    }
    child.kill().unwrap();
    child.wait().unwrap();

    // Tables by default.
    let out = cli.output(&["agents", "list"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("USERNAME"), "{text}");
    assert!(text.contains("jdoe"), "{text}");

    // Rules: bodies from a file, a patch, the list, delete.
    let rule_file = dir.path().join("rule.json");
    std::fs::write(
        &rule_file,
        json!({"name": "busy", "kind": "agent_state", "activity_codes": [36], "for_secs": 60})
            .to_string(),
    )
    .unwrap();
    let rule = cli.json(&["rules", "create", "--body", rule_file.to_str().unwrap()]);
    let rid = rule["id"].as_str().unwrap().to_string();
    let rule_path = format!("/v1/tenants/default/rules/{rid}");
    assert_eq!(rule, get(&app, &rule_path).await);
    assert_eq!(cli.json(&["rules", "get", &rid]), rule);
    std::fs::write(&rule_file, json!({"for_secs": 90}).to_string()).unwrap();
    let patched = cli.json(&[
        "rules",
        "update",
        &rid,
        "--body",
        rule_file.to_str().unwrap(),
    ]);
    assert_eq!(patched["for_secs"], json!(90));
    assert_eq!(
        cli.json(&["rules", "list"]),
        get(&app, "/v1/tenants/default/rules").await
    );
    assert!(cli.output(&["rules", "delete", &rid]).status.success());
    assert_eq!(app.get(&rule_path, ADMIN_KEY).await.status(), 404);

    // Deleting.
    assert!(
        cli.output(&["subscriptions", "delete", &sid])
            .status
            .success()
    );
    assert!(cli.output(&["tenants", "delete", "acme"]).status.success());
    assert_eq!(app.get(&path, ADMIN_KEY).await.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_refusal_exits_1_with_every_field_error_and_a_usage_error_exits_2() {
    let app = TestApp::spawn().await;
    let cli = Cli {
        server: app.url(""),
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.json");
    std::fs::write(&file, r#"[{"Category": 1, "Code": 7}]"#).unwrap();
    let out = cli.output(&["events", "send", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("422 Validation failed"), "{stderr}");
    for field in [
        "[0] Code",
        "[0] AdditionalFields.SessionId",
        "[0] AdditionalFields.Username",
    ] {
        assert!(stderr.contains(field), "{field}: {stderr}");
    }
    // With --json the problem document is on stdout too.
    let out = cli.output(&["subscriptions", "create", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let problem: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(problem["status"], 422);
    assert_eq!(problem["errors"][0]["field"], "url");
    // Not found.
    let out = cli.output(&["tenants", "get", "nobody"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));
    // Usage errors.
    assert_eq!(cli.output(&["events", "get"]).status.code(), Some(2));
    assert_eq!(
        cli.output(&["keys", "create", "--name", "x"]).status.code(),
        Some(2)
    );
    assert_eq!(
        cli.output(&["agents", "list", "--signed-in", "maybe"])
            .status
            .code(),
        Some(2)
    );
}

/// `subscriptions create --pull`, `poll`, `commit` and `seek` answer what the API answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pull_commands_read_commit_and_seek() {
    let app = TestApp::spawn().await;
    let server = app.url("");
    let run = move |args: Vec<String>| {
        let cli = Cli {
            server: server.clone(),
        };
        async move {
            tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                cli.json(&args)
            })
            .await
            .unwrap()
        }
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let sub = run(args(&[
        "subscriptions",
        "create",
        "--pull",
        "--partitions",
        "2",
    ]))
    .await;
    assert_eq!(
        (sub["mode"].as_str(), sub["partitions"].as_u64()),
        (Some("pull"), Some(2))
    );
    let nats = run(args(&[
        "subscriptions",
        "create",
        "--nats",
        "nats://u:p@127.0.0.1:4222",
        "--subject",
        "cc.{agent}",
    ]))
    .await;
    assert_eq!(nats["destination"]["url"], "nats://u:***@127.0.0.1:4222");
    let amqp = run(args(&[
        "subscriptions",
        "create",
        "--amqp",
        "amqp://127.0.0.1:5672/%2f",
        "--exchange",
        "cc",
        "--routing-key",
        "{tenant}.{agent}",
    ]))
    .await;
    assert_eq!(amqp["destination"]["routing_key"], "{tenant}.{agent}");
    let id = sub["id"].as_str().unwrap().to_string();
    let events: Vec<Value> = (0..6)
        .map(|i| agent_event(&guid(), 1, &format!("u{i}")))
        .collect();
    app.publish_ok("default", &Value::Array(events)).await;
    let mut read = 0;
    for p in ["0", "1"] {
        let page = run(args(&[
            "subscriptions",
            "poll",
            &id,
            "--partition",
            p,
            "--limit",
            "100",
        ]))
        .await;
        read += page["data"].as_array().unwrap().len();
        let cursor = page["next_cursor"].to_string();
        let done = run(args(&[
            "subscriptions",
            "commit",
            &id,
            "--partition",
            p,
            "--cursor",
            &cursor,
        ]))
        .await;
        assert_eq!(done["cursor"].to_string(), cursor);
        let again = run(args(&["subscriptions", "poll", &id, "--partition", p])).await;
        assert_eq!(again["data"], json!([]), "committed");
    }
    assert_eq!(read, 6);
    let moved = run(args(&["subscriptions", "seek", &id, "--to-sequence", "1"])).await;
    assert_eq!(
        moved["cursors"],
        json!([{"partition": 0, "cursor": 0}, {"partition": 1, "cursor": 0}])
    );
    let page = run(args(&[
        "subscriptions",
        "poll",
        &id,
        "--partition",
        "0",
        "--wait-secs",
        "0",
    ]))
    .await;
    assert!(
        !page["data"].as_array().unwrap().is_empty(),
        "read again after the seek"
    );
}
