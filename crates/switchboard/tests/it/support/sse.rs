//! A Server-Sent Events reader for tests: messages as the stream sends them, read from a real
//! HTTP response chunk by chunk.

use std::time::Duration;

use reqwest::{Response, StatusCode};
use serde_json::Value;

use super::TestApp;

/// One message: its `event:`, `id:` and `data:` (parsed as JSON).
#[derive(Clone, Debug)]
pub struct Message {
    pub event: String,
    pub id: Option<i64>,
    pub data: Value,
}

pub struct SseReader {
    response: Response,
    buffer: String,
    /// Comment lines seen (`: keep-alive`).
    pub comments: usize,
}

impl SseReader {
    /// Opens `path` with `key`, resuming after `last_event_id` if given.
    pub async fn open(app: &TestApp, path: &str, key: &str, last_event_id: Option<i64>) -> Self {
        Self::open_at(&app.client, &app.url(path), key, last_event_id).await
    }

    pub async fn open_at(
        client: &reqwest::Client,
        url: &str,
        key: &str,
        last_event_id: Option<i64>,
    ) -> Self {
        let mut req = client.get(url).bearer_auth(key);
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        let response = req.send().await.expect("stream request");
        assert_eq!(response.status(), StatusCode::OK);
        let ct = response.headers()["content-type"].to_str().unwrap();
        assert_eq!(ct, "text/event-stream");
        SseReader {
            response,
            buffer: String::new(),
            comments: 0,
        }
    }

    /// The next message, or `None` if the stream ended; panics after `within` with none.
    pub async fn next_within(&mut self, within: Duration) -> Option<Message> {
        tokio::time::timeout(within, self.next())
            .await
            .expect("a stream message in time")
    }

    /// The next message, or `None` if the stream ended.
    pub async fn next(&mut self) -> Option<Message> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if let Some(m) = self.parse(&block) {
                    return Some(m);
                }
                continue;
            }
            match self.response.chunk().await.expect("stream chunk") {
                Some(bytes) => self.buffer.push_str(std::str::from_utf8(&bytes).unwrap()),
                None => return None,
            }
        }
    }

    fn parse(&mut self, block: &str) -> Option<Message> {
        let (mut event, mut id, mut data) = (String::from("message"), None, String::new());
        for line in block.lines() {
            if line.starts_with(':') {
                self.comments += 1;
            } else if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("id:") {
                id = Some(v.trim().parse().expect("numeric id"));
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.strip_prefix(' ').unwrap_or(v));
            }
        }
        if data.is_empty() {
            return None;
        }
        Some(Message {
            event,
            id,
            data: serde_json::from_str(&data).expect("JSON data"),
        })
    }
}
