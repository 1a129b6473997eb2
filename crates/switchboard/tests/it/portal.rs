//! Portal links (DESIGN §22): what a portal token reaches — tried on every route of the OpenAPI
//! document — what it stops reaching once deleted or expired, and the links' own API.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::app::{ADMIN_KEY, agent_event, fields_named, guid, json_ok, problem};
use crate::support::db::OldDb;
use crate::support::{TestApp, TestReceiver};

/// Makes a link on `tenant` with `body`; returns the answer (with `id`, `token`, `url`).
async fn link(app: &TestApp, tenant: &str, body: Value) -> Value {
    let r = app
        .call(
            Method::POST,
            &format!("/v1/tenants/{tenant}/portal-links"),
            ADMIN_KEY,
            Some(&body),
        )
        .await;
    let status = r.status();
    let answer: Value = r.json().await.expect("json");
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    answer
}

fn token(link: &Value) -> String {
    link["token"].as_str().expect("a token").to_string()
}

/// Every operation of the served OpenAPI document: (method, path template, whether it takes a
/// bearer). Those that take none (health, the pages, the document, the catalog) ignore any
/// token, a portal link's as a key's.
async fn operations(app: &TestApp) -> Vec<(Method, String, bool)> {
    let doc = json_ok(app.get("/openapi.json", ADMIN_KEY).await).await;
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in ["get", "post", "put", "patch", "delete"] {
            if let Some(op) = item.get(method) {
                let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
                out.push((
                    method.to_uppercase().parse().unwrap(),
                    path.clone(),
                    secured,
                ));
            }
        }
    }
    assert!(
        out.iter().filter(|o| !o.2).count() <= 7,
        "few public operations: {:?}",
        out.iter().filter(|o| !o.2).collect::<Vec<_>>()
    );
    assert!(out.len() > 40, "the document lists the API: {out:?}");
    out
}

/// The routes a portal token may use, and what each asks: `r` read, `w` write, `c` create.
const ALLOWED: &[(&str, &str, char)] = &[
    ("GET", "/v1/catalog", 'r'),
    ("GET", "/v1/tenants/{tenant}/subscriptions", 'r'),
    ("POST", "/v1/tenants/{tenant}/subscriptions", 'c'),
    ("GET", "/v1/tenants/{tenant}/subscriptions/{id}", 'r'),
    ("PATCH", "/v1/tenants/{tenant}/subscriptions/{id}", 'w'),
    ("DELETE", "/v1/tenants/{tenant}/subscriptions/{id}", 'w'),
    ("POST", "/v1/tenants/{tenant}/subscriptions/{id}/test", 'w'),
    (
        "POST",
        "/v1/tenants/{tenant}/subscriptions/{id}/secret/rotate",
        'w',
    ),
    (
        "POST",
        "/v1/tenants/{tenant}/subscriptions/{id}/replay",
        'w',
    ),
    (
        "GET",
        "/v1/tenants/{tenant}/subscriptions/{id}/deliveries",
        'r',
    ),
    ("GET", "/v1/tenants/{tenant}/deliveries/{id}", 'r'),
    ("POST", "/v1/tenants/{tenant}/deliveries/{id}/retry", 'w'),
];

struct Fixture {
    app: TestApp,
    _receiver: TestReceiver,
    /// Two subscriptions of `default`, and a delivery of each.
    subs: [String; 2],
    deliveries: [String; 2],
    /// A subscription of tenant `other`.
    other_sub: String,
}

async fn fixture() -> Fixture {
    let app = TestApp::spawn().await;
    let receiver = TestReceiver::start().await;
    let mut subs = Vec::new();
    for _ in 0..2 {
        let sub = app
            .subscribe(json!({"url": receiver.url("/hook"), "headers": {"X-Token": "h3ader"}}))
            .await;
        subs.push(sub["id"].as_str().unwrap().to_string());
    }
    app.publish_ok("default", &agent_event(&guid(), 1, "jdoe"))
        .await;
    let mut deliveries = Vec::new();
    for sub in &subs {
        let d = app.deliveries(sub, None).await;
        deliveries.push(d[0]["id"].to_string());
    }
    app.create_tenant("other").await;
    let r = app
        .call(
            Method::POST,
            "/v1/tenants/other/subscriptions",
            ADMIN_KEY,
            Some(&json!({"url": receiver.url("/other")})),
        )
        .await;
    let other: Value = r.json().await.unwrap();
    Fixture {
        app,
        _receiver: receiver,
        subs: [subs[0].clone(), subs[1].clone()],
        deliveries: [deliveries[0].clone(), deliveries[1].clone()],
        other_sub: other["id"].as_str().unwrap().to_string(),
    }
}

