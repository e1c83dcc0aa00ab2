//! Provider credentials stored encrypted through the admin API, tested with the real binary in
//! front of a mock OpenAI server. The provider receives the stored key, and a rotation applies
//! from the next call on every node. No response, log line or database page shows a value.

mod common;
mod llm_mock;

use std::time::Duration;

use common::postgres::Database;
use common::{ADMIN_TOKEN, ALICE_KEY, Gateway, admin, client, error_body, wait_until};
use llm_mock::{Mock, OPENAI_KEY, OPENAI_KEY_2};
use reqwest::Method;
use serde_json::{Value, json};

/// Base64 of the bytes 0 to 31.
const MASTER_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
/// Base64 of 32 bytes of 1, a master key other than [`MASTER_KEY`].
const OTHER_MASTER_KEY: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";

/// Returns the `ai` section and the route and consumer that call it, with `openai-main` on the
/// stored credential `openai-prod`.
fn ai_config(openai: &Mock) -> String {
    format!(
        r#"
secrets:
  master_key: ${{PORTCULLIS_MASTER_KEY}}
ai:
  providers:
    - name: openai-main
      type: openai
      base_url: http://{openai}/v1
      api_key: {{ credential: openai-prod }}
routes:
  - name: llm
    paths: [/v1]
    ai: {{}}
    policies:
      - key-auth: {{}}
consumers:
  - name: alice
    api_keys: [{ALICE_KEY}]
"#,
        openai = openai.addr,
    )
}

async fn ask(gateway: &Gateway, request_id: &str) -> reqwest::Response {
    let body =
        json!({"model": "openai-main/gpt-4.1", "messages": [{"role": "user", "content": "Hi"}]});
    common::ai::chat(gateway, request_id, body).await
}

/// Returns the `Authorization` header of the mock's last request.
fn last_authorization(openai: &Mock) -> String {
    let requests = openai.requests();
    let last = requests.last().expect("the mock received a request");
    last.headers["authorization"].to_str().unwrap().to_string()
}

async fn put_credential(gateway: &Gateway, name: &str, value: &str) -> reqwest::Response {
    admin(
        &client(),
        Method::PUT,
        gateway,
        &format!("/ai/credentials/{name}"),
    )
    .json(&json!({ "value": value }))
    .send()
    .await
    .unwrap()
}

async fn get_text(gateway: &Gateway, path: &str) -> (u16, String) {
    let response = admin(&client(), Method::GET, gateway, path)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// Asserts that `bytes` contains neither OpenAI key of the mock.
fn assert_no_key(source: &str, bytes: &[u8]) {
    for key in [OPENAI_KEY, OPENAI_KEY_2] {
        assert!(
            !bytes
                .windows(key.len())
                .any(|window| window == key.as_bytes()),
            "{source} contains the provider key {key}"
        );
    }
}

#[tokio::test]
async fn stored_credential_reaches_provider() {
    let openai = llm_mock::openai().await;
    let config = format!("{}{}", common::node_config(), ai_config(&openai));
    let gateway = Gateway::start_with_env(&config, &[("PORTCULLIS_MASTER_KEY", MASTER_KEY)]);

    let response = ask(&gateway, "before-put").await;
    let body = error_body(response, 503).await;
    assert_eq!(body["error"]["code"], "provider_credential_unavailable");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("`openai-prod`"), "{message}");
    assert!(openai.requests().is_empty(), "no call without a key");

    let response = put_credential(&gateway, "openai-prod", OPENAI_KEY).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert_no_key("the PUT response", text.as_bytes());
    let created: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(created["name"], "openai-prod");
    assert_eq!(created["used_by"], json!(["openai-main"]));
    let first_fingerprint = created["fingerprint"].as_str().unwrap().to_string();
    assert_eq!(first_fingerprint.len(), 8);

    let response = ask(&gateway, "after-put").await;
    assert_eq!(response.status(), 200);
    assert_eq!(last_authorization(&openai), format!("Bearer {OPENAI_KEY}"));

    let response = put_credential(&gateway, "openai-prod", OPENAI_KEY_2).await;
    assert_eq!(response.status(), 200);
    let response = ask(&gateway, "after-rotation").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        last_authorization(&openai),
        format!("Bearer {OPENAI_KEY_2}")
    );

    let (status, list) = get_text(&gateway, "/ai/credentials").await;
    assert_eq!(status, 200);
    assert_no_key("GET /ai/credentials", list.as_bytes());
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    let (status, credential) = get_text(&gateway, "/ai/credentials/openai-prod").await;
    assert_eq!(status, 200);
    assert_no_key("GET /ai/credentials/openai-prod", credential.as_bytes());
    let credential: Value = serde_json::from_str(&credential).unwrap();
    assert_ne!(credential["fingerprint"], first_fingerprint.as_str());
    assert_eq!(credential["created_at"], created["created_at"]);
    assert!(credential.get("value").is_none(), "{credential}");
    assert!(credential.get("error").is_none(), "{credential}");

    let response = admin(
        &client(),
        Method::DELETE,
        &gateway,
        "/ai/credentials/openai-prod",
    )
    .send()
    .await
    .unwrap();
    let body = error_body(response, 409).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`openai-main`"),
        "{body}"
    );
    let (status, _) = get_text(&gateway, "/ai/credentials/missing").await;
    assert_eq!(status, 404);

    for file in ["portcullis.db", "portcullis.db-wal"] {
        if let Ok(bytes) = std::fs::read(gateway.path(file)) {
            assert_no_key(file, &bytes);
        }
    }
    let log = gateway.stderr();
    assert_no_key("the gateway log", log.as_bytes());
    assert!(
        log.contains("openai-prod") && log.contains("openai-main"),
        "the log names the provider and credential:\n{log}"
    );
}

