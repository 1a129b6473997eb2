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

use crate::support::app::{TestApp, agent_event, guid};
use crate::support::receiver::eventually;

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
