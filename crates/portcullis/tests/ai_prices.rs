//! `/ai/prices` through the real binary, in front of the mock OpenAI server. A stored price
//! changes the cost of the next call, and deleting it brings the file's price back. Invalid
//! bodies are rejected. A stored price lets an `ai-limits` budget admit a model that the file
//! does not price. A price stored through one node prices calls on another node that shares
//! the PostgreSQL store.
//!
//! Every completed call to the mock reports 100 prompt tokens (40 of them cached) and 50
//! completion tokens (20 of them reasoning): 60 input, 40 cache read, 30 output and 20
//! reasoning tokens. At the file's prices below a call costs
//! (60 × 2.00 + 40 × 0.50 + 30 × 8.00 + 20 × 20.00) / 10⁶ = 0.00078. At the stored price of
//! 1.00 per million input and 4.00 per million output tokens, with the cache prices falling
//! back to the input price and the reasoning price to the output price, it costs
//! (100 × 1.00 + 50 × 4.00) / 10⁶ = 0.0003.
//!
//! The PostgreSQL test creates its own database on the server at
//! `PORTCULLIS_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`) and drops
//! that database at the end.

mod common;
mod llm_mock;

use std::time::Duration;

use common::postgres::Database;
use common::{ADMIN_TOKEN, ALICE_KEY, Gateway, admin, client, error_body};
use reqwest::Method;
use serde_json::{Value, json};

use llm_mock::{Mock, OPENAI_KEY};

/// Cost of one call to the mock at the file's price of `openai-main/gpt-4.1`.
const FILE_COST: f64 = 0.00078;
/// Cost of one call to the mock at [`stored_price`].
const STORED_COST: f64 = 0.0003;

/// Returns the `ai` section with three providers on the mock, the file's prices, alice, and
/// the routes `llm` (no limits) and `budget` (a monthly budget per consumer).
fn ai_config(openai: &Mock) -> String {
    format!(
        r#"ai:
  usage_report: {{ flush_interval: 100ms }}
  providers:
    - name: openai-main
      type: openai
      base_url: http://{openai}/v1
      api_key: ${{OPENAI_API_KEY}}
    - name: unpriced
      type: openai-compatible
      base_url: http://{openai}/v1
      api_key: ${{OPENAI_API_KEY}}
    - name: claude-main
      type: anthropic
      base_url: http://{openai}
      api_key: ${{OPENAI_API_KEY}}
  prices:
    - model: openai-main/gpt-4.1
      input_per_million: 2.00
      output_per_million: 8.00
      cache_read_per_million: 0.50
      reasoning_per_million: 20.00
consumers:
  - name: alice
    api_keys: [{ALICE_KEY}]
routes:
  - name: llm
    paths: [/llm]
    ai: {{}}
    policies:
      - key-auth: {{}}
  - name: budget
    paths: [/budget]
    ai: {{}}
    policies:
      - key-auth: {{}}
      - ai-limits: {{ budget: {{ amount: 1.0, period: month }} }}
"#,
        openai = openai.addr
    )
}

fn start(openai: &Mock) -> Gateway {
    let config = format!("{}{}", common::node_config(), ai_config(openai));
    Gateway::start_with_env(&config, &[("OPENAI_API_KEY", OPENAI_KEY)])
}

fn stored_price() -> Value {
    json!({ "input_per_million": 1.0, "output_per_million": 4.0 })
}

/// Sends a chat call for `model` on `path` with `request_id`, reads the whole response and
/// returns its status.
async fn chat(gateway: &Gateway, path: &str, model: &str, request_id: &str) -> u16 {
    let body = json!({"model": model, "messages": [{"role": "user", "content": "Hi"}]});
    let response = client()
        .post(gateway.url(path))
        .bearer_auth(ALICE_KEY)
        .header("x-request-id", request_id)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    response.bytes().await.unwrap();
    status
}

/// Sends a chat call for `openai-main/gpt-4.1` and returns its cost from the access log.
async fn call_cost(gateway: &Gateway, request_id: &str) -> f64 {
    let status = chat(
        gateway,
        "/llm/chat/completions",
        "openai-main/gpt-4.1",
        request_id,
    )
    .await;
    assert_eq!(status, 200, "call {request_id}");
    let line = gateway.access_log_line(request_id);
    line["ai"]["cost"]
        .as_f64()
        .unwrap_or_else(|| panic!("no cost in the access-log line {line}"))
}