/// Fills a path template: the tenant, and the `{id}` a route of that kind takes (`pick`: the
/// first or the second subscription's).
fn fill(f: &Fixture, template: &str, tenant: &str, pick: usize) -> String {
    let id = if template.starts_with("/v1/tenants/{tenant}/subscriptions/{id}") {
        if tenant == "other" {
            f.other_sub.clone()
        } else {
            f.subs[pick].clone()
        }
    } else if template.starts_with("/v1/tenants/{tenant}/deliveries/{id}") {
        f.deliveries[pick].clone()
    } else {
        "x".to_string()
    };
    template
        .replace("{tenant}", tenant)
        .replace("{id}", &id)
        .replace("{username}", "jdoe")
}

/// A portal token on every operation of the document, as the link allows: `scoped` — limited
/// to the first subscription; `read_only`. Deleting is tried last, on its own.
async fn every_route(f: &Fixture, token: &str, scoped: bool, read_only: bool) {
    for (method, template, secured) in operations(&f.app).await {
        if method == Method::DELETE && template.contains("/subscriptions/{id}") {
            continue;
        }
        let allowed = ALLOWED
            .iter()
            .find(|(m, t, _)| *m == method.as_str() && *t == template);
        for (tenant, pick) in [("default", 0), ("default", 1), ("other", 0)] {
            let path = fill(f, &template, tenant, pick);
            let r = f.app.call(method.clone(), &path, token, None).await;
            let status = r.status();
            let what = format!("{method} {path} (scoped {scoped}, read-only {read_only})");
            let expect = match allowed {
                None if !secured => None,
                None => Some(StatusCode::FORBIDDEN),
                Some(_) if tenant == "other" && template.contains("{tenant}") => {
                    Some(StatusCode::NOT_FOUND)
                }
                Some((_, _, need)) if read_only && *need != 'r' => Some(StatusCode::FORBIDDEN),
                Some((_, _, 'c')) if scoped => Some(StatusCode::FORBIDDEN),
                Some(_) if scoped && pick == 1 && template.contains("{id}") => {
                    Some(StatusCode::FORBIDDEN)
                }
                // Reached: whatever the route answers to this (bodiless) request.
                Some(_) => None,
            };
            match expect {
                Some(want) => {
                    assert_eq!(status, want, "{what}");
                    problem(r, want).await;
                }
                None => assert!(
                    status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                    "{what}: {status}"
                ),
            }
        }
    }
}

