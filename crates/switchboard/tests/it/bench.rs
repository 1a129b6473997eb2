//! The benchmark's smoke test: a tiny workload, a well-formed report whose counts add up. (No
//! timing is asserted: speed is measured by running the bench, not by the test suite.)

use switchboard::cli::bench::{Options, run};

use crate::support::db::TestData;

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
}
