//! The AI gateway's Gemini and Azure OpenAI providers through the real binary, in front of
//! mocks that speak each provider's wire format.

mod common;
mod llm_mock;
mod sdk;

use common::ai::{
    abandon_stream_after, chat, chunks, llm_route_for_alice, post_as_alice, sse_data, streamed_text,
};
use common::{ALICE_KEY, Gateway, client};
use serde_json::{Value, json};

use llm_mock::{AZURE_API_VERSION, AZURE_KEY, GEMINI_KEY, Mock};
use sdk::run_sdk_script;

fn config(gemini: &Mock, azure: &Mock) -> String {
    format!(
        r#"{node}
ai:
  providers:
    - name: gemini-main
      type: gemini
      base_url: http://{gemini}/v1beta
      api_key: ${{GEMINI_API_KEY}}
    - name: gemini-wrong-key
      type: gemini
      base_url: http://{gemini}/v1beta
      api_key: not-the-key
    - name: azure-main
      type: azure-openai
      base_url: http://{azure}
      api_key: ${{AZURE_OPENAI_API_KEY}}
      api_version: "{api_version}"
  models:
    - name: fast
      targets: [gemini-main/gemini-2.5-flash]
    - name: gemini-then-azure
      targets: [gemini-main/gemini-429, azure-main/gpt-4o-prod]
    - name: embed
      targets: [gemini-main/gemini-embedding-001]
  prices:
    - model: gemini-main/gemini-2.5-flash
      input_per_million: 0.30
      output_per_million: 2.50
      cache_read_per_million: 0.075
    - model: azure-main/gpt-4o-prod
      input_per_million: 2.50
      output_per_million: 10.00
{routes}"#,
        node = common::node_config(),
        routes = llm_route_for_alice("{}"),
        gemini = gemini.addr,
        azure = azure.addr,
        api_version = AZURE_API_VERSION,
    )
}

async fn start() -> (Gateway, Mock, Mock) {
    let gemini = llm_mock::gemini().await;
    let azure = llm_mock::azure().await;
    let gateway = Gateway::start_with_env(
        &config(&gemini, &azure),
        &[
            ("GEMINI_API_KEY", GEMINI_KEY),
            ("AZURE_OPENAI_API_KEY", AZURE_KEY),
        ],
    );
    (gateway, gemini, azure)
}

#[tokio::test]
async fn gemini_chat_is_translated() {
    let (gateway, gemini, _azure) = start().await;
    let response = chat(
        &gateway,
        "gemini-chat-1",
        json!({
            "model": "fast",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
                ]}
            ],
            "max_tokens": 64,
            "stop": "END",
            "temperature": 0.2
        }),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["x-portcullis-target"],
        "gemini-main/gemini-2.5-flash"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["id"], "chatcmpl-mock-gemini-response-1");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Hello from gemini"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["prompt_tokens"], 120);
    assert_eq!(body["usage"]["prompt_tokens_details"]["cached_tokens"], 80);
    assert_eq!(body["usage"]["completion_tokens"], 52);
    assert_eq!(
        body["usage"]["completion_tokens_details"]["reasoning_tokens"],
        40
    );

    let sent = gemini.requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].path,
        "/v1beta/models/gemini-2.5-flash:generateContent"
    );
    assert_eq!(sent[0].headers["x-goog-api-key"], GEMINI_KEY);
    assert!(sent[0].headers.get("authorization").is_none());
    let request = &sent[0].body;
    assert_eq!(
        request["systemInstruction"],
        json!({"parts": [{"text": "Be brief."}]})
    );
    let roles: Vec<&str> = request["contents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|content| content["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "model", "user"]);
    assert_eq!(
        request["contents"][2]["parts"][1]["inlineData"]["mimeType"],
        "image/png"
    );
    assert_eq!(request["generationConfig"]["maxOutputTokens"], 64);
    assert_eq!(request["generationConfig"]["stopSequences"], json!(["END"]));

    let ai = &gateway.access_log_line("gemini-chat-1")["ai"];
    assert_eq!(ai["provider"], "gemini-main");
    assert_eq!(ai["input_tokens"], 40);
    assert_eq!(ai["cache_read_tokens"], 80);
    assert_eq!(ai["cache_write_tokens"], 0);
    assert_eq!(ai["output_tokens"], 12);
    assert_eq!(ai["reasoning_tokens"], 40);
    assert_eq!(ai["usage_estimated"], false);
    // 40 * 0.30 + 80 * 0.075 + 12 * 2.50 + 40 * 2.50 (thoughts at the output price).
    let cost = ai["cost"].as_f64().unwrap();
    assert!((cost - 148.0 / 1e6).abs() < 1e-12, "{cost}");
    assert!(
        !gateway.stderr().contains(GEMINI_KEY),
        "a provider key was logged"
    );
}

