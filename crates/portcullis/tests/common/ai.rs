//! Helpers shared by the AI gateway tests: the route and consumer sections of their configs,
//! chat calls as alice, and reading OpenAI and Anthropic event streams.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;

use super::{ALICE_KEY, Gateway, client};

/// Returns the `routes` and `consumers` sections of an AI test config: the `ai` route `llm` on
/// `/v1` behind `key-auth` with `key_auth_options` (YAML flow mapping such as `{}`), and the
/// consumer alice with [`ALICE_KEY`].
pub fn llm_route_for_alice(key_auth_options: &str) -> String {
    format!(
        r#"routes:
  - name: llm
    paths: [/v1]
    ai: {{}}
    policies:
      - key-auth: {key_auth_options}
consumers:
  - name: alice
    api_keys: [{ALICE_KEY}]
"#
    )
}

/// Returns the list items of `ai.providers` for `claude-main`, an `anthropic` provider at
/// `anthropic`, and `openai-main`, an `openai` provider at `openai`, with their keys from the
/// variables `ANTHROPIC_API_KEY` and `OPENAI_API_KEY`.
pub fn anthropic_and_openai_providers(anthropic: SocketAddr, openai: SocketAddr) -> String {
    format!(
        r#"    - name: claude-main
      type: anthropic
      base_url: http://{anthropic}
      api_key: ${{ANTHROPIC_API_KEY}}
    - name: openai-main
      type: openai
      base_url: http://{openai}/v1
      api_key: ${{OPENAI_API_KEY}}
"#
    )
}

/// Posts `body` as JSON to the gateway's `path` with the bearer `key`, and with `request_id`
/// as `x-request-id` when given.
pub async fn post_with_key(
    gateway: &Gateway,
    path: &str,
    key: &str,
    request_id: Option<&str>,
    body: &Value,
) -> reqwest::Response {
    let mut request = client().post(gateway.url(path)).bearer_auth(key).json(body);
    if let Some(request_id) = request_id {
        request = request.header("x-request-id", request_id);
    }
    request.send().await.unwrap()
}

/// Posts `body` as JSON to the gateway's `path` with alice's key and `request_id`.
pub async fn post_as_alice(
    gateway: &Gateway,
    path: &str,
    request_id: &str,
    body: &Value,
) -> reqwest::Response {
    post_with_key(gateway, path, ALICE_KEY, Some(request_id), body).await
}

/// Posts a chat completion request as alice to `/v1/chat/completions`.
pub async fn chat(gateway: &Gateway, request_id: &str, body: Value) -> reqwest::Response {
    post_as_alice(gateway, "/v1/chat/completions", request_id, &body).await
}

/// Returns the `data:` payloads of an SSE body whose events have a `data:` line only.
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

/// Parses the payloads of [`sse_data`] as JSON chunks, leaving out `[DONE]`.
pub fn chunks(data: &[String]) -> Vec<Value> {
    data.iter()
        .filter(|line| *line != "[DONE]")
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Joins the text deltas of an OpenAI chunk stream, or of an Anthropic event stream.
pub fn streamed_text(body: &str) -> String {
    let mut text = String::new();
    for data in body
        .split("\n\n")
        .filter_map(|event| event.lines().find_map(|line| line.strip_prefix("data: ")))
    {
        let Ok(value) = serde_json::from_str::<Value>(data) else {
            continue;
        };
        if let Some(piece) = value
            .pointer("/choices/0/delta/content")
            .and_then(Value::as_str)
        {
            text.push_str(piece);
        }
        if let Some(piece) = value.pointer("/delta/text").and_then(Value::as_str) {
            text.push_str(piece);
        }
    }
    text
}

/// Reads a streamed response until its body contains `text`, then closes the connection, as a
/// client that gives up does. Fails when `text` has not arrived within 5 seconds. Returns what
/// was read.
pub async fn abandon_stream_after(response: reqwest::Response, text: &str) -> String {
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut received = String::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !received.contains(text) {
        assert!(Instant::now() < deadline, "no `{text}` arrived: {received}");
        let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(body);
    received
}
