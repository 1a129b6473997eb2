//! The real `switchboard` binary as a child process, so tests can SIGKILL it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use crate::support::app::ADMIN_KEY;
use crate::support::db::TestData;

/// The real binary as a child process, so it can be SIGKILLed.
pub struct Server {
    pub child: Child,
    pub base: String,
}

impl Server {
    /// Starts `switchboard serve --dev` on port 0 over the test's data and waits for its
    /// listening line.
    pub fn start(data: &TestData) -> Self {
        Self::start_with(data, &[])
    }

    /// As [`Server::start`], with more arguments for `serve`.
    pub fn start_with(data: &TestData, args: &[&str]) -> Self {
        Self::spawn(data, args, Stdio::inherit())
    }

    /// As [`Server::start`], with more environment variables and, if given, the soft limit of
    /// open files (`ulimit -n`) the process starts with.
    pub fn start_env(data: &TestData, env: &[(&str, &str)], open_files: Option<u32>) -> Self {
        Self::launch(serve_command(data, &[], env, open_files), Stdio::inherit())
    }

    /// As [`Server::start`], with what the server logs (stderr) collected for the test to read.
    pub fn start_logged(data: &TestData) -> (Self, Logs) {
        Self::start_logged_env(data, &[])
    }

    /// As [`Server::start_logged`], with more environment variables.
    pub fn start_logged_env(data: &TestData, env: &[(&str, &str)]) -> (Self, Logs) {
        let logs = Logs::default();
        let lines = logs.0.clone();
        // Read from the start: a server logging at debug fills the pipe (64 KiB) before it
        // prints its listening line, and would wait for a reader forever.
        let read = move |stderr: std::process::ChildStderr| {
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    eprintln!("{line}");
                    lines.lock().expect("lock").push(line);
                }
            });
        };
        let server = Self::launch_reading(serve_command(data, &[], env, None), read);
        (server, logs)
    }

    fn spawn(data: &TestData, args: &[&str], stderr: Stdio) -> Self {
        Self::launch(serve_command(data, args, &[], None), stderr)
    }

    /// Runs `command` (a `serve`) and waits for its listening line.
    pub fn launch(mut command: Command, stderr: Stdio) -> Self {
        let child = command
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start switchboard");
        Self::listening(child)
    }

    /// [`Server::launch`] with stderr piped to `read`, which starts reading at once.
    fn launch_reading(mut command: Command, read: impl FnOnce(std::process::ChildStderr)) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start switchboard");
        read(child.stderr.take().expect("stderr"));
        Self::listening(child)
    }

    /// Waits for `child`'s listening line.
    fn listening(mut child: std::process::Child) -> Self {
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the listening line");
        let base = line
            .trim()
            .strip_prefix("switchboard listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Server { child, base }
    }
}

/// `switchboard serve --dev` on port 0 over `data`, with the test admin key; under
/// `ulimit -n open_files` when given (through the shell, which sets it for what it execs).
pub fn serve_command(
    data: &TestData,
    args: &[&str],
    env: &[(&str, &str)],
    open_files: Option<u32>,
) -> Command {
    let bin = env!("CARGO_BIN_EXE_switchboard");
    let mut command = match open_files {
        None => Command::new(bin),
        Some(n) => {
            let mut sh = Command::new("sh");
            sh.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\""), bin]);
            sh
        }
    };
    command
        .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.dir.path())
        .arg("--database-url")
        .arg(data.database_url())
        .args(args)
        .env("SWITCHBOARD_ADMIN_KEY", ADMIN_KEY)
        .env("SWITCHBOARD_LOG_LEVEL", "warn")
        // A short timeout makes the lease short: on PostgreSQL a killed node's claims
        // come free when their leases expire.
        .env("SWITCHBOARD_DELIVERY_TIMEOUT_SECS", "2");
    for (k, v) in env {
        command.env(k, v);
    }
    command
}

/// The lines a [`Server::start_logged`] server has written to stderr so far.
#[derive(Clone, Default)]
pub struct Logs(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Logs {
    /// The lines containing every one of `words`.
    pub fn matching(&self, words: &[&str]) -> Vec<String> {
        let lines = self.0.lock().expect("lock");
        lines
            .iter()
            .filter(|l| words.iter().all(|w| l.contains(w)))
            .cloned()
            .collect()
    }
}

/// The body of a GET of `path` of the server at `base` with the admin key.
pub async fn get_text(client: &reqwest::Client, base: &str, path: &str) -> String {
    (client.get(format!("{base}{path}")))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("request")
        .text()
        .await
        .expect("body")
}

/// POSTs `body` to `path` of the server at `base` with the admin key.
pub async fn post_to(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    body: &serde_json::Value,
) -> reqwest::Response {
    client
        .post(format!("{base}{path}"))
        .bearer_auth(ADMIN_KEY)
        .json(body)
        .send()
        .await
        .expect("request")
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// POSTs `body` to `path` with the admin key.
    pub async fn post(
        &self,
        client: &reqwest::Client,
        path: &str,
        body: &serde_json::Value,
    ) -> reqwest::Response {
        post_to(client, &self.base, path, body).await
    }

    /// The body of a GET of `path` with the admin key.
    pub async fn get_text(&self, client: &reqwest::Client, path: &str) -> String {
        get_text(client, &self.base, path).await
    }

    /// Posts one Agent event to tenant `default` as the admin; asserts it was accepted.
    pub async fn publish_one(&self) {
        let event = crate::support::app::agent_event(&crate::support::app::guid(), 1, "jdoe");
        let r = self
            .post(
                &reqwest::Client::new(),
                "/v1/tenants/default/events",
                &event,
            )
            .await;
        assert_eq!(r.status(), reqwest::StatusCode::ACCEPTED);
    }

    /// Sends SIGTERM, as an orchestrator stopping the node would.
    pub fn terminate(&self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.expect("kill").success());
    }

    /// Every event `Id` in tenant `default`'s log, read page by page.
    pub async fn event_ids(&self, client: &reqwest::Client) -> std::collections::HashSet<String> {
        let mut ids = std::collections::HashSet::new();
        let mut after = 0;
        loop {
            let page: serde_json::Value = client
                .get(format!(
                    "{}/v1/tenants/default/events?limit=1000&after={after}",
                    self.base
                ))
                .bearer_auth(ADMIN_KEY)
                .send()
                .await
                .expect("request")
                .json()
                .await
                .expect("a page");
            for item in page["data"].as_array().expect("data") {
                ids.insert(item["event"]["Id"].as_str().expect("Id").to_string());
                after = item["sequence"].as_i64().expect("sequence");
            }
            if page["next_after"].is_null() {
                return ids;
            }
        }
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }
}
