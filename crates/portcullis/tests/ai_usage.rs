//! `GET /ai/usage` through the real binary, in front of the mock OpenAI server: a chat call, a
//! stream and a stream the client abandons, grouping, filters, invalid parameters, and two
//! nodes that share one PostgreSQL store.
//!
//! Every completed call to the mock reports 100 prompt tokens (40 of them cached) and 50
//! completion tokens (20 of them reasoning). With the prices below, that is 60 input, 40 cache
//! read, 30 output and 20 reasoning tokens, costing
//! (60 × 2.00 + 40 × 0.50 + 30 × 8.00 + 20 × 20.00) / 10⁶ = 0.00078.
//!
//! The PostgreSQL test creates its own database on the server at
//! `PORTCULLIS_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`) and drops
//! that database at the end.

mod common;
mod llm_mock;

use std::time::Duration;

use common::ai::{abandon_stream_after, post_with_key};
use common::postgres::Database;
use common::{ADMIN_TOKEN, ALICE_KEY, Gateway, admin, client, error_body};
use reqwest::Method;
use serde_json::{Value, json};

use llm_mock::{Mock, OPENAI_KEY};

const BOB_KEY: &str = "bob-demo-key-000001";

/// Cost of one completed call to the mock.
const CALL_COST: f64 = 0.00078;

/// Returns the `ai` section, consumers and one `ai` route named `llm` behind `key-auth`.
fn ai_config(openai: &Mock) -> String {
    format!(
        r#"ai:
  usage_report: {{ flush_interval: 100ms }}
  providers:
    - name: openai-main
      type: openai
      base_url: http://{openai}/v1
      api_key: ${{OPENAI_API_KEY}}
  models:
    - name: gpt
      targets: [openai-main/gpt-4.1]
  prices:
    - model: openai-main/gpt-4.1
      input_per_million: 2.00
      output_per_million: 8.00
      cache_read_per_million: 0.50
      reasoning_per_million: 20.00
    - model: openai-main/gpt-hang
      input_per_million: 2.00
      output_per_million: 8.00
consumers:
  - name: alice
    api_keys: [{ALICE_KEY}]
  - name: bob
    api_keys: [{BOB_KEY}]
routes:
  - name: llm
    paths: [/llm]
    ai: {{}}
    policies:
      - key-auth: {{}}
"#,
        openai = openai.addr
    )
}

fn start(openai: &Mock) -> Gateway {
    let config = format!("{}{}", common::node_config(), ai_config(openai));
    Gateway::start_with_env(&config, &[("OPENAI_API_KEY", OPENAI_KEY)])
}

/// Sends a chat call with `key` and reads the whole response.
async fn chat(gateway: &Gateway, key: &str, stream: bool) {
    let body =
        json!({"model": "gpt", "stream": stream, "messages": [{"role": "user", "content": "Hi"}]});
    let response = post_with_key(gateway, "/llm/chat/completions", key, None, &body).await;
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap();
}