#[tokio::test]
async fn invalid_credential_writes_rejected() {
    let openai = llm_mock::openai().await;
    let config = format!("{}{}", common::node_config(), ai_config(&openai));
    let gateway = Gateway::start_with_env(&config, &[("PORTCULLIS_MASTER_KEY", MASTER_KEY)]);
    let cases = [
        ("bad%20name", json!({ "value": OPENAI_KEY }), "name"),
        ("openai-prod", json!({ "value": "" }), "value"),
        ("openai-prod", json!({ "value": "has space" }), "value"),
        ("openai-prod", json!({ "secret": OPENAI_KEY }), "secret"),
    ];
    for (name, body, key) in cases {
        let response = admin(
            &client(),
            Method::PUT,
            &gateway,
            &format!("/ai/credentials/{name}"),
        )
        .json(&body)
        .send()
        .await
        .unwrap();
        let error = error_body(response, 400).await;
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(key), "{name} {body}: {message}");
    }
    let (status, list) = get_text(&gateway, "/ai/credentials").await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&list).unwrap()["data"],
        json!([])
    );
}

#[tokio::test]
async fn credential_endpoints_need_master_key() {
    let gateway = Gateway::start(&common::example_config(common::upstream().await));
    for method in [Method::GET, Method::PUT, Method::DELETE] {
        let path = if method == Method::GET {
            "/ai/credentials"
        } else {
            "/ai/credentials/openai-prod"
        };
        let response = admin(&client(), method.clone(), &gateway, path)
            .json(&json!({ "value": OPENAI_KEY }))
            .send()
            .await
            .unwrap();
        let body = error_body(response, 503).await;
        assert_eq!(body["error"]["code"], "master_key_not_set", "{method}");
    }
    let response = client()
        .get(gateway.url("/echo/x"))
        .header("apikey", ALICE_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "the rest of the node works");
}

/// Returns the config of one node of a cluster on `database`.
fn cluster_config(database: &Database, openai: &Mock) -> String {
    format!(
        r#"
listeners: [{{ address: 127.0.0.1:0 }}]
admin: {{ address: 127.0.0.1:0, token: {ADMIN_TOKEN} }}
store: {{ postgres: "{url}" }}
access_log: off
key_hash_secret: cluster-test-key-hash-secret-000000000001
{ai}"#,
        url = database.url,
        ai = ai_config(openai),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn credential_shared_by_cluster() {
    let database = Database::create("portcullis_credentials").await;
    let openai = llm_mock::openai().await;
    let config = cluster_config(&database, &openai);
    let a = Gateway::start_with_env(&config, &[("PORTCULLIS_MASTER_KEY", MASTER_KEY)]);
    let b = Gateway::start_with_env(&config, &[("PORTCULLIS_MASTER_KEY", MASTER_KEY)]);
    let other = Gateway::start_with_env(&config, &[("PORTCULLIS_MASTER_KEY", OTHER_MASTER_KEY)]);

    let response = put_credential(&a, "openai-prod", OPENAI_KEY).await;
    assert_eq!(response.status(), 200);
    wait_until(
        Duration::from_secs(5),
        "node B to use the stored key",
        || async { ask(&b, "b-first").await.status() == 200 },
    )
    .await;
    assert_eq!(last_authorization(&openai), format!("Bearer {OPENAI_KEY}"));

    let response = put_credential(&a, "openai-prod", OPENAI_KEY_2).await;
    assert_eq!(response.status(), 200);
    wait_until(
        Duration::from_secs(5),
        "node B to use the rotated key",
        || async {
            ask(&b, "b-rotated").await.status() == 200
                && last_authorization(&openai) == format!("Bearer {OPENAI_KEY_2}")
        },
    )
    .await;

    let connection_url = database.url.clone();
    let mut connection = <sqlx::PgConnection as sqlx::Connection>::connect(&connection_url)
        .await
        .unwrap();
    let rows: Vec<(Vec<u8>, Vec<u8>)> =
        sqlx::query_as("SELECT ciphertext, nonce FROM ai_credentials")
            .fetch_all(&mut connection)
            .await
            .unwrap();
    assert_eq!(rows.len(), 1);
    assert_no_key("the ciphertext column", &rows[0].0);
    assert_no_key("the nonce column", &rows[0].1);

    // A node with another master key reports the mismatch by name and keeps serving.
    let (status, text) = get_text(&other, "/ai/credentials/openai-prod").await;
    assert_eq!(status, 200);
    let view: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(view["fingerprint"], Value::Null);
    let error = view["error"].as_str().unwrap();
    assert!(error.contains("`openai-prod`"), "{error}");
    assert!(error.contains("master key"), "{error}");
    let requests_before = openai.requests().len();
    let body = error_body(ask(&other, "other-key").await, 503).await;
    assert_eq!(body["error"]["code"], "provider_credential_unavailable");
    assert_eq!(openai.requests().len(), requests_before);
    let log = other.stderr();
    assert!(log.contains("was encrypted with master key"), "{log}");
    let health = client()
        .get(other.admin_url("/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    for node in [&a, &b, &other] {
        assert_no_key("a node's log", node.stderr().as_bytes());
    }
}
