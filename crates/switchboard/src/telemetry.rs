//! Logging set-up (`tracing` to stderr, text or JSON) and the Prometheus metrics the process
//! records (`metrics` facade, rendered at `GET /metrics`).

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat};

/// Installs the global subscriber: logs to stderr and, when an OTLP endpoint is configured,
/// the trace export layer (`otel.rs`). `RUST_LOG`, when set, wins over `log_level`; it filters
/// the logs only, not the exported spans.
pub fn init(config: &Config) -> anyhow::Result<()> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = match std::env::var("RUST_LOG") {
        Ok(f) if !f.is_empty() => EnvFilter::try_new(f)?,
        _ => EnvFilter::try_new(&config.log_level)?,
    };
    // The exported spans are not the logs' business: log lines read the same with export on.
    let filter = filter.add_directive(format!("{}=off", crate::otel::TARGET).parse()?);
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match config.log_format {
        LogFormat::Text => logs.boxed(),
        LogFormat::Json => logs.json().boxed(),
    };
    let registry = tracing_subscriber::registry().with(logs.with_filter(filter));
    let installed = match crate::otel::layer(config)? {
        Some(traces) => registry.with(traces).try_init(),
        None => registry.try_init(),
    };
    installed.map_err(|e| anyhow::anyhow!("installing the log subscriber: {e}"))
}

/// Events accepted (duplicates not counted).
pub const EVENTS_INGESTED: &str = "switchboard_events_ingested_total";
/// Attempts finished, by `outcome`: `succeeded`, `retrying` or `failed` (the delivery's state
/// after the attempt).
pub const DELIVERY_ATTEMPTS: &str = "switchboard_delivery_attempts_total";
/// Deliveries that ended without an attempt, by `status`: `expired` (too old for the
/// subscription's `max_age_secs`) or `superseded` (a later status of the agent replaced it).
pub const DELIVERIES_ENDED: &str = "switchboard_deliveries_ended_total";
/// How long each attempt took, request to answer (or error), in seconds.
pub const ATTEMPT_DURATION: &str = "switchboard_attempt_duration_seconds";
/// From an event's acceptance to the receiver's 2xx for it, per delivery, in seconds.
pub const DELIVERY_LATENCY: &str = "switchboard_delivery_latency_seconds";

/// Events removed by retention.
pub const PURGED_EVENTS: &str = "switchboard_purged_events_total";
/// System events stored, by `code`.
pub const SYSTEM_EVENTS: &str = "switchboard_system_events_total";

/// How long the oldest pending delivery of a subscription with a lag budget has waited, by
/// `tenant` and `subscription` (DESIGN §16).
pub const SUBSCRIPTION_LAG: &str = "switchboard_subscription_lag_seconds";

/// Server-Sent Event streams open now.
pub const STREAMS_OPEN: &str = "switchboard_streams_open";

/// Stored rows that could not be decoded, by `kind` (DESIGN §15): each harms only itself.
pub const UNDECODABLE_ROWS: &str = "switchboard_undecodable_rows_total";

/// Times a writer connection to the database was opened again after it was lost.
pub const DB_RECONNECTS: &str = "switchboard_db_reconnects_total";

/// Histogram buckets, in seconds: from a millisecond to the longest retry waits.
const BUCKETS: [f64; 18] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 3600.0, 86400.0,
];

/// The process's metrics recorder, installed on first use. `None` if another recorder was
/// installed first (an embedding program's): then `/metrics` shows only the database gauges.
pub fn metrics() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let installed = PrometheusBuilder::new()
                .set_buckets(&BUCKETS)
                .and_then(|b| b.install_recorder());
            match installed {
                Ok(handle) => {
                    describe();
                    // Histogram samples wait in memory until upkeep folds them into buckets.
                    let upkeep = handle.clone();
                    std::thread::Builder::new()
                        .name("switchboard-metrics".into())
                        .spawn(move || {
                            loop {
                                std::thread::sleep(Duration::from_secs(5));
                                upkeep.run_upkeep();
                            }
                        })
                        .ok()?;
                    Some(handle)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "another metrics recorder is installed");
                    None
                }
            }
        })
        .as_ref()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        SUBSCRIPTION_LAG,
        Unit::Seconds,
        "How long the oldest pending delivery of a subscription with a lag budget has waited."
    );
    describe_counter!(EVENTS_INGESTED, "Events accepted (duplicates not counted).");
    describe_counter!(PURGED_EVENTS, "Events removed by retention.");
    describe_counter!(SYSTEM_EVENTS, "System events created, by code.");
    describe_counter!(
        UNDECODABLE_ROWS,
        "Stored rows that could not be decoded (skipped, logged once), by kind."
    );
    describe_counter!(
        DB_RECONNECTS,
        "Times the writer's database connection was opened again after it was lost."
    );
    describe_counter!(
        DELIVERY_ATTEMPTS,
        "Delivery attempts finished, by the delivery's state after them."
    );
    describe_histogram!(
        ATTEMPT_DURATION,
        Unit::Seconds,
        "Duration of each delivery attempt."
    );
    describe_histogram!(
        DELIVERY_LATENCY,
        Unit::Seconds,
        "From an event's acceptance to its successful delivery, per subscription."
    );
}
