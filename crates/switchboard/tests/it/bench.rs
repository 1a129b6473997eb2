//! The benchmark's smoke test: a tiny workload, a well-formed report whose counts add up. (No
//! timing is asserted: speed is measured by running the bench, not by the test suite.)

use switchboard::cli::bench::{Options, run};

use crate::support::app::ADMIN_KEY;
use crate::support::db::TestData;
use crate::support::process::Server;

#[tokio::test]
async fn bench_runs_a_tiny_workload_and_its_counts_add_up() {
    // The server the bench starts uses the suite's backend.
    let data = TestData::new().await;
    let report = run(Options {
        events: 120,
        concurrency: 4,
        batch: 10,
        subscriptions: 2,
        database_url: data.database_url(),
        ..Options::default()
    })
    .await
    .expect("bench ran");
    assert_eq!(report.accepted, 120);
    assert_eq!(report.deliveries, 240, "every event at both subscriptions");
    assert!(report.accepted_per_sec > 0.0 && report.deliveries_per_sec > 0.0);
    assert!(report.receiver_raw_requests_per_sec > 0.0);
    for p in [&report.ingest_latency_ms, &report.ingest_to_receiver_ms] {
        assert!(
            0.0 < p.p50 && p.p50 <= p.p90 && p.p90 <= p.p99 && p.p99 <= p.max,
            "{p:?}"
        );
    }
    assert!(report.server_peak_rss_mib.is_some_and(|m| m > 1.0));
    let json: serde_json::Value = serde_json::to_value(&report).unwrap();
    for key in [
        "accepted_per_sec",
        "deliveries_per_sec",
        "ingest_to_receiver_ms",
        "receiver_raw_requests_per_sec",
    ] {
        assert!(json.get(key).is_some(), "{key} in {json}");
    }
    assert!(report.text().contains("ingest→receiver"));
    // CPU by whom: the in-process server's threads spent some, and the rest of the process is
    // the load's.
    assert!(
        report.cpu.server_secs.is_some_and(|s| s > 0.0) && report.cpu.load_secs >= 0.0,
        "{:?}",
        report.cpu
    );
    assert!(report.text().contains("\ncpu "));

    // Open loop: paced, and the counts still add up.
    let paced = run(Options {
        events: 50,
        concurrency: 8,
        rate: Some(500),
        database_url: data.database_url(),
        ..Options::default()
    })
    .await
    .expect("paced bench ran");
    assert_eq!((paced.accepted, paced.deliveries), (50, 50));

    // Ingest alone: no subscription, nothing to wait for.
    let alone = run(Options {
        events: 40,
        batch: 20,
        subscriptions: 0,
        database_url: data.database_url(),
        ..Options::default()
    })
    .await
    .expect("ingest-alone bench ran");
    assert_eq!((alone.accepted, alone.deliveries), (40, 0));
    assert!(alone.text().contains("ingest alone"), "{}", alone.text());
}

/// The backlog run (`--pending`): the real binary, as a user runs it, on a tiny backlog.
#[tokio::test]
async fn the_backlog_run_reports_memory_and_the_restart() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args([
            "bench",
            "--pending",
            "300",
            "--down-secs",
            "1",
            "--after-secs",
            "1",
            "--json",
        ])
        .output()
        .await
        .expect("bench ran");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(report["pending"], 300);
    for field in [
        "ingest_secs",
        "server_peak_rss_mib",
        "server_rss_mib",
        "restart_ready_secs",
        "restart_first_delivery_secs",
    ] {
        assert!(report[field].as_f64().unwrap() > 0.0, "{field}: {report}");
    }
    let delivered = report["delivered_after_restart"].as_u64().unwrap();
    assert!((1..=300).contains(&delivered), "{report}");
    assert!(report["server_rss_mib"].as_f64() <= report["server_peak_rss_mib"].as_f64());
}