#[tokio::test]
async fn gemini_stream_ends_with_usage_and_done() {
    let (gateway, gemini, _azure) = start().await;
    let response = chat(
        &gateway,
        "gemini-stream-1",
        json!({"model": "fast", "stream": true, "stream_options": {"include_usage": true},
               "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let data = sse_data(&response.text().await.unwrap());
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks = chunks(&data);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks
        .iter()
        .filter_map(|chunk| chunk.pointer("/choices/0/delta/content")?.as_str())
        .collect();
    assert_eq!(content, "Hello from gemini");
    assert!(
        chunks
            .iter()
            .all(|chunk| chunk["object"] == "chat.completion.chunk")
    );
    assert!(chunks.iter().all(|chunk| chunk["id"] == chunks[0]["id"]));
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let usage = &chunks[chunks.len() - 1];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["prompt_tokens"], 120);
    assert_eq!(usage["usage"]["completion_tokens"], 52);

    let sent = &gemini.requests()[0];
    assert_eq!(
        sent.path,
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    );
    assert_eq!(sent.query.as_deref(), Some("alt=sse"));
    let ai = &gateway.access_log_line("gemini-stream-1")["ai"];
    assert_eq!(ai["stream"], true);
    assert_eq!(ai["input_tokens"], 40);
    assert_eq!(ai["output_tokens"], 12);
    assert_eq!(ai["reasoning_tokens"], 40);
    assert_eq!(ai["usage_estimated"], false);
    assert_eq!(ai["stream_error"], false);
}

const WEATHER_TOOL: &str = r#"{"type": "function", "function": {"name": "get_weather",
    "parameters": {"type": "object", "additionalProperties": false,
                   "properties": {"city": {"type": "string"}}, "required": ["city"]}}}"#;

