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
use tokio::sync::{mpsc, watch};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::events::{LogItem, filters};
use super::{Access, ApiError, AppState, Params, need};
use crate::agent::Agent;
use crate::event::{Catalog, Event};
use crate::store::{AgentQuery, EventQuery, Store, StoreError, StoredEvent};
use crate::telemetry;

/// Messages a consumer may have waiting besides what its connection holds.
const BUFFER: usize = 32;
/// Rows read from the database at a time.
const PAGE: u32 = 200;
/// A comment line at least this often keeps proxies from closing an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The messages of one stream, as the response body reads them.
pub struct Feed(mpsc::Receiver<SseEvent>);

impl futures_core::Stream for Feed {
    type Item = Result<SseEvent, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|m| m.map(Ok))
    }
}

type Stream = Sse<axum::response::sse::KeepAliveStream<Feed>>;

/// Starts `pump` on its own task and answers with what it sends.
fn start<F>(pump: impl FnOnce(mpsc::Sender<SseEvent>) -> F) -> Stream
where
    F: Future<Output = Result<(), StoreError>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(BUFFER);
    let run = pump(tx);
    // Counted before the answer leaves, so that a consumer who sees its stream open sees it
    // counted.
    let gauge = metrics::gauge!(telemetry::STREAMS_OPEN);
    gauge.increment(1.0);
    tokio::spawn(async move {
        if let Err(e) = run.await {
            tracing::warn!(error = %e, "a stream ended: its reads failed; the consumer resumes");
        }
        gauge.decrement(1.0);
    });
    Sse::new(Feed(rx)).keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
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
    tx: &mpsc::Sender<SseEvent>,
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
        _ = tx.closed() => Woken::End,
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

fn message(kind: &str, id: i64, data: &impl Serialize) -> Result<SseEvent, StoreError> {
    SseEvent::default()
        .event(kind)
        .id(id.to_string())
        .json_data(data)
        .map_err(|e| StoreError::Db(format!("encoding a stream message: {e}")))
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

/// Events a tail reads at a time.
const TAIL_PAGE: u32 = 1000;

impl Tails {
    /// The tail of `tenant`, started if it has none.
    async fn of(
        self: &Arc<Self>,
        store: &Store,
        tenant: &str,
        stop: watch::Receiver<bool>,
    ) -> Result<watch::Receiver<Arc<Batch>>, StoreError> {
        if let Some(rx) = self.0.lock().expect("tails lock").get(tenant) {
            return Ok(rx.clone());
        }
        let mut commits = store.commits();
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
            loop {
                commits.borrow_and_update();
                if let Err(e) = tails.read_on(&store, &tenant, &mut cursor, &tx).await {
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
    ) -> Result<(), StoreError> {
        loop {
            let last = store.last_sequence(tenant).await?;
            if last <= *cursor {
                return Ok(());
            }
            let q = EventQuery {
                after: *cursor,
                through: Some(last),
                limit: TAIL_PAGE,
                ..EventQuery::default()
            };
            let page = store.list_events(tenant, &q).await?;
            let through = match page.last() {
                Some(e) if page.len() == TAIL_PAGE as usize => e.sequence,
                _ => last,
            };
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
    Access { tenant, .. }: Access<need::Read>,
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
    let store = state.store.clone();
    let mut tail = state
        .tails
        .of(&store, &tenant, state.streams_stop.clone())
        .await?;
    // Without a resume point the stream starts with what is committed from now on.
    let after = match resume {
        Some(n) => n,
        None => tail.borrow().through,
    };
    let stop = state.streams_stop.clone();
    Ok(start(move |tx| async move {
        let mut stop = stop;
        let mut cursor = after;
        loop {
            let batch = tail.borrow_and_update().clone();
            if cursor < batch.after {
                // Behind the tail: from the log, up to where the tail's batch starts. Every
                // event up to it is committed, so a page short of it has seen all of them and
                // the cursor moves past those that did not match.
                let q = EventQuery {
                    after: cursor,
                    through: Some(batch.after),
                    ..filter.clone()
                };
                let page = store.list_events(&tenant, &q).await?;
                let full = page.len() == PAGE as usize;
                for event in page {
                    let event = Encoded::new(event)?;
                    if tx.send(event.message()).await.is_err() {
                        return Ok(());
                    }
                    cursor = event.sequence;
                }
                if !full {
                    cursor = batch.after;
                }
                continue;
            }
            if cursor < batch.through {
                for event in batch.events.iter().filter(|e| e.sequence > cursor) {
                    if event.matches(&filter) && tx.send(event.message()).await.is_err() {
                        return Ok(());
                    }
                }
                cursor = batch.through;
                continue;
            }
            if let Woken::End = wait(&mut tail, &mut stop, &tx).await {
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
    Access { tenant, .. }: Access<need::Read>,
    headers: HeaderMap,
    mut p: Params,
) -> Result<Stream, ApiError> {
    let resume = resume_point(&headers, &mut p)?;
    p.finish()?;
    let store = state.store.clone();
    let mut commits = store.commits();
    let stop = state.streams_stop.clone();
    let catalog = state.catalog.clone();
    Ok(start(move |tx| async move {
        let mut stop = stop;
        // The projection outlives retention, so any point it has reached can be resumed from;
        // one it has not (another database's ids) gets a fresh snapshot.
        let through = store.agents_through(&tenant).await?;
        let mut cursor = match resume {
            Some(n) if n <= through => n,
            _ => {
                let snap = snapshot(&store, &tenant, &catalog).await?;
                let id = snap.as_of_sequence;
                if tx.send(message("snapshot", id, &snap)?).await.is_err() {
                    return Ok(());
                }
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
                if tx.send(message("agent", cursor, &agent)?).await.is_err() {
                    return Ok(());
                }
            }
            if full {
                continue;
            }
            if let Woken::End = wait(&mut commits, &mut stop, &tx).await {
                return Ok(());
            }
        }
    }))
}
