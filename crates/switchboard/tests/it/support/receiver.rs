//! `TestReceiver`: a webhook endpoint on 127.0.0.1:0 that records every request and answers as
//! its behaviour says.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::Value;
use tokio::sync::Notify;

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    pub fn event_id(&self) -> String {
        self.json()["Id"].as_str().unwrap().to_string()
    }
}

/// Decides the answer to request number `n` (0-based): status and a delay before answering.
pub type Behaviour = Arc<dyn Fn(usize, &Received) -> (u16, Duration) + Send + Sync>;

/// The body and extra headers every request is answered with.
type Answer = (String, Vec<(String, String)>);

#[derive(Clone)]
struct Shared {
    received: Arc<Mutex<Vec<Received>>>,
    arrived: Arc<Notify>,
    behaviour: Arc<Mutex<Behaviour>>,
    /// Answer body and extra headers, the same for every request.
    answer: Arc<Mutex<Answer>>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
}

pub struct TestReceiver {
    pub addr: SocketAddr,
    shared: Shared,
}

impl TestReceiver {
    /// Answers 200 to everything.
    pub async fn start() -> Self {
        Self::with(|_, _| (200, Duration::ZERO)).await
    }

    pub async fn with(
        behaviour: impl Fn(usize, &Received) -> (u16, Duration) + Send + Sync + 'static,
    ) -> Self {
        let shared = Shared {
            received: Arc::default(),
            arrived: Arc::new(Notify::new()),
            behaviour: Arc::new(Mutex::new(Arc::new(behaviour))),
            answer: Arc::default(),
            in_flight: Arc::default(),
            max_in_flight: Arc::default(),
        };
        let app = axum::Router::new()
            .route("/{*path}", post(receive))
            .route("/", post(receive))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        TestReceiver { addr, shared }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn set_behaviour(
        &self,
        behaviour: impl Fn(usize, &Received) -> (u16, Duration) + Send + Sync + 'static,
    ) {
        *self.shared.behaviour.lock().unwrap() = Arc::new(behaviour);
    }

    /// Answers every request with this body and these headers from now on.
    pub fn set_answer(&self, body: &str, headers: &[(&str, &str)]) {
        let headers = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        *self.shared.answer.lock().unwrap() = (body.to_string(), headers);
    }

    /// The most requests that were being answered at the same moment.
    pub fn max_concurrent(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// Waits (no polling) until at least `n` requests arrived; panics after 60 s.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        self.wait_until(|r| r.len() >= n, &format!("{n} requests"))
            .await
    }

    /// Waits until `done` holds over the requests received so far.
    pub async fn wait_until(
        &self,
        done: impl Fn(&[Received]) -> bool,
        what: &str,
    ) -> Vec<Received> {
        let wait = async {
            loop {
                let arrived = self.shared.arrived.notified();
                {
                    let got = self.shared.received.lock().unwrap();
                    if done(&got) {
                        return got.clone();
                    }
                }
                arrived.await;
            }
        };
        match tokio::time::timeout(Duration::from_secs(60), wait).await {
            Ok(got) => got,
            Err(_) => panic!(
                "receiver: timed out waiting for {what}; got {}",
                self.received().len()
            ),
        }
    }
}

async fn receive(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let req = Received { headers, body };
    let (n, behaviour) = {
        let mut got = shared.received.lock().unwrap();
        got.push(req.clone());
        (got.len() - 1, shared.behaviour.lock().unwrap().clone())
    };
    shared.arrived.notify_waiters();
    let (status, delay) = behaviour(n, &req);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    shared.in_flight.fetch_sub(1, Ordering::SeqCst);
    let (text, extra) = shared.answer.lock().unwrap().clone();
    let mut response = (StatusCode::from_u16(status).unwrap(), text).into_response();
    for (k, v) in extra {
        response.headers_mut().insert(
            axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            axum::http::HeaderValue::from_str(&v).unwrap(),
        );
    }
    response
}

/// The distinct `webhook-id`s among requests received.
pub fn unique_ids(got: &[Received]) -> std::collections::HashSet<String> {
    got.iter()
        .map(|r| r.header("webhook-id").to_string())
        .collect()
}

/// Polls `check` until it returns `Some`, for state only visible through the API (a readiness
/// check, not a sleep-and-hope); panics after 30 s.
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_within(what, Duration::from_secs(30), check).await
}

/// [`eventually`], panicking after `limit`: for what must happen within a bound.
pub async fn eventually_within<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {limit:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
