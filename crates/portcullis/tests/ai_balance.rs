//! Provider key pools, retries, weighted aliases and tool call ids across providers, through
//! the real binary in front of mock OpenAI and Anthropic servers.

mod common;
mod llm_mock;

use common::ai::{anthropic_and_openai_providers, chat, llm_route_for_alice};
use common::{Gateway, metrics_text};
use serde_json::{Value, json};

use llm_mock::{Mock, OPENAI_KEY, OPENAI_KEY_2, OPENAI_RATE_LIMITED_KEY};

fn config(anthropic: &Mock, openai: &Mock) -> String {
    format!(
        r#"{node}
ai:
  providers:
{providers}    - name: openai-pool
      type: openai
      base_url: http://{openai}/v1
      api_keys:
        - ${{OPENAI_KEY_A}}
        - ${{OPENAI_KEY_B}}
    - name: openai-limited
      type: openai
      base_url: http://{openai}/v1
      api_keys: ["${{OPENAI_KEY_LIMITED}}", "${{OPENAI_KEY_A}}"]
    - name: openai-exhausted
      type: openai
      base_url: http://{openai}/v1
      api_keys: ["${{OPENAI_KEY_LIMITED}}"]
    - name: openai-failing
      type: openai
      base_url: http://{openai}/v1
      api_keys: ["${{OPENAI_KEY_A}}"]
      key_cooldown: {{ failures: 2, duration: 1m }}
    - name: openai-retry
      type: openai
      base_url: http://{openai}/v1
      api_key: ${{OPENAI_KEY_A}}
      retries: {{ attempts: 2, backoff: 10ms }}
  models:
    - name: pooled
      targets: [openai-pool/gpt-4.1]
    - name: limited-first
      targets: [openai-limited/gpt-4.1]
    - name: exhausted
      targets: [openai-exhausted/gpt-4.1, claude-main/claude-sonnet-4-5]
    - name: failing
      targets: [openai-failing/gpt-500, claude-main/claude-sonnet-4-5]
    - name: retried
      targets: [openai-retry/gpt-fail-once, claude-main/claude-sonnet-4-5]
    - name: not-retried
      targets: [openai-main/gpt-fail-once-again, claude-main/claude-sonnet-4-5]
    - name: weighted
      targets:
        - {{ target: openai-main/gpt-a, weight: 3 }}
        - {{ target: openai-main/gpt-b, weight: 1 }}
    - name: claude-then-openai
      targets: [claude-main/claude-529, openai-main/gpt-4.1]
{routes}"#,
        node = common::node_config(),
        providers = anthropic_and_openai_providers(anthropic.addr, openai.addr),
        routes = llm_route_for_alice("{}"),
        openai = openai.addr,
    )
}

async fn start() -> (Gateway, Mock, Mock) {
    let env = [
        ("OPENAI_KEY_A", OPENAI_KEY),
        ("OPENAI_KEY_B", OPENAI_KEY_2),
        ("OPENAI_KEY_LIMITED", OPENAI_RATE_LIMITED_KEY),
    ];
    llm_mock::start_with_anthropic_and_openai(config, &env).await
}

