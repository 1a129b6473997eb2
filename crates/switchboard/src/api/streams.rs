//! Server-Sent Events (DESIGN §10): `…/events/stream` and `…/agents/stream`.
//!
//! A stream is a cursor on the durable log, not a queue: a task per consumer reads a page after
//! its cursor, hands each message to a small channel (the consumer's only buffer), and when it
//! has read everything there is waits for the next commit (`Store::commits`, which on
//! PostgreSQL every node's commits wake). A consumer that stops reading stops its task at the
//! channel's bound; the rest stays in the database until it reads on. Nothing is sent before
//! its commit, so resuming after the last `id:` received loses nothing and repeats nothing.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::events::{LogItem, filters};
use super::{Access, ApiError, AppState, Params, need};
use crate::agent::Agent;
use crate::event::{Catalog, Event};
use crate::store::{AgentQuery, EventQuery, Store, StoreError, StoredEvent};
use crate::telemetry;

/// Messages a consumer may have waiting besides what its connection holds (and at most
/// `stream_buffer_bytes` of them).
const BUFFER: usize = 32;
/// Rows read from the database at a time, at most (fewer when events are large: see [`Pages`]).
const PAGE: u32 = 200;
/// A comment line at least this often keeps proxies from closing an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How long an open stream's last word (`event: error`) may wait for room.
const REVOKED_CHECK: Duration = Duration::from_millis(500);
/// An open stream checks that its key still exists whenever keys are deleted, and at least this
/// often (a notification from another node may be lost with a connection).
const REVOKED_POLL: Duration = Duration::from_secs(30);

/// The streams open, counted by key, by tenant and in all, against their limits (DESIGN §23).
pub struct Slots {
    per_key: u32,
    per_tenant: u32,
    total: u32,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    keys: HashMap<String, u32>,
    tenants: HashMap<String, u32>,
    all: u32,
}

impl Slots {
    pub fn new(per_key: u32, per_tenant: u32, total: u32) -> Self {
        Slots {
            per_key,
            per_tenant,
            total,
            open: Mutex::default(),
        }
    }

    /// A slot for one more stream of `key` (its hash) on `tenant`, or the limit it would pass.
    pub(super) fn take(self: &Arc<Self>, key: &str, tenant: &str) -> Result<Slot, ApiError> {
        let mut open = self.open.lock().expect("slots lock");
        let by_key = open.keys.get(key).copied().unwrap_or(0);
        let by_tenant = open.tenants.get(tenant).copied().unwrap_or(0);
        let full = |limit: &'static str, max: u32, whose: &str| ApiError::LimitReached {
            limit,
            detail: format!("{whose} {max} streams open already, the most {limit} allows"),
        };
        if by_key >= self.per_key {
            return Err(full("max_streams_per_key", self.per_key, "this key holds"));
        }
        if by_tenant >= self.per_tenant {
            return Err(full(
                "max_streams_per_tenant",
                self.per_tenant,
                "the tenant's keys hold",
            ));
        }
        if open.all >= self.total {
            return Err(full("max_streams", self.total, "the server holds"));
        }
        *open.keys.entry(key.to_string()).or_default() += 1;
        *open.tenants.entry(tenant.to_string()).or_default() += 1;
        open.all += 1;
        Ok(Slot {
            slots: self.clone(),
            key: key.to_string(),
            tenant: tenant.to_string(),
        })
    }
}

/// One open stream's place in [`Slots`], given back when the stream ends.
pub(super) struct Slot {
    slots: Arc<Slots>,
    key: String,
    tenant: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().expect("slots lock");
        let release = |map: &mut HashMap<String, u32>, k: &str| {
            if let Some(n) = map.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    map.remove(k);
                }
            }
        };
        release(&mut open.keys, &self.key);
        release(&mut open.tenants, &self.tenant);
        open.all -= 1;
    }
}

/// A message and the share of the stream's byte budget it holds until the consumer takes it.
type Queued = (SseEvent, Option<OwnedSemaphorePermit>);

