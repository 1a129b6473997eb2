//! Traces (DESIGN §21): W3C trace context carried from a producer's POST to every attempt of its
//! deliveries, and, when an OTLP endpoint is configured, spans exported over OTLP/HTTP protobuf.
//!
//! The context travels whether or not export is on: ingest stores it with each event (the
//! `traceparent` and `tracestate` columns) and every attempt sends it. With export on, three
//! `tracing` spans become OpenTelemetry spans through `tracing-opentelemetry`: `ingest` (per
//! request, the producer's span as parent), `writer.turn` (per turn that commits events, linked
//! to the contexts it commits) and `delivery.attempt` (per attempt, the stored context as parent);
//! an event then stores its `ingest` span's context, and a receiver gets its attempt's span as
//! parent. With export off no span is made at all, so it costs nothing on the hot path.
//!
//! Finished spans wait in a bounded queue for a thread of their own that exports them in
//! batches; a full queue or a failed export drops spans and counts them
//! (`switchboard_otel_spans_dropped_total`), never slowing ingest or delivery.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use opentelemetry::Context;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    Sampler, SdkTracerProvider, Span, SpanData, SpanExporter, SpanProcessor,
};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::Config;

/// Spans lost: the export queue was full, or an export failed.
pub const SPANS_DROPPED: &str = "switchboard_otel_spans_dropped_total";

/// The longest `tracestate` kept (W3C Trace Context: vendors should pass on at least 512
/// characters of it).
const MAX_TRACESTATE: usize = 512;

/// The trace context of an event, as stored with it and sent with its deliveries: the
/// `traceparent` header's value (normalised) and `tracestate` as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub traceparent: String,
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// The context `traceparent`/`tracestate` headers carry; `None` when there is none or it is
    /// malformed (W3C Trace Context's rules: such a request starts a new trace).
    pub fn from_headers(headers: &HeaderMap) -> Option<TraceContext> {
        // The fields' lengths as W3C fixes them (the SDK's reader pads a short trace id); a
        // version-00 value is exactly 55 characters.
        let value = headers.get("traceparent")?.to_str().ok()?.trim();
        let lengths: Vec<usize> = value.split('-').take(4).map(str::len).collect();
        if lengths[..] != [2, 32, 16, 2] || (value.starts_with("00-") && value.len() != 55) {
            return None;
        }
        // Several `tracestate` headers are one list (W3C), joined in order.
        let states: Vec<&str> = headers
            .get_all("tracestate")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let mut carrier: HashMap<String, String> = HashMap::new();
        carrier.insert("traceparent".into(), value.to_string());
        if !states.is_empty() {
            carrier.insert("tracestate".into(), states.join(","));
        }
        let cx = propagator().extract(&carrier);
        let span = cx.span();
        let mut context = Self::of(span.span_context())?;
        // A longer list than W3C asks anyone to pass on (512 characters) is not kept: it would
        // be stored with every event of the request and sent on every attempt.
        if context
            .tracestate
            .as_ref()
            .is_some_and(|s| s.len() > MAX_TRACESTATE)
        {
            context.tracestate = None;
        }
        Some(context)
    }

    /// The stored form of `sc`; `None` when it is not a valid context.
    fn of(sc: &SpanContext) -> Option<TraceContext> {
        if !sc.is_valid() {
            return None;
        }
        let mut carrier: HashMap<String, String> = HashMap::new();
        let cx = Context::new().with_remote_span_context(sc.clone());
        propagator().inject_context(&cx, &mut carrier);
        Some(TraceContext {
            traceparent: carrier.remove("traceparent")?,
            tracestate: carrier.remove("tracestate").filter(|s| !s.is_empty()),
        })
    }

    /// From the stored columns; `None` when there is no valid context in them.
    pub fn stored(traceparent: Option<String>, tracestate: Option<String>) -> Option<TraceContext> {
        let traceparent = traceparent.filter(|t| t.len() >= 55)?;
        Some(TraceContext {
            traceparent,
            tracestate,
        })
        .filter(|t| t.span_context().is_valid())
    }

    /// As an OpenTelemetry span context (remote).
    fn span_context(&self) -> SpanContext {
        let mut carrier: HashMap<String, String> = HashMap::new();
        carrier.insert("traceparent".into(), self.traceparent.clone());
        if let Some(state) = &self.tracestate {
            carrier.insert("tracestate".into(), state.clone());
        }
        propagator().extract(&carrier).span().span_context().clone()
    }

    /// Whether the trace is sampled (the `traceparent` flags' lowest bit).
    fn sampled(&self) -> bool {
        let flags = self.traceparent.rsplit('-').next().unwrap_or("");
        u8::from_str_radix(flags, 16).is_ok_and(|f| f & 1 == 1)
    }

    /// A context whose parent is this one.
    fn parent(&self) -> Context {
        Context::new().with_remote_span_context(self.span_context())
    }

    /// The headers a message of this context carries.
    pub fn headers(&self) -> impl Iterator<Item = (&'static str, String)> + '_ {
        std::iter::once(("traceparent", self.traceparent.clone()))
            .chain(self.tracestate.as_ref().map(|s| ("tracestate", s.clone())))
    }
}