/// Returns the status and body of `GET /ai/usage` with `query`.
async fn usage(gateway: &Gateway, query: &str) -> (u16, Value) {
    let response = admin(
        &client(),
        Method::GET,
        gateway,
        &format!("/ai/usage?{query}"),
    )
    .send()
    .await
    .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Polls the report for up to 10 seconds until its total `calls` is `expected`, and returns
/// the report.
async fn wait_for_calls(gateway: &Gateway, query: &str, expected: u64) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, report) = usage(gateway, query).await;
        assert_eq!(status, 200, "{report}");
        if report["totals"]["calls"] == expected {
            return report;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the report has not {expected} calls: {report}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn assert_completed_calls(row: &Value, calls: u64) {
    assert_eq!(row["calls"], calls, "{row}");
    assert_eq!(row["input_tokens"], 60 * calls, "{row}");
    assert_eq!(row["cache_read_tokens"], 40 * calls, "{row}");
    assert_eq!(row["cache_write_tokens"], 0, "{row}");
    assert_eq!(row["output_tokens"], 30 * calls, "{row}");
    assert_eq!(row["reasoning_tokens"], 20 * calls, "{row}");
    let cost = row["cost"].as_f64().unwrap();
    assert!((cost - CALL_COST * calls as f64).abs() < 1e-12, "{row}");
    assert_eq!(row["estimated_calls"], 0, "{row}");
}

// Two workers, because `access_log_line` blocks one while the client connection must still
// be closed on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_counts_chat_stream_and_abandoned_stream() {
    let openai = llm_mock::openai().await;
    let gateway = start(&openai);
    chat(&gateway, ALICE_KEY, false).await;
    chat(&gateway, ALICE_KEY, true).await;

    // Bob's stream hangs after its text, and bob gives up.
    let body = json!({"model": "openai-main/gpt-hang", "stream": true, "messages": [{"role": "user", "content": "Hi"}]});
    let response = post_with_key(
        &gateway,
        "/llm/chat/completions",
        BOB_KEY,
        Some("usage-hang"),
        &body,
    )
    .await;
    abandon_stream_after(response, " gpt").await;
    let line = gateway.access_log_line("usage-hang");
    assert_eq!(line["outcome"], "client_aborted", "{line}");
    let abandoned = &line["ai"];

    let report = wait_for_calls(&gateway, "group_by=consumer,model", 3).await;
    assert_eq!(report["group_by"], json!(["consumer", "model"]));
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{report}");
    assert_eq!(rows[0]["consumer"], "alice");
    assert_eq!(rows[0]["model"], "gpt");
    assert_completed_calls(&rows[0], 2);

    let bob = &rows[1];
    assert_eq!(bob["consumer"], "bob");
    assert_eq!(bob["model"], "openai-main/gpt-hang");
    assert_eq!(bob["calls"], 1);
    assert_eq!(bob["estimated_calls"], 1);
    for field in ["input_tokens", "output_tokens", "reasoning_tokens"] {
        assert_eq!(bob[field], abandoned[field], "{field}: {report} {line}");
    }
    assert!(bob["output_tokens"].as_u64().unwrap() > 0, "{report}");
    let cost = bob["cost"].as_f64().unwrap();
    assert!((cost - abandoned["cost"].as_f64().unwrap()).abs() < 1e-12);

    let totals = &report["totals"];
    assert_eq!(totals["calls"], 3);
    let input = 120 + abandoned["input_tokens"].as_u64().unwrap();
    assert_eq!(totals["input_tokens"], input);
}

#[tokio::test]
async fn report_groups_and_filters() {
    let openai = llm_mock::openai().await;
    let gateway = start(&openai);
    chat(&gateway, ALICE_KEY, false).await;
    chat(&gateway, ALICE_KEY, true).await;
    chat(&gateway, BOB_KEY, false).await;
    let all = wait_for_calls(&gateway, "", 3).await;
    assert_eq!(all["rows"].as_array().unwrap().len(), 1, "{all}");
    assert_completed_calls(&all["rows"][0], 3);
    assert_completed_calls(&all["totals"], 3);

    let (_, by_key) = usage(&gateway, "group_by=credential_id").await;
    let rows = by_key["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{by_key}");
    for row in rows {
        assert!(
            row["credential_id"].as_str().unwrap().starts_with("cfg_"),
            "{row}"
        );
    }

    let (_, by_route) = usage(&gateway, "group_by=route,target").await;
    assert_eq!(by_route["rows"][0]["route"], "llm");
    assert_eq!(by_route["rows"][0]["target"], "openai-main/gpt-4.1");
    assert_completed_calls(&by_route["rows"][0], 3);

    let (_, by_hour) = usage(&gateway, "group_by=hour").await;
    let hour = by_hour["rows"][0]["hour"].as_str().unwrap();
    assert!(hour.ends_with(":00:00Z"), "{by_hour}");
    assert!(
        by_hour["to"].as_str().unwrap().ends_with(":00:00Z"),
        "`to` rounds up to the hour: {by_hour}"
    );

    // The calls may straddle midnight UTC, so a consumer can have two days.
    let (_, by_day) = usage(&gateway, "group_by=consumer,day").await;
    let rows = by_day["rows"].as_array().unwrap();
    let mut calls_by_consumer = std::collections::BTreeMap::new();
    for row in rows {
        let day = row["day"].as_str().unwrap();
        assert!(day.ends_with("T00:00:00Z"), "{by_day}");
        let consumer = row["consumer"].as_str().unwrap().to_string();
        *calls_by_consumer.entry(consumer).or_insert(0) += row["calls"].as_u64().unwrap();
    }
    assert_eq!(
        calls_by_consumer,
        [("alice".to_string(), 2), ("bob".to_string(), 1)].into(),
        "{by_day}"
    );
    assert_completed_calls(&by_day["totals"], 3);

    // Two consumers do not fit in one row.
    let (status, too_many) = usage(&gateway, "group_by=consumer&limit=1").await;
    assert_eq!(status, 400, "{too_many}");
    let message = too_many["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("more rows than the limit of 1"),
        "{message}"
    );
    let (status, fits) = usage(&gateway, "group_by=consumer&limit=2").await;
    assert_eq!(status, 200, "{fits}");
    assert_eq!(fits["rows"].as_array().unwrap().len(), 2);

    let (_, alice) = usage(&gateway, "consumer=alice").await;
    assert_completed_calls(&alice["totals"], 2);
    let (_, model) = usage(&gateway, "model=gpt&route=llm").await;
    assert_completed_calls(&model["totals"], 3);
    let (_, other_route) = usage(&gateway, "route=other").await;
    assert_eq!(other_route["totals"]["calls"], 0);
    assert_eq!(other_route["rows"], json!([]));

    // A range that ends before the calls reports none.
    let (_, past) = usage(
        &gateway,
        "from=2020-01-01T00:00:00Z&to=2020-01-02T00:00:00Z",
    )
    .await;
    assert_eq!(past["totals"]["calls"], 0);
    assert_eq!(past["from"], "2020-01-01T00:00:00Z");
}