/// The messages of one stream, as the response body reads them.
pub struct Feed(mpsc::Receiver<Queued>);

impl futures_core::Stream for Feed {
    type Item = Result<SseEvent, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // Taken: its bytes leave the budget (the connection's own buffers are bounded by the
        // socket's).
        self.0
            .poll_recv(cx)
            .map(|m| m.map(|(event, _budget)| Ok(event)))
    }
}

/// Why a stream stopped sending.
#[derive(Debug)]
enum Gone {
    /// The consumer went away.
    Left,
    /// The consumer read nothing for `stream_idle_secs` while data waited.
    Idle,
}

/// The sending side of a stream: at most [`BUFFER`] messages and `stream_buffer_bytes` wait
/// for the consumer; a consumer that takes none for `stream_idle_secs` is given up on.
#[derive(Clone)]
struct Out {
    tx: mpsc::Sender<Queued>,
    budget: Arc<Semaphore>,
    max: usize,
    idle: Duration,
}

impl Out {
    /// Queues `event` of `size` bytes (its data); a single event larger than the budget takes
    /// all of it, and goes alone.
    async fn send(&self, event: SseEvent, size: usize) -> Result<(), Gone> {
        let permits = size.clamp(1, self.max) as u32;
        let queued = async {
            let permit = self
                .budget
                .clone()
                .acquire_many_owned(permits)
                .await
                .map_err(|_| Gone::Left)?;
            self.tx
                .send((event, Some(permit)))
                .await
                .map_err(|_| Gone::Left)
        };
        match tokio::time::timeout(self.idle, queued).await {
            Ok(sent) => sent,
            Err(_) => Err(Gone::Idle),
        }
    }

    async fn closed(&self) {
        self.tx.closed().await
    }
}

type Stream = Sse<axum::response::sse::KeepAliveStream<Feed>>;

/// What a stream is opened with: its slot (given back when it ends) and the key whose deletion
/// ends it.
struct Opened {
    /// Held while the stream is open; dropping it gives the slot back.
    _slot: Slot,
    store: Store,
    key_hash: String,
    admin: bool,
}

impl Opened {
    /// A slot for a stream of `access`'s key on its tenant, or the limit reached.
    fn new<S>(state: &AppState, access: &Access<S>) -> Result<Self, ApiError> {
        let slot = state.streams_open.take(&access.key_hash, &access.tenant)?;
        Ok(Opened {
            _slot: slot,
            store: state.store.clone(),
            key_hash: access.key_hash.clone(),
            admin: access.caller == crate::auth::Principal::Admin,
        })
    }

    /// Resolves once the stream's key (or its tenant, keys and all) no longer exists: looked
    /// up when keys are deleted, not polled, so that idle streams cost nothing.
    async fn revoked(&self) {
        if self.admin {
            return std::future::pending().await;
        }
        let mut deleted = self.store.key_changes();
        loop {
            tokio::select! {
                changed = deleted.changed() => {
                    if changed.is_err() {
                        return std::future::pending().await;
                    }
                }
                () = tokio::time::sleep(REVOKED_POLL) => {}
            }
            if let Ok(None) = self.store.find_key(&self.key_hash).await {
                return;
            }
        }
    }
}