async fn ask(gateway: &Gateway, request_id: &str, model: &str) -> reqwest::Response {
    chat(
        gateway,
        request_id,
        json!({"model": model, "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await
}

/// Returns the bearer keys of the mock's requests, in order.
fn keys_sent(mock: &Mock) -> Vec<String> {
    mock.requests()
        .iter()
        .map(|request| {
            request.headers["authorization"]
                .to_str()
                .unwrap()
                .trim_start_matches("Bearer ")
                .to_string()
        })
        .collect()
}

#[tokio::test]
async fn pool_spreads_calls_over_keys() {
    let (gateway, _anthropic, openai) = start().await;
    for i in 0..4 {
        let response = ask(&gateway, &format!("pool-{i}"), "pooled").await;
        assert_eq!(response.status(), 200);
    }
    assert_eq!(
        keys_sent(&openai),
        [OPENAI_KEY, OPENAI_KEY_2, OPENAI_KEY, OPENAI_KEY_2]
    );
}

#[tokio::test]
async fn rate_limited_key_cools_down() {
    let (gateway, _anthropic, openai) = start().await;
    for i in 0..3 {
        let response = ask(&gateway, &format!("limited-{i}"), "limited-first").await;
        assert_eq!(response.status(), 200, "call {i}");
        assert_eq!(
            response.headers()["x-portcullis-target"],
            "openai-limited/gpt-4.1"
        );
    }
    // The first call got 429 and moved to the second key at once. Later calls skip the first
    // key while it cools down for the 30 s of `Retry-After`.
    assert_eq!(
        keys_sent(&openai),
        [OPENAI_RATE_LIMITED_KEY, OPENAI_KEY, OPENAI_KEY, OPENAI_KEY]
    );
    assert_eq!(gateway.access_log_line("limited-0")["ai"]["attempts"], 1);

    let metrics = metrics_text(&gateway).await;
    for line in [
        r#"portcullis_ai_provider_key_state{provider="openai-limited",key="0",state="cooling_down"} 1"#,
        r#"portcullis_ai_provider_key_state{provider="openai-limited",key="0",state="available"} 0"#,
        r#"portcullis_ai_provider_key_state{provider="openai-limited",key="1",state="available"} 1"#,
        r#"portcullis_ai_provider_key_cooldowns_total{provider="openai-limited",key="0",reason="rate_limited"} 1"#,
    ] {
        assert!(metrics.contains(line), "missing {line} in:\n{metrics}");
    }
    let log = gateway.stderr();
    assert!(log.contains("provider key cooling down"), "{log}");
    assert!(!log.contains(OPENAI_RATE_LIMITED_KEY), "a key was logged");
    assert!(!log.contains(OPENAI_KEY), "a key was logged");
}

#[tokio::test]
async fn all_keys_cooling_falls_back() {
    let (gateway, _anthropic, openai) = start().await;
    for i in 0..2 {
        let response = ask(&gateway, &format!("exhausted-{i}"), "exhausted").await;
        assert_eq!(response.status(), 200, "call {i}");
        assert_eq!(
            response.headers()["x-portcullis-target"],
            "claude-main/claude-sonnet-4-5"
        );
        assert_eq!(
            gateway.access_log_line(&format!("exhausted-{i}"))["ai"]["attempts"],
            2
        );
    }
    // The second call found the only key cooling down and did not call OpenAI.
    assert_eq!(keys_sent(&openai), [OPENAI_RATE_LIMITED_KEY]);

    let response = ask(&gateway, "exhausted-direct", "openai-exhausted/gpt-4.1").await;
    assert_eq!(response.status(), 429);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "provider_keys_cooling_down");
    assert_eq!(keys_sent(&openai).len(), 1);
}

#[tokio::test]
async fn repeated_5xx_cools_key_down() {
    let (gateway, _anthropic, openai) = start().await;
    for i in 0..3 {
        let response = ask(&gateway, &format!("failing-{i}"), "failing").await;
        assert_eq!(response.status(), 200, "call {i}");
        assert_eq!(
            response.headers()["x-portcullis-target"],
            "claude-main/claude-sonnet-4-5"
        );
    }
    // `key_cooldown.failures: 2`: the third call skipped the resting key.
    assert_eq!(openai.requests().len(), 2);
    let metrics = metrics_text(&gateway).await;
    let line = r#"portcullis_ai_provider_key_cooldowns_total{provider="openai-failing",key="0",reason="failures"} 1"#;
    assert!(metrics.contains(line), "missing {line} in:\n{metrics}");
}

#[tokio::test]
async fn retry_before_fallback() {
    let (gateway, anthropic, openai) = start().await;
    let response = ask(&gateway, "retried", "retried").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["x-portcullis-target"],
        "openai-retry/gpt-fail-once"
    );
    assert_eq!(openai.requests().len(), 2, "one 503 and one retry");
    assert!(anthropic.requests().is_empty());
    assert_eq!(gateway.access_log_line("retried")["ai"]["attempts"], 1);

    // Without `retries` the same failure moves to the next target.
    let response = ask(&gateway, "not-retried", "not-retried").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["x-portcullis-target"],
        "claude-main/claude-sonnet-4-5"
    );
}