#[tokio::test]
async fn a_portal_token_reaches_only_its_routes_on_every_route_of_the_document() {
    let f = fixture().await;
    let whole = link(&f.app, "default", json!({"expires_in_secs": 600})).await;
    let scoped = link(
        &f.app,
        "default",
        json!({"expires_in_secs": 600, "subscription_ids": [f.subs[0]]}),
    )
    .await;
    let read_only = link(
        &f.app,
        "default",
        json!({"expires_in_secs": 600, "read_only": true}),
    )
    .await;
    every_route(&f, &token(&whole), false, false).await;
    every_route(&f, &token(&scoped), true, false).await;
    every_route(&f, &token(&read_only), false, true).await;

    // Deleting: not read-only, not another link's subscription; then for real.
    let path = |i: usize| format!("/v1/tenants/default/subscriptions/{}", f.subs[i]);
    for (t, i, want) in [
        (&read_only, 0, StatusCode::FORBIDDEN),
        (&scoped, 1, StatusCode::FORBIDDEN),
        (&whole, 1, StatusCode::NO_CONTENT),
    ] {
        let r = f.app.call(Method::DELETE, &path(i), &token(t), None).await;
        assert_eq!(r.status(), want, "DELETE {}", path(i));
    }
    let left = json_ok(
        f.app
            .get("/v1/tenants/default/subscriptions", ADMIN_KEY)
            .await,
    )
    .await;
    assert_eq!(left["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn what_a_link_shows_follows_its_limits() {
    let f = fixture().await;
    let get = |t: String, path: String| {
        let app = &f.app;
        async move { json_ok(app.get(&path, &t).await).await }
    };
    let subs = "/v1/tenants/default/subscriptions".to_string();
    let one = format!("{subs}/{}", f.subs[0]);

    // All of the tenant's, secrets and header values shown (the customer manages them).
    let whole = token(&link(&f.app, "default", json!({"expires_in_secs": 60})).await);
    let listed = get(whole.clone(), subs.clone()).await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 2);
    let shown = get(whole.clone(), one.clone()).await;
    assert!(shown["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_eq!(shown["headers"]["X-Token"], "h3ader");

    // Limited to one: lists only it, paged as any list.
    let scoped_link = link(
        &f.app,
        "default",
        json!({"expires_in_secs": 60, "subscription_ids": [f.subs[0]]}),
    )
    .await;
    assert!(
        scoped_link["url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("&subscriptions={}", f.subs[0]))
    );
    let scoped = token(&scoped_link);
    let listed = get(scoped.clone(), subs.clone()).await;
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [f.subs[0].as_str()]);
    assert_eq!(listed["next_after"], Value::Null);

    // Read-only: no secret, header values masked; nothing changes.
    let read_only = token(
        &link(
            &f.app,
            "default",
            json!({"expires_in_secs": 60, "read_only": true}),
        )
        .await,
    );
    let shown = get(read_only.clone(), one.clone()).await;
    assert!(
        shown.get("secret").is_none() || shown["secret"].is_null(),
        "{shown}"
    );
    assert_eq!(shown["headers"]["X-Token"], "***");
    let r = f
        .app
        .call(
            Method::PATCH,
            &one,
            &read_only,
            Some(&json!({"description": "changed"})),
        )
        .await;
    let doc = problem(r, StatusCode::FORBIDDEN).await;
    assert!(doc["detail"].as_str().unwrap().contains("read-only"));
    let r = f
        .app
        .call(
            Method::POST,
            &subs,
            &scoped,
            Some(&json!({"url": "http://127.0.0.1:9/x"})),
        )
        .await;
    problem(r, StatusCode::FORBIDDEN).await;
    let now = get(ADMIN_KEY.to_string(), one.clone()).await;
    assert_eq!(now["description"], "");
    let all = get(ADMIN_KEY.to_string(), subs.clone()).await;
    assert_eq!(all["data"].as_array().unwrap().len(), 2);

    // A writable link changes what it may: a subscription of its own, the test, a rotation.
    let r = f
        .app
        .call(
            Method::POST,
            &subs,
            &whole,
            Some(&json!({"url": "http://127.0.0.1:9/mine", "description": "mine"})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = f
        .app
        .call(
            Method::POST,
            &format!("{one}/secret/rotate"),
            &whole,
            Some(&json!({})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());

    // What the platform set stays: redaction for every link; whose events, for a scoped one
    // (the event types are the customer's to choose).
    let r = f
        .app
        .call(
            Method::PATCH,
            &one,
            &whole,
            Some(&json!({"redact": {"PhoneNo": "drop"}})),
        )
        .await;
    let doc = problem(r, StatusCode::FORBIDDEN).await;
    assert!(doc["detail"].as_str().unwrap().contains("redact"), "{doc}");
    let r = f
        .app
        .call(
            Method::PATCH,
            &one,
            &scoped,
            Some(&json!({"filter": {"usernames": ["someone-else"]}})),
        )
        .await;
    let doc = problem(r, StatusCode::FORBIDDEN).await;
    assert!(
        doc["detail"].as_str().unwrap().contains("filter.usernames"),
        "{doc}"
    );
    let now = get(ADMIN_KEY.to_string(), one.clone()).await;
    assert_eq!(now["filter"], Value::Null, "{now}");
    assert!(now.get("redact").is_none(), "{now}");
    let r = f
        .app
        .call(
            Method::PATCH,
            &one,
            &scoped,
            Some(&json!({"filter": {"events": [{"category": 1, "codes": [1, 2]}]}})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
}

#[tokio::test]
async fn a_deleted_expired_or_forged_token_is_refused_everywhere() {
    let f = fixture().await;
    let deleted = link(&f.app, "default", json!({"expires_in_secs": 600})).await;
    let expired = link(&f.app, "default", json!({"expires_in_secs": 600})).await;
    let kept = link(&f.app, "default", json!({"expires_in_secs": 600})).await;
    let subs = "/v1/tenants/default/subscriptions";
    for l in [&deleted, &expired, &kept] {
        json_ok(f.app.get(subs, &token(l)).await).await;
    }

    let id = deleted["id"].as_str().unwrap();
    let path = format!("/v1/tenants/default/portal-links/{id}");
    let r = f.app.call(Method::DELETE, &path, ADMIN_KEY, None).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = f.app.call(Method::DELETE, &path, ADMIN_KEY, None).await;
    problem(r, StatusCode::NOT_FOUND).await;
    // Its expiry passes (the database's clock is the server's; the link's end is moved).
    let mut db = OldDb::latest(&f.app.data).await;
    let expired_id = expired["id"].as_str().unwrap();
    db.exec(&format!(
        "UPDATE portal_links SET expires_at = 1000 WHERE id = '{expired_id}'"
    ))
    .await;
    db.close().await;

    let forged = format!("sbp_{}", "A".repeat(43));
    let other_tenants_key = {
        f.app.create_tenant("third").await;
        f.app.create_key("third", &["manage"]).await
    };
    for (method, template, secured) in operations(&f.app).await {
        if !secured {
            continue;
        }
        let path = fill(&f, &template, "default", 0);
        for t in [token(&deleted), token(&expired), forged.clone()] {
            let r = f.app.call(method.clone(), &path, &t, None).await;
            let doc = problem(r, StatusCode::UNAUTHORIZED).await;
            assert!(
                doc["detail"].as_str().unwrap().contains("portal link"),
                "{doc}"
            );
        }
    }
    // The one left works; a key of another tenant cannot see or revoke it.
    json_ok(f.app.get(subs, &token(&kept)).await).await;
    let kept_path = format!(
        "/v1/tenants/default/portal-links/{}",
        kept["id"].as_str().unwrap()
    );
    let r = f
        .app
        .call(Method::DELETE, &kept_path, &other_tenants_key, None)
        .await;
    problem(r, StatusCode::NOT_FOUND).await;
    let listed = json_ok(
        f.app
            .get("/v1/tenants/default/portal-links", ADMIN_KEY)
            .await,
    )
    .await;
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [kept["id"].as_str().unwrap()],
        "expired and deleted links are not listed"
    );
    for l in listed["data"].as_array().unwrap() {
        assert!(l.get("token").is_none() && l.get("url").is_none(), "{l}");
    }
    json_ok(f.app.get(&kept_path, ADMIN_KEY).await).await;
}

#[tokio::test]
async fn bad_links_are_refused_naming_the_field_and_nothing_is_stored() {
    let app = TestApp::spawn_with(|c| c.max_portal_links_per_tenant = 2).await;
    app.create_tenant("other").await;
    let r = app
        .call(
            Method::POST,
            "/v1/tenants/other/subscriptions",
            ADMIN_KEY,
            Some(&json!({"url": "http://127.0.0.1:9/x"})),
        )
        .await;
    let other_sub: Value = r.json().await.unwrap();
    let links = "/v1/tenants/default/portal-links";
    for (body, field) in [
        (json!({}), "expires_in_secs"),
        (json!({"expires_in_secs": 59}), "expires_in_secs"),
        (json!({"expires_in_secs": 86401}), "expires_in_secs"),
        (json!({"expires_in_secs": "600"}), "expires_in_secs"),
        (json!({"expires_in_secs": -1}), "expires_in_secs"),
        (
            json!({"expires_in_secs": 600, "subscription_ids": []}),
            "subscription_ids",
        ),
        (
            json!({"expires_in_secs": 600, "subscription_ids": ["sub_nope"]}),
            "subscription_ids[0]",
        ),
        (
            json!({"expires_in_secs": 600, "subscription_ids": [other_sub["id"]]}),
            "subscription_ids[0]",
        ),
        (
            json!({"expires_in_secs": 600, "read_only": "yes"}),
            "read_only",
        ),
        (json!({"expires_in_secs": 600, "admin": true}), "admin"),
    ] {
        let r = app.call(Method::POST, links, ADMIN_KEY, Some(&body)).await;
        let doc = problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(fields_named(&doc), [field], "{body}: {doc}");
    }
    let listed = json_ok(app.get(links, ADMIN_KEY).await).await;
    assert_eq!(listed["data"], json!([]));

    // Who may make them: manage keys of the tenant and the admin; not read keys, not other
    // tenants' keys, not portal tokens.
    let body = json!({"expires_in_secs": 600});
    let read = app.create_key("default", &["read"]).await;
    let r = app.call(Method::POST, links, &read, Some(&body)).await;
    problem(r, StatusCode::FORBIDDEN).await;
    let others = app.create_key("other", &["manage"]).await;
    let r = app.call(Method::POST, links, &others, Some(&body)).await;
    problem(r, StatusCode::NOT_FOUND).await;
    let manage = app.create_key("default", &["manage"]).await;
    let first = link(&app, "default", body.clone()).await;
    let r = app
        .call(Method::POST, links, &token(&first), Some(&body))
        .await;
    problem(r, StatusCode::FORBIDDEN).await;
    let r = app.call(Method::POST, links, &manage, Some(&body)).await;
    assert_eq!(r.status(), StatusCode::CREATED);

    // At most max_portal_links_per_tenant unexpired.
    let r = app.call(Method::POST, links, &manage, Some(&body)).await;
    let doc = problem(r, StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(doc["limit"], "max_portal_links_per_tenant");
    // An expired one makes room.
    let mut db = OldDb::latest(&app.data).await;
    let id = first["id"].as_str().unwrap();
    db.exec(&format!(
        "UPDATE portal_links SET expires_at = 1000 WHERE id = '{id}'"
    ))
    .await;
    db.close().await;
    let r = app.call(Method::POST, links, &manage, Some(&body)).await;
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn an_admin_key_that_looks_like_a_portal_token_is_still_the_admin_key() {
    let admin = "sbp_an_admin_key_chosen_to_look_like_a_portal_token";
    let metrics = "sbp_a_metrics_key_like_a_portal_token";
    let app = TestApp::spawn_with(|c| {
        c.admin_key = admin.into();
        c.metrics_key = metrics.into();
    })
    .await;
    json_ok(app.get("/v1/tenants", admin).await).await;
    let r = app.get("/metrics", metrics).await;
    assert_eq!(r.status(), StatusCode::OK);
    json_ok(app.get("/v1/tenants/default/subscriptions", admin).await).await;
    let r = app
        .get("/v1/tenants", "sbp_not_the_admin_key_nor_a_link_0000000000")
        .await;
    problem(r, StatusCode::UNAUTHORIZED).await;
}

#[tokio::test]
async fn a_portal_link_cannot_repair_a_subscription_another_release_wrote() {
    let f = fixture().await;
    let mut db = OldDb::latest(&f.app.data).await;
    let id = &f.subs[0];
    db.exec(&format!(
        "UPDATE subscriptions SET spec = '{{\"url\": 7}}' WHERE id = '{id}'"
    ))
    .await;
    db.close().await;
    let whole = token(&link(&f.app, "default", json!({"expires_in_secs": 60})).await);
    let path = format!("/v1/tenants/default/subscriptions/{id}");
    let body = json!({"url": "http://127.0.0.1:9/all", "filter": null});
    let r = f.app.call(Method::PATCH, &path, &whole, Some(&body)).await;
    let doc = problem(r, StatusCode::FORBIDDEN).await;
    assert!(doc["detail"].as_str().unwrap().contains("repair"), "{doc}");
    let shown = json_ok(f.app.get(&path, ADMIN_KEY).await).await;
    assert_eq!(shown["undecodable"], true, "unchanged: {shown}");
}