/// Two nodes share the run's PostgreSQL database, the clients split over them; every event is
/// delivered once whichever node took it. Without a PostgreSQL URL, more than one node is refused.
#[tokio::test]
async fn bench_runs_two_nodes_on_one_postgresql_database() {
    let data = TestData::postgres().await;
    let report = run(Options {
        events: 200,
        concurrency: 4,
        nodes: 2,
        database_url: data.database_url(),
        ..Options::default()
    })
    .await
    .expect("bench ran");
    assert_eq!(
        (report.accepted, report.deliveries, report.nodes),
        (200, 200, 2)
    );
    assert!(report.cpu.postgres_secs > 0.0, "{:?}", report.cpu);
    assert!(report.text().contains("2 nodes"));

    let refused = run(Options {
        events: 10,
        nodes: 2,
        ..Options::default()
    })
    .await;
    assert!(refused.is_err_and(|e| e.to_string().contains("--nodes")));
}

/// `--url` names the nodes of a running cluster, separated by commas: the run is set up
/// through the first, the clients split over all, and every event is delivered once. (What
/// `docs/bench/nodes-capped.sh` drives, each node held to a CPU budget of its own.)
#[tokio::test]
async fn bench_spreads_its_clients_over_the_nodes_given_with_url() {
    let data = TestData::postgres().await;
    let (a, b) = (Server::start(&data), Server::start(&data));
    let report = run(Options {
        url: Some(format!("{}/, {}", a.base, b.base)),
        key: Some(ADMIN_KEY.to_string()),
        events: 200,
        concurrency: 4,
        ..Options::default()
    })
    .await
    .expect("bench ran");
    assert_eq!(
        (report.accepted, report.deliveries, report.nodes),
        (200, 200, 2)
    );
    assert!(report.text().contains("2 nodes"), "{}", report.text());
    // Both nodes took posts: each counted ingested events of its own.
    let client = reqwest::Client::new();
    for node in [&a, &b] {
        let metrics = node.get_text(&client, "/metrics").await;
        let ingested: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("switchboard_events_ingested_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0);
        assert!(ingested > 0.0, "{} took no events:\n{metrics}", node.base);
    }

    let refused = run(Options {
        url: Some(" , ".to_string()),
        key: Some(ADMIN_KEY.to_string()),
        events: 10,
        ..Options::default()
    })
    .await;
    assert!(refused.is_err_and(|e| e.to_string().contains("--url")));
}

#[tokio::test]
async fn the_broker_benches_deliver_every_event_to_a_stream_and_a_queue_of_their_own() {
    use switchboard::cli::bench::destination::{Kind, Options, run};
    let data = TestData::new().await;
    let brokers = [
        (
            Kind::Nats,
            std::env::var("SWITCHBOARD_TEST_NATS_URL")
                .unwrap_or_else(|_| "nats://127.0.0.1:4222".into()),
        ),
        (
            Kind::Amqp,
            std::env::var("SWITCHBOARD_TEST_AMQP_URL")
                .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
        ),
    ];
    for (kind, broker_url) in brokers {
        let report = run(Options {
            kind,
            events: 300,
            broker_url,
            database_url: data.database_url(),
            in_flight: 8,
        })
        .await
        .unwrap_or_else(|e| panic!("the {kind:?} bench ran (.ci/run starts the brokers): {e:#}"));
        assert_eq!(report.events, 300);
        assert_eq!(report.destination, kind);
        assert!(report.delivered_per_sec > 0.0);
        assert!(!report.broker_url.contains("guest:guest"), "masked");
    }
}

#[tokio::test]
async fn the_bench_counts_every_event_of_every_batch_delivered() {
    let data = TestData::new().await;
    let report = run(Options {
        events: 300,
        concurrency: 4,
        batch: 50,
        subscriptions: 2,
        delivery_batch: Some(25),
        database_url: data.database_url(),
        ..Options::default()
    })
    .await
    .expect("bench ran");
    assert_eq!(report.accepted, 300);
    assert_eq!(report.deliveries, 600, "every event at both subscriptions");
}

#[tokio::test]
async fn the_bench_measures_redacting_subscriptions() {
    let data = TestData::new().await;
    let report = run(Options {
        events: 200,
        concurrency: 4,
        redact: true,
        database_url: data.database_url(),
        ..Options::default()
    })
    .await
    .expect("bench ran");
    assert!(report.redact);
    assert_eq!(
        report.deliveries, 200,
        "redacted bodies still carry their Id"
    );
    assert!(report.text().contains("three fields redacted"));
}

#[tokio::test]
async fn the_bench_times_the_counts_stream_for_every_event() {
    let data = TestData::new().await;
    let report = run(Options {
        events: 300,
        concurrency: 4,
        agents: 40,
        counts_streams: 2,
        database_url: data.database_url(),
        ..Options::default()
    })
    .await
    .expect("bench ran");
    let counts = report
        .ingest_to_counts_ms
        .as_ref()
        .expect("counts measured");
    assert_eq!(report.counts_streams, 2);
    assert!(counts.p50 > 0.0 && counts.max >= counts.p99, "{counts:?}");
    assert!(report.text().contains("ingest→counts"), "{}", report.text());
}

#[tokio::test]
async fn a_backlog_run_stores_everything_first_then_times_the_drain() {
    let data = TestData::new().await;
    let report = run(Options {
        events: 200,
        concurrency: 4,
        batch: 50,
        subscriptions: 2,
        delivery_batch: Some(20),
        backlog: true,
        database_url: data.database_url(),
        ..Options::default()
    })
    .await
    .expect("bench ran");
    assert!(report.backlog);
    assert_eq!(report.accepted, 200);
    assert_eq!(
        report.delivered_before_drain, 0,
        "the storing node does not deliver"
    );
    assert_eq!(
        report.deliveries, 400,
        "the drain delivers every event to both"
    );
    assert!(report.deliveries_per_sec > 0.0);
    assert!(report.text().contains("draining a stored backlog"));
}

/// `--tenants`: the events spread over tenants of their own, each posting with its own key
/// and delivered to its own subscriptions.
#[tokio::test]
async fn a_run_over_several_tenants_delivers_each_tenants_events_to_its_subscriptions() {
    let data = TestData::new().await;
    let report = run(Options {
        events: 300,
        concurrency: 6,
        batch: 10,
        subscriptions: 2,
        tenants: 3,
        database_url: data.database_url(),
        ..Options::default()
    })
    .await
    .expect("bench ran");
    assert_eq!(report.accepted, 300);
    let by_tenant: Vec<(&str, usize)> = (report.accepted_by_tenant.iter())
        .map(|(t, n)| (t.as_str(), *n))
        .collect();
    assert_eq!(
        by_tenant.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
        ["bench-1", "bench-2", "default"]
    );
    assert!(by_tenant.iter().all(|(_, n)| *n > 0), "{by_tenant:?}");
    assert_eq!(by_tenant.iter().map(|(_, n)| n).sum::<usize>(), 300);
    assert_eq!(
        report.deliveries, 600,
        "every event reaches the two subscriptions of its tenant, and only those"
    );
    assert!(report.text().contains("3 tenants"), "{}", report.text());
}

#[tokio::test]
async fn the_bench_calls_its_receiver_with_a_bearer_or_an_oauth2_token() {
    use switchboard::cli::bench::ReceiverAuth;
    let data = TestData::new().await;
    for auth in [ReceiverAuth::Bearer, ReceiverAuth::Oauth2] {
        let report = run(Options {
            events: 100,
            concurrency: 4,
            batch: 10,
            receiver_auth: auth,
            database_url: data.database_url(),
            ..Options::default()
        })
        .await
        .expect("bench ran");
        // The receiver refuses a delivery without the token: every one arrived with it.
        assert_eq!(report.deliveries, 100, "{auth:?}");
        let tokens = usize::from(auth == ReceiverAuth::Oauth2);
        assert_eq!(report.token_requests, tokens, "{auth:?}: one token for all");
    }
}