#[tokio::test]
async fn gemini_tool_calls_round_trip() {
    let (gateway, gemini, _azure) = start().await;
    let tool: Value = serde_json::from_str(WEATHER_TOOL).unwrap();
    let question = json!({"role": "user", "content": "Weather in Paris and Oslo?"});
    let response = chat(
        &gateway,
        "gemini-tools-1",
        json!({"model": "fast", "messages": [question], "tools": [tool], "tool_choice": "required"}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert!(choice["message"]["content"].is_null());
    let calls = choice["message"]["tool_calls"].as_array().unwrap().clone();
    assert_eq!(calls.len(), 2);
    assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
    assert_ne!(calls[0]["id"], calls[1]["id"]);
    assert_eq!(calls[1]["function"]["arguments"], "{\"city\":\"Oslo\"}");
    let sent = &gemini.requests()[0].body;
    assert_eq!(sent["toolConfig"]["functionCallingConfig"]["mode"], "ANY");
    assert!(
        sent.pointer("/tools/0/functionDeclarations/0/parameters/additionalProperties")
            .is_none()
    );

    // The results go back with the ids that the gateway minted. The mock checks that one turn
    // contains a result for each call, matched by name.
    let response = chat(
        &gateway,
        "gemini-tools-2",
        json!({"model": "fast", "tools": [tool], "messages": [
            question,
            {"role": "assistant", "content": null, "tool_calls": calls},
            {"role": "tool", "tool_call_id": calls[0]["id"], "content": "{\"celsius\": 18}"},
            {"role": "tool", "tool_call_id": calls[1]["id"], "content": "4C"},
        ]}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Results: get_weather={\"celsius\":18}; get_weather={\"content\":\"4C\"}"
    );
    let sent = &gemini.requests()[1].body;
    assert_eq!(sent["contents"][1]["role"], "model");
    assert_eq!(sent["contents"][2]["role"], "user");
    assert_eq!(sent["contents"][2]["parts"].as_array().unwrap().len(), 2);

    let response = chat(
        &gateway,
        "gemini-tools-3",
        json!({"model": "fast", "messages": [
            {"role": "tool", "tool_call_id": "call_unknown", "content": "4C"},
        ]}),
    )
    .await;
    let body = common::error_body(response, 400).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("call_unknown"),
        "{body}"
    );
}

#[tokio::test]
async fn gemini_stream_with_two_tool_calls() {
    let (gateway, _gemini, _azure) = start().await;
    let tool: Value = serde_json::from_str(WEATHER_TOOL).unwrap();
    let response = chat(
        &gateway,
        "gemini-stream-tools",
        json!({"model": "fast", "stream": true, "tools": [tool],
               "messages": [{"role": "user", "content": "Weather in Paris and Oslo?"}]}),
    )
    .await;
    let data = sse_data(&response.text().await.unwrap());
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks = chunks(&data);
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|chunk| chunk.pointer("/choices/0/delta/tool_calls/0"))
        .collect();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0]["index"], 0);
    assert_eq!(calls[1]["index"], 1);
    assert_eq!(calls[0]["function"]["arguments"], "{\"city\":\"Paris\"}");
    assert_ne!(calls[0]["id"], calls[1]["id"]);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "tool_calls");
    assert!(
        !data.iter().any(|line| line.contains("\"usage\"")),
        "the client did not ask for usage"
    );
    let ai = &gateway.access_log_line("gemini-stream-tools")["ai"];
    assert_eq!(ai["output_tokens"], 12);
    assert_eq!(ai["usage_estimated"], false);
}

/// A Gemini 3 model of the mock, which signs function calls and rejects a replay without the
/// signature.
const GEMINI_3: &str = "gemini-main/gemini-3-flash-preview";

/// Reads the tool calls of a chat completion, or of the deltas of a stream, which carry each
/// Gemini call whole.
async fn tool_calls_of(response: reqwest::Response, stream: bool) -> Vec<Value> {
    assert_eq!(response.status(), 200);
    if !stream {
        let body: Value = response.json().await.unwrap();
        return body["choices"][0]["message"]["tool_calls"]
            .as_array()
            .unwrap()
            .clone();
    }
    let data = sse_data(&response.text().await.unwrap());
    assert_eq!(data.last().unwrap(), "[DONE]");
    chunks(&data)
        .iter()
        .filter_map(|chunk| chunk.pointer("/choices/0/delta/tool_calls/0"))
        .map(|call| json!({"id": call["id"], "type": "function", "function": call["function"]}))
        .collect()
}