/// Starts `pump` on its own task and answers with what it sends. The stream ends when the pump
/// does, or with an `error` message when its key is deleted.
fn start<F>(state: &AppState, opened: Opened, pump: impl FnOnce(Out) -> F) -> Stream
where
    F: Future<Output = Result<(), StreamError>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(BUFFER);
    let max = state.settings.stream_buffer_bytes.max(1);
    let out = Out {
        tx,
        budget: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
        max: max.min(Semaphore::MAX_PERMITS).min(u32::MAX as usize),
        idle: state.settings.stream_idle,
    };
    let last_word = out.tx.clone();
    let run = pump(out);
    // Counted before the answer leaves, so that a consumer who sees its stream open sees it
    // counted.
    let gauge = metrics::gauge!(telemetry::STREAMS_OPEN);
    gauge.increment(1.0);
    tokio::spawn(async move {
        tokio::select! {
            ended = run => match ended {
                Ok(()) | Err(StreamError::Gone(Gone::Left)) => {}
                Err(StreamError::Gone(Gone::Idle)) => {
                    tracing::info!("a stream's consumer read nothing for stream_idle_secs; closed");
                }
                Err(StreamError::Store(e)) => {
                    tracing::warn!(error = %e, "a stream ended: its reads failed; the consumer resumes");
                }
            },
            () = opened.revoked() => {
                let error = SseEvent::default()
                    .event("error")
                    .data(r#"{"reason":"key revoked"}"#);
                let _ = tokio::time::timeout(REVOKED_CHECK, last_word.send((error, None))).await;
            }
        }
        drop(opened);
        gauge.decrement(1.0);
    });
    Sse::new(Feed(rx)).keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
}

/// Why a pump stopped.
enum StreamError {
    Gone(Gone),
    Store(StoreError),
}

impl From<Gone> for StreamError {
    fn from(g: Gone) -> Self {
        StreamError::Gone(g)
    }
}

impl From<StoreError> for StreamError {
    fn from(e: StoreError) -> Self {
        StreamError::Store(e)
    }
}

/// How many rows to read at a time, so that a page holds about the stream's byte budget: at
/// most `most`, fewer as the events read so far run large (at least one). The first page is
/// small, since nothing is known of the events' size yet.
struct Pages {
    limit: u32,
    most: u32,
    budget: usize,
}

/// Rows of a stream's first page.
const FIRST_PAGE: u32 = 4;

impl Pages {
    fn new(most: u32, budget: usize) -> Self {
        Pages {
            limit: most.min(FIRST_PAGE),
            most,
            budget,
        }
    }

    /// Learns from a page of `rows` rows and `bytes` bytes.
    fn read(&mut self, rows: usize, bytes: usize) {
        if let Some(average) = bytes.checked_div(rows) {
            self.limit = (self.budget / average.max(1)).clamp(1, self.most as usize) as u32;
        }
    }
}

/// Why a pump stops waiting.
enum Woken {
    /// New commits: read on.
    Commit,
    /// The consumer went away or the server is stopping: end.
    End,
}

/// Waits for a commit after the last look at `commits`, the consumer's leaving, or shutdown.
async fn wait<T>(
    commits: &mut watch::Receiver<T>,
    stop: &mut watch::Receiver<bool>,
    out: &Out,
) -> Woken {
    if *stop.borrow() {
        return Woken::End;
    }
    tokio::select! {
        changed = commits.changed() => match changed {
            Ok(()) => Woken::Commit,
            Err(_) => Woken::End,
        },
        _ = stop.changed() => Woken::End,
        _ = out.closed() => Woken::End,
    }
}

/// Where a consumer resumes: `Last-Event-ID` (what a reconnecting `EventSource` sends), else
/// `?after=`.
fn resume_point(headers: &HeaderMap, p: &mut Params) -> Result<Option<i64>, ApiError> {
    let after: Option<i64> = p.parse("after", "a sequence number (a non-negative integer)")?;
    let header = headers.get("last-event-id").map(|v| {
        v.to_str()
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .filter(|n| *n >= 0)
            .ok_or_else(|| ApiError::invalid("Last-Event-ID", "must be a sequence number"))
    });
    let at = match header {
        Some(h) => Some(h?),
        None => after,
    };
    if at.is_some_and(|n| n < 0) {
        return Err(ApiError::invalid("after", "must be a non-negative integer"));
    }
    Ok(at)
}

/// A message with `data` as JSON, and its size.
fn message(kind: &str, id: i64, data: &impl Serialize) -> Result<(SseEvent, usize), StoreError> {
    let json = serde_json::to_string(data)
        .map_err(|e| StoreError::Db(format!("encoding a stream message: {e}")))?;
    let size = json.len();
    Ok((
        SseEvent::default()
            .event(kind)
            .id(id.to_string())
            .data(json),
        size,
    ))
}

