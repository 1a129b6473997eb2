//! Tenants, keys, and who may do what: 401, 403, 404.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::TestApp;
use crate::support::app::{ADMIN_KEY, agent_event, guid, json_ok, problem};

#[tokio::test]
async fn missing_or_unknown_keys_are_401() {
    let app = TestApp::spawn().await;
    let event = agent_event(&guid(), 1, "jdoe");
    let r = app
        .client
        .post(app.url("/v1/tenants/default/events"))
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    problem(r, StatusCode::UNAUTHORIZED).await;
    let r = app
        .call(
            Method::POST,
            "/v1/tenants/default/events",
            "sb_nope",
            Some(&event),
        )
        .await;
    problem(r, StatusCode::UNAUTHORIZED).await;
    let r = app
        .client
        .get(app.url("/v1/tenants"))
        .header("authorization", "Basic abc")
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::UNAUTHORIZED).await;
    // Health needs no key.
    assert_eq!(
        app.client
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert!(app.all_events("default").await.is_empty());
}

#[tokio::test]
async fn scopes_are_enforced_with_403() {
    let app = TestApp::spawn().await;
    let publish = app.create_key("default", &["publish"]).await;
    let read = app.create_key("default", &["read"]).await;
    let manage = app.create_key("default", &["manage"]).await;
    let event = agent_event(&guid(), 1, "jdoe");
    let events = "/v1/tenants/default/events";

    let r = app.call(Method::POST, events, &publish, Some(&event)).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let doc = problem(app.get(events, &publish).await, StatusCode::FORBIDDEN).await;
    assert_eq!(doc["detail"], "this key lacks the read scope");
    problem(
        app.call(Method::POST, events, &read, Some(&event)).await,
        StatusCode::FORBIDDEN,
    )
    .await;
    json_ok(app.get(events, &read).await).await;
    // manage includes read, not publish.
    json_ok(app.get(events, &manage).await).await;
    problem(
        app.call(Method::POST, events, &manage, Some(&event)).await,
        StatusCode::FORBIDDEN,
    )
    .await;
    // Keys need manage; tenants need the admin.
    problem(
        app.get("/v1/tenants/default/keys", &read).await,
        StatusCode::FORBIDDEN,
    )
    .await;
    json_ok(app.get("/v1/tenants/default/keys", &manage).await).await;
    problem(app.get("/v1/tenants", &manage).await, StatusCode::FORBIDDEN).await;
    let body = json!({"id": "x", "name": "x"});
    problem(
        app.call(Method::POST, "/v1/tenants", &manage, Some(&body))
            .await,
        StatusCode::FORBIDDEN,
    )
    .await;
}

