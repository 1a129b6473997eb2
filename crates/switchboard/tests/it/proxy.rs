//! The egress proxy (DESIGN §20): deliveries and token requests through a real HTTP proxy on
//! loopback (`proxy.py`, from PyPI; `.ci/run` installs it), whose access log shows each
//! CONNECT and absolute-form request; a receiver the guard refuses is never asked of the proxy.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::ExtendedKeyUsagePurpose;
use serde_json::json;
use switchboard::delivery::Sender;
use switchboard::delivery::guard::Guard;
use switchboard::store::DeliveryStatus;

use crate::mtls::{Ca, TlsReceiver};
use crate::receivers::TokenEndpoint;
use crate::support::app::{TestApp, agent_event, free_port, guid};
use crate::support::receiver::{TestReceiver, eventually};
use crate::support::stepper::Stepper;

/// `proxy.py` on a free loopback port, its log lines collected.
struct ProxyPy {
    url: String,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl ProxyPy {
    async fn start() -> Self {
        let port = free_port();
        let mut child = Command::new("python3")
            .args([
                "-m",
                "proxy",
                "--hostname",
                "127.0.0.1",
                "--port",
                &port.to_string(),
            ])
            .args([
                "--num-workers",
                "1",
                "--num-acceptors",
                "1",
                "--log-level",
                "INFO",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 must be installed");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (lines, stderr) = (log.clone(), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        let started = std::time::Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "proxy.py exited ({status}); install it with `python3 -m pip install proxy.py` \
                     (.ci/run does): {:?}",
                    log.lock().unwrap()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "proxy.py did not listen"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ProxyPy {
            url: format!("http://127.0.0.1:{port}"),
            child,
            log,
        }
    }

    fn lines(&self, containing: &str) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter(|l| l.contains(containing))
            .cloned()
            .collect()
    }
}

impl Drop for ProxyPy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn deliveries_and_token_requests_go_through_the_proxy() {
    let proxy = ProxyPy::start().await;
    let (server_ca, client_ca) = (Ca::new("Receiver CA"), Ca::new("Client CA"));
    let server = server_ca.issue("localhost", ExtendedKeyUsagePurpose::ServerAuth);
    let client = client_ca.issue("switchboard", ExtendedKeyUsagePurpose::ClientAuth);
    let https = TlsReceiver::start(&server, &client_ca).await;
    let http = TestReceiver::start().await;
    let tokens = TokenEndpoint::start(3600).await;
    let token_url = tokens.url.replace("127.0.0.1", "localhost");
    let mut auth = tokens.auth();
    auth["token_url"] = json!(token_url);
    let http_url = format!("http://localhost:{}/in", http.addr.port());

    let url = proxy.url.clone();
    let app = TestApp::spawn_with(move |c| c.egress_proxy = url).await;
    let over_tls = app
        .subscribe(
            json!({"url": https.url, "tls": {"client_cert_pem": client.cert_pem,
            "client_key_pem": client.key_pem, "ca_pem": server_ca.pem}}),
        )
        .await;
    let plain = app.subscribe(json!({"url": http_url, "auth": auth})).await;
    app.publish_ok("default", &agent_event(&guid(), 1, "jdoe"))
        .await;
    for sub in [&over_tls, &plain] {
        let id = sub["id"].as_str().unwrap().to_owned();
        eventually("delivered through the proxy", || async {
            (app.deliveries(&id, Some("succeeded")).await.len() == 1).then_some(())
        })
        .await;
    }
    assert_eq!(http.received()[0].header("authorization"), "Bearer tok-1");
    let https_port = https
        .url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    let tunnel = format!("CONNECT localhost:{https_port}");
    eventually("the proxy's access log", || async {
        (!proxy.lines(&tunnel).is_empty()).then_some(())
    })
    .await;
    // proxy.py logs a request when its connection closes: the server's pooled connections
    // close when it stops.
    drop(app);
    let port = http.addr.port();
    let absolute = format!("POST localhost:{port}/in");
    let token_path = token_url.trim_start_matches("http://").to_owned();
    let token = format!("POST {token_path}");
    eventually(
        "absolute-form requests in the proxy's access log",
        || async {
            (proxy.lines(&absolute).len() == 1 && proxy.lines(&token).len() == 1).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_receiver_the_guard_refuses_is_never_asked_of_the_proxy() {
    let proxy = ProxyPy::start().await;
    let mut t = Stepper::new().await;
    // The stepper's guard allows loopback (the proxy) only. The receiver is an address the
    // guard classifies as private, stored past the API (which refuses it at creation): the
    // attempt fails before the proxy hears of it. No packet goes to it.
    let guard = Guard {
        allow_loopback: true,
        allow_networks: Vec::new(),
    };
    let sender = Sender::new(guard, Duration::from_secs(5))
        .unwrap()
        .with_proxy(&proxy.url)
        .unwrap()
        .with_clock(t.clock.clone());
    t.dispatcher = switchboard::delivery::Dispatcher::new(
        t.store.clone(),
        sender,
        crate::support::stepper::LEASE,
    );
    let sub = t
        .subscribe(json!({"url": "http://10.20.30.40:8080/in", "retry_schedule_secs": []}))
        .await;
    t.publish(&agent_event(&guid(), 1, "jdoe")).await;
    t.step().await;
    let d = t.deliveries(&sub).await;
    assert_eq!(d[0].status, DeliveryStatus::Failed);
    let error = d[0].last_error.as_deref().unwrap_or_default();
    assert!(
        error.contains("private") && error.contains("address guard"),
        "{error}"
    );
    assert!(
        proxy.lines("10.20.30.40").is_empty(),
        "the proxy was not asked"
    );
}

#[test]
fn the_proxys_own_address_passes_the_guard() {
    let strict = Guard {
        allow_loopback: false,
        allow_networks: Vec::new(),
    };
    let sender = Sender::new(strict, Duration::from_secs(5)).unwrap();
    let refused = sender.with_proxy("http://127.0.0.1:3128").err().unwrap();
    assert!(refused.to_string().contains("loopback"), "{refused}");
    let private = Sender::new(
        Guard {
            allow_loopback: false,
            allow_networks: vec!["10.0.0.0/8".parse().unwrap()],
        },
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(
        private.with_proxy("http://10.9.9.9:3128").is_ok(),
        "allowed network"
    );
}