/// An event as streams send it: its `data:` encoded once, and what filters look at.
struct Encoded {
    sequence: i64,
    category: u8,
    code: u32,
    username: Option<String>,
    data: String,
}

impl Encoded {
    fn new(e: StoredEvent) -> Result<Self, StoreError> {
        let event = Event::from_canonical_json(&e.body)
            .map_err(|e| StoreError::Db(format!("a stored event does not decode: {e}")))?;
        let sequence = e.sequence;
        let item = LogItem::new(e).map_err(|e| StoreError::Db(e.to_string()))?;
        Ok(Encoded {
            sequence,
            category: event.category,
            code: event.code,
            username: event.username().map(str::to_string),
            data: serde_json::to_string(&item)
                .map_err(|e| StoreError::Db(format!("encoding a stream message: {e}")))?,
        })
    }

    fn matches(&self, q: &EventQuery) -> bool {
        q.category.is_none_or(|c| c == self.category)
            && q.code.is_none_or(|c| c == self.code)
            && q.username
                .as_ref()
                .is_none_or(|u| Some(u) == self.username.as_ref())
    }

    fn message(&self) -> SseEvent {
        SseEvent::default()
            .event("event")
            .id(self.sequence.to_string())
            .data(&self.data)
    }
}

/// Every event of a tenant after sequence `after` through `through`, as one tail read them.
struct Batch {
    after: i64,
    through: i64,
    events: Vec<Encoded>,
}

/// The tails of the tenants that have streams open: one task per tenant reads each new event
/// once and hands it to all of the tenant's consumers. A consumer that falls behind the tail
/// (its connection slow, or resuming from further back) reads the log itself until it has
/// caught up; the tail only keeps its latest batch, so nothing is held for the slow.
#[derive(Default)]
pub struct Tails(Mutex<HashMap<String, watch::Receiver<Arc<Batch>>>>);

/// Events a tail reads at a time, at most: fewer when they are large, so that a batch holds
/// about `stream_buffer_bytes`.
const TAIL_PAGE: u32 = 1000;

impl Tails {
    /// The tail of `tenant`, started if it has none.
    async fn of(
        self: &Arc<Self>,
        store: &Store,
        tenant: &str,
        stop: watch::Receiver<bool>,
        budget: usize,
    ) -> Result<watch::Receiver<Arc<Batch>>, StoreError> {
        if let Some(rx) = self.0.lock().expect("tails lock").get(tenant) {
            return Ok(rx.clone());
        }
        let mut commits = store.commits(tenant);
        let last = store.last_sequence(tenant).await?;
        let empty = Batch {
            after: last,
            through: last,
            events: Vec::new(),
        };
        let mut tails = self.0.lock().expect("tails lock");
        if let Some(rx) = tails.get(tenant) {
            return Ok(rx.clone());
        }
        let (tx, rx) = watch::channel(Arc::new(empty));
        tails.insert(tenant.to_string(), rx.clone());
        let (tails, store, tenant) = (self.clone(), store.clone(), tenant.to_string());
        tokio::spawn(async move {
            let mut stop = stop;
            let mut cursor = last;
            let mut pages = Pages::new(TAIL_PAGE, budget);
            loop {
                commits.borrow_and_update();
                if let Err(e) = tails
                    .read_on(&store, &tenant, &mut cursor, &tx, &mut pages)
                    .await
                {
                    tracing::warn!(tenant, error = %e, "a stream tail could not read; its consumers read the log themselves");
                }
                let idle = tokio::select! {
                    r = commits.changed() => r.is_err(),
                    _ = stop.changed() => true,
                };
                // Ends with the server, or once no consumer is left (the map holds one).
                let mut map = tails.0.lock().expect("tails lock");
                if idle || tx.receiver_count() <= 1 {
                    map.remove(&tenant);
                    return;
                }
            }
        });
        Ok(rx)
    }

