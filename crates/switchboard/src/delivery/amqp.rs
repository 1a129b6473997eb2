//! The RabbitMQ (AMQP 0-9-1) destination (DESIGN §17), on lapin: each message published to the
//! subscription's exchange (declared by the operator; Switchboard declares nothing) with the
//! routing-key template filled in, persistent (`delivery_mode` 2), `mandatory`, `message_id` =
//! `webhook-id`, and the Standard Webhooks and `switchboard-*` values as AMQP headers. The
//! channel is in confirm mode: success is the broker's ack; a message returned as unroutable,
//! a nack, or a missing exchange (which closes the channel) is a failed attempt saying so.
//!
//! One connection and one channel per destination, made at the first attempt and reused; a
//! closed channel or connection is made again at the next attempt (the retry schedule is the
//! backoff). The broker's address passes the address guard as NATS's does.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::sync::Mutex;

use super::attempt::{Answer, Destination, Message, Sending};
use super::broker::Broker;
use super::guard::Guard;

/// How long a publish waits for its confirm, and a connection for the broker.
const TIMEOUT: Duration = Duration::from_secs(5);

pub struct Amqp {
    broker: Broker,
    exchange: String,
    conn: Mutex<Option<(Arc<Connection>, Channel)>>,
}

impl Amqp {
    pub fn new(
        guard: Arc<Guard>,
        url: &str,
        exchange: &str,
        routing_key: &str,
        tenant: &str,
        id: &str,
        headers: &std::collections::BTreeMap<String, String>,
    ) -> Self {
        Amqp {
            broker: Broker::new(guard, "amqp", url, routing_key, tenant, id, headers),
            exchange: exchange.to_owned(),
            conn: Mutex::new(None),
        }
    }

    /// The channel, in confirm mode: the open one, or a new one (on a new connection when
    /// the old one closed), the broker's address checked by the guard first.
    async fn channel(&self) -> Result<Channel, String> {
        let mut held = self.conn.lock().await;
        if let Some((conn, channel)) = held.as_ref() {
            if channel.status().connected() {
                return Ok(channel.clone());
            }
            if conn.status().connected() {
                let channel = open_channel(conn).await?;
                *held = Some((conn.clone(), channel.clone()));
                return Ok(channel);
            }
        }
        let (host, port, addr) = self.broker.address().await?;
        // The URL with the checked address in place of the name (credentials and vhost kept).
        let mut dial = reqwest::Url::parse(&self.broker.url).map_err(|e| e.to_string())?;
        dial.set_ip_host(addr.ip())
            .map_err(|()| format!("{host}: cannot dial {}", addr.ip()))?;
        let _ = dial.set_port(Some(addr.port()));
        let conn = tokio::time::timeout(
            TIMEOUT,
            Connection::connect(dial.as_str(), ConnectionProperties::default()),
        )
        .await
        .map_err(|_| format!("connecting to amqp://{host}:{port}: timed out"))?
        .map_err(|e| format!("connecting to amqp://{host}:{port}: {e}"))?;
        let channel = open_channel(&conn).await?;
        *held = Some((Arc::new(conn), channel.clone()));
        Ok(channel)
    }

    async fn publish(&self, message: &Message) -> Result<(), String> {
        let routed = self.broker.route(message)?;
        let mut headers = FieldTable::default();
        for (name, value) in &routed.headers {
            headers.insert(
                name.as_str().into(),
                AMQPValue::LongString(value.as_str().into()),
            );
        }
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(routed.webhook_id.as_str().into())
            .with_headers(headers);
        let channel = self.channel().await?;
        let routing_key = routed.route;
        let to = format!("exchange {:?}, routing key {routing_key}", self.exchange);
        let confirm = tokio::time::timeout(TIMEOUT, async {
            channel
                .basic_publish(
                    self.exchange.as_str().into(),
                    routing_key.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &message.body,
                    properties,
                )
                .await?
                .await
        })
        .await
        .map_err(|_| format!("no confirm from the broker for {to} within 5 s"))?
        .map_err(|e| format!("publishing to {to}: {e}"))?;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) => Err(format!(
                "unroutable: the broker returned the message ({} {}): no queue is bound to {to}",
                returned.reply_code, returned.reply_text
            )),
            Confirmation::Nack(_) => Err(format!("the broker nacked the message to {to}")),
            Confirmation::NotRequested => Err("the channel is not in confirm mode".to_owned()),
        }
    }
}

async fn open_channel(conn: &Connection) -> Result<Channel, String> {
    let channel = conn
        .create_channel()
        .await
        .map_err(|e| format!("opening a channel: {e}"))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| format!("enabling publisher confirms: {e}"))?;
    Ok(channel)
}

impl Destination for Amqp {
    fn send<'a>(&'a self, message: &'a Message) -> Sending<'a> {
        Box::pin(async move {
            match self.publish(message).await {
                Ok(()) => Answer::default(),
                Err(why) => Answer::failed(why),
            }
        })
    }
}