fn propagator() -> &'static TraceContextPropagator {
    static PROPAGATOR: OnceLock<TraceContextPropagator> = OnceLock::new();
    PROPAGATOR.get_or_init(TraceContextPropagator::new)
}

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// The sampling ratio of new traces, as a threshold on a random `u64` (`u64::MAX`: all).
static ROOT_THRESHOLD: OnceLock<u64> = OnceLock::new();

/// Whether a new trace (no sampled parent to follow) is to be recorded. Decided here, before
/// any span is made, rather than by the SDK's sampler: a trace not recorded then costs no span
/// at all, so a low ratio costs next to nothing (DESIGN §21).
fn sample_root() -> bool {
    match ROOT_THRESHOLD.get() {
        None | Some(0) => false,
        Some(&u64::MAX) => true,
        Some(&t) => next_u64() < t,
    }
}

/// The context of a new trace that is not recorded (flags `00`): what a request without a
/// `traceparent` stores when its trace is not sampled, so that its attempts neither start
/// traces of their own nor go without one (W3C: the receiver may still correlate by it).
fn unrecorded_root() -> TraceContext {
    let (high, low, span) = (next_u64(), next_u64(), next_u64() | 1);
    TraceContext {
        traceparent: format!("00-{high:016x}{:016x}-{span:016x}-00", low | 1),
        tracestate: None,
    }
}

/// The trace of an event that has no stored context: its id is the event's `Id` (a GUID), its
/// parent a span id derived from it, recorded when the id falls within the sampling ratio.
fn event_root(event_id: &str) -> Option<TraceContext> {
    let id = uuid::Uuid::parse_str(event_id).ok()?;
    let (high, low) = id.as_u64_pair();
    let threshold = ROOT_THRESHOLD.get().copied().unwrap_or(0);
    let recorded = threshold == u64::MAX || low < threshold;
    let span = (high ^ low.rotate_left(32)) | 1;
    Some(TraceContext {
        traceparent: format!(
            "00-{}-{span:016x}-{}",
            id.simple(),
            if recorded { "01" } else { "00" }
        ),
        tracestate: None,
    })
    .filter(|t| t.span_context().is_valid())
}