/// Runs a tool call conversation of two turns with [`GEMINI_3`] and checks that turn two
/// sends the signature of turn one back to the mock, on the first call's part only.
async fn gemini3_signature_round_trip(stream: bool) {
    let (gateway, gemini, _azure) = start().await;
    let tool: Value = serde_json::from_str(WEATHER_TOOL).unwrap();
    let question = json!({"role": "user", "content": "Weather in Paris and Oslo?"});
    let response = chat(
        &gateway,
        "gemini3-tools-1",
        json!({"model": GEMINI_3, "stream": stream, "messages": [question], "tools": [tool]}),
    )
    .await;
    let calls = tool_calls_of(response, stream).await;
    assert_eq!(calls.len(), 2);
    let turn_one = &gemini.requests()[0].body;
    assert!(turn_one.to_string().find("thoughtSignature").is_none());

    // Turn two sends the calls back as the client received them, with one result each.
    let with_results = |calls: &[Value]| {
        let messages = [
            question.clone(),
            json!({"role": "assistant", "content": null, "tool_calls": calls}),
            json!({"role": "tool", "tool_call_id": calls[0]["id"], "content": "{\"celsius\": 18}"}),
            json!({"role": "tool", "tool_call_id": calls[1]["id"], "content": "4C"}),
        ];
        json!({"model": GEMINI_3, "stream": stream, "tools": [tool], "messages": messages})
    };
    let response = chat(&gateway, "gemini3-tools-2", with_results(&calls)).await;
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    let text = if stream {
        streamed_text(&body)
    } else {
        serde_json::from_str::<Value>(&body).unwrap()["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        text,
        "Results: get_weather={\"celsius\":18}; get_weather={\"content\":\"4C\"}"
    );
    let turn_two = &gemini.requests()[1].body;
    let replayed = turn_two["contents"][1]["parts"].as_array().unwrap();
    let paris = json!({"name": "get_weather", "args": {"city": "Paris"}});
    assert_eq!(
        replayed[0]["thoughtSignature"],
        llm_mock::thought_signature(&paris)
    );
    assert_eq!(replayed[0]["functionCall"], paris);
    assert!(replayed[1].get("thoughtSignature").is_none());

    // Without the signature in the id, as a client that rewrote the ids would send it, the
    // mock rejects the turn as Gemini 3 does.
    let mut unsigned = calls.clone();
    unsigned[0]["id"] = json!("call_unsigned");
    let response = chat(&gateway, "gemini3-tools-3", with_results(&unsigned)).await;
    assert_eq!(response.status(), 400);
    let body = response.text().await.unwrap();
    assert!(body.contains("thought_signature"), "{body}");
}

#[tokio::test]
async fn gemini3_thought_signature_round_trips() {
    gemini3_signature_round_trip(false).await;
}

#[tokio::test]
async fn gemini3_stream_thought_signature_round_trips() {
    gemini3_signature_round_trip(true).await;
}

#[tokio::test]
async fn gemini_json_schema_output() {
    let (gateway, gemini, _azure) = start().await;
    let response = chat(
        &gateway,
        "gemini-json",
        json!({"model": "fast", "messages": [{"role": "user", "content": "I love it"}],
               "response_format": {"type": "json_schema", "json_schema": {"name": "sentiment", "strict": true, "schema": {
                   "type": "object", "additionalProperties": false,
                   "properties": {"sentiment": {"type": "string", "enum": ["positive", "negative"]}},
                   "required": ["sentiment"]}}}}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    let parsed: Value = serde_json::from_str(content).unwrap();
    assert_eq!(parsed, json!({"sentiment": "positive"}));
    let config = &gemini.requests()[0].body["generationConfig"];
    assert_eq!(config["responseMimeType"], "application/json");
    assert_eq!(
        config["responseSchema"]["properties"]["sentiment"]["enum"],
        json!(["positive", "negative"])
    );
}

#[tokio::test]
async fn gemini_errors() {
    let (gateway, _gemini, azure) = start().await;

    let response = chat(
        &gateway,
        "gemini-error-mid",
        json!({"model": "gemini-main/gemini-error-mid", "stream": true,
               "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let data = sse_data(&response.text().await.unwrap());
    assert!(!data.iter().any(|line| line == "[DONE]"));
    let first: Value = serde_json::from_str(&data[0]).unwrap();
    assert_eq!(first["choices"][0]["delta"]["content"], "Hello ");
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "UNAVAILABLE");
    assert_eq!(last["error"]["status"], 503);
    assert_eq!(last["error"]["request_id"], "gemini-error-mid");
    let ai = &gateway.access_log_line("gemini-error-mid")["ai"];
    assert_eq!(ai["stream_error"], true);
    assert_eq!(ai["input_tokens"], 120);

    let response = chat(
        &gateway,
        "gemini-wrong-key",
        json!({"model": "gemini-wrong-key/gemini-2.5-flash", "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    let body = common::error_body(response, 502).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("gemini-wrong-key"),
        "{body}"
    );

    let response = chat(
        &gateway,
        "gemini-bad-model",
        json!({"model": "gemini-main/../files", "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    let body = common::error_body(response, 400).await;
    assert_eq!(body["error"]["code"], "invalid_model");

    let response = chat(
        &gateway,
        "gemini-fallback",
        json!({"model": "gemini-then-azure", "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["x-portcullis-target"],
        "azure-main/gpt-4o-prod"
    );
    let ai = &gateway.access_log_line("gemini-fallback")["ai"];
    assert_eq!(ai["attempts"], 2);
    assert_eq!(azure.requests().len(), 1);

    let response = client()
        .post(gateway.url("/v1/embeddings"))
        .bearer_auth(ALICE_KEY)
        .json(&json!({"model": "gemini-main/gemini-embedding-429", "input": "hello"}))
        .send()
        .await
        .unwrap();
    let body = common::error_body(response, 429).await;
    assert_eq!(body["error"]["code"], "RESOURCE_EXHAUSTED");
}

// Two workers, because `access_log_line` blocks one while the client connection must still
// be closed on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_spend_recorded_on_client_disconnect() {
    let (gateway, _gemini, _azure) = start().await;
    let response = chat(
        &gateway,
        "gemini-disconnect",
        json!({"model": "gemini-main/gemini-hang", "stream": true,
               "messages": [{"role": "user", "content": "Tell me a long story"}]}),
    )
    .await;
    abandon_stream_after(response, "from gemini").await;

    let line = gateway.access_log_line("gemini-disconnect");
    assert_eq!(line["outcome"], "client_aborted");
    let ai = &line["ai"];
    assert_eq!(ai["usage_estimated"], true);
    assert_eq!(ai["input_tokens"], 120, "reported in the first event");
    assert!(ai["output_tokens"].as_u64().unwrap() > 0, "{ai}");
}

#[tokio::test]
async fn azure_deployment_urls_and_key() {
    let (gateway, _gemini, azure) = start().await;
    let response = chat(
        &gateway,
        "azure-chat-1",
        json!({"model": "azure-main/gpt-4o-prod", "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "Hello from gpt");
    let sent = &azure.requests()[0];
    assert_eq!(
        sent.path,
        "/openai/deployments/gpt-4o-prod/chat/completions"
    );
    assert_eq!(
        sent.query.as_deref(),
        Some(format!("api-version={AZURE_API_VERSION}").as_str())
    );
    assert_eq!(sent.headers["api-key"], AZURE_KEY);
    assert!(sent.headers.get("authorization").is_none());
    let ai = &gateway.access_log_line("azure-chat-1")["ai"];
    assert_eq!(ai["input_tokens"], 60);
    assert_eq!(ai["cache_read_tokens"], 40);
    assert_eq!(ai["reasoning_tokens"], 20);
    // (60 + 40) * 2.50 + (30 + 20) * 10.00, with cache reads and reasoning at the defaults.
    let cost = ai["cost"].as_f64().unwrap();
    assert!((cost - 750.0 / 1e6).abs() < 1e-12, "{cost}");

    let response = chat(
        &gateway,
        "azure-stream-1",
        json!({"model": "azure-main/gpt-4o-prod", "stream": true,
               "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    let data = sse_data(&response.text().await.unwrap());
    assert_eq!(data.last().unwrap(), "[DONE]");
    assert!(!data.iter().any(|line| line.contains("prompt_tokens")));
    assert_eq!(
        azure.requests()[1].body["stream_options"]["include_usage"],
        true
    );
    let ai = &gateway.access_log_line("azure-stream-1")["ai"];
    assert_eq!(ai["input_tokens"], 60);
    assert_eq!(ai["usage_estimated"], false);

    let response = client()
        .post(gateway.url("/v1/embeddings"))
        .bearer_auth(ALICE_KEY)
        .header("x-request-id", "azure-embed-1")
        .json(&json!({"model": "azure-main/embedding-small", "input": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["data"][0]["embedding"][2], -1.0);
    assert_eq!(
        azure.requests()[2].path,
        "/openai/deployments/embedding-small/embeddings"
    );
    assert_eq!(
        gateway.access_log_line("azure-embed-1")["ai"]["input_tokens"],
        6
    );

    let response = chat(
        &gateway,
        "azure-missing",
        json!({"model": "azure-main/missing-deployment", "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    let body = common::error_body(response, 404).await;
    assert_eq!(body["error"]["code"], "DeploymentNotFound");
}

#[tokio::test]
async fn openai_sdk_on_gemini_and_azure() {
    let (gateway, gemini, _azure) = start().await;
    let cases = json!([
        ["chat", "fast"],
        ["chat", "azure-main/gpt-4o-prod"],
        ["stream", "fast"],
        ["stream", "azure-main/gpt-4o-prod"],
        ["tools", "fast"],
        ["tools", "azure-main/gpt-4o-prod"],
        ["stream_tools", "fast"],
        ["stream_tools", "azure-main/gpt-4o-prod"],
        ["stream_error", "gemini-main/gemini-error-mid"],
        ["embeddings", "azure-main/embedding-small"],
        ["embeddings", "embed"],
        ["tool_round_trip", GEMINI_3],
        ["stream_tool_round_trip", GEMINI_3],
    ]);
    let results = run_sdk_script("openai_client.py", &gateway.url("/v1"), &cases).await;

    assert_eq!(results[0]["content"], "Hello from gemini");
    assert_eq!(results[0]["finish_reason"], "stop");
    assert_eq!(results[0]["prompt_tokens"], 120);
    assert_eq!(results[0]["completion_tokens"], 52);
    assert_eq!(results[1]["content"], "Hello from gpt");
    assert_eq!(results[1]["completion_tokens"], 50);

    assert_eq!(results[2]["content"], "Hello from gemini");
    assert_eq!(results[2]["completion_tokens"], 52);
    assert_eq!(results[3]["content"], "Hello from gpt");
    assert_eq!(results[3]["completion_tokens"], 50);

    for (index, result) in results.iter().enumerate().take(8).skip(4) {
        assert_eq!(
            result["finish_reason"], "tool_calls",
            "case {index}: {result}"
        );
        let calls = result["calls"].as_array().unwrap();
        assert_eq!(calls.len(), 2, "case {index}: {result}");
        assert!(
            calls[0]["id"].as_str().unwrap().starts_with("call_"),
            "case {index}: {result}"
        );
        assert_eq!(calls[0]["name"], "get_weather");
        assert_eq!(calls[0]["arguments"]["city"], "Paris", "case {index}");
        assert_eq!(calls[1]["arguments"]["city"], "Oslo", "case {index}");
        assert_ne!(calls[0]["id"], calls[1]["id"], "case {index}");
    }

    assert_eq!(results[8]["content"], "Hello ");
    assert_eq!(results[8]["error"], "APIError");
    assert_eq!(
        results[8]["message"],
        "The model is overloaded. Please try again later."
    );

    assert_eq!(results[9]["embedding"], json!([0.5, 0.25, -1.0]));
    assert_eq!(results[9]["prompt_tokens"], 6);

    // The SDK requests base64 and decodes it. The mock's vector for "hello" is (5 + d) / 8.
    assert_eq!(results[10]["embedding"], json!([0.625, 0.75, 0.875, 1.0]));
    assert_eq!(results[10]["prompt_tokens"], 2);

    // The SDK keeps the tool call ids, and with them the Gemini 3 signatures, so the mock
    // accepts the second turn, plain and streamed.
    for (index, result) in results.iter().enumerate().skip(11) {
        assert_eq!(
            result["content"],
            "Results: get_weather={\"content\":\"18C\"}; get_weather={\"content\":\"17C\"}",
            "case {index}: {result}"
        );
    }
    let paris = json!({"name": "get_weather", "args": {"city": "Paris"}});
    let replays: Vec<Value> = gemini
        .requests()
        .into_iter()
        .filter(|request| request.path.contains("gemini-3-flash-preview"))
        .filter_map(|request| request.body.pointer("/contents/1/parts/0").cloned())
        .collect();
    assert_eq!(replays.len(), 2, "{replays:?}");
    for replay in replays {
        assert_eq!(replay["functionCall"], paris);
        assert_eq!(
            replay["thoughtSignature"],
            llm_mock::thought_signature(&paris)
        );
    }
}

async fn embeddings(gateway: &Gateway, request_id: &str, body: Value) -> reqwest::Response {
    post_as_alice(gateway, "/v1/embeddings", request_id, &body).await
}

#[tokio::test]
async fn gemini_embeddings_are_translated() {
    let (gateway, gemini, _azure) = start().await;
    let response = embeddings(
        &gateway,
        "gemini-embed-1",
        json!({"model": "embed", "input": ["hello", "hi there"], "dimensions": 3, "encoding_format": "float"}),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["x-portcullis-target"],
        "gemini-main/gemini-embedding-001"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "gemini-embedding-001");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[0]["object"], "embedding");
    assert_eq!(data[0]["index"], 0);
    assert_eq!(data[0]["embedding"], json!([0.625, 0.75, 0.875]));
    assert_eq!(data[1]["index"], 1);
    assert_eq!(data[1]["embedding"], json!([1.0, 1.125, 1.25]));
    // Gemini sends no usage for embeddings: 13 characters at 4 per token.
    assert_eq!(body["usage"]["prompt_tokens"], 4);
    assert_eq!(body["usage"]["total_tokens"], 4);

    let request = gemini.requests().pop().unwrap();
    assert_eq!(
        request.path,
        "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    );
    assert_eq!(request.headers["x-goog-api-key"], GEMINI_KEY);
    assert_eq!(
        request.body["requests"][1],
        json!({"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "hi there"}]}, "outputDimensionality": 3})
    );

    let ai = &gateway.access_log_line("gemini-embed-1")["ai"];
    assert_eq!(ai["target"], "gemini-main/gemini-embedding-001");
    assert_eq!(ai["input_tokens"], 4);
    assert_eq!(ai["output_tokens"], 0);
    assert_eq!(ai["usage_estimated"], true);
}

#[tokio::test]
async fn gemini_embeddings_reject_invalid_input() {
    let (gateway, gemini, _azure) = start().await;
    let cases = [
        (
            json!({"model": "embed", "input": [[1, 2, 3]]}),
            "invalid_input",
        ),
        (json!({"model": "embed", "input": ""}), "invalid_input"),
        (json!({"model": "embed"}), "missing_input"),
        (
            json!({"model": "embed", "input": "a", "encoding_format": "int8"}),
            "invalid_encoding_format",
        ),
        (
            json!({"model": "embed", "input": vec!["a"; 101]}),
            "too_many_inputs",
        ),
    ];
    for (body, code) in cases {
        let response = embeddings(&gateway, "gemini-embed-invalid", body.clone()).await;
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], code, "{body}");
        assert_eq!(error["error"]["type"], "invalid_request_error", "{body}");
    }
    assert!(gemini.requests().is_empty());
}