#[tokio::test]
async fn weighted_targets_spread_requests() {
    let (gateway, _anthropic, _openai) = start().await;
    let mut first = 0;
    let total = 40;
    for i in 0..total {
        let response = ask(&gateway, &format!("weighted-{i}"), "weighted").await;
        assert_eq!(response.status(), 200);
        if response.headers()["x-portcullis-target"] == "openai-main/gpt-a" {
            first += 1;
        }
    }
    // Weights 3 and 1: about 30 of 40. The bounds are about 3.6 standard deviations wide.
    assert!(
        (20..=38).contains(&first),
        "gpt-a served {first} of {total}"
    );
}

/// Returns a conversation whose tool calls came from providers with other id rules: an
/// Anthropic `toolu_` id, an id with `.` and `:`, and an id of 46 characters.
fn tool_conversation(model: &str) -> Value {
    let long = "chatcmpl-tool-0123456789abcdef0123456789abcdef";
    json!({
        "model": model,
        "messages": [
            {"role": "user", "content": "Weather in Paris, Oslo and Rome?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "toolu_01A09q90qw90lq917835lq9", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "functions.get_weather:1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}},
                {"id": long, "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "toolu_01A09q90qw90lq917835lq9", "content": "18C"},
            {"role": "tool", "tool_call_id": "functions.get_weather:1", "content": "4C"},
            {"role": "tool", "tool_call_id": long, "content": "25C"}
        ]
    })
}

#[tokio::test]
async fn tool_call_ids_fit_each_provider() {
    let (gateway, anthropic, openai) = start().await;

    let response = chat(
        &gateway,
        "tool-ids-claude",
        tool_conversation("claude-main/claude-sonnet-4-5"),
    )
    .await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let sent = anthropic.requests().pop().unwrap().body;
    let uses: Vec<&str> = sent["messages"][1]["content"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|block| block["type"] == "tool_use")
        .map(|block| block["id"].as_str().unwrap())
        .collect();
    let results: Vec<&str> = sent["messages"][2]["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|block| block["tool_use_id"].as_str().unwrap())
        .collect();
    assert_eq!(uses.len(), 3);
    assert_eq!(uses, results);
    assert_eq!(uses[0], "toolu_01A09q90qw90lq917835lq9");
    assert!(uses[1].starts_with("functions_get_weather_1_"), "{uses:?}");

    // Anthropic fails with 529, and the same conversation moves to OpenAI.
    let response = chat(
        &gateway,
        "tool-ids-fallback",
        tool_conversation("claude-then-openai"),
    )
    .await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    assert_eq!(
        gateway.access_log_line("tool-ids-fallback")["ai"]["target"],
        "openai-main/gpt-4.1"
    );
    let sent = openai.requests().pop().unwrap().body;
    let calls: Vec<&str> = sent["messages"][1]["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|call| call["id"].as_str().unwrap())
        .collect();
    let results: Vec<&str> = (2..5)
        .map(|i| sent["messages"][i]["tool_call_id"].as_str().unwrap())
        .collect();
    assert_eq!(calls, results);
    assert_eq!(calls[0], "toolu_01A09q90qw90lq917835lq9");
    assert_eq!(calls[1], "functions.get_weather:1");
    assert!(
        calls[2].starts_with("call_") && calls[2].len() <= 40,
        "{calls:?}"
    );
}