    /// Reads every committed event after `cursor` into batches.
    async fn read_on(
        &self,
        store: &Store,
        tenant: &str,
        cursor: &mut i64,
        tx: &watch::Sender<Arc<Batch>>,
        pages: &mut Pages,
    ) -> Result<(), StoreError> {
        loop {
            let last = store.last_sequence(tenant).await?;
            if last <= *cursor {
                return Ok(());
            }
            let q = EventQuery {
                after: *cursor,
                through: Some(last),
                limit: pages.limit,
                ..EventQuery::default()
            };
            let page = store.list_events(tenant, &q).await?;
            let through = match page.last() {
                Some(e) if page.len() == pages.limit as usize => e.sequence,
                _ => last,
            };
            pages.read(page.len(), page.iter().map(|e| e.body.len()).sum());
            let events = page
                .into_iter()
                .map(Encoded::new)
                .collect::<Result<_, _>>()?;
            tx.send_replace(Arc::new(Batch {
                after: *cursor,
                through,
                events,
            }));
            *cursor = through;
        }
    }
}

/// Where a stream resumes: the last `id:` received, as `EventSource` sends it when it
/// reconnects.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
struct Resume {
    #[param(rename = "Last-Event-ID", minimum = 0)]
    last_event_id: Option<i64>,
}

/// As `Last-Event-ID`, for clients that cannot set headers.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct After {
    #[param(minimum = 0)]
    after: Option<i64>,
}

/// Filters of the events stream.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct StreamFilter {
    #[param(minimum = 0, maximum = 255)]
    category: Option<u8>,
    #[param(minimum = 0)]
    code: Option<u32>,
    username: Option<String>,
}

/// `GET /v1/tenants/{t}/events/stream`: one `event` message per matching event.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/events/stream", tag = "events",
    summary = "The event log as Server-Sent Events",
    description = "One message per event: `id: <sequence>`, `event: event`, `data: <log \
        item>`. Without a resume point it starts with what is committed from then on; with \
        one, every matching event after it comes first. A `: keep-alive` comment at least \
        every 15 s.",
    params(("tenant" = String, Path, description = "The tenant's id"), Resume, After,
           StreamFilter),
    responses((status = 200, content_type = "text/event-stream", body = EventMessage,
               description = "The stream; each message's data is a log item"),
               super::doc::Errors),
    security(("bearer" = [])))]
pub async fn events(
    State(state): State<AppState>,
    access: Access<need::Read>,
    headers: HeaderMap,
    mut p: Params,
) -> Result<Stream, ApiError> {
    let resume = resume_point(&headers, &mut p)?;
    let mut filter = EventQuery {
        limit: PAGE,
        ..EventQuery::default()
    };
    filters(&mut p, &mut filter)?;
    p.finish()?;
    let opened = Opened::new(&state, &access)?;
    let tenant = access.tenant;
    let store = state.store.clone();
    let budget = state.settings.stream_buffer_bytes;
    let mut tail = state
        .tails
        .of(&store, &tenant, state.streams_stop.clone(), budget)
        .await?;
    // Without a resume point the stream starts with what is committed from now on.
    let after = match resume {
        Some(n) => n,
        None => tail.borrow().through,
    };
    let stop = state.streams_stop.clone();
    Ok(start(&state, opened, move |out| async move {
        let mut stop = stop;
        let mut cursor = after;
        let mut pages = Pages::new(PAGE, budget);
        loop {
            let batch = tail.borrow_and_update().clone();
            if cursor < batch.after {
                // Behind the tail: from the log, up to where the tail's batch starts. Every
                // event up to it is committed, so a page short of it has seen all of them and
                // the cursor moves past those that did not match.
                let q = EventQuery {
                    after: cursor,
                    through: Some(batch.after),
                    limit: pages.limit,
                    ..filter.clone()
                };
                let page = store.list_events(&tenant, &q).await?;
                let full = page.len() == q.limit as usize;
                pages.read(page.len(), page.iter().map(|e| e.body.len()).sum());
                for event in page {
                    let event = Encoded::new(event)?;
                    out.send(event.message(), event.data.len()).await?;
                    cursor = event.sequence;
                }
                if !full {
                    cursor = batch.after;
                }
                continue;
            }
            if cursor < batch.through {
                for event in batch.events.iter().filter(|e| e.sequence > cursor) {
                    if event.matches(&filter) {
                        out.send(event.message(), event.data.len()).await?;
                    }
                }
                cursor = batch.through;
                continue;
            }
            if let Woken::End = wait(&mut tail, &mut stop, &out).await {
                return Ok(());
            }
        }
    }))
}

