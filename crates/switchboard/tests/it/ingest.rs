//! Ingest: acceptance, validation, idempotency, limits.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::app::{ADMIN_KEY, agent_event, guid, json_ok, problem};
use crate::support::{TestApp, TestReceiver};

#[tokio::test]
async fn single_event_and_batch_are_accepted_in_sequence_and_read_back_identical() {
    let app = TestApp::spawn().await;
    let single = agent_event(&guid(), 1, "jdoe");
    let answer = app.publish_ok("default", &single).await;
    assert_eq!(answer.len(), 1);
    assert_eq!(answer[0]["sequence"], 1);
    assert_eq!(answer[0]["duplicate"], false);
    assert_eq!(answer[0]["id"], single["Id"]);

    let batch: Vec<Value> = (0..100)
        .map(|i| agent_event(&guid(), 1 + i % 6, &format!("a{i}")))
        .collect();
    let answer = app
        .publish_ok("default", &Value::Array(batch.clone()))
        .await;
    let seqs: Vec<i64> = answer
        .iter()
        .map(|a| a["sequence"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, (2..=101).collect::<Vec<_>>());

    let log = app.all_events("default").await;
    assert_eq!(log.len(), 101);
    let posted: Vec<&Value> = std::iter::once(&single).chain(&batch).collect();
    for (i, (item, sent)) in log.iter().zip(posted).enumerate() {
        assert_eq!(item["sequence"], i as i64 + 1);
        assert_eq!(&item["event"], sent, "event {i} reads back as posted");
        assert!(item["received_at"].as_str().unwrap().ends_with('Z'));
    }
    let id = single["Id"].as_str().unwrap();
    let one = app
        .get(&format!("/v1/tenants/default/events/{id}"), ADMIN_KEY)
        .await;
    let one: Value = one.json().await.unwrap();
    assert_eq!(one["event"], single);
    assert_eq!(one["sequence"], 1);
    assert_eq!(one["deliveries"], json!([]));
}

#[tokio::test]
async fn absent_id_and_date_are_filled_in_and_ids_stored_lower_case() {
    let app = TestApp::spawn().await;
    let answer = app
        .publish_ok("default", &json!({"Category": 3, "Code": 7}))
        .await;
    let id = answer[0]["id"].as_str().unwrap();
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 4);
    let upper = "0F8FAD5B-D9CB-469F-A165-70867728950E";
    app.publish_ok("default", &json!({"Id": upper, "Category": 2, "Code": 0}))
        .await;
    let log = app.all_events("default").await;
    assert_eq!(log[0]["event"]["Id"], id);
    let date = log[0]["event"]["CreationDateUtc"].as_str().unwrap();
    assert!(switchboard::event::Timestamp::parse(date).is_ok(), "{date}");
    assert_eq!(log[0]["event"]["AdditionalFields"], json!({}));
    assert_eq!(log[1]["event"]["Id"], upper.to_lowercase());
}

