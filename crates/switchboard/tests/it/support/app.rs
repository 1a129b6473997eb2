//! `TestApp`: the server running in-process on 127.0.0.1:0 with its own data dir, and helpers
//! to talk to it.

use std::net::SocketAddr;

use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};
use switchboard::config::Config;

use crate::support::db::TestData;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const ADMIN_KEY: &str = "sb_admin_test_key_0123456789abcdef";

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    /// Kept so the data lives as long as the app (and across restarts).
    pub data: TestData,
    shutdown: oneshot::Sender<()>,
    server: JoinHandle<anyhow::Result<()>>,
}

/// The configuration tests run with: defaults, the test's data, loopback on port 0.
pub fn test_config(data: &TestData) -> Config {
    let mut config = Config::for_data_dir(data.dir.path());
    config.database_url = data.database_url();
    config.admin_key = ADMIN_KEY.into();
    // Receivers in tests are on loopback.
    config.dev = true;
    config
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// Starts the server on fresh data with its configuration adjusted.
    pub async fn spawn_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let data = TestData::new().await;
        let mut config = test_config(&data);
        adjust(&mut config);
        Self::start(data, config).await
    }

    /// Starts the server on existing data (a restart).
    pub async fn spawn_in(data: TestData) -> Self {
        let config = test_config(&data);
        Self::start(data, config).await
    }

    async fn start(data: TestData, config: Config) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (shutdown, stop) = oneshot::channel::<()>();
        let server = tokio::spawn(switchboard::run(config, listener, async {
            let _ = stop.await;
        }));
        let app = TestApp {
            addr,
            client: reqwest::Client::new(),
            data,
            shutdown,
            server,
        };
        app.wait_ready().await
    }

    /// The listener is bound before `run` starts, so the first request simply waits in the
    /// accept queue until the store is open; no polling needed.
    async fn wait_ready(self) -> Self {
        let ready = self.client.get(self.url("/readyz")).send().await;
        match ready {
            Ok(r) if r.status() == StatusCode::OK => self,
            other => {
                let exit = self.server.await;
                panic!("server is not ready: {other:?}; it ended with {exit:?}")
            }
        }
    }

    /// Another node on the same PostgreSQL database (with its own data dir).
    pub async fn second_node(&self) -> TestApp {
        self.second_node_with(|_| {}).await
    }

    /// [`TestApp::second_node`] with its configuration adjusted.
    pub async fn second_node_with(&self, adjust: impl FnOnce(&mut Config)) -> TestApp {
        let url = self.data.database_url();
        assert!(!url.is_empty(), "a second node needs PostgreSQL");
        let data = TestData::beside(url);
        let mut config = test_config(&data);
        adjust(&mut config);
        Self::start(data, config).await
    }

    /// Graceful shutdown; hands back the data for a restart.
    pub async fn stop(self) -> TestData {
        let _ = self.shutdown.send(());
        self.server
            .await
            .expect("server task")
            .expect("server ran cleanly");
        self.data
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A request with a bearer key and, if given, a JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        key: &str,
        body: Option<&Value>,
    ) -> Response {
        let mut req = self.client.request(method, self.url(path)).bearer_auth(key);
        if let Some(body) = body {
            req = req.json(body);
        }
        req.send().await.expect("request sent")
    }

    /// POSTs to an action of subscription `sub` of tenant `default` (`replay`,
    /// `secret/rotate`, `test`) with the admin key.
    pub async fn act(&self, sub: &Value, action: &str, body: Option<&Value>) -> Response {
        let id = sub["id"].as_str().expect("a subscription's id");
        let path = format!("/v1/tenants/default/subscriptions/{id}/{action}");
        self.call(Method::POST, &path, ADMIN_KEY, body).await
    }

    pub async fn get(&self, path: &str, key: &str) -> Response {
        self.call(Method::GET, path, key, None).await
    }

    /// The text `/metrics` answers (public by default).
    pub async fn metrics(&self) -> String {
        let r = self.client.get(self.url("/metrics")).send().await.unwrap();
        r.text().await.unwrap()
    }

    /// Posts events to `tenant` as the admin.
    pub async fn publish(&self, tenant: &str, body: &Value) -> Response {
        self.call(
            Method::POST,
            &format!("/v1/tenants/{tenant}/events"),
            ADMIN_KEY,
            Some(body),
        )
        .await
    }

    /// Posts events that must be accepted; returns the `events` array of the 202.
    pub async fn publish_ok(&self, tenant: &str, body: &Value) -> Vec<Value> {
        let r = self.publish(tenant, body).await;
        let status = r.status();
        let answer: Value = r.json().await.expect("json answer");
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
        answer["events"].as_array().expect("events array").clone()
    }

    /// The whole event log of a tenant, walked page by page.
    pub async fn all_events(&self, tenant: &str) -> Vec<Value> {
        self.events_where(tenant, "").await
    }

    /// The event log filtered by a query string such as `category=1&code=2`.
    pub async fn events_where(&self, tenant: &str, filter: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after = String::new();
        loop {
            let path = format!("/v1/tenants/{tenant}/events?limit=1000&{filter}{after}");
            let page = json_ok(self.get(&path, ADMIN_KEY).await).await;
            out.extend(page["data"].as_array().expect("data").iter().cloned());
            match page["next_after"].as_str() {
                Some(next) => after = format!("&after={next}"),
                None => return out,
            }
        }
    }

    pub async fn create_tenant(&self, id: &str) {
        let r = self
            .call(
                Method::POST,
                "/v1/tenants",
                ADMIN_KEY,
                Some(&json!({"id": id, "name": id})),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }

    /// Creates a key on `tenant` with `scopes`; returns the secret key.
    pub async fn create_key(&self, tenant: &str, scopes: &[&str]) -> String {
        let body = json!({"name": "test", "scopes": scopes});
        let r = self
            .call(
                Method::POST,
                &format!("/v1/tenants/{tenant}/keys"),
                ADMIN_KEY,
                Some(&body),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let v: Value = r.json().await.expect("json");
        v["key"].as_str().expect("key").to_string()
    }
}

/// Asserts 200 and returns the JSON body.
pub async fn json_ok(r: Response) -> Value {
    let status = r.status();
    let body: Value = r.json().await.expect("json answer");
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Asserts a problem+json answer with `status`; returns the document.
pub async fn problem(r: Response, status: StatusCode) -> Value {
    assert_eq!(r.status(), status);
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    assert_eq!(ct, "application/problem+json");
    let doc: Value = r.json().await.expect("problem json");
    assert_eq!(doc["status"], status.as_u16());
    assert!(doc["type"].is_string() && doc["title"].is_string() && doc["detail"].is_string());
    doc
}

/// A valid Agent event with the given code, id and username.
/// The fields a problem's `errors` name, in order.
pub fn fields_named(problem: &Value) -> Vec<&str> {
    (problem["errors"].as_array().into_iter().flatten())
        .filter_map(|e| e["field"].as_str())
        .collect()
}

/// A loopback port free now (for a server a test starts as a process of its own).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}

pub fn agent_event(id: &str, code: u32, username: &str) -> Value {
    let mut fields = json!({
        "SessionId": format!("S-{username}"), "SessionType": "CCA",
        "Username": username, "PhoneNo": "+15551230001"
    });
    match code {
        2 => fields["ExitCode"] = json!(0),
        3 => {
            fields["ActivityCode"] = json!(16);
            fields["AvailabilityCode"] = json!(1);
            fields["ActivityName"] = json!("");
        }
        _ => {}
    }
    json!({"Id": id, "CreationDateUtc": "20261123184603", "Category": 1, "Code": code,
           "AdditionalFields": fields})
}

/// A fresh GUID string.
pub fn guid() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl TestApp {
    /// Creates a subscription on `default` from `body`; returns the answer (with `id`, `secret`).
    pub async fn subscribe(&self, body: Value) -> Value {
        let r = self
            .call(
                Method::POST,
                "/v1/tenants/default/subscriptions",
                ADMIN_KEY,
                Some(&body),
            )
            .await;
        let status = r.status();
        let answer: Value = r.json().await.expect("json");
        assert_eq!(status, StatusCode::CREATED, "{answer}");
        answer
    }

    /// The deliveries of a subscription, optionally of one status.
    pub async fn deliveries(&self, sub: &str, status: Option<&str>) -> Vec<Value> {
        let filter = status.map(|s| format!("&status={s}")).unwrap_or_default();
        let path = format!("/v1/tenants/default/subscriptions/{sub}/deliveries?limit=1000{filter}");
        let page = json_ok(self.get(&path, ADMIN_KEY).await).await;
        page["data"].as_array().expect("data").clone()
    }

    /// A delivery with its attempts.
    pub async fn delivery(&self, id: &Value) -> Value {
        json_ok(
            self.get(&format!("/v1/tenants/default/deliveries/{id}"), ADMIN_KEY)
                .await,
        )
        .await
    }
}