/// A message of the events stream.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct EventMessage {
    #[schema(pattern = "^event$")]
    event: String,
    /// The event's sequence.
    #[schema(pattern = "^[0-9]+$")]
    id: String,
    /// A log item (`{sequence, received_at, event}`), JSON.
    #[schema(content_media_type = "application/json")]
    data: String,
}

/// A message of the agents stream.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct AgentMessage {
    /// `snapshot` (first), then `agent`.
    #[schema(pattern = "^(snapshot|agent)$")]
    event: String,
    /// The snapshot's `as_of_sequence`, or the agent's `last_sequence`.
    #[schema(pattern = "^[0-9]+$")]
    id: String,
    /// A snapshot (`{as_of_sequence, agents}`) or an agent, JSON.
    #[schema(content_media_type = "application/json")]
    data: String,
}

/// Every agent, and the sequence they are as of.
#[derive(Serialize)]
struct Snapshot {
    as_of_sequence: i64,
    agents: Vec<Agent>,
}

/// Every agent of `tenant` and the sequence that state is as of.
async fn snapshot(store: &Store, tenant: &str, catalog: &Catalog) -> Result<Snapshot, StoreError> {
    let q = AgentQuery {
        limit: u32::MAX,
        ..AgentQuery::default()
    };
    let (agents, as_of_sequence) = store.list_agents(tenant, &q).await?;
    let agents = agents.into_iter().map(|a| a.named(catalog)).collect();
    Ok(Snapshot {
        as_of_sequence,
        agents,
    })
}

/// `GET /v1/tenants/{t}/agents/stream`: a `snapshot`, then an `agent` message per change.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/agents/stream", tag = "agents",
    summary = "The agents as Server-Sent Events",
    description = "First `event: snapshot`, `id: <as_of_sequence>`, `data: {as_of_sequence, \
        agents}`; then `event: agent`, `id: <last_sequence>`, `data: <agent>` at each change. \
        Resumed with `Last-Event-ID`: the agents changed since, as they are now.",
    params(("tenant" = String, Path, description = "The tenant's id"), Resume, After),
    responses((status = 200, content_type = "text/event-stream", body = AgentMessage,
               description = "The stream; each message's data is a snapshot or an agent"),
               super::doc::Errors),
    security(("bearer" = [])))]
pub async fn agents(
    State(state): State<AppState>,
    access: Access<need::Read>,
    headers: HeaderMap,
    mut p: Params,
) -> Result<Stream, ApiError> {
    let resume = resume_point(&headers, &mut p)?;
    p.finish()?;
    let opened = Opened::new(&state, &access)?;
    let tenant = access.tenant;
    let store = state.store.clone();
    let mut commits = store.commits(&tenant);
    let stop = state.streams_stop.clone();
    let catalog = state.catalog.clone();
    Ok(start(&state, opened, move |out| async move {
        let mut stop = stop;
        // The projection outlives retention, so any point it has reached can be resumed from;
        // one it has not (another database's ids) gets a fresh snapshot.
        let through = store.agents_through(&tenant).await?;
        let mut cursor = match resume {
            Some(n) if n <= through => n,
            _ => {
                let snap = snapshot(&store, &tenant, &catalog).await?;
                let id = snap.as_of_sequence;
                let (message, size) = message("snapshot", id, &snap)?;
                out.send(message, size).await?;
                id
            }
        };
        loop {
            commits.borrow_and_update();
            let changes = store.agent_changes(&tenant, cursor, PAGE).await?;
            let full = changes.len() == PAGE as usize;
            for agent in changes {
                cursor = agent.last_sequence;
                let agent = agent.named(&catalog);
                let (message, size) = message("agent", cursor, &agent)?;
                out.send(message, size).await?;
            }
            if full {
                continue;
            }
            if let Woken::End = wait(&mut commits, &mut stop, &out).await {
                return Ok(());
            }
        }
    }))
}

