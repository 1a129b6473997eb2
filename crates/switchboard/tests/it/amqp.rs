//! RabbitMQ (AMQP 0-9-1) destinations (DESIGN §17), against the real broker on loopback
//! (`SWITCHBOARD_TEST_AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`; `.ci/run`
//! starts it). Each test declares an exchange and a queue of its own, and deletes them after.

use std::collections::{HashMap, HashSet};

use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::{Value, json};
use switchboard::delivery::signing::{Secret, verify};

use crate::support::app::{TestApp, agent_event, free_port, guid};
use crate::support::receiver::{eventually, eventually_within};

fn amqp_url() -> String {
    std::env::var("SWITCHBOARD_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A topic exchange and a queue bound to all of it, the test's own.
struct Broker {
    _conn: Connection,
    channel: Channel,
    exchange: String,
    queue: String,
}

impl Broker {
    async fn new() -> Self {
        let url = amqp_url();
        let conn = Connection::connect(&url, ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("RabbitMQ must run at {url} (.ci/run starts it): {e}"));
        let channel = conn.create_channel().await.unwrap();
        let tag = guid().replace('-', "")[..12].to_owned();
        let exchange = format!("sbtest.{tag}");
        let queue = format!("sbtest.{tag}.all");
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        Broker {
            _conn: conn,
            channel,
            exchange,
            queue,
        }
    }

    /// Takes the queue's messages as they come, until `n` are taken (30 s at most).
    async fn take(&self, n: usize) -> Vec<lapin::message::BasicGetMessage> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while out.len() < n {
            let got = self
                .channel
                .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap();
            match got {
                Some(m) => out.push(m),
                None => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "only {} of {n} messages in the queue",
                        out.len()
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
        }
        out
    }

    async fn delete(self) {
        let _ = self
            .channel
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = self
            .channel
            .exchange_delete(
                self.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
    }
}

fn header(m: &lapin::message::BasicGetMessage, name: &str) -> String {
    let headers = m.delivery.properties.headers().as_ref().expect("headers");
    match headers.inner().get(name) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => panic!("header {name}: {other:?}"),
    }
}

#[tokio::test]
async fn twenty_agents_reach_the_queue_each_in_order_signed_persistent() {
    let broker = Broker::new().await;
    let app = TestApp::spawn().await;
    let sub = app
        .subscribe(json!({
            "destination": {"type": "amqp", "url": amqp_url(), "exchange": broker.exchange,
                            "routing_key": "{tenant}.{category}.{code}.{agent}"},
            "ordering": "per_agent",
        }))
        .await;
    assert_eq!(
        sub["destination"]["url"], "amqp://guest:***@127.0.0.1:5672/%2f",
        "the password is write-only"
    );
    let secret = Secret::parse(sub["secret"].as_str().unwrap()).unwrap();
    for round in 0..50u32 {
        let batch: Vec<Value> = (0..20)
            .map(|a| {
                agent_event(
                    &guid(),
                    [1, 3, 4][(round % 3) as usize],
                    &format!("agent.{a}"),
                )
            })
            .collect();
        app.publish_ok("default", &Value::Array(batch)).await;
    }
    let messages = broker.take(1000).await;
    assert_eq!(messages.len(), 1000);
    let mut last: HashMap<String, i64> = HashMap::new();
    let mut ids = HashSet::new();
    for m in &messages {
        let p = &m.delivery.properties;
        assert_eq!(*p.delivery_mode(), Some(2), "persistent");
        let id = header(m, "webhook-id");
        assert_eq!(
            p.message_id().as_ref().map(|s| s.as_str()),
            Some(id.as_str())
        );
        let ts: i64 = header(m, "webhook-timestamp").parse().unwrap();
        assert!(
            verify(
                &secret,
                &header(m, "webhook-signature"),
                &id,
                ts,
                &m.delivery.data
            ),
            "signature of {id}"
        );
        assert!(ids.insert(id.clone()), "{id} once");
        let agent = header(m, "switchboard-agent");
        let body: Value = serde_json::from_slice(&m.delivery.data).unwrap();
        assert_eq!(
            m.delivery.routing_key.as_str(),
            format!("default.1.{}.{}", body["Code"], agent.replace('.', "_"))
        );
        let seq: i64 = header(m, "switchboard-sequence").parse().unwrap();
        let before = last.insert(agent.clone(), seq);
        assert!(before.is_none_or(|b| b < seq), "{agent} in order");
    }
    assert_eq!(last.len(), 20);
    assert!(app.metrics().await.contains("destination=\"amqp\""));
    broker.delete().await;
}

#[tokio::test]
async fn an_unroutable_message_and_a_missing_exchange_are_failed_attempts_saying_so() {
    let broker = Broker::new().await;
    let app = TestApp::spawn().await;
    // Nothing is bound to this exchange: the broker returns the message (mandatory).
    let lonely = format!("{}.lonely", broker.exchange);
    broker
        .channel
        .exchange_declare(
            lonely.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let unroutable = app
        .subscribe(json!({
            "destination": {"type": "amqp", "url": amqp_url(), "exchange": lonely,
                            "routing_key": "{agent}"},
            "retry_schedule_secs": [3600],
        }))
        .await;
    let missing = app
        .subscribe(json!({
            "destination": {"type": "amqp", "url": amqp_url(),
                            "exchange": format!("{}.missing", broker.exchange), "routing_key": "{agent}"},
            "retry_schedule_secs": [3600],
        }))
        .await;
    app.publish_ok("default", &json!([agent_event(&guid(), 1, "a")]))
        .await;
    for (sub, says) in [(&unroutable, "unroutable"), (&missing, "missing")] {
        let id = sub["id"].as_str().unwrap().to_owned();
        let failed = eventually("a failed attempt", || async {
            let d = app.deliveries(&id, Some("pending")).await;
            d.into_iter()
                .find(|d| d["attempt_count"].as_u64() == Some(1))
        })
        .await;
        let error = failed["last_error"].as_str().unwrap_or_default();
        let expect = if says == "unroutable" {
            "unroutable"
        } else {
            "NOT_FOUND"
        };
        assert!(error.contains(expect), "{says}: {failed}");
    }
    let _ = broker
        .channel
        .exchange_delete(lonely.as_str().into(), ExchangeDeleteOptions::default())
        .await;
    broker.delete().await;
}

/// A RabbitMQ node of the test's own (Debian's `rabbitmq-server`, as `.ci/run` uses), on free
/// loopback ports, its data in a directory that outlives a restart. Stopped with SIGTERM (the
/// broker's orderly shutdown) and started again on the same data.
struct OwnRabbit {
    port: u16,
    dist_port: u16,
    dir: tempfile::TempDir,
    /// The `rabbitmq-server` script, which ends with the node.
    child: Option<std::process::Child>,
}

impl OwnRabbit {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["mnesia", "log"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        std::fs::write(dir.path().join("plugins"), "[].\n").unwrap();
        // Run as root, `rabbitmq-server` switches to the `rabbitmq` user: its data must be
        // that user's.
        let _ = std::process::Command::new("chown")
            .args(["-R", "rabbitmq"])
            .arg(dir.path())
            .status();
        let mut b = OwnRabbit {
            port: free_port(),
            dist_port: free_port(),
            dir,
            child: None,
        };
        b.up().await;
        b
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn pid_file(&self) -> std::path::PathBuf {
        self.dir.path().join("pid")
    }

    async fn up(&mut self) {
        let d = self.dir.path();
        let path = |p: &str| d.join(p).into_os_string();
        let node = format!("sbtest{}@localhost", self.port);
        let child = std::process::Command::new("rabbitmq-server")
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", path("mnesia"))
            .env("RABBITMQ_LOG_BASE", path("log"))
            .env("RABBITMQ_PID_FILE", self.pid_file())
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", path("plugins"))
            .env("RABBITMQ_CONFIG_FILE", path("rabbitmq"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("rabbitmq-server must be installed (.ci/run installs it)");
        self.child = Some(child);
        let url = self.url();
        eventually_within(
            "the broker accepting connections",
            std::time::Duration::from_secs(60),
            || {
                let url = url.clone();
                async move {
                    Connection::connect(&url, ConnectionProperties::default())
                        .await
                        .ok()
                }
            },
        )
        .await;
    }

    /// Stops the node and waits until its process is gone.
    async fn down(&mut self) {
        let Ok(pid) = std::fs::read_to_string(self.pid_file()) else {
            return;
        };
        let pid = pid.trim().to_owned();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        let proc = format!("/proc/{pid}");
        eventually_within(
            "the broker stopped",
            std::time::Duration::from_secs(60),
            || {
                let gone = !std::path::Path::new(&proc).exists();
                async move { gone.then_some(()) }
            },
        )
        .await;
        let _ = std::fs::remove_file(self.pid_file());
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRabbit {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.pid_file()) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", pid.trim()])
                .status();
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A durable queue of the own broker's, how many messages it holds.
async fn queue_depth(url: &str, queue: &str) -> Option<u32> {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .ok()?;
    let channel = conn.create_channel().await.ok()?;
    let q = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .ok()?;
    let _ = conn.close(200, "done".into()).await;
    Some(q.message_count())
}

#[tokio::test]
async fn the_broker_stopped_for_ten_seconds_under_load_loses_nothing_and_keeps_order() {
    let mut rabbit = OwnRabbit::start().await;
    {
        let conn = Connection::connect(&rabbit.url(), ConnectionProperties::default())
            .await
            .unwrap();
        let channel = conn.create_channel().await.unwrap();
        let durable = |d| ExchangeDeclareOptions {
            durable: d,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                "outage".into(),
                ExchangeKind::Topic,
                durable(true),
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_declare(
                "outage.all".into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                "outage.all".into(),
                "outage".into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let _ = conn.close(200, "declared".into()).await;
    }
    let app = TestApp::spawn().await;
    let sub = app
        .subscribe(json!({
            "destination": {"type": "amqp", "url": rabbit.url(), "exchange": "outage",
                            "routing_key": "{agent}"},
            "ordering": "per_agent",
            "retry_schedule_secs": vec![1; 50],
        }))
        .await;
    let publish = |round: u32| {
        let batch: Vec<Value> = (0..10)
            .map(|a| agent_event(&guid(), [1, 3, 4][(round % 3) as usize], &format!("a{a}")))
            .collect();
        Value::Array(batch)
    };
    for round in 0..10 {
        app.publish_ok("default", &publish(round)).await;
    }
    rabbit.down().await;
    // Under load while it is down: events keep coming for 10 s.
    for round in 10..30 {
        app.publish_ok("default", &publish(round)).await;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    rabbit.up().await;
    let id = sub["id"].as_str().unwrap().to_owned();
    eventually_within(
        "every delivery recorded succeeded after the restart",
        std::time::Duration::from_secs(120),
        || async { (app.deliveries(&id, Some("succeeded")).await.len() == 300).then_some(()) },
    )
    .await;
    let url = rabbit.url();
    let depth = queue_depth(&url, "outage.all").await.unwrap();
    assert!(depth >= 300, "{depth} messages in the durable queue");
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let mut last: HashMap<String, i64> = HashMap::new();
    let mut ids = HashSet::new();
    for _ in 0..depth {
        let m = channel
            .basic_get("outage.all".into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .expect("a message");
        ids.insert(header(&m, "webhook-id"));
        let agent = header(&m, "switchboard-agent");
        let seq: i64 = header(&m, "switchboard-sequence").parse().unwrap();
        // At least once: a publish whose confirm the shutdown cut off goes again, right after
        // the first (an agent's next event waits for it), so an agent's sequence never goes back.
        let before = last.insert(agent.clone(), seq);
        assert!(before.is_none_or(|b| b <= seq), "{agent} in order");
    }
    assert_eq!(ids.len(), 300, "every event, none lost");
    assert_eq!(last.len(), 10);
    let _ = conn.close(200, "done".into()).await;
    rabbit.down().await;
}
