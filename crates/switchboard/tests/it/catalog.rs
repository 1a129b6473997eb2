//! `GET /v1/catalog` and the operator's catalog file (DESIGN §12).

use std::process::Command;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::TestApp;
use crate::support::app::{ADMIN_KEY, agent_event, guid, json_ok, problem};

const FILE: &str = r#"
[[category]]
category = 2
name = "IVR"
strict = true

[[category.code]]
code = 1
name = "CallEntered"
fields = { Queue = "string", Dnis = "string", Ani = { type = "string?", pii = true }, Priority = "integer?" }

[activities]
40 = "Training"
"#;

fn codes(category: &Value) -> Vec<u64> {
    category["codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["code"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn the_builtin_catalog_lists_the_agent_codes_their_fields_and_schemas() {
    let app = TestApp::spawn().await;
    // Any key will do, a read key too; none will not.
    let key = app.create_key("default", &["read"]).await;
    let catalog = json_ok(app.get("/v1/catalog", &key).await).await;
    problem(
        app.get("/v1/catalog", "nope").await,
        StatusCode::UNAUTHORIZED,
    )
    .await;

    let categories = catalog["categories"].as_array().unwrap();
    let agent = &categories[0];
    assert_eq!(
        (agent["category"].clone(), agent["name"].clone()),
        (json!(1), json!("Agent"))
    );
    assert_eq!(agent["strict"], true);
    assert_eq!(codes(agent), [1, 2, 3, 4, 5, 6, 8]);
    let status = &agent["codes"][2];
    assert_eq!(status["name"], "StatusChanged");
    assert_eq!(
        status["fields"]["SessionId"],
        json!({"type": "string", "required": true, "pii": false})
    );
    assert_eq!(
        status["fields"]["ActivityCode"],
        json!({"type": "integer", "required": true, "pii": false})
    );
    // Personal data, as DESIGN §19 marks it: the agent's number and username.
    for pii in ["PhoneNo", "Username"] {
        assert_eq!(status["fields"][pii]["pii"], true, "{pii}");
    }
    let schema = &status["schema"];
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert_eq!(schema["properties"]["Category"], json!({"const": 1}));
    assert_eq!(schema["properties"]["Code"], json!({"const": 3}));
    let required = schema["properties"]["AdditionalFields"]["required"]
        .as_array()
        .unwrap();
    assert!(required.contains(&json!("SessionId")));
    assert!(required.contains(&json!("ActivityCode")));
    // IVR, Email and Chat are open until a catalog file pins them.
    for (i, name) in [(1, "IVR"), (2, "Email"), (3, "Chat")] {
        assert_eq!(categories[i]["name"], name);
        assert_eq!(categories[i]["strict"], false);
        assert_eq!(codes(&categories[i]), Vec::<u64>::new());
    }
    assert!(
        catalog["activities"]
            .as_array()
            .unwrap()
            .contains(&json!({"code": 16, "name": "Available"}))
    );
}

fn ivr(code: u32, fields: Value) -> Value {
    json!({"Id": guid(), "CreationDateUtc": "20261123184603", "Category": 2, "Code": code,
           "AdditionalFields": fields})
}

#[tokio::test]
async fn a_catalog_file_pins_codes_fields_and_activity_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.toml");
    std::fs::write(&path, FILE).unwrap();
    let app = TestApp::spawn_with(|c| c.catalog_file = path.display().to_string()).await;

    // A required field missing: 422 naming it; nothing stored.
    let r = app
        .publish("default", &ivr(1, json!({"Dnis": "800"})))
        .await;
    let doc = problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    let fields: Vec<&str> = doc["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["AdditionalFields.Queue"]);
    // A wrong type, on an optional field that is present.
    let r = app
        .publish(
            "default",
            &ivr(
                1,
                json!({"Queue": "Sales", "Dnis": "800", "Priority": "high"}),
            ),
        )
        .await;
    let doc = problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(doc["errors"][0]["field"], "AdditionalFields.Priority");
    // A strict category refuses a code it does not list.
    let r = app.publish("default", &ivr(99, json!({}))).await;
    let doc = problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(doc["errors"][0]["field"], "Code");
    assert!(
        doc["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("1 CallEntered")
    );
    assert!(app.all_events("default").await.is_empty());
    // Valid: accepted, the optional field left out.
    app.publish_ok("default", &ivr(1, json!({"Queue": "Sales", "Dnis": "800"})))
        .await;
    // Other categories stay open.
    app.publish_ok(
        "default",
        &json!({"Category": 3, "Code": 77, "AdditionalFields": {}}),
    )
    .await;

    // The catalog shows it.
    let catalog = json_ok(app.get("/v1/catalog", ADMIN_KEY).await).await;
    let ivr_view = &catalog["categories"][1];
    assert_eq!(ivr_view["strict"], true);
    assert_eq!(
        ivr_view["codes"][0]["fields"]["Ani"],
        json!({"type": "string", "required": false, "pii": true}),
        "the table form marks personal data"
    );
    assert_eq!(
        ivr_view["codes"][0]["fields"]["Dnis"],
        json!({"type": "string", "required": true, "pii": false}),
        "the string form stays valid"
    );

    // Activity names feed the agents view.
    let mut e = agent_event(&guid(), 3, "jdoe");
    e["AdditionalFields"]["ActivityCode"] = json!(40);
    app.publish_ok("default", &e).await;
    let jdoe = json_ok(app.get("/v1/tenants/default/agents/jdoe", ADMIN_KEY).await).await;
    assert_eq!(jdoe["activity_name"], "Training");
}

#[test]
fn a_bad_catalog_file_stops_the_start_naming_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.toml");
    std::fs::write(&path, FILE.replace("\"string?\"", "\"text?\"")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("SWITCHBOARD_CATALOG_FILE", &path)
        .env("SWITCHBOARD_ADMIN_KEY", ADMIN_KEY)
        .output()
        .expect("run switchboard");
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stdout.contains("listening"), "{stdout}");
    assert!(stderr.contains("line 10"), "{stderr}");
    assert!(stderr.contains("Ani"), "{stderr}");
}