/// Every rule of DESIGN §2, through HTTP: 422 naming the field, nothing stored.
#[tokio::test]
async fn each_validation_rule_is_refused_naming_its_field_and_nothing_is_stored() {
    let app = TestApp::spawn().await;
    let ok = agent_event(&guid(), 3, "jdoe");
    let set = |path: &[&str], v: Value| {
        let mut e = ok.clone();
        let mut slot = &mut e;
        for p in path {
            slot = &mut slot[*p];
        }
        *slot = v;
        e
    };
    let remove = |path: &[&str]| {
        let mut e = ok.clone();
        let (last, parents) = path.split_last().unwrap();
        let mut slot = &mut e;
        for p in parents {
            slot = &mut slot[*p];
        }
        slot.as_object_mut().unwrap().remove(*last);
        e
    };
    let cases: Vec<(Value, &str)> = vec![
        (set(&["Id"], json!("not-a-guid")), "Id"),
        (set(&["Id"], json!(12)), "Id"),
        (
            set(&["CreationDateUtc"], json!("20261301000000")),
            "CreationDateUtc",
        ),
        (
            set(&["CreationDateUtc"], json!("20260230120000")),
            "CreationDateUtc",
        ),
        (
            set(&["CreationDateUtc"], json!("2026112318460")),
            "CreationDateUtc",
        ),
        (set(&["Category"], json!(0)), "Category"),
        (set(&["Category"], json!(5)), "Category"),
        (set(&["Category"], json!("1")), "Category"),
        (remove(&["Category"]), "Category"),
        (set(&["Code"], json!(7)), "Code"),
        (set(&["Code"], json!("3")), "Code"),
        (set(&["Code"], json!(-1)), "Code"),
        (remove(&["Code"]), "Code"),
        (set(&["AdditionalFields"], json!("x")), "AdditionalFields"),
        (
            remove(&["AdditionalFields", "SessionId"]),
            "AdditionalFields.SessionId",
        ),
        (
            set(&["AdditionalFields", "SessionType"], json!("")),
            "AdditionalFields.SessionType",
        ),
        (
            set(&["AdditionalFields", "Username"], json!(7)),
            "AdditionalFields.Username",
        ),
        (
            remove(&["AdditionalFields", "PhoneNo"]),
            "AdditionalFields.PhoneNo",
        ),
        (
            set(&["AdditionalFields", "ActivityCode"], json!("16")),
            "AdditionalFields.ActivityCode",
        ),
        (
            remove(&["AdditionalFields", "AvailabilityCode"]),
            "AdditionalFields.AvailabilityCode",
        ),
        (
            set(&["AdditionalFields", "ActivityName"], json!(1)),
            "AdditionalFields.ActivityName",
        ),
        (set(&["Catgory"], json!(1)), "Catgory"),
        (
            agent_event(&guid(), 2, "jdoe")
                .as_object()
                .map(|o| {
                    let mut o = o.clone();
                    o["AdditionalFields"]
                        .as_object_mut()
                        .unwrap()
                        .remove("ExitCode");
                    Value::Object(o)
                })
                .unwrap(),
            "AdditionalFields.ExitCode",
        ),
        (
            set(&["AdditionalFields", "ActivityCode"], json!(1.5)),
            "AdditionalFields.ActivityCode",
        ),
    ];
    for (event, field) in cases {
        let doc = problem(
            app.publish("default", &event).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        let fields: Vec<&str> = doc["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert!(
            fields.contains(&field),
            "{field} not named for {event}: {doc}"
        );
        assert!(
            doc["errors"][0].get("index").is_none(),
            "a single object has no index"
        );
        // In an array, the same problem names the index.
        let doc = problem(
            app.publish("default", &json!([agent_event(&guid(), 1, "ok"), event]))
                .await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert!(
            doc["errors"]
                .as_array()
                .unwrap()
                .iter()
                .all(|e| e["index"] == 1),
            "{doc}"
        );
    }
    assert!(
        app.all_events("default").await.is_empty(),
        "nothing was stored"
    );
}

#[tokio::test]
async fn a_batch_with_one_bad_event_stores_nothing() {
    let app = TestApp::spawn().await;
    let mut batch: Vec<Value> = (0..50)
        .map(|i| agent_event(&guid(), 1, &format!("u{i}")))
        .collect();
    batch[37]["Code"] = json!(7);
    let doc = problem(
        app.publish("default", &Value::Array(batch)).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(
        doc["errors"],
        json!([{"index": 37, "field": "Code", "message":
        "unknown Agent code 7; known: 1 SignedIn, 2 SignedOut, 3 StatusChanged, 4 ReceivingWorkItem, 5 AcceptedWorkItem, 6 DeclinedWorkItem, 8 ReleasedWorkItem"}])
    );
    assert!(app.all_events("default").await.is_empty());
}

#[tokio::test]
async fn identical_repost_is_a_duplicate_and_other_content_is_a_conflict() {
    let app = TestApp::spawn().await;
    let event = agent_event(&guid(), 1, "jdoe");
    let first = app.publish_ok("default", &event).await;
    let again = app.publish_ok("default", &event).await;
    assert_eq!(again[0]["duplicate"], true);
    assert_eq!(again[0]["sequence"], first[0]["sequence"]);

    // Without CreationDateUtc the stored date is assumed: still identical.
    let mut undated = event.clone();
    undated.as_object_mut().unwrap().remove("CreationDateUtc");
    assert_eq!(
        app.publish_ok("default", &undated).await[0]["duplicate"],
        true
    );
    // Upper-case Id is the same Id.
    let mut upper = event.clone();
    upper["Id"] = json!(event["Id"].as_str().unwrap().to_uppercase());
    assert_eq!(
        app.publish_ok("default", &upper).await[0]["duplicate"],
        true
    );

    let mut changed = event.clone();
    changed["AdditionalFields"]["Username"] = json!("someone-else");
    let doc = problem(app.publish("default", &changed).await, StatusCode::CONFLICT).await;
    assert_eq!(doc["errors"][0]["field"], "Id");

    // A conflict anywhere in a batch refuses the whole batch.
    let fresh = agent_event(&guid(), 1, "new");
    let doc = problem(
        app.publish("default", &json!([fresh, changed])).await,
        StatusCode::CONFLICT,
    )
    .await;
    assert_eq!(doc["errors"][0]["index"], 1);
    // The same Id twice in one batch with different content conflicts too.
    let id = guid();
    let twice = json!([agent_event(&id, 1, "x"), agent_event(&id, 1, "y")]);
    problem(app.publish("default", &twice).await, StatusCode::CONFLICT).await;
    // ... and with the same content is one event and one duplicate.
    let same = json!([agent_event(&id, 1, "x"), agent_event(&id, 1, "x")]);
    let answer = app.publish_ok("default", &same).await;
    assert_eq!(
        (
            answer[0]["duplicate"].clone(),
            answer[1]["duplicate"].clone()
        ),
        (json!(false), json!(true))
    );
    assert_eq!(answer[0]["sequence"], answer[1]["sequence"]);

    let log = app.all_events("default").await;
    assert_eq!(log.len(), 2, "the first event and the last batch's one");
}

/// Concurrent requests are group-committed; each still gets its own sequences, with no gap and
/// no repeat, and a race on the same Id yields one event.
#[tokio::test]
async fn concurrent_requests_get_distinct_sequences() {
    let app = TestApp::spawn().await;
    let shared = agent_event(&guid(), 1, "racer");
    let mut tasks = Vec::new();
    for i in 0..64 {
        let (client, url, shared) = (
            app.client.clone(),
            app.url("/v1/tenants/default/events"),
            shared.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let body = json!([
                agent_event(&guid(), 1, &format!("u{i}")),
                agent_event(&guid(), 2, &format!("u{i}")),
                shared
            ]);
            let r = client
                .post(url)
                .bearer_auth(ADMIN_KEY)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::ACCEPTED);
            r.json::<Value>().await.unwrap()
        }));
    }
    let mut seqs = Vec::new();
    let mut new_shared = 0;
    for t in tasks {
        let answer = t.await.unwrap();
        let events = answer["events"].as_array().unwrap();
        assert!(events[0]["sequence"].as_i64() < events[1]["sequence"].as_i64());
        for e in events {
            if e["duplicate"] == false {
                seqs.push(e["sequence"].as_i64().unwrap());
                if e["id"] == shared["Id"] {
                    new_shared += 1;
                }
            }
        }
    }
    assert_eq!(new_shared, 1, "the shared event was stored once");
    seqs.sort();
    assert_eq!(seqs, (1..=129).collect::<Vec<_>>());
    assert_eq!(app.all_events("default").await.len(), 129);
}

