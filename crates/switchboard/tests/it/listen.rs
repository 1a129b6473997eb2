//! `switchboard listen --forward`: verified deliveries go on to a local app, whose answer is
//! the delivery's answer; a bad signature is refused and not forwarded.

use serde_json::json;
use switchboard::delivery::signing::{Scheme, Secret, Verifier};

use crate::support::TestApp;
use crate::support::TestReceiver;
use crate::support::app::{ADMIN_KEY, agent_event, guid, json_ok};
use crate::support::receiver::eventually;

const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

#[tokio::test]
async fn listen_forwards_verified_deliveries_and_answers_with_the_app() {
    let app = TestApp::spawn().await;
    // The local app: 202 for the first request, 500 after.
    let local =
        TestReceiver::with(|n, _| (if n == 0 { 202 } else { 500 }, Default::default())).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let forward = local.url("/app/hooks").parse().unwrap();
    let secret = Verifier::parse(SECRET).unwrap();
    tokio::spawn(switchboard::cli::listen::serve(
        listener,
        Some(secret),
        Some(forward),
        std::future::pending(),
    ));
    let sub = app
        .subscribe(
            json!({"url": format!("http://{addr}/hooks"), "secret": SECRET,
                          "retry_schedule_secs": [3600]}),
        )
        .await;
    let sub = sub["id"].as_str().unwrap().to_string();

    // Forwarded as received; the app's 202 is the delivery's answer.
    let first = guid();
    app.publish_ok("default", &agent_event(&first, 1, "jdoe"))
        .await;
    let got = local.wait_for(1).await;
    assert_eq!(got[0].event_id(), first);
    assert_eq!(got[0].json()["Id"], first.as_str());
    assert!(got[0].header("webhook-signature").starts_with("v1,"));
    assert_eq!(got[0].header("switchboard-subscription"), sub);
    let path = format!("/v1/tenants/default/subscriptions/{sub}/deliveries");
    let delivered = eventually("the first delivery succeeded", || async {
        let page = json_ok(app.get(&path, ADMIN_KEY).await).await;
        let d = page["data"][0].clone();
        (d["status"] == "succeeded").then_some(d)
    })
    .await;
    assert_eq!(delivered["last_status_code"], 202);

    // The app fails: so does the delivery, with the app's status.
    let second = guid();
    app.publish_ok("default", &agent_event(&second, 3, "jdoe"))
        .await;
    local.wait_for(2).await;
    let failed = eventually("the second delivery's attempt is recorded", || async {
        let page = json_ok(app.get(&path, ADMIN_KEY).await).await;
        let d = page["data"][1].clone();
        (d["attempt_count"] == 1).then_some(d)
    })
    .await;
    assert_eq!(failed["last_status_code"], 500);

    // A bad signature: 401, and the app never sees it.
    let r = app
        .client
        .post(format!("http://{addr}/hooks"))
        .header("webhook-id", guid())
        .header("webhook-timestamp", "1795864670")
        .header("webhook-signature", "v1,AAAA")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(local.received().len(), 2);
}

/// `listen` verifies as the Standard Webhooks libraries do: a timestamp more than 5 minutes
/// off is refused however well signed, and a `v1a` signature verifies with the public key
/// (`whpk_`) alone.
#[tokio::test]
async fn listen_refuses_stale_timestamps_and_takes_a_public_key() {
    let client = reqwest::Client::new();
    let start = |verifier: Verifier| async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(switchboard::cli::listen::serve(
            listener,
            Some(verifier),
            None,
            std::future::pending(),
        ));
        format!("http://{addr}/hooks")
    };
    let post = |url: String, secret: &Secret, ts: i64, body: &'static str| {
        let id = guid();
        let signature = secret.sign(&id, ts, body.as_bytes());
        client
            .post(url)
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
    };
    let now = switchboard::clock::now_millis() / 1000;

    let hmac = Secret::parse(SECRET).unwrap();
    let url = start(Verifier::parse(SECRET).unwrap()).await;
    for (ts, want) in [
        (now, 204),
        (now - 600, 401),
        (now + 600, 401),
        (now - 240, 204),
    ] {
        let r = post(url.clone(), &hmac, ts, "{}").await.unwrap();
        assert_eq!(r.status(), want, "timestamp {} s from now", ts - now);
    }

    let pair = Secret::parse(&Secret::generate_for(Scheme::V1a)).unwrap();
    let public = pair.public_key().unwrap();
    let url = start(Verifier::parse(&public).unwrap()).await;
    assert_eq!(
        post(url.clone(), &pair, now, "{}").await.unwrap().status(),
        204
    );
    let other = Secret::parse(&Secret::generate_for(Scheme::V1a)).unwrap();
    assert_eq!(
        post(url.clone(), &other, now, "{}").await.unwrap().status(),
        401
    );
    assert_eq!(post(url, &hmac, now, "{}").await.unwrap().status(), 401);
}