#[tokio::test]
async fn another_tenants_path_is_404() {
    let app = TestApp::spawn().await;
    app.create_tenant("acme").await;
    let acme = app.create_key("acme", &["publish", "read", "manage"]).await;
    let event = agent_event(&guid(), 1, "jdoe");
    app.publish_ok("default", &event).await;
    let id = event["Id"].as_str().unwrap();

    for path in [
        "/v1/tenants/default/events".to_string(),
        format!("/v1/tenants/default/events/{id}"),
        "/v1/tenants/default/keys".to_string(),
    ] {
        problem(app.get(&path, &acme).await, StatusCode::NOT_FOUND).await;
    }
    let r = app
        .call(
            Method::POST,
            "/v1/tenants/default/events",
            &acme,
            Some(&event),
        )
        .await;
    problem(r, StatusCode::NOT_FOUND).await;
    // Its own tenant works, and does not see default's event.
    let own = json_ok(app.get("/v1/tenants/acme/events", &acme).await).await;
    assert_eq!(own["data"], json!([]));
    problem(
        app.get(&format!("/v1/tenants/acme/events/{id}"), &acme)
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    // The same Id in another tenant is another event.
    let r = app
        .call(Method::POST, "/v1/tenants/acme/events", &acme, Some(&event))
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    // The admin on an unknown tenant: 404.
    problem(app.publish("nope", &event).await, StatusCode::NOT_FOUND).await;
    // Even with a body that would be refused: the missing tenant is named first.
    problem(
        app.publish("nope", &json!({"Category": 99})).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(
        app.get("/v1/tenants/nope/events", ADMIN_KEY).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(
        app.get("/v1/tenants/default/events/not-a-guid", ADMIN_KEY)
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(
        app.get("/v1/nothing-here", ADMIN_KEY).await,
        StatusCode::NOT_FOUND,
    )
    .await;
}

#[tokio::test]
async fn tenant_lifecycle() {
    let app = TestApp::spawn().await;
    let list = json_ok(app.get("/v1/tenants", ADMIN_KEY).await).await;
    assert_eq!(
        list["data"][0]["id"], "default",
        "default exists from the first start"
    );

    let app = &app;
    let create = |body: Value| async move {
        app.call(Method::POST, "/v1/tenants", ADMIN_KEY, Some(&body))
            .await
    };
    let r = create(json!({"id": "acme", "name": "Acme Contact Center"})).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let t: Value = r.json().await.unwrap();
    assert_eq!(
        (t["id"].as_str(), t["name"].as_str()),
        (Some("acme"), Some("Acme Contact Center"))
    );
    problem(
        create(json!({"id": "acme", "name": "again"})).await,
        StatusCode::CONFLICT,
    )
    .await;
    for bad in ["Acme", "-acme", "", "a_b", &"a".repeat(64)] {
        let doc = problem(
            create(json!({"id": bad, "name": "x"})).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert_eq!(doc["errors"][0]["field"], "id");
    }
    let doc = problem(
        create(json!({"name": "x"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert!(doc["detail"].as_str().unwrap().contains("id"), "{doc}");
    let doc = problem(
        create(json!({"id": "b", "nme": "x"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert!(doc["detail"].as_str().unwrap().contains("nme"), "{doc}");

    let got = json_ok(app.get("/v1/tenants/acme", ADMIN_KEY).await).await;
    assert_eq!(got["name"], "Acme Contact Center");
    let key = app.create_key("acme", &["publish"]).await;
    app.publish_ok("acme", &agent_event(&guid(), 1, "jdoe"))
        .await;
    let publish_with_key = || async {
        app.call(
            Method::POST,
            "/v1/tenants/acme/events",
            &key,
            Some(&agent_event(&guid(), 1, "j")),
        )
        .await
    };
    // The key works (and is now remembered by authentication).
    assert_eq!(publish_with_key().await.status(), StatusCode::ACCEPTED);

    let r = app
        .call(Method::DELETE, "/v1/tenants/acme", ADMIN_KEY, None)
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    problem(
        app.get("/v1/tenants/acme", ADMIN_KEY).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(
        app.call(Method::DELETE, "/v1/tenants/acme", ADMIN_KEY, None)
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    // Its keys went with it.
    problem(publish_with_key().await, StatusCode::UNAUTHORIZED).await;
    // Re-created, it starts empty.
    assert_eq!(
        create(json!({"id": "acme"})).await.status(),
        StatusCode::CREATED
    );
    assert!(app.all_events("acme").await.is_empty());
}

#[tokio::test]
async fn keys_are_shown_once_listed_and_revoked() {
    let app = TestApp::spawn().await;
    let body = json!({"name": "crm", "scopes": ["read", "publish", "read"]});
    let r = app
        .call(
            Method::POST,
            "/v1/tenants/default/keys",
            ADMIN_KEY,
            Some(&body),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let created: Value = r.json().await.unwrap();
    assert_eq!(created["scopes"], json!(["publish", "read"]));
    let key = created["key"].as_str().unwrap();
    let list = json_ok(app.get("/v1/tenants/default/keys", ADMIN_KEY).await).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert!(
        list["data"][0].get("key").is_none(),
        "the key is shown only once"
    );
    assert_eq!(list["data"][0]["id"], created["id"]);
    json_ok(app.get("/v1/tenants/default/events", key).await).await;

    for (bad, field) in [
        (json!({"name": "x", "scopes": ["admin"]}), "scopes[0]"),
        (json!({"name": "x", "scopes": []}), "scopes"),
        (json!({"name": "", "scopes": ["read"]}), "name"),
        (json!({"scopes": ["read"]}), "name"),
    ] {
        let r = app
            .call(
                Method::POST,
                "/v1/tenants/default/keys",
                ADMIN_KEY,
                Some(&bad),
            )
            .await;
        let doc = problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(doc["errors"][0]["field"], field, "{doc}");
    }

    let path = format!(
        "/v1/tenants/default/keys/{}",
        created["id"].as_str().unwrap()
    );
    assert_eq!(
        app.call(Method::DELETE, &path, ADMIN_KEY, None)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    problem(
        app.get("/v1/tenants/default/events", key).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    problem(
        app.call(Method::DELETE, &path, ADMIN_KEY, None).await,
        StatusCode::NOT_FOUND,
    )
    .await;
}

/// The `Authorization` scheme is case-insensitive (RFC 9110 §11.1).
#[tokio::test]
async fn the_bearer_scheme_is_matched_whatever_its_case() {
    let app = TestApp::spawn().await;
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let r = app
            .client
            .get(app.url("/v1/tenants"))
            .header("authorization", format!("{scheme} {ADMIN_KEY}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{scheme}");
    }
}

/// A body that must be an object is refused as a JSON array (serde's positional form of a
/// struct), and nothing is created.
#[tokio::test]
async fn object_bodies_given_as_arrays_are_refused() {
    let app = TestApp::spawn().await;
    let r = app
        .call(
            Method::POST,
            "/v1/tenants",
            ADMIN_KEY,
            Some(&json!(["acme", "Acme"])),
        )
        .await;
    let p = problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(p["errors"][0]["field"], "body");
    assert_eq!(p["errors"][0]["message"], "must be a JSON object");
    let r = app.get("/v1/tenants/acme", ADMIN_KEY).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "nothing created");
}

/// `GET /v1/me` says what the calling key is and may do (the console offers only that).
#[tokio::test]
async fn me_describes_the_calling_key() {
    let app = TestApp::spawn().await;
    let me = json_ok(app.get("/v1/me", ADMIN_KEY).await).await;
    assert_eq!(
        me,
        json!({"admin": true, "tenant_id": null,
                           "scopes": ["publish", "read", "manage", "consume"]})
    );
    let key = app.create_key("default", &["read", "publish"]).await;
    let me = json_ok(app.get("/v1/me", &key).await).await;
    assert_eq!(
        me,
        json!({"admin": false, "tenant_id": "default",
                           "scopes": ["publish", "read"]})
    );
    assert_eq!(app.get("/v1/me", "sb_nope").await.status(), 401);
}

/// The console is served with a Content-Security-Policy that allows nothing but this origin
/// and no inline code; its page and assets come from the binary.
#[tokio::test]
async fn the_console_is_served_under_a_strict_policy() {
    let app = TestApp::spawn().await;
    for (path, kind) in [
        ("/", "text/html"),
        ("/console/app.js", "text/javascript"),
        ("/console/app.css", "text/css"),
    ] {
        let r = reqwest::get(app.url(path)).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = |name: &str| r.headers()[name].to_str().unwrap().to_string();
        assert!(h("content-type").starts_with(kind), "{path}");
        let csp = h("content-security-policy");
        assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"));
        assert!(!csp.contains("unsafe"), "{csp}");
        assert_eq!(h("x-content-type-options"), "nosniff");
        assert_eq!(h("x-frame-options"), "DENY");
    }
    let page = reqwest::get(app.url("/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains(r#"<script type="module" src="/console/app.js"></script>"#));
}