#[tokio::test]
async fn malformed_unsupported_too_large_and_too_many() {
    let app = TestApp::spawn().await;
    let url = app.url("/v1/tenants/default/events");
    let post = |body: Vec<u8>, ct: Option<&str>| {
        let mut req = app.client.post(&url).bearer_auth(ADMIN_KEY).body(body);
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        req.send()
    };
    let json_ct = Some("application/json");
    problem(
        post(b"{\"Category\": 1,".to_vec(), json_ct).await.unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    problem(
        post(b"not json".to_vec(), json_ct).await.unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    let event = agent_event(&guid(), 1, "jdoe").to_string().into_bytes();
    problem(
        post(event.clone(), None).await.unwrap(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
    )
    .await;
    problem(
        post(event.clone(), Some("text/plain")).await.unwrap(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
    )
    .await;
    let r = post(event, Some("application/json; charset=utf-8"))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);

    // Over 1 MiB: 413.
    let mut big = agent_event(&guid(), 1, "jdoe");
    big["AdditionalFields"]["Padding"] = json!("x".repeat(1 << 20));
    let doc = problem(
        post(big.to_string().into_bytes(), json_ct).await.unwrap(),
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    assert!(doc["detail"].as_str().unwrap().contains("1048576"));

    // 1,001 small events fit in 1 MiB but are too many.
    let many: Vec<Value> = (0..1001)
        .map(|_| json!({"Category": 2, "Code": 1}))
        .collect();
    let many = Value::Array(many).to_string().into_bytes();
    assert!(many.len() < 1 << 20);
    let doc = problem(
        post(many, json_ct).await.unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(doc["errors"][0]["field"], "body");
    // Not an event at all.
    problem(
        app.publish("default", &json!("hello")).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    problem(
        app.publish("default", &json!([])).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    problem(
        app.publish("default", &json!([1])).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;

    assert_eq!(app.all_events("default").await.len(), 1);
}

#[tokio::test]
async fn a_configured_body_limit_is_honoured() {
    let app = TestApp::spawn_with(|c| c.max_body_bytes = 2048).await;
    let batch: Vec<Value> = (0..20)
        .map(|i| agent_event(&guid(), 1, &format!("u{i}")))
        .collect();
    let r = app
        .call(
            Method::POST,
            "/v1/tenants/default/events",
            ADMIN_KEY,
            Some(&Value::Array(batch)),
        )
        .await;
    problem(r, StatusCode::PAYLOAD_TOO_LARGE).await;
    app.publish_ok("default", &agent_event(&guid(), 1, "small"))
        .await;
}

/// A tenant limited to 50 events/s: a burst of 200 gets 202s up to the limit, then 429s with
/// `Retry-After`, and only the accepted events are in the log.
#[tokio::test]
async fn a_tenant_over_its_ingest_limit_gets_429_and_nothing_of_it_is_stored() {
    let app = TestApp::spawn().await;
    app.create_tenant("acme").await;
    let limit = |v: Value| {
        let app = &app;
        async move {
            let body = json!({"ingest_rate_limit_per_sec": v});
            json_ok(
                app.call(Method::PATCH, "/v1/tenants/acme", ADMIN_KEY, Some(&body))
                    .await,
            )
            .await
        }
    };
    assert_eq!(limit(json!(50)).await["ingest_rate_limit_per_sec"], 50);
    let r = app
        .call(
            Method::PATCH,
            "/v1/tenants/acme",
            ADMIN_KEY,
            Some(&json!({"ingest_rate_limit_per_sec": 0})),
        )
        .await;
    let p = problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(p["errors"][0]["field"], "ingest_rate_limit_per_sec");

    // The burst: 200 single events at once.
    let ids: Vec<String> = (0..200).map(|_| guid()).collect();
    let posts: Vec<_> = ids
        .iter()
        .map(|id| {
            let (client, url) = (app.client.clone(), app.url("/v1/tenants/acme/events"));
            let event = agent_event(id, 1, "jdoe");
            tokio::spawn(async move {
                client
                    .post(url)
                    .bearer_auth(ADMIN_KEY)
                    .json(&event)
                    .send()
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut accepted = std::collections::HashSet::new();
    for (id, post) in ids.iter().zip(posts) {
        let r = post.await.unwrap();
        match r.status() {
            StatusCode::ACCEPTED => {
                accepted.insert(id.clone());
            }
            StatusCode::TOO_MANY_REQUESTS => {
                let after: u64 = r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(after >= 1);
                let p: Value = r.json().await.unwrap();
                assert_eq!(p["type"], "urn:switchboard:problem:rate-limited");
            }
            other => panic!("{other}"),
        }
    }
    assert!(accepted.len() >= 50, "{} accepted", accepted.len());
    assert!(
        accepted.len() < 120,
        "{} accepted: the limit held",
        accepted.len()
    );
    let log: std::collections::HashSet<String> = app
        .all_events("acme")
        .await
        .iter()
        .map(|e| e["event"]["Id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(log, accepted, "only the accepted events are stored");

    // Without a limit, everything goes in again.
    assert_eq!(
        limit(Value::Null).await["ingest_rate_limit_per_sec"],
        Value::Null
    );
    let batch: Vec<Value> = (0..300).map(|_| agent_event(&guid(), 1, "jdoe")).collect();
    app.publish_ok("acme", &Value::Array(batch)).await;
}

/// Numbers in `AdditionalFields` pass through exactly as posted: integers beyond 64 bits are not
/// rounded to floats, decimals keep their digits.
#[tokio::test]
async fn numbers_in_additional_fields_are_kept_exactly_as_posted() {
    let app = TestApp::spawn().await;
    let id = guid();
    let body = format!(
        r#"{{"Id":"{id}","CreationDateUtc":"20261123184603","Category":2,"Code":1,"AdditionalFields":{{"Big":123456789012345678901234567890,"Neg":-9223372036854775809,"Dec":0.1000000000000000055511151231257827}}}}"#
    );
    let r = app
        .client
        .post(app.url("/v1/tenants/default/events"))
        .bearer_auth(ADMIN_KEY)
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let stored = app
        .get(&format!("/v1/tenants/default/events/{id}"), ADMIN_KEY)
        .await;
    let text = stored.text().await.unwrap();
    for digits in [
        "123456789012345678901234567890",
        "-9223372036854775809",
        "0.1000000000000000055511151231257827",
    ] {
        assert!(text.contains(digits), "{digits} in {text}");
    }
    // Posted again as it was: identical, a duplicate.
    let again = app
        .client
        .post(app.url("/v1/tenants/default/events"))
        .bearer_auth(ADMIN_KEY)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["events"][0]["duplicate"], true);
}

/// Posts to several tenants at once share the writer's turns (every round here makes turns of
/// four or five tenants, checked when it was written), and a turn does its steps for all its
/// tenants together (docs/BENCHMARKS.md, "tenants"); each tenant's log, duplicates, deliveries
/// and agents stay its own. Every tenant is given the same `Id`s with bodies of its own: a
/// lookup of stored ids that mixed tenants up (PostgreSQL's is one statement for a turn's
/// tenants) would answer conflicts.
#[tokio::test]
async fn concurrent_posts_to_many_tenants_keep_each_tenants_log_its_own() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let tenants = ["t0", "t1", "t2", "t3", "t4"];
    for t in tenants {
        app.create_tenant(t).await;
        let r = app
            .call(
                Method::POST,
                &format!("/v1/tenants/{t}/subscriptions"),
                ADMIN_KEY,
                Some(&json!({"url": rx.url("/")})),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let rounds = 12;
    let ids: Vec<[String; 2]> = (0..rounds).map(|_| [guid(), guid()]).collect();
    let batch = |t: &str, round: usize| {
        let user = format!("{t}-u{round}");
        let mut body = vec![
            agent_event(&ids[round][0], 1, &user),
            agent_event(&ids[round][1], 2, &user),
        ];
        if round > 0 {
            // The previous round's first event again, as it was: a duplicate.
            body.push(agent_event(
                &ids[round - 1][0],
                1,
                &format!("{t}-u{}", round - 1),
            ));
        }
        Value::from(body)
    };
    for round in 0..rounds {
        let bodies = tenants.map(|t| batch(t, round));
        let post = |k: usize| app.publish_ok(tenants[k], &bodies[k]);
        let (a, b, c, d, e) = tokio::join!(post(0), post(1), post(2), post(3), post(4));
        for answer in [a, b, c, d, e] {
            let first = 2 * round as i64 + 1;
            assert_eq!(answer[0]["duplicate"], false, "{answer:?}");
            assert_eq!(answer[0]["sequence"], first);
            assert_eq!(answer[1]["duplicate"], false);
            assert_eq!(answer[1]["sequence"], first + 1);
            if round > 0 {
                assert_eq!(answer[2]["duplicate"], true, "{answer:?}");
                assert_eq!(answer[2]["sequence"], first - 2);
            }
        }
    }
    let got = rx.wait_for(tenants.len() * 2 * rounds).await;
    for t in tenants {
        let log = app.all_events(t).await;
        let logged: Vec<i64> = log
            .iter()
            .map(|e| e["sequence"].as_i64().unwrap())
            .collect();
        assert_eq!(logged, (1..=2 * rounds as i64).collect::<Vec<_>>(), "{t}");
        // Its deliveries: each of its events once (a second would be an extra entry), and
        // nothing of another tenant's.
        let mut delivered: Vec<String> = (got.iter().map(|r| r.json()))
            .filter(|e| {
                e["AdditionalFields"]["Username"]
                    .as_str()
                    .unwrap()
                    .starts_with(t)
            })
            .map(|e| e["Id"].as_str().unwrap().to_string())
            .collect();
        delivered.sort();
        let mut expected: Vec<String> = ids.iter().flatten().cloned().collect();
        expected.sort();
        assert_eq!(delivered, expected, "{t}");
        // Its agents: one a round, each signed out by its round's second event.
        let agents = json_ok(
            app.get(&format!("/v1/tenants/{t}/agents?limit=100"), ADMIN_KEY)
                .await,
        )
        .await;
        let listed = agents["data"].as_array().unwrap();
        assert!(listed.iter().all(|a| a["signed_in"] == false), "{agents}");
        let mut names: Vec<&str> = (listed.iter())
            .map(|a| a["username"].as_str().unwrap())
            .collect();
        names.sort();
        let mut want: Vec<String> = (0..rounds).map(|r| format!("{t}-u{r}")).collect();
        want.sort();
        assert_eq!(names, want, "{t}");
    }
}

/// The agents projection reads and writes the agents of a turn's tenants together (PostgreSQL:
/// one statement each). Five tenants have agents of the same names whose sessions began at
/// different times; their events come in concurrently, first a few at a time (each turn folds
/// at once, reading the stored states), then 150 an hour (the writer defers and folds from
/// memory). Every tenant's agents end as its own events alone make them: a state read for the
/// wrong tenant would carry another tenant's `signed_in_at`.
#[tokio::test]
async fn concurrent_tenants_with_the_same_agents_keep_each_tenants_agents_its_own() {
    let app = TestApp::spawn().await;
    let tenants = ["t0", "t1", "t2", "t3", "t4"];
    for t in tenants {
        app.create_tenant(t).await;
    }
    let names = ["a0", "a1", "a2"];
    let event = |name: &str, code: u32, at: String, availability: usize| {
        let mut fields = json!({"SessionId": format!("S-{name}"), "SessionType": "CCA",
                                "Username": name, "PhoneNo": "+15551230001"});
        if code == 3 {
            fields["ActivityCode"] = json!(16);
            fields["AvailabilityCode"] = json!(availability);
            fields["ActivityName"] = json!("");
        }
        json!({"Id": guid(), "CreationDateUtc": at, "Category": 1, "Code": code,
               "AdditionalFields": fields})
    };
    // What each tenant's agents must end as: (last sequence, availability) by name.
    let mut sequences = [0i64; 5];
    let mut expected = vec![std::collections::BTreeMap::new(); 5];
    let rounds = 10;
    for round in 0..rounds {
        let bodies: Vec<Value> = (0..tenants.len())
            .map(|k| {
                // Five small rounds, then five of 150 events.
                let per_agent = if round < 5 { 1 } else { 50 };
                let mut body = Vec::new();
                for i in 0..per_agent {
                    for name in names {
                        sequences[k] += 1;
                        let availability = (k + round + i) % 3;
                        let e = match round {
                            // Each tenant's sessions begin at a minute of their own.
                            0 => event(name, 1, format!("2026112308{k:02}00"), 0),
                            _ => {
                                let at = format!("20261123{:02}{i:02}00", 9 + round);
                                event(name, 3, at, availability)
                            }
                        };
                        let availability = if round == 0 { None } else { Some(availability) };
                        expected[k].insert(name, (sequences[k], availability));
                        body.push(e);
                    }
                }
                Value::from(body)
            })
            .collect();
        let post = |k: usize| app.publish_ok(tenants[k], &bodies[k]);
        let (a, b, c, d, e) = tokio::join!(post(0), post(1), post(2), post(3), post(4));
        for (k, answer) in [a, b, c, d, e].iter().enumerate() {
            let last = answer.last().unwrap();
            assert_eq!(last["sequence"], sequences[k], "{}", tenants[k]);
        }
    }
    for (k, t) in tenants.iter().enumerate() {
        let page = crate::support::receiver::eventually("the projection catches up", || async {
            let page = json_ok(
                app.get(&format!("/v1/tenants/{t}/agents?limit=100"), ADMIN_KEY)
                    .await,
            )
            .await;
            (page["as_of_sequence"] == sequences[k]).then_some(page)
        })
        .await;
        let listed = page["data"].as_array().unwrap();
        assert_eq!(listed.len(), names.len(), "{page}");
        for agent in listed {
            let name = agent["username"].as_str().unwrap();
            let (last, availability) = expected[k][name];
            assert_eq!(agent["signed_in"], true, "{t}: {agent}");
            assert_eq!(
                agent["signed_in_at"],
                format!("2026112308{k:02}00"),
                "{t}: {agent}"
            );
            assert_eq!(agent["last_sequence"], last, "{t}: {agent}");
            assert_eq!(
                agent["availability_code"],
                json!(availability),
                "{t}: {agent}"
            );
        }
    }
}