fn assert_cost(actual: f64, expected: f64, case: &str) {
    assert!(
        (actual - expected).abs() < 1e-12,
        "{case}: cost {actual}, expected {expected}"
    );
}

/// Sends an admin call with an optional JSON body and returns the response.
async fn admin_call(
    gateway: &Gateway,
    method: Method,
    path: &str,
    body: Option<&str>,
) -> reqwest::Response {
    let mut request = admin(&client(), method, gateway, path);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_owned());
    }
    request.send().await.unwrap()
}

async fn put_price(gateway: &Gateway, model: &str, body: &Value) -> Value {
    let path = format!("/ai/prices/{model}");
    let response = admin_call(gateway, Method::PUT, &path, Some(&body.to_string())).await;
    assert_eq!(response.status(), 200, "PUT {path}");
    response.json().await.unwrap()
}

async fn get_json(gateway: &Gateway, path: &str) -> Value {
    let response = admin_call(gateway, Method::GET, path, None).await;
    assert_eq!(response.status(), 200, "GET {path}");
    response.json().await.unwrap()
}

/// Polls the admin `path` for up to 10 seconds until `accept` takes its JSON, and returns it.
async fn poll_admin(gateway: &Gateway, path: &str, accept: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let body = get_json(gateway, path).await;
        if accept(&body) {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "GET {path} did not reach the expected state in 10 s: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `GET /ai/usage` until its total `calls` is `expected`.
async fn wait_for_usage(gateway: &Gateway, expected: u64) -> Value {
    poll_admin(gateway, "/ai/usage", |report| {
        report["totals"]["calls"] == expected
    })
    .await
}

/// Polls `/health/ready` until the node serves `version` or a later one.
async fn wait_for_version(gateway: &Gateway, version: u64) {
    poll_admin(gateway, "/health/ready", |health| {
        health["config_version"].as_u64() >= Some(version)
    })
    .await;
}

// Two workers, because `access_log_line` blocks the thread it runs on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_price_overrides_file_price() {
    let openai = llm_mock::openai().await;
    let gateway = start(&openai);
    assert_cost(
        call_cost(&gateway, "price-file-1").await,
        FILE_COST,
        "file price",
    );

    let table = get_json(&gateway, "/ai/prices").await;
    assert_eq!(
        table["data"],
        json!([{
            "model": "openai-main/gpt-4.1",
            "input_per_million": 2.0,
            "output_per_million": 8.0,
            "cache_read_per_million": 0.5,
            "reasoning_per_million": 20.0,
            "source": "file",
        }])
    );

    let stored = put_price(&gateway, "openai-main/gpt-4.1", &stored_price()).await;
    assert_eq!(
        stored,
        json!({
            "model": "openai-main/gpt-4.1",
            "input_per_million": 1.0,
            "output_per_million": 4.0,
            "source": "store",
        })
    );
    // The admin write rebuilds this node's configuration before it responds.
    assert_cost(
        call_cost(&gateway, "price-stored-1").await,
        STORED_COST,
        "stored price",
    );

    // The model contains `/`, so these paths check the wildcard segment too.
    let sonnet = json!({ "model": "claude-main/claude-sonnet-4-5", "input_per_million": 3.0, "output_per_million": 15.0, "cache_read_per_million": 0.3 });
    put_price(&gateway, "claude-main/claude-sonnet-4-5", &sonnet).await;
    let entry = get_json(&gateway, "/ai/prices/claude-main/claude-sonnet-4-5").await;
    assert_eq!(entry["source"], "store", "{entry}");
    assert_eq!(entry["cache_read_per_million"], 0.3, "{entry}");
    let table = get_json(&gateway, "/ai/prices").await;
    let models: Vec<(&str, &str)> = table["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            (
                entry["model"].as_str().unwrap(),
                entry["source"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        models,
        [
            ("claude-main/claude-sonnet-4-5", "store"),
            ("openai-main/gpt-4.1", "store"),
        ]
    );

    let response = admin_call(
        &gateway,
        Method::DELETE,
        "/ai/prices/openai-main/gpt-4.1",
        None,
    )
    .await;
    assert_eq!(response.status(), 204);
    assert_cost(
        call_cost(&gateway, "price-file-2").await,
        FILE_COST,
        "file price after the delete",
    );
    let entry = get_json(&gateway, "/ai/prices/openai-main/gpt-4.1").await;
    assert_eq!(entry["source"], "file", "{entry}");
    assert_eq!(entry["input_per_million"], 2.0, "{entry}");

    // Only a stored price can be deleted.
    let response = admin_call(
        &gateway,
        Method::DELETE,
        "/ai/prices/openai-main/gpt-4.1",
        None,
    )
    .await;
    let error = error_body(response, 404).await;
    assert_eq!(error["error"]["code"], "not_found");

    // The usage report adds up each call at the price it had.
    let report = wait_for_usage(&gateway, 3).await;
    let cost = report["totals"]["cost"].as_f64().unwrap();
    assert_cost(cost, 2.0 * FILE_COST + STORED_COST, "usage report");
}

#[tokio::test]
async fn invalid_prices_rejected() {
    let openai = llm_mock::openai().await;
    let gateway = start(&openai);
    let valid = r#"{"input_per_million": 1, "output_per_million": 4}"#;

    // (model in the path, body, expected error code, key of the first detail)
    let cases = [
        (
            "openai-main/gpt-4.1",
            r#"{"input_per_million": -1, "output_per_million": 4}"#,
            "invalid_entity",
            Some("input_per_million"),
        ),
        (
            "openai-main/gpt-4.1",
            r#"{"input_per_million": 1, "output_per_million": 4, "reasoning_per_million": -0.5}"#,
            "invalid_entity",
            Some("reasoning_per_million"),
        ),
        (
            "openai-main/gpt-4.1",
            r#"{"input_per_million": 1, "output_per_million": 4, "discount": 0.5}"#,
            "invalid_entity",
            Some("discount"),
        ),
        (
            "openai-main/gpt-4.1",
            r#"{"input_per_million": "cheap", "output_per_million": 4}"#,
            "invalid_entity",
            Some("input_per_million"),
        ),
        (
            "openai-main/gpt-4.1",
            r#"{"input_per_million": 1.7e308, "output_per_million": 4}"#,
            "invalid_entity",
            Some("input_per_million"),
        ),
        (
            "openai-main/gpt-4.1",
            r#"{"output_per_million": 4}"#,
            "invalid_entity",
            Some("input_per_million"),
        ),
        // JSON has no NaN, so the body does not parse.
        (
            "openai-main/gpt-4.1",
            r#"{"input_per_million": NaN, "output_per_million": 4}"#,
            "invalid_request",
            None,
        ),
        ("gpt-4.1", valid, "invalid_entity", Some("model")),
        ("missing/gpt-4.1", valid, "invalid_entity", Some("model")),
        ("openai-main/", valid, "invalid_entity", Some("model")),
        (
            "openai-main/gpt%204.1",
            valid,
            "invalid_entity",
            Some("model"),
        ),
        (
            "openai-main/gpt-4.1",
            r#"{"model": "openai-main/gpt-4o", "input_per_million": 1, "output_per_million": 4}"#,
            "invalid_request",
            None,
        ),
        ("openai-main/gpt-4.1", r#"[1, 4]"#, "invalid_request", None),
    ];
    for (model, body, code, detail) in cases {
        let path = format!("/ai/prices/{model}");
        let response = admin_call(&gateway, Method::PUT, &path, Some(body)).await;
        let error = error_body(response, 400).await;
        assert_eq!(error["error"]["code"], code, "PUT {path} {body}: {error}");
        if let Some(key) = detail {
            assert_eq!(
                error["error"]["details"][0]["key"], key,
                "PUT {path} {body}: {error}"
            );
        }
    }
    let table = get_json(&gateway, "/ai/prices").await;
    assert_eq!(
        table["data"].as_array().unwrap().len(),
        1,
        "a rejected PUT stored a price: {table}"
    );

    let missing = r#"{"input_per_million": 1}"#;
    let response = admin_call(
        &gateway,
        Method::PUT,
        "/ai/prices/openai-main/gpt-4.1",
        Some(missing),
    )
    .await;
    let error = error_body(response, 400).await;
    let message = error["error"]["details"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("missing field `output_per_million`"),
        "{error}"
    );
    assert!(!message.contains(" at line "), "{error}");

    let negative_zero = r#"{"input_per_million": -0.0, "output_per_million": 1}"#;
    let response = admin_call(
        &gateway,
        Method::PUT,
        "/ai/prices/openai-main/gpt-4o",
        Some(negative_zero),
    )
    .await;
    assert_eq!(response.status(), 200);
    let stored = response.text().await.unwrap();
    assert!(!stored.contains("-0"), "{stored}");
    let entry = get_json(&gateway, "/ai/prices/openai-main/gpt-4o").await;
    assert_eq!(entry["input_per_million"], 0.0);
    assert!(!entry.to_string().contains("-0"), "{entry}");

    let response = admin_call(&gateway, Method::GET, "/ai/prices/unpriced/gpt-4.1", None).await;
    let error = error_body(response, 404).await;
    assert_eq!(error["error"]["code"], "not_found");

    let response = client()
        .put(gateway.admin_url("/ai/prices/openai-main/gpt-4.1"))
        .header("content-type", "application/json")
        .body(valid)
        .send()
        .await
        .unwrap();
    error_body(response, 401).await;
    let response = client()
        .get(gateway.admin_url("/ai/prices"))
        .bearer_auth(format!("{ADMIN_TOKEN}x"))
        .send()
        .await
        .unwrap();
    error_body(response, 401).await;
}

// Two workers, because `access_log_line` blocks the thread it runs on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_price_admits_unpriced_budget_call() {
    let openai = llm_mock::openai().await;
    let gateway = start(&openai);
    let path = "/budget/chat/completions";

    // Without a price, the budget cannot bound the call's cost.
    let body =
        json!({"model": "unpriced/gpt-4.1", "messages": [{"role": "user", "content": "Hi"}]});
    let response = client()
        .post(gateway.url(path))
        .bearer_auth(ALICE_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    let error = error_body(response, 403).await;
    assert_eq!(error["error"]["code"], "model_not_priced");

    put_price(&gateway, "unpriced/gpt-4.1", &stored_price()).await;
    let status = chat(&gateway, path, "unpriced/gpt-4.1", "price-budget-1").await;
    assert_eq!(status, 200);
    let line = gateway.access_log_line("price-budget-1");
    let cost = line["ai"]["cost"].as_f64().unwrap();
    assert_cost(cost, STORED_COST, "budget call");

    // Without the stored price the model is unpriced again.
    let response = admin_call(
        &gateway,
        Method::DELETE,
        "/ai/prices/unpriced/gpt-4.1",
        None,
    )
    .await;
    assert_eq!(response.status(), 204);
    let response = client()
        .post(gateway.url(path))
        .bearer_auth(ALICE_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    let error = error_body(response, 403).await;
    assert_eq!(error["error"]["code"], "model_not_priced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn price_stored_on_one_node_prices_other() {
    let database = Database::create("portcullis_ai_prices").await;
    let openai = llm_mock::openai().await;
    let config = format!(
        r#"
listeners: [{{ address: 127.0.0.1:0 }}]
admin: {{ address: 127.0.0.1:0, token: {ADMIN_TOKEN} }}
store: {{ postgres: "{url}" }}
access_log: access.log
key_hash_secret: ai-prices-test-key-hash-secret-00000000001
{ai}"#,
        url = database.url,
        ai = ai_config(&openai)
    );
    let env = [("OPENAI_API_KEY", OPENAI_KEY)];
    let a = Gateway::start_with_env(&config, &env);
    let b = Gateway::start_with_env(&config, &env);
    assert_cost(
        call_cost(&b, "cluster-file-1").await,
        FILE_COST,
        "node B, file price",
    );

    put_price(&a, "openai-main/gpt-4.1", &stored_price()).await;
    let version = get_json(&a, "/health/ready").await["config_version"]
        .as_u64()
        .unwrap();
    wait_for_version(&b, version).await;
    assert_cost(
        call_cost(&b, "cluster-stored-1").await,
        STORED_COST,
        "node B, price stored through node A",
    );
    let entry = get_json(&b, "/ai/prices/openai-main/gpt-4.1").await;
    assert_eq!(entry["source"], "store", "{entry}");

    let response = admin_call(&a, Method::DELETE, "/ai/prices/openai-main/gpt-4.1", None).await;
    assert_eq!(response.status(), 204);
    wait_for_version(&b, version + 1).await;
    assert_cost(
        call_cost(&b, "cluster-file-2").await,
        FILE_COST,
        "node B, price deleted through node A",
    );
}
