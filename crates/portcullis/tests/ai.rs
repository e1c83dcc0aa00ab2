//! The AI gateway through the real binary, in front of mock OpenAI and Anthropic servers.

mod common;
mod llm_mock;
mod sdk;

use std::time::{Duration, Instant};

use common::ai::{
    abandon_stream_after, anthropic_and_openai_providers, chat, llm_route_for_alice, sse_data,
};
use common::{ALICE_KEY, Gateway, client, deflate, gzip};
use futures_util::StreamExt;
use serde_json::{Value, json};

use llm_mock::{ANTHROPIC_KEY, Mock};
use sdk::run_sdk_script;

/// Returns the documented `ai` example with the mocks' ports, plus aliases for fallback tests.
fn config(anthropic: &Mock, openai: &Mock) -> String {
    format!(
        r#"{node}
ai:
  providers:
{providers}    - name: claude-impatient
      type: anthropic
      base_url: http://{anthropic}
      api_key: ${{ANTHROPIC_API_KEY}}
      timeouts: {{ response: 300ms }}
    - name: local
      type: openai-compatible
      base_url: http://{openai}/v1
      api_key: ${{OPENAI_API_KEY}}
  models:
    - name: smart
      targets: [claude-main/claude-sonnet-4-5, openai-main/gpt-4.1]
    - name: after-429
      targets: [openai-main/gpt-429, claude-main/claude-sonnet-4-5]
    - name: after-529
      targets: [claude-main/claude-529, openai-main/gpt-4.1]
  prices:
    - model: claude-main/claude-sonnet-4-5
      input_per_million: 3.00
      output_per_million: 15.00
    - model: openai-main/gpt-4.1
      input_per_million: 2.00
      output_per_million: 8.00
      cache_read_per_million: 0.50
{routes}"#,
        node = common::node_config(),
        routes = llm_route_for_alice("{ header_names: [apikey, x-api-key] }"),
        providers = anthropic_and_openai_providers(anthropic.addr, openai.addr),
        anthropic = anthropic.addr,
        openai = openai.addr,
    )
}

async fn start() -> (Gateway, Mock, Mock) {
    llm_mock::start_with_anthropic_and_openai(config, &[]).await
}

#[tokio::test]
async fn chat_is_translated_for_anthropic() {
    let (gateway, anthropic, _openai) = start().await;
    let response = chat(
        &gateway,
        "ai-chat-1",
        json!({
            "model": "smart",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"}
            ]
        }),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["x-portcullis-target"],
        "claude-main/claude-sonnet-4-5"
    );
    let overhead: f64 = response.headers()["x-portcullis-overhead-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(overhead >= 0.0);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Hello from claude"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["prompt_tokens"], 1230);
    assert_eq!(
        body["usage"]["prompt_tokens_details"]["cached_tokens"],
        1000
    );
    assert_eq!(body["usage"]["completion_tokens"], 15);

    let sent = anthropic.requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].path, "/v1/messages");
    assert_eq!(sent[0].body["system"], "Be brief.");
    assert_eq!(sent[0].body["model"], "claude-sonnet-4-5");
    assert_eq!(sent[0].body["max_tokens"], 4096);
    assert_eq!(sent[0].headers["anthropic-version"], "2023-06-01");
    assert!(
        sent[0].headers.get("authorization").is_none(),
        "the client's key must not reach the provider"
    );

    let line = gateway.access_log_line("ai-chat-1");
    assert!(line["bytes_in"].as_u64().unwrap() > 0, "{line}");
    let ai = &line["ai"];
    assert_eq!(ai["model"], "smart");
    assert_eq!(ai["provider"], "claude-main");
    assert_eq!(ai["target"], "claude-main/claude-sonnet-4-5");
    assert_eq!(ai["input_tokens"], 30);
    assert_eq!(ai["cache_read_tokens"], 1000);
    assert_eq!(ai["cache_write_tokens"], 200);
    assert_eq!(ai["output_tokens"], 15);
    assert_eq!(ai["usage_estimated"], false);
    // Cache reads and writes default to the input price: (30 + 1000 + 200) * 3 + 15 * 15.
    let cost = ai["cost"].as_f64().unwrap();
    assert!((cost - 3915.0 / 1e6).abs() < 1e-12, "{cost}");
    assert!(
        !gateway.stderr().contains(ANTHROPIC_KEY),
        "a provider key was logged"
    );
}