/// A message of the counts stream.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct CountsMessage {
    /// `snapshot` (first), then `counts`.
    #[schema(pattern = "^(snapshot|counts)$")]
    event: String,
    /// The `as_of_sequence` of the counts.
    #[schema(pattern = "^[0-9]+$")]
    id: String,
    /// A snapshot (the body of `GET …/agents/counts`) or `{as_of_sequence, groups}` with the
    /// groups that changed, whole, JSON.
    #[schema(content_media_type = "application/json")]
    data: String,
}

/// The groups that changed, whole (one that became empty: `signed_in: 0`).
#[derive(Serialize)]
struct CountsChange {
    as_of_sequence: i64,
    groups: Vec<crate::agent::counts::GroupCounts>,
}

/// `GET /v1/tenants/{t}/agents/counts/stream`: a `snapshot`, then the groups that changed.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/agents/counts/stream", tag = "agents",
    summary = "The live counts by group as Server-Sent Events",
    description = "First `event: snapshot`, `id: <as_of_sequence>`, `data:` the body of `GET \
        …/agents/counts`; then `event: counts`, `id: <as_of_sequence>`, `data: \
        {as_of_sequence, groups}` with each group that changed, whole (one that became empty \
        has `signed_in: 0`). A resume (`Last-Event-ID`) gets a fresh snapshot.",
    params(("tenant" = String, Path, description = "The tenant's id"),
           ("by" = Option<String>, Query,
            description = "A group field of the catalog; absent: the whole tenant")),
    responses((status = 200, content_type = "text/event-stream", body = CountsMessage,
               description = "The stream; each message's data is a snapshot or the changed groups"),
               super::doc::Errors),
    security(("bearer" = [])))]
pub async fn counts(
    State(state): State<AppState>,
    access: Access<need::Read>,
    mut p: Params,
) -> Result<Stream, ApiError> {
    // A resume gets a fresh snapshot: `Last-Event-ID` needs no reading.
    let by = super::agents::group_by(&state, &mut p)?;
    p.finish()?;
    let opened = Opened::new(&state, &access)?;
    let tenant = access.tenant;
    let store = state.store.clone();
    let mut commits = store.commits(&tenant);
    let stop = state.streams_stop.clone();
    Ok(start(&state, opened, move |out| async move {
        let mut stop = stop;
        commits.borrow_and_update();
        let (agents, mut cursor) = store.agents_for_counts(&tenant, None).await?;
        let mut tally = crate::agent::counts::Tally::new(by.as_deref(), &agents);
        drop(agents);
        let snapshot = super::agents::Counts {
            as_of_sequence: cursor,
            by,
            groups: tally.groups(),
        };
        let (first, size) = message("snapshot", cursor, &snapshot)?;
        out.send(first, size).await?;
        loop {
            if let Woken::End = wait(&mut commits, &mut stop, &out).await {
                return Ok(());
            }
            commits.borrow_and_update();
            let (changed, through) = store.agents_for_counts(&tenant, Some(cursor)).await?;
            let mut groups = std::collections::BTreeSet::new();
            for agent in &changed {
                groups.extend(tally.update(agent));
            }
            cursor = cursor.max(through);
            if !groups.is_empty() {
                let change = CountsChange {
                    as_of_sequence: cursor,
                    groups: tally.take(&groups),
                };
                let (sent, size) = message("counts", cursor, &change)?;
                out.send(sent, size).await?;
            }
        }
    }))
}
