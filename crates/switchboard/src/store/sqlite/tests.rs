//! The idempotency index in memory and in `event_ids` (`ids.rs`), with merges made tiny so that
//! every state an `Id` can be in is reached: in memory, in a batch being merged, merged, and
//! read back after a stop.

use std::path::Path;

use uuid::Uuid;

use super::super::db::Db;
use super::super::{Options, Store};
use super::ids::MergeSizes;
use crate::event::{Catalog, NewEvent, parse_batch};
use crate::store::{Accepted, IngestError};

/// A batch of three `Id`s, copied one per writer turn.
const TINY: MergeSizes = MergeSizes {
    batch: 3,
    per_turn: 1,
};

fn event(id: Uuid, creation: &str) -> NewEvent {
    let body = format!(
        r#"{{"Id":"{id}","CreationDateUtc":"{creation}","Category":2,"Code":1,"AdditionalFields":{{}}}}"#
    );
    parse_batch(body.as_bytes(), &Catalog::builtin())
        .expect("a valid event")
        .remove(0)
}

async fn post(store: &Store, tenant: &str, id: Uuid, creation: &str) -> Accepted {
    let mut accepted = store
        .ingest(tenant, vec![event(id, creation)])
        .await
        .expect("accepted");
    accepted.remove(0)
}

async fn in_index(store: &Store) -> i64 {
    let Db::Sqlite(pool) = &store.0.db else {
        panic!("an SQLite store")
    };
    sqlx::query_scalar("SELECT count(*) FROM event_ids")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Every event posted so far is a duplicate when posted again, a conflict when posted with other
/// content, and found by its `Id`.
async fn all_known(store: &Store, tenant: &str, posted: &[(Uuid, i64)]) {
    for &(id, sequence) in posted {
        let again = post(store, tenant, id, "20261123184603").await;
        assert!(again.duplicate, "{id} posted again is a duplicate");
        assert_eq!(again.sequence, sequence);
        match store
            .ingest(tenant, vec![event(id, "20261123184604")])
            .await
        {
            Err(IngestError::Conflict(c)) => assert_eq!(c, vec![(0, id)]),
            other => panic!("{id} with other content: {other:?}"),
        }
        let found = store.get_event(tenant, id).await.unwrap().expect("found");
        assert_eq!(found.sequence, sequence);
        assert!(found.body.contains(&id.to_string()));
    }
}

async fn open(path: &Path) -> Store {
    let opened = super::open(path, TINY, Options::default())
        .await
        .expect("opens");
    Store::from_opened(opened)
}

#[tokio::test]
async fn an_id_is_known_in_memory_while_merged_after_merging_and_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ids.db");
    let store = open(&path).await;
    let mut posted = Vec::new();
    for n in 0..8 {
        let id = Uuid::new_v4();
        let accepted = post(&store, "default", id, "20261123184603").await;
        assert!(!accepted.duplicate);
        assert_eq!(accepted.sequence, n + 1);
        posted.push((id, accepted.sequence));
        all_known(&store, "default", &posted).await;
    }
    let merged = in_index(&store).await;
    assert!(
        merged >= 3,
        "batches were merged: {merged} ids in the index"
    );
    assert!(merged < 8, "the last ones are still in memory: {merged}");
    store.close().await;

    // A graceful stop merged the rest: nothing is left to read back.
    let store = open(&path).await;
    assert_eq!(in_index(&store).await, 8, "every id merged at the stop");
    all_known(&store, "default", &posted).await;
    let next = post(&store, "default", Uuid::new_v4(), "20261123184603").await;
    assert_eq!((next.sequence, next.duplicate), (9, false));
    store.close().await;

    // And with the default sizes, nothing merged since: all from memory and the index.
    let store = Store::open("", &path).await.unwrap();
    all_known(&store, "default", &posted).await;
    store.close().await;
}

#[tokio::test]
async fn a_tenant_created_again_does_not_inherit_the_old_ids() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ids.db");
    let store = open(&path).await;
    store.create_tenant("acme", "Acme").await.unwrap();
    let ids: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
    for id in &ids {
        post(&store, "acme", *id, "20261123184603").await;
    }
    assert!(store.delete_tenant("acme").await.unwrap());
    store.create_tenant("acme", "Acme").await.unwrap();

    // The same ids with other content are new events of the new tenant, from sequence 1.
    let mut posted = Vec::new();
    for (n, id) in ids.iter().enumerate().rev() {
        let accepted = post(&store, "acme", *id, "20261123184604").await;
        assert!(!accepted.duplicate, "{id} is new to the new tenant");
        assert_eq!(accepted.sequence, 5 - n as i64);
        posted.push((*id, accepted.sequence));
    }
    for (id, sequence) in &posted {
        let found = store.get_event("acme", *id).await.unwrap().expect("found");
        assert_eq!(found.sequence, *sequence);
        assert!(found.body.contains("20261123184604"));
    }
    store.close().await;

    let store = open(&path).await;
    for (id, sequence) in &posted {
        let again = post(&store, "acme", *id, "20261123184604").await;
        assert_eq!((again.sequence, again.duplicate), (*sequence, true));
    }
    store.close().await;
}
