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
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data.dir.path())
            .arg("--database-url")
            .arg(data.database_url())
            .args(args)
            .env("SWITCHBOARD_ADMIN_KEY", ADMIN_KEY)
            .env("SWITCHBOARD_LOG_LEVEL", "warn")
            // A short timeout makes the lease short: on PostgreSQL a killed node's claims
            // come free when their leases expire.
            .env("SWITCHBOARD_DELIVERY_TIMEOUT_SECS", "2")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start switchboard");
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

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }
}