#[tokio::test]
async fn invalid_parameters_return_400() {
    let openai = llm_mock::openai().await;
    let gateway = start(&openai);
    let cases = [
        "from=yesterday",
        "to=2026-12-04",
        "from=2026-12-04T12:00:00Z&to=2026-12-04T11:00:00Z",
        "group_by=tenant",
        "group_by=model,model",
        "group_by=hour,day",
        "limit=0",
        "limit=10001",
        "consumer=",
        "tenant=acme",
        "model=a&model=b",
    ];
    for query in cases {
        let response = admin(
            &client(),
            Method::GET,
            &gateway,
            &format!("/ai/usage?{query}"),
        )
        .send()
        .await
        .unwrap();
        let body = error_body(response, 400).await;
        assert_eq!(body["error"]["code"], "invalid_request", "{query}: {body}");
    }
    let response = client()
        .get(gateway.admin_url("/ai/usage"))
        .send()
        .await
        .unwrap();
    error_body(response, 401).await;
    let response = client()
        .get(gateway.admin_url("/ai/usage"))
        .bearer_auth(format!("{ADMIN_TOKEN}x"))
        .send()
        .await
        .unwrap();
    error_body(response, 401).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_sharing_postgres_add_up() {
    let database = Database::create("portcullis_ai_usage").await;
    let openai = llm_mock::openai().await;
    let config = format!(
        r#"
listeners: [{{ address: 127.0.0.1:0 }}]
admin: {{ address: 127.0.0.1:0, token: {ADMIN_TOKEN} }}
store: {{ postgres: "{url}" }}
access_log: off
key_hash_secret: ai-usage-test-key-hash-secret-0000000001
{ai}"#,
        url = database.url,
        ai = ai_config(&openai)
    );
    let env = [("OPENAI_API_KEY", OPENAI_KEY)];
    let a = Gateway::start_with_env(&config, &env);
    let b = Gateway::start_with_env(&config, &env);
    chat(&a, ALICE_KEY, false).await;
    chat(&a, BOB_KEY, true).await;
    chat(&b, ALICE_KEY, true).await;
    chat(&b, ALICE_KEY, false).await;
    chat(&b, BOB_KEY, false).await;

    for node in [&a, &b] {
        let report = wait_for_calls(node, "group_by=consumer", 5).await;
        assert_completed_calls(&report["totals"], 5);
        assert_completed_calls(&report["rows"][0], 3);
        assert_completed_calls(&report["rows"][1], 2);
    }
}

#[tokio::test]
async fn shutdown_writes_queued_usage() {
    let openai = llm_mock::openai().await;
    // An hour-long interval leaves the write to the shutdown.
    let config = format!("{}{}", common::node_config(), ai_config(&openai)).replace(
        "usage_report: { flush_interval: 100ms }",
        "usage_report: { flush_interval: 1h }",
    );
    let env = [("OPENAI_API_KEY", OPENAI_KEY)];
    let mut gateway = Gateway::start_with_env(&config, &env);
    chat(&gateway, ALICE_KEY, false).await;
    chat(&gateway, BOB_KEY, true).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, before) = usage(&gateway, "").await;
    assert_eq!(before["totals"]["calls"], 0, "{before}");

    gateway.signal("TERM");
    assert!(gateway.wait_exit(Duration::from_secs(15)));
    let dir = std::mem::replace(&mut gateway.dir, tempfile::tempdir().unwrap());
    let restarted = Gateway::start_in_with_env(dir, &config, &env);
    let (_, after) = usage(&restarted, "").await;
    assert_completed_calls(&after["totals"], 2);
}