/// A fast random `u64` for sampling decisions and the ids of unrecorded traces: SplitMix64 on
/// a per-thread state seeded by the operating system (no system call per request).
fn next_u64() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(getrandom::u64().unwrap_or(0x853c_49e6_748f_ea9b));
    }
    STATE.with(|state| {
        let mut z = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// Whether spans are exported (an OTLP endpoint was configured when the process started).
pub fn enabled() -> bool {
    PROVIDER.get().is_some()
}

/// The target of the spans this module makes; the export layer takes only these.
pub const TARGET: &str = "switchboard::otel::spans";

/// The `ingest` span of a request to `tenant`, a child of `producer`; with the context its
/// events store. Export off: no span, and the producer's context as it came.
pub fn ingest_span(
    producer: Option<TraceContext>,
    tenant: &str,
) -> (tracing::Span, Option<TraceContext>) {
    if !enabled() {
        return (tracing::Span::none(), producer);
    }
    // A trace not recorded — the producer's, or a new one not sampled — makes no span, and
    // its context travels as it is.
    match &producer {
        Some(p) if !p.sampled() => return (tracing::Span::none(), producer),
        None if !sample_root() => return (tracing::Span::none(), Some(unrecorded_root())),
        _ => {}
    }
    let span = tracing::info_span!(target: TARGET, "ingest",
        switchboard.tenant = tenant,
        switchboard.events = tracing::field::Empty,
        switchboard.event_id = tracing::field::Empty,
        otel.status_code = tracing::field::Empty);
    if let Some(p) = &producer {
        let _ = span.set_parent(p.parent());
    }
    let state = producer.and_then(|p| p.tracestate);
    let stored = own_context(&span, state);
    (span, stored)
}

/// Marks an `ingest` span as failed (the request was refused or could not be stored).
pub fn ingest_failed(span: &tracing::Span) {
    if !span.is_none() {
        span.record("otel.status_code", "error");
    }
}

/// Records on an `ingest` span what the request posted: how many events, and a single one's id.
pub fn ingest_events(span: &tracing::Span, events: &[crate::event::NewEvent]) {
    if span.is_none() {
        return;
    }
    // Numbers as i64: the bridge exports unsigned ones as text.
    span.record("switchboard.events", events.len() as i64);
    if let [one] = events {
        span.record("switchboard.event_id", tracing::field::display(one.id));
    }
}

/// The `writer.turn` span of a turn committing `events` events of requests with `contexts`:
/// in the first recorded one's trace, linked to each recorded one. Export off, or no recorded
/// context: no span.
pub fn turn_span<'a>(
    contexts: impl Iterator<Item = &'a TraceContext>,
    events: usize,
) -> tracing::Span {
    let mut contexts = contexts.filter(|c| c.sampled()).peekable();
    if !enabled() || contexts.peek().is_none() {
        return tracing::Span::none();
    }
    let span =
        tracing::info_span!(target: TARGET, "writer.turn", switchboard.events = events as i64);
    for (i, c) in contexts.enumerate() {
        if i == 0 {
            let _ = span.set_parent(c.parent());
        }
        span.add_link(c.span_context());
    }
    span
}

/// The `delivery.attempt` span of an attempt of `what` (an event id, or a batch's) whose lead
/// event (`event_id`: the delivery's, or a batch's first) has the stored context `stored`;
/// with the context the message carries: the span's (its parent the stored one) when
/// exporting, else the stored one as is. Record the answer with [`attempt_status`].
pub fn attempt_span(
    stored: Option<&TraceContext>,
    tenant: &str,
    subscription: &str,
    what: &str,
    event_id: &str,
    attempt: u32,
) -> (tracing::Span, Option<TraceContext>) {
    if !enabled() {
        return (tracing::Span::none(), stored.cloned());
    }
    // A System event, or an event stored without a context (before this release, or while
    // export was off): a trace of its own, the same for each of its attempts — its trace id is
    // the event's `Id`, and whether it is recorded is decided by that id.
    let own;
    let stored = match stored {
        Some(s) => s,
        None => match event_root(event_id) {
            Some(root) => {
                own = root;
                &own
            }
            None => return (tracing::Span::none(), None),
        },
    };
    if !stored.sampled() {
        return (tracing::Span::none(), Some(stored.clone()));
    }
    let span = tracing::info_span!(target: TARGET, "delivery.attempt",
        switchboard.tenant = tenant,
        switchboard.subscription = subscription,
        switchboard.event_id = what,
        switchboard.attempt = i64::from(attempt),
        http.response.status_code = tracing::field::Empty);
    let _ = span.set_parent(stored.parent());
    let sent = own_context(&span, stored.tracestate.clone());
    (span, sent)
}

/// Records the receiver's status on an attempt's span.
pub fn attempt_status(span: &tracing::Span, status: Option<u16>) {
    if let Some(status) = status {
        span.record("http.response.status_code", i64::from(status));
    }
}

/// `span`'s own context (the span as parent), carrying `state`.
fn own_context(span: &tracing::Span, state: Option<String>) -> Option<TraceContext> {
    let cx = span.context();
    let mut own = TraceContext::of(cx.span().span_context())?;
    own.tracestate = state.filter(|s| !s.is_empty());
    Some(own)
}

/// The export settings: DESIGN §21's, from the configuration and the standard variables.
struct Settings {
    /// The traces URL (`…/v1/traces`), or `None` to let the exporter read
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`.
    endpoint: Option<String>,
    ratio: f64,
    queue: usize,
    batch: usize,
    delay: Duration,
    timeout: Duration,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match env(name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("{name} must be a number, got {v:?}")),
    }
}

impl Settings {
    /// Export to `endpoint` (a base URL) with the sampling `ratio`, the queue's defaults.
    fn to(endpoint: &str, ratio: f64) -> Settings {
        Settings {
            endpoint: Some(format!("{}/v1/traces", endpoint.trim_end_matches('/'))),
            ratio,
            queue: 2048,
            batch: 512,
            delay: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
        }
    }

    /// `None`: export is off (no endpoint in the configuration or the environment).
    fn of(config: &Config) -> anyhow::Result<Option<Settings>> {
        let endpoint = match config.otlp_endpoint.trim() {
            "" if env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none()
                && env("OTEL_EXPORTER_OTLP_ENDPOINT").is_none() =>
            {
                return Ok(None);
            }
            "" => None,
            base => Some(format!("{}/v1/traces", base.trim_end_matches('/'))),
        };
        // As the OpenTelemetry specification asks: a sampler argument that is not a ratio is
        // warned about and the default used (it may be meant for another sampler).
        let ratio = match env_number("OTEL_TRACES_SAMPLER_ARG", 1.0) {
            Ok(r) if (0.0..=1.0).contains(&r) => r,
            _ => {
                tracing::warn!(
                    value = env("OTEL_TRACES_SAMPLER_ARG").unwrap_or_default(),
                    "OTEL_TRACES_SAMPLER_ARG is not a ratio from 0 to 1; recording every trace"
                );
                1.0
            }
        };
        let queue: usize = env_number("OTEL_BSP_MAX_QUEUE_SIZE", 2048)?;
        let queue = queue.clamp(1, 1 << 20);
        let batch: usize = env_number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)?;
        let delay: u64 = env_number("OTEL_BSP_SCHEDULE_DELAY", 5000)?;
        let timeout: u64 = env_number("OTEL_EXPORTER_OTLP_TIMEOUT", 10_000)?;
        Ok(Some(Settings {
            endpoint,
            ratio,
            queue,
            batch: batch.clamp(1, queue),
            delay: Duration::from_millis(delay.clamp(1, 3_600_000)),
            timeout: Duration::from_millis(timeout.clamp(1, 3_600_000)),
        }))
    }
}

/// The export layer for the process's subscriber, when export is configured: installs the
/// tracer provider (its exporting thread started) and returns the `tracing` layer over it.
pub fn layer<S>(config: &Config) -> anyhow::Result<Option<impl tracing_subscriber::Layer<S>>>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    match Settings::of(config)? {
        Some(settings) => install(settings).map(Some),
        None => Ok(None),
    }
}

/// Installs export to `endpoint` (an OTLP/HTTP base URL) sampling `ratio` of the traces, as
/// the only subscriber: for `switchboard bench --otlp-ratio`, whose server runs in process.
pub fn install_for_bench(endpoint: &str, ratio: f64) -> anyhow::Result<()> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let layer = install(Settings::to(endpoint, ratio))?;
    tracing_subscriber::registry()
        .with(layer)
        .try_init()
        .map_err(|e| anyhow::anyhow!("installing the trace exporter: {e}"))
}

fn install<S>(settings: Settings) -> anyhow::Result<impl tracing_subscriber::Layer<S>>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::Layer;
    let resource = Resource::builder()
        .with_service_name(env("OTEL_SERVICE_NAME").unwrap_or_else(|| "switchboard".into()))
        .build();
    // The operator's own collector: neither the address guard nor `egress_proxy` applies, and
    // proxy variables in the environment are ignored, as for deliveries.
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(settings.timeout)
        .build()
        .map_err(|e| anyhow::anyhow!("building the OTLP client: {e}"))?;
    let mut builder = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(Client(http))
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_timeout(settings.timeout);
    if let Some(url) = &settings.endpoint {
        builder = builder.with_endpoint(url.clone());
    }
    let mut exporter = builder
        .build()
        .map_err(|e| anyhow::anyhow!("otlp_endpoint: {e}"))?;
    exporter.set_resource(&resource);
    let processor = Queue::start(exporter, &settings)?;
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        // The ratio is applied before a span is made (`sample_root`): every span made is
        // recorded.
        .with_sampler(Sampler::AlwaysOn)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("switchboard");
    if PROVIDER.set(provider).is_err() {
        anyhow::bail!("the trace exporter is already installed");
    }
    let threshold = match settings.ratio {
        r if r >= 1.0 => u64::MAX,
        r => (r * u64::MAX as f64) as u64,
    };
    let _ = ROOT_THRESHOLD.set(threshold);
    metrics::describe_counter!(
        SPANS_DROPPED,
        "Spans not exported: the export queue was full, or an export failed."
    );
    tracing::info!(
        endpoint = settings
            .endpoint
            .as_deref()
            .unwrap_or("from OTEL_EXPORTER_OTLP_*"),
        ratio = settings.ratio,
        "exporting traces over OTLP/HTTP"
    );
    // This module's spans, and warnings (recorded as events of the span they happen in); a
    // static filter, so that every other callsite is ruled out once, not at each call.
    let only_ours = tracing_subscriber::filter::Targets::new()
        .with_target(TARGET, tracing::Level::INFO)
        .with_default(tracing::Level::WARN);
    Ok(tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_filter(only_ours))
}

/// Exports what is still queued (at most a few seconds): called as the process ends.
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get()
        && let Err(e) = provider.shutdown_with_timeout(Duration::from_secs(5))
    {
        tracing::warn!(error = %e, "the last spans were not all exported");
    }
}

/// The HTTP client the OTLP exporter sends through: the service's own reqwest (rustls).
#[derive(Debug)]
struct Client(reqwest::Client);

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Client {
    async fn send_bytes(
        &self,
        request: axum::http::Request<bytes::Bytes>,
    ) -> Result<axum::http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let (parts, body) = request.into_parts();
        let url = parts.uri.to_string();
        let response = self
            .0
            .request(parts.method, url)
            .headers(parts.headers)
            .body(body)
            .send()
            .await?;
        let status = response.status();
        let headers = response.headers().clone();
        // The collector's answer matters only by its status; its body is bounded all the same.
        let body = response.bytes().await.unwrap_or_default();
        let body = body.slice(..body.len().min(64 * 1024));
        let mut answer = axum::http::Response::builder().status(status).body(body)?;
        *answer.headers_mut() = headers;
        Ok(answer)
    }
}

/// What the processor hands the exporting thread.
enum Item {
    Span(Box<SpanData>),
    /// Export what is queued, then say so.
    Flush(SyncSender<()>),
}

/// The span processor: a bounded queue in front of a thread that exports in batches. A full
/// queue drops the span (counted), so a slow or absent collector never holds up the process.
#[derive(Debug)]
struct Queue {
    tx: SyncSender<Item>,
}

impl Queue {
    fn start(exporter: opentelemetry_otlp::SpanExporter, s: &Settings) -> anyhow::Result<Queue> {
        let (tx, rx) = mpsc::sync_channel(s.queue);
        let (batch, delay) = (s.batch, s.delay);
        std::thread::Builder::new()
            .name("switchboard-otlp".into())
            .spawn(move || export_loop(exporter, rx, batch, delay))
            .map_err(|e| anyhow::anyhow!("starting the trace exporter: {e}"))?;
        Ok(Queue { tx })
    }

    /// Asks the exporting thread to export what is queued, waiting at most `timeout` in all
    /// (a full queue behind a stuck export included).
    fn flush(&self, timeout: Duration) -> OTelSdkResult {
        let deadline = Instant::now() + timeout;
        let (done, wait) = mpsc::sync_channel(1);
        let mut item = Item::Flush(done);
        loop {
            match self.tx.try_send(item) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return Err(OTelSdkError::AlreadyShutdown),
                Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                    item = back;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(TrySendError::Full(_)) => return Err(OTelSdkError::Timeout(timeout)),
            }
        }
        wait.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .map_err(|_| OTelSdkError::Timeout(timeout))
    }
}

impl SpanProcessor for Queue {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        match self.tx.try_send(Item::Span(Box::new(span))) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                metrics::counter!(SPANS_DROPPED).increment(1);
            }
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.flush(Duration::from_secs(5))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.flush(timeout)
    }
}

/// The exporting thread: gathers up to `batch` spans or what came within `delay`, and exports
/// them on a runtime of its own (the collector's pace is never the service's).
fn export_loop(
    exporter: opentelemetry_otlp::SpanExporter,
    rx: Receiver<Item>,
    batch: usize,
    delay: Duration,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "the trace exporter has no runtime; spans are dropped");
            return;
        }
    };
    let export = |spans: &mut Vec<SpanData>| {
        if spans.is_empty() {
            return;
        }
        let n = spans.len() as u64;
        if let Err(e) = runtime.block_on(exporter.export(std::mem::take(spans))) {
            metrics::counter!(SPANS_DROPPED).increment(n);
            tracing::debug!(error = %e, spans = n, "a trace export failed");
        }
    };
    let mut spans: Vec<SpanData> = Vec::with_capacity(batch);
    let mut due = Instant::now() + delay;
    loop {
        let wait = due.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(Item::Span(span)) => {
                spans.push(*span);
                if spans.len() >= batch {
                    export(&mut spans);
                    due = Instant::now() + delay;
                }
            }
            Ok(Item::Flush(done)) => {
                // What was queued before the flush came first: it is all in `spans` now.
                export(&mut spans);
                let _ = done.send(());
            }
            Err(RecvTimeoutError::Timeout) => {
                export(&mut spans);
                due = Instant::now() + delay;
            }
            Err(RecvTimeoutError::Disconnected) => {
                export(&mut spans);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_context_is_read_as_sent_and_a_malformed_one_is_none() {
        let t = TraceContext::from_headers(&headers(&[
            ("traceparent", VALID),
            ("tracestate", "cc=1,x=2"),
        ]))
        .unwrap();
        assert_eq!(t.traceparent, VALID);
        assert_eq!(t.tracestate.as_deref(), Some("cc=1,x=2"));
        assert!(t.sampled());
        let headers_sent: Vec<_> = t.headers().collect();
        assert_eq!(headers_sent.len(), 2);
        for bad in [
            "",
            "00-not-a-trace-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
        ] {
            assert_eq!(
                TraceContext::from_headers(&headers(&[("traceparent", bad)])),
                None,
                "{bad:?}"
            );
            assert_eq!(TraceContext::stored(Some(bad.into()), None), None);
        }
        assert_eq!(TraceContext::from_headers(&HeaderMap::new()), None);
        let trailing = format!("{VALID}-");
        assert_eq!(
            TraceContext::from_headers(&headers(&[("traceparent", &trailing)])),
            None,
            "a version-00 traceparent is exactly 55 characters"
        );
        // Several tracestate headers are one list; one longer than 512 characters is dropped.
        let mut h = headers(&[("traceparent", VALID), ("tracestate", "a=1")]);
        h.append("tracestate", "b=2".parse().unwrap());
        let t = TraceContext::from_headers(&h).unwrap();
        assert_eq!(t.tracestate.as_deref(), Some("a=1,b=2"));
        let long: String = (0..40).map(|i| format!("k{i}=vvvvvvvvvvvv,")).collect();
        let t = TraceContext::from_headers(&headers(&[
            ("traceparent", VALID),
            ("tracestate", long.trim_end_matches(',')),
        ]))
        .unwrap();
        assert_eq!(t.tracestate, None, "{} characters", long.len());
        assert_eq!(t.traceparent, VALID);
        let unsampled = VALID.replace("-01", "-00");
        let t = TraceContext::stored(Some(unsampled.clone()), None).unwrap();
        assert!(!t.sampled());
        assert_eq!(t.traceparent, unsampled);
    }

    #[test]
    fn an_unrecorded_root_is_a_new_valid_trace_not_sampled() {
        let (a, b) = (unrecorded_root(), unrecorded_root());
        for t in [&a, &b] {
            let read =
                TraceContext::stored(Some(t.traceparent.clone()), None).expect("a valid context");
            assert_eq!(&read, t);
            assert!(!t.sampled());
        }
        assert_ne!(
            a.traceparent[3..35],
            b.traceparent[3..35],
            "a new trace id each"
        );
    }

    #[test]
    fn an_event_without_a_context_has_a_trace_named_by_its_id() {
        let id = "0f8fad5b-d9cb-469f-a165-70867728950e";
        let root = event_root(id).unwrap();
        assert_eq!(
            event_root(id),
            Some(root.clone()),
            "the same for every attempt"
        );
        assert_eq!(&root.traceparent[3..35], "0f8fad5bd9cb469fa16570867728950e");
        assert!(TraceContext::stored(Some(root.traceparent.clone()), None).is_some());
        assert_eq!(event_root("batch_12"), None);
    }

    #[test]
    fn without_export_nothing_is_made_and_the_context_passes_as_it_came() {
        // Export is never installed in unit tests.
        let producer = TraceContext::stored(Some(VALID.into()), Some("cc=1".into()));
        let (span, stored) = ingest_span(producer.clone(), "t");
        assert!(span.is_none());
        assert_eq!(stored, producer);
        let (span, sent) = attempt_span(producer.as_ref(), "t", "sub", "e", "e", 1);
        assert!(span.is_none());
        assert_eq!(sent, producer);
        assert!(turn_span(producer.iter(), 1).is_none());
    }
}