#[tokio::test]
async fn openai_cost_counts_cached_and_reasoning() {
    let (gateway, _anthropic, openai) = start().await;
    let response = chat(
        &gateway,
        "ai-openai-1",
        json!({"model": "openai-main/gpt-4.1", "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "Hello from gpt");
    assert_eq!(openai.requests()[0].body["model"], "gpt-4.1");

    let ai = &gateway.access_log_line("ai-openai-1")["ai"];
    assert_eq!(ai["input_tokens"], 60);
    assert_eq!(ai["cache_read_tokens"], 40);
    assert_eq!(ai["output_tokens"], 30);
    assert_eq!(ai["reasoning_tokens"], 20);
    // 60 * 2.00 + 40 * 0.50 + 30 * 8.00 + 20 * 8.00 (reasoning at the output price).
    let cost = ai["cost"].as_f64().unwrap();
    assert!((cost - 540.0 / 1e6).abs() < 1e-12, "{cost}");
}

#[tokio::test]
async fn fallback_to_second_target() {
    let (gateway, anthropic, openai) = start().await;
    for (alias, request_id, served_by) in [
        (
            "after-429",
            "ai-fallback-429",
            "claude-main/claude-sonnet-4-5",
        ),
        ("after-529", "ai-fallback-529", "openai-main/gpt-4.1"),
    ] {
        let response = chat(
            &gateway,
            request_id,
            json!({"model": alias, "messages": [{"role": "user", "content": "Hi"}]}),
        )
        .await;
        assert_eq!(response.status(), 200, "{alias}");
        assert_eq!(response.headers()["x-portcullis-target"], served_by);
        let ai = &gateway.access_log_line(request_id)["ai"];
        assert_eq!(ai["attempts"], 2, "{alias}");
        assert_eq!(ai["target"], served_by);
    }
    assert_eq!(anthropic.requests().len(), 2);
    assert_eq!(openai.requests().len(), 2);
}

#[tokio::test]
async fn last_failure_is_returned_in_openai_shape() {
    let (gateway, _anthropic, _openai) = start().await;
    let response = chat(
        &gateway,
        "ai-fail-1",
        json!({"model": "claude-main/claude-529", "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "api_error");
    assert_eq!(body["error"]["code"], "overloaded_error");
    assert_eq!(body["error"]["request_id"], "ai-fail-1");

    let response = chat(
        &gateway,
        "ai-fail-2",
        json!({"model": "nope", "messages": []}),
    )
    .await;
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_not_found");
    assert_eq!(body["error"]["param"], "model");

    let response = chat(
        &gateway,
        "ai-numeric-model",
        json!({"model": 1, "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_model");
    assert_eq!(body["error"]["param"], "model");

    for (request_id, messages) in [
        ("ai-bad-messages-1", json!("Hi")),
        ("ai-bad-messages-2", json!([])),
        ("ai-bad-messages-3", json!([{"content": "Hi"}])),
        ("ai-bad-messages-4", json!(["Hi"])),
    ] {
        let response = chat(
            &gateway,
            request_id,
            json!({"model": "openai-main/gpt-4.1", "messages": messages}),
        )
        .await;
        assert_eq!(response.status(), 400, "{messages}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_messages", "{messages}");
        assert_eq!(body["error"]["param"], "messages", "{messages}");
    }

    let response = client()
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth(ALICE_KEY)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    let response = client()
        .post(gateway.url("/v1/chat/completions"))
        .json(&json!({"model": "smart", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        401,
        "key-auth runs before the AI gateway"
    );
}

#[tokio::test]
async fn anthropic_stream_with_tool_calls() {
    let (gateway, _anthropic, _openai) = start().await;
    let response = chat(
        &gateway,
        "ai-stream-tools",
        json!({
            "model": "claude-main/claude-tools",
            "stream": true,
            "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "Weather in Paris and Oslo?"}],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
        }),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");

    let data = sse_data(&response.text().await.unwrap());
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let mut calls: Vec<(u64, String, String)> = Vec::new();
    for chunk in &chunks {
        for call in chunk
            .pointer("/choices/0/delta/tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let index = call["index"].as_u64().unwrap();
            if let Some(id) = call["id"].as_str() {
                calls.push((index, id.to_string(), String::new()));
            }
            let arguments = call["function"]["arguments"].as_str().unwrap_or("");
            calls[index as usize].2.push_str(arguments);
        }
    }

    assert_eq!(calls.len(), 2, "two tool calls, not merged");
    assert_eq!(calls[0].1, "toolu_paris");
    assert_eq!(calls[1].1, "toolu_oslo");
    assert_eq!(calls[0].2, "{\"city\": \"Paris\"}");
    assert_eq!(calls[1].2, "{\"city\": \"Oslo\"}");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 15);
    assert_eq!(
        chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
        "tool_calls"
    );
    let ai = &gateway.access_log_line("ai-stream-tools")["ai"];
    assert_eq!(ai["output_tokens"], 15);
    assert_eq!(ai["stream"], true);
}

#[tokio::test]
async fn anthropic_stream_without_final_usage() {
    let (gateway, _anthropic, _openai) = start().await;
    let response = chat(
        &gateway,
        "ai-stream-nousage",
        json!({"model": "claude-main/claude-nousage", "stream": true, "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    let data = sse_data(&response.text().await.unwrap());
    assert_eq!(data.last().unwrap(), "[DONE]");
    assert!(data.iter().all(|line| !line.contains("\"usage\"")));
    let ai = &gateway.access_log_line("ai-stream-nousage")["ai"];
    assert_eq!(ai["input_tokens"], 30, "from message_start");
    assert_eq!(
        ai["output_tokens"], 1,
        "the provisional count of message_start"
    );
    assert_eq!(ai["usage_estimated"], false);
}

#[tokio::test]
async fn openai_stream_usage_is_recorded_but_not_sent() {
    let (gateway, _anthropic, openai) = start().await;
    let response = chat(
        &gateway,
        "ai-openai-stream",
        json!({"model": "openai-main/gpt-4.1", "stream": true, "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    let data = sse_data(&response.text().await.unwrap());
    assert_eq!(data.last().unwrap(), "[DONE]");
    assert!(
        data.iter().all(|line| !line.contains("prompt_tokens")),
        "{data:?}"
    );
    assert_eq!(
        openai.requests()[0].body["stream_options"]["include_usage"],
        true
    );
    let ai = &gateway.access_log_line("ai-openai-stream")["ai"];
    assert_eq!(ai["input_tokens"], 60);
    assert_eq!(ai["reasoning_tokens"], 20);
    assert_eq!(ai["usage_estimated"], false);
}

#[tokio::test]
async fn openai_stream_without_usage_is_estimated() {
    let (gateway, _anthropic, _openai) = start().await;
    let response = chat(
        &gateway,
        "ai-openai-nousage",
        json!({"model": "openai-main/gpt-nousage", "stream": true, "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    let data = sse_data(&response.text().await.unwrap());
    assert_eq!(data.last().unwrap(), "[DONE]");
    let ai = &gateway.access_log_line("ai-openai-nousage")["ai"];
    assert_eq!(ai["usage_estimated"], true);
    assert_eq!(
        ai["output_tokens"], 4,
        "\"Hello from gpt\" is 14 characters"
    );
}

#[tokio::test]
async fn error_mid_stream_reaches_the_client() {
    let (gateway, _anthropic, _openai) = start().await;
    let response = chat(
        &gateway,
        "ai-error-mid",
        json!({"model": "claude-main/claude-error-mid", "stream": true, "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let data = sse_data(&response.text().await.unwrap());
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "overloaded_error");
    assert_eq!(last["error"]["request_id"], "ai-error-mid");
    assert!(!data.iter().any(|line| line == "[DONE]"));
    let first: Value = serde_json::from_str(&data[1]).unwrap();
    assert_eq!(first["choices"][0]["delta"]["content"], "Hello");
    let ai = &gateway.access_log_line("ai-error-mid")["ai"];
    assert_eq!(ai["stream_error"], true);
    assert_eq!(ai["input_tokens"], 30);
}

#[tokio::test]
async fn stalled_stream_ends_with_error() {
    let (gateway, _anthropic, _openai) = start().await;
    let started = Instant::now();
    let response = chat(
        &gateway,
        "ai-stalled",
        json!({"model": "claude-impatient/claude-hang", "stream": true, "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    let data = sse_data(&response.text().await.unwrap());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the stream was not cut off"
    );
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "stream_interrupted");
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sent nothing"),
        "{last}"
    );
    let ai = &gateway.access_log_line("ai-stalled")["ai"];
    assert_eq!(ai["stream_error"], true);
    assert_eq!(ai["input_tokens"], 30);
}

#[tokio::test]
async fn streamed_overhead_excludes_provider_time() {
    let (gateway, _anthropic, _openai) = start().await;
    let started = Instant::now();
    let response = chat(
        &gateway,
        "ai-overhead-stream",
        json!({"model": "openai-main/gpt-hang", "stream": true, "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let overhead: f64 = response.headers()["x-portcullis-overhead-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();

    // The provider keeps the stream open after its text, so the call lasts as long as the
    // client reads, here at least 500 ms.
    let mut body = response.bytes_stream();
    let mut received = String::new();
    while !received.contains(" gpt") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(body);
    assert!(started.elapsed() >= Duration::from_millis(500));

    assert!(overhead < 500.0, "overhead header {overhead} ms");
    let count = common::metric(
        &gateway,
        r#"portcullis_ai_overhead_seconds_count{route="llm"}"#,
    )
    .await;
    assert_eq!(count, 1.0);
    let sum = common::metric(
        &gateway,
        r#"portcullis_ai_overhead_seconds_sum{route="llm"}"#,
    )
    .await;
    assert!(sum < 0.5, "overhead histogram sum {sum} s");
}

#[tokio::test]
async fn unstreamed_overhead_excludes_body_read() {
    let (gateway, _anthropic, _openai) = start().await;
    let started = Instant::now();
    // The provider sends its response headers at once and its body 500 ms later.
    let response = chat(
        &gateway,
        "ai-overhead-slow-body",
        json!({"model": "openai-main/gpt-slow-body", "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(500));
    let overhead: f64 = response.headers()["x-portcullis-overhead-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "Hello from gpt");

    assert!(overhead < 400.0, "overhead header {overhead} ms");
    let sum = common::metric(
        &gateway,
        r#"portcullis_ai_overhead_seconds_sum{route="llm"}"#,
    )
    .await;
    assert!(sum < 0.4, "overhead histogram sum {sum} s");
}

// Two workers, because `access_log_line` blocks one while the client connection must still
// be closed on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_recorded_on_client_disconnect() {
    let (gateway, _anthropic, _openai) = start().await;
    for (model, request_id) in [
        ("claude-main/claude-hang", "ai-disconnect-claude"),
        ("openai-main/gpt-hang", "ai-disconnect-openai"),
    ] {
        let response = chat(
            &gateway,
            request_id,
            json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "Tell me a long story"}]}),
        )
        .await;
        abandon_stream_after(response, "from").await;

        let line = gateway.access_log_line(request_id);
        assert_eq!(line["outcome"], "client_aborted", "{model}");
        let ai = &line["ai"];
        assert_eq!(ai["usage_estimated"], true, "{model}");
        assert!(ai["input_tokens"].as_u64().unwrap() > 0, "{model}: {ai}");
        assert!(ai["output_tokens"].as_u64().unwrap() > 0, "{model}: {ai}");
        assert!(ai.get("cost").is_none(), "the target has no price: {ai}");
    }
    let metrics = client()
        .get(gateway.admin_url("/metrics"))
        .bearer_auth(common::ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            r#"portcullis_ai_tokens_total{consumer="alice",route="llm",model="claude-main/claude-hang",kind="input"} 30"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn models_and_embeddings() {
    let (gateway, _anthropic, openai) = start().await;
    let models: Value = client()
        .get(gateway.url("/v1/models"))
        .bearer_auth(ALICE_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|model| model["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["smart", "after-429", "after-529"]);

    let response = client()
        .post(gateway.url("/v1/embeddings"))
        .bearer_auth(ALICE_KEY)
        .header("x-request-id", "ai-embed-1")
        .json(&json!({"model": "smart", "input": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["x-portcullis-target"],
        "openai-main/gpt-4.1"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["data"][0]["embedding"][1], -0.5);
    assert_eq!(openai.requests()[0].path, "/v1/embeddings");
    assert_eq!(
        gateway.access_log_line("ai-embed-1")["ai"]["input_tokens"],
        8
    );

    let response = client()
        .post(gateway.url("/v1/embeddings"))
        .bearer_auth(ALICE_KEY)
        .json(&json!({"model": "claude-main/claude-sonnet-4-5", "input": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn openai_sdk_on_both_providers() {
    let (gateway, _anthropic, _openai) = start().await;
    let cases = json!([
        ["chat", "claude-main/claude-sonnet-4-5"],
        ["chat", "openai-main/gpt-4.1"],
        ["stream", "claude-main/claude-sonnet-4-5"],
        ["stream", "openai-main/gpt-4.1"],
        ["tools", "claude-main/claude-tools"],
        ["tools", "openai-main/gpt-4.1"],
        ["stream_tools", "claude-main/claude-tools"],
        ["stream_tools", "openai-main/gpt-4.1"],
        ["embeddings", "openai-main/text-embedding-3-small"],
        ["embeddings", "local/nomic-embed-text"],
        ["stream_error", "claude-main/claude-error-mid"],
        ["chat", "no-such-model"],
    ]);
    let results = run_sdk_script("openai_client.py", &gateway.url("/v1"), &cases).await;

    assert_eq!(results[0]["content"], "Hello from claude");
    assert_eq!(results[0]["finish_reason"], "stop");
    assert_eq!(results[0]["prompt_tokens"], 1230);
    assert_eq!(results[1]["content"], "Hello from gpt");
    assert_eq!(results[1]["completion_tokens"], 50);

    assert_eq!(results[2]["content"], "Hello from claude");
    assert_eq!(results[2]["completion_tokens"], 15);
    assert_eq!(results[3]["content"], "Hello from gpt");
    assert_eq!(results[3]["completion_tokens"], 50);

    for (index, prefix) in [(4, "toolu_"), (5, "call_"), (6, "toolu_"), (7, "call_")] {
        let result = &results[index];
        assert_eq!(
            result["finish_reason"], "tool_calls",
            "case {index}: {result}"
        );
        let calls = result["calls"].as_array().unwrap();
        assert_eq!(calls.len(), 2, "case {index}: {result}");
        assert!(
            calls[0]["id"].as_str().unwrap().starts_with(prefix),
            "case {index}: {result}"
        );
        assert_eq!(calls[0]["name"], "get_weather");
        assert_eq!(calls[0]["arguments"]["city"], "Paris", "case {index}");
        assert_eq!(calls[1]["arguments"]["city"], "Oslo", "case {index}");
        assert_ne!(calls[0]["id"], calls[1]["id"], "case {index}");
    }

    for index in [8, 9] {
        assert_eq!(
            results[index]["embedding"],
            json!([0.25, -0.5, 0.125]),
            "case {index}"
        );
        assert_eq!(results[index]["prompt_tokens"], 8);
    }

    assert_eq!(results[10]["content"], "Hello");
    assert_eq!(results[10]["error"], "APIError");
    assert_eq!(results[10]["message"], "Overloaded");

    assert_eq!(results[11]["status"], 404);
    assert_eq!(results[11]["body"]["code"], "model_not_found");
}

#[tokio::test]
async fn anthropic_sdk_through_messages() {
    let (gateway, anthropic, _openai) = start().await;
    let cases = json!([
        ["create", "smart"],
        ["stream", "claude-main/claude-sonnet-4-5"],
        ["tools", "claude-main/claude-tools"],
        ["stream_error", "claude-main/claude-error-mid"],
        ["create", "openai-main/gpt-4.1"],
        ["create", "after-529"],
    ]);
    let results = run_sdk_script("anthropic_client.py", &gateway.url(""), &cases).await;

    assert_eq!(results[0]["text"], "Hello from claude");
    assert_eq!(results[0]["stop_reason"], "end_turn");
    assert_eq!(results[0]["input_tokens"], 30);
    assert_eq!(results[0]["output_tokens"], 15);
    let first = &anthropic.requests()[0];
    assert_eq!(first.body["model"], "claude-sonnet-4-5");
    assert_eq!(first.body["system"], "Be brief.");
    assert_eq!(first.headers["x-api-key"], ANTHROPIC_KEY);

    assert_eq!(results[1]["text"], "Hello from claude");
    assert_eq!(results[1]["output_tokens"], 15);

    assert_eq!(results[2]["stop_reason"], "tool_use");
    let calls = results[2]["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0]["id"], "toolu_paris");
    assert_eq!(calls[1]["input"]["city"], "Oslo");

    assert_eq!(results[3]["text"], "Hello");
    assert!(results[3]["error"].is_string(), "{}", results[3]);
    assert!(
        results[3]["message"]
            .as_str()
            .unwrap()
            .contains("Overloaded"),
        "{}",
        results[3]
    );

    assert_eq!(results[4]["status"], 400);
    assert_eq!(results[4]["body"]["type"], "error");
    assert_eq!(results[4]["body"]["error"]["type"], "invalid_request_error");

    assert_eq!(
        results[5]["status"], 503,
        "the only Anthropic target is overloaded"
    );
    assert_eq!(results[5]["body"]["error"]["type"], "overloaded_error");
}

#[tokio::test]
async fn messages_stream_usage_is_recorded() {
    let (gateway, _anthropic, _openai) = start().await;
    let response = client()
        .post(gateway.url("/v1/messages"))
        .header("x-api-key", ALICE_KEY)
        .header("anthropic-version", "2023-06-01")
        .header("x-request-id", "ai-messages-stream")
        .json(&json!({"model": "smart", "max_tokens": 100, "stream": true, "messages": [{"role": "user", "content": "Hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    assert!(body.starts_with("event: message_start\n"), "{body}");
    assert!(body.contains("event: message_stop\n"), "{body}");
    let ai = &gateway.access_log_line("ai-messages-stream")["ai"];
    assert_eq!(ai["target"], "claude-main/claude-sonnet-4-5");
    assert_eq!(ai["input_tokens"], 30);
    assert_eq!(ai["cache_read_tokens"], 1000);
    assert_eq!(ai["output_tokens"], 15);
    assert_eq!(ai["usage_estimated"], false);
    assert!(ai["cost"].as_f64().unwrap() > 0.0);
}

#[tokio::test]
async fn ai_route_without_ai_section() {
    let upstream = common::upstream().await;
    let gateway = Gateway::start(&common::example_config(upstream));
    let client = client();

    let response = common::admin(&client, reqwest::Method::POST, &gateway, "/routes")
        .json(&json!({"name": "llm", "paths": ["/v1"], "ai": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let route: Value = common::admin(&client, reqwest::Method::GET, &gateway, "/routes/llm")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(route["ai"], json!({}));
    assert!(route["service"].is_null());

    let response = client.get(gateway.url("/v1/models")).send().await.unwrap();
    let body = common::error_body(response, 503).await;
    assert_eq!(body["error"]["code"], "ai_not_configured");
    let response = client
        .get(gateway.url("/echo/x"))
        .bearer_auth(ALICE_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        200,
        "the node keeps serving its other routes"
    );

    let response = common::admin(&client, reqwest::Method::POST, &gateway, "/routes")
        .json(&json!({"name": "both", "paths": ["/both"], "ai": {}, "service": "echo"}))
        .send()
        .await
        .unwrap();
    let body = common::error_body(response, 400).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("takes no `service`"),
        "{body}"
    );
}

/// Posts `body` to `path` as alice with the `Content-Encoding` value `coding`.
async fn post_encoded(
    gateway: &Gateway,
    path: &str,
    coding: &str,
    body: Vec<u8>,
) -> reqwest::Response {
    client()
        .post(gateway.url(path))
        .bearer_auth(ALICE_KEY)
        .header("content-type", "application/json")
        .header("content-encoding", coding)
        .header("anthropic-version", "2023-06-01")
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Checks that `response` is an OpenAI-shaped error with `status` and `code`.
async fn assert_openai_error(response: reqwest::Response, status: u16, code: &str) {
    let body = common::error_body(response, status).await;
    assert_eq!(body["error"]["code"], code, "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
}

#[tokio::test]
async fn compressed_request_bodies_decoded() {
    let (gateway, anthropic, openai) = start().await;
    let chat =
        json!({"model": "openai-main/gpt-4.1", "messages": [{"role": "user", "content": "Hi"}]});
    let text = chat.to_string();

    for (coding, body) in [
        ("gzip", gzip(text.as_bytes())),
        ("x-gzip", gzip(text.as_bytes())),
        ("deflate", deflate(text.as_bytes())),
        ("deflate, gzip", gzip(&deflate(text.as_bytes()))),
    ] {
        let response = post_encoded(&gateway, "/v1/chat/completions", coding, body).await;
        assert_eq!(response.status(), 200, "{coding}");
        let reply: Value = response.json().await.unwrap();
        assert_eq!(
            reply["choices"][0]["message"]["content"], "Hello from gpt",
            "{coding}"
        );
    }
    let sent = openai.requests();
    assert_eq!(sent.len(), 4);
    for request in &sent {
        assert_eq!(request.body["messages"], chat["messages"]);
        assert!(request.headers.get("content-encoding").is_none());
    }

    let response = post_encoded(&gateway, "/v1/chat/completions", "zstd", gzip(b"{}")).await;
    assert_openai_error(response, 415, "unsupported_content_encoding").await;
    let response = post_encoded(
        &gateway,
        "/v1/chat/completions",
        "gzip",
        text.as_bytes().to_vec(),
    )
    .await;
    assert_openai_error(response, 400, "invalid_content_encoding").await;

    // 8 MiB of zeros compress about 1000 times, over the decoder's ratio cap of 100.
    let bomb = gzip(&vec![b'0'; 8 << 20]);
    let response = post_encoded(&gateway, "/v1/chat/completions", "gzip", bomb).await;
    assert_openai_error(response, 413, "decompression_ratio_exceeded").await;

    // Random hex compresses about 2 times, so 11 MiB of it decodes past the 10 MiB default of
    // limits.max_body_bytes without tripping the ratio cap.
    let hex: String = (0..(11 << 20) / 16)
        .map(|_| format!("{:016x}", rand::random::<u64>()))
        .collect();
    let large = gzip(format!(r#"{{"model":"openai-main/gpt-4.1","pad":"{hex}"}}"#).as_bytes());
    assert!(large.len() < 10 << 20, "{} bytes", large.len());
    let response = post_encoded(&gateway, "/v1/chat/completions", "gzip", large).await;
    assert_openai_error(response, 413, "body_too_large").await;
    assert_eq!(
        openai.requests().len(),
        4,
        "a rejected body reached the provider"
    );

    // `/messages` decodes too, and returns errors in Anthropic's shape.
    let messages = json!({"model": "claude-main/claude-sonnet-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}]});
    let body = gzip(messages.to_string().as_bytes());
    let response = post_encoded(&gateway, "/v1/messages", "gzip", body).await;
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap();
    assert_eq!(anthropic.requests().len(), 1);
    let response = post_encoded(&gateway, "/v1/messages", "br", b"not brotli".to_vec()).await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["error"]["type"], "invalid_request_error", "{error}");
}

#[tokio::test]
async fn openai_sdk_sends_gzip_body() {
    let (gateway, _anthropic, openai) = start().await;
    let cases = json!([
        ["gzip_chat", "openai-main/gpt-4.1"],
        ["zstd_chat", "openai-main/gpt-4.1"],
    ]);
    let results = run_sdk_script("openai_client.py", &gateway.url("/v1"), &cases).await;
    assert_eq!(results[0]["content"], "Hello from gpt", "{results:?}");
    assert_eq!(results[0]["prompt_tokens"], 100, "{results:?}");
    assert_eq!(results[1]["status"], 415, "{results:?}");
    assert_eq!(
        results[1]["body"]["code"], "unsupported_content_encoding",
        "{results:?}"
    );
    assert_eq!(openai.requests().len(), 1);
}
