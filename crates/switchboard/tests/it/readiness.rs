//! Readiness when the database cannot take writes (a full disk): not ready while it lasts,
//! ready again when there is room. The full disk is SQLite's `max_page_count`: the file may not
//! grow past it, and writes that need room fail as on a full disk.

use switchboard::clock::now_millis;
use switchboard::store::{IngestError, Options, Store, StoreError};

use crate::support::app::{agent_event, guid};

fn batch(n: usize) -> Vec<switchboard::event::NewEvent> {
    let body = serde_json::Value::Array(
        (0..n)
            .map(|i| agent_event(&guid(), 3, &format!("agent{i}")))
            .collect(),
    );
    parse(body)
}

/// IVR events: nothing for the agents projection.
fn ivr_batch(n: usize) -> Vec<switchboard::event::NewEvent> {
    let event = || {
        serde_json::json!({"Id": guid(), "CreationDateUtc": "20261123184603", "Category": 2,
            "Code": 1, "AdditionalFields": {"Ani": "+15551230001"}})
    };
    parse(serde_json::Value::Array((0..n).map(|_| event()).collect()))
}

fn parse(body: serde_json::Value) -> Vec<switchboard::event::NewEvent> {
    let catalog = switchboard::event::Catalog::builtin();
    switchboard::event::parse_batch(body.to_string().as_bytes(), &catalog).unwrap()
}

async fn page_count(path: &std::path::Path) -> u64 {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let (n,): (i64,) = sqlx::query_as("PRAGMA page_count")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    n as u64
}

#[tokio::test]
async fn a_database_that_cannot_grow_is_not_ready_until_it_has_room_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchboard.db");
    Store::open("", &path).await.unwrap().close().await;
    let pages = page_count(&path).await;
    let options = Options {
        sqlite_max_pages: Some(pages + 200),
        ..Options::default()
    };
    let store = Store::open_with("", &path, options).await.unwrap();
    store.ping().await.expect("ready while there is room");

    // Fill it with batches of 200 until one does not fit; then, while the readiness probe's
    // write (64 KiB) still fits in what the last batch left, with smaller ones. IVR events:
    // purging Agent events writes the agents' bases, which a database this full has no room
    // for, and a fold of the projection pending from them would fail
    // the turn it joins.
    let mut accepted = 0;
    let refusal = loop {
        match store.ingest("default", ivr_batch(200)).await {
            Ok(a) => accepted += a.len(),
            Err(e) => break e,
        }
        assert!(accepted < 1_000_000, "the database never filled up");
    };
    let mut tries = 0;
    while store.ping().await.is_ok() {
        tries += 1;
        assert!(tries < 1_000, "ready however full the database is");
        // Ten events may not fit where the probe does; then the probe's own rows shift what
        // is free, and the next try fits or leaves the probe no room.
        if let Ok(a) = store.ingest("default", ivr_batch(10)).await {
            accepted += a.len();
        }
    }
    assert!(
        matches!(refusal, IngestError::Store(StoreError::Unavailable(_))),
        "a full database is unavailable (503), not an error: {refusal:?}"
    );
    assert!(accepted > 0);
    // Not ready, and still not on the next look: the probe writes, an empty transaction would
    // commit.
    assert!(store.ping().await.is_err(), "not ready while full");
    assert!(store.ping().await.is_err(), "still not ready");

    // Room again: retention frees the pages of old events.
    let purged = store.purge(now_millis() + 1_000).await.unwrap();
    assert_eq!(purged.events as usize, accepted);
    store.ping().await.expect("ready again");
    store
        .ingest("default", batch(10))
        .await
        .expect("takes events again");
    store.close().await;
}

/// Under a steady load with retention, the database stops growing: each purge frees the pages
/// the next events reuse.
#[tokio::test]
async fn under_steady_load_with_retention_the_database_stops_growing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchboard.db");
    let store = Store::open("", &path).await.unwrap();
    let mut sizes = Vec::new();
    for _ in 0..12 {
        // Everything received before this round is past retention by the round's end.
        let round = now_millis();
        for _ in 0..10 {
            store.ingest("default", batch(200)).await.unwrap();
        }
        store.purge(round).await.unwrap();
        sizes.push(page_count(&path).await);
    }
    eprintln!("pages after each round: {sizes:?}");
    let settled = sizes[3];
    assert!(
        sizes[4..].iter().all(|&s| s <= settled + settled / 10),
        "the database kept growing: {sizes:?}"
    );
    store.close().await;
}
