//! `switchboard simulate` against a real server: every event accepted, each agent's events a
//! valid life, and the same seed and start make the same events.

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::Value;

use crate::support::TestApp;
use crate::support::app::ADMIN_KEY;

fn simulate(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("simulate")
        .args(args)
        .output()
        .expect("run switchboard simulate")
}

/// Checks one agent's codes, in sequence order, make a life: signed in before anything else,
/// a work item received before it is accepted or declined, accepted before it is released,
/// nothing between a sign-out and the next sign-in, and signed out at the end.
fn check_life(agent: &str, codes: &[u64]) {
    #[derive(PartialEq, Debug)]
    enum At {
        Out,
        In,
        Receiving,
        Handling,
    }
    let mut at = At::Out;
    for (i, &code) in codes.iter().enumerate() {
        at = match (at, code) {
            (At::Out, 1) => At::In,
            (At::In, 3) => At::In,
            (At::In, 4) => At::Receiving,
            (At::Receiving, 5) => At::Handling,
            (At::Receiving, 6) => At::In,
            (At::Handling, 8) => At::In,
            (At::In, 2) => At::Out,
            (state, code) => panic!("{agent}: code {code} at {i} while {state:?}: {codes:?}"),
        };
    }
    assert_eq!(at, At::Out, "{agent} signs out last: {codes:?}");
}

#[tokio::test]
async fn simulate_posts_valid_lives_and_the_same_seed_makes_the_same_events() {
    let app = TestApp::spawn().await;
    let server = app.url("");
    let run = [
        "--agents",
        "20",
        "--rate",
        "200",
        "--duration",
        "5",
        "--seed",
        "7",
        "--start",
        "20261123080000",
    ];
    let mut args: Vec<String> = vec!["--server".into(), server, "--key".into(), ADMIN_KEY.into()];
    args.extend(run.iter().map(|a| a.to_string()));
    let out = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        simulate(&args)
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("refused 0"), "{stderr}");

    let log = app.all_events("default").await;
    assert!(log.len() >= 1000, "5 s at 200/s: {}", log.len());
    assert!(
        stderr.contains(&format!("accepted {}", log.len())),
        "{stderr}"
    );
    let mut lives: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for item in &log {
        let e = &item["event"];
        let agent = e["AdditionalFields"]["Username"]
            .as_str()
            .unwrap()
            .to_string();
        lives
            .entry(agent)
            .or_default()
            .push(e["Code"].as_u64().unwrap());
    }
    assert_eq!(lives.len(), 20);
    for (agent, codes) in &lives {
        check_life(agent, codes);
    }
    // Each agent's events are in time order.
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    for item in &log {
        let e = &item["event"];
        let agent = e["AdditionalFields"]["Username"]
            .as_str()
            .unwrap()
            .to_string();
        let at = e["CreationDateUtc"].as_str().unwrap().to_string();
        if let Some(before) = last.insert(agent.clone(), at.clone()) {
            assert!(before <= at, "{agent}: {before} then {at}");
        }
    }

    // The same seed and start: the same events, as a dry run writes them.
    let mut dry = vec!["--dry-run"];
    dry.extend(run);
    let out = simulate(&dry);
    assert!(out.status.success());
    let written: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let posted: Vec<Value> = log.iter().map(|i| i["event"].clone()).collect();
    assert_eq!(written, posted);
    // Another seed, other events.
    let other = simulate(&["--dry-run", "--seed", "8", "--start", "20261123080000"]);
    assert_ne!(
        String::from_utf8(other.stdout)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
        {
            let first = &written[0];
            first.to_string()
        }
    );
}

#[test]
fn simulate_refuses_a_bad_flag_with_a_usage_error() {
    let out = simulate(&["--start", "tomorrow", "--dry-run"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--start"));
}
