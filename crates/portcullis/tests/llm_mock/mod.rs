//! Mock OpenAI, Azure OpenAI, Anthropic and Gemini servers on ephemeral ports, speaking each
//! provider's wire format, streams included. Gemini and Azure OpenAI are in [`gemini`] and
//! [`azure`].
//!
//! The provider model name picks the behaviour: a name containing `429`, `500`, `503` (OpenAI)
//! or `529` (Anthropic) fails with that status, `error-mid` sends an error event mid-stream, `hang` stops a stream after
//! its first events and keeps the connection open, `tools` answers with two tool calls, and
//! `nousage` streams without usage, and `fail-once` fails with 503 the first time the mock
//! receives that model name. [`replies`] lists the replies that depend on the request, such as
//! echoes and structured output. Every request is recorded for assertions.
//!
//! The OpenAI mock accepts [`OPENAI_KEY`] and [`OPENAI_KEY_2`], answers
//! [`OPENAI_RATE_LIMITED_KEY`] with 429 and `Retry-After: 30` as OpenAI does when a key's
//! quota is spent, and rejects any other key with 401.

#![allow(dead_code)]

mod azure;
mod gemini;
mod replies;

// Not every test binary that includes this module uses every key.
#[allow(unused_imports)]
pub use azure::{AZURE_API_VERSION, AZURE_KEY};
#[allow(unused_imports)]
pub use gemini::{GEMINI_KEY, thought_signature};

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};

pub const OPENAI_KEY: &str = "test-openai-key";
/// A second valid OpenAI key, for key pools.
pub const OPENAI_KEY_2: &str = "test-openai-key-2";
/// An OpenAI key whose every request gets 429.
pub const OPENAI_RATE_LIMITED_KEY: &str = "test-openai-key-rate-limited";
pub const ANTHROPIC_KEY: &str = "test-anthropic-key";

type MockBody = UnsyncBoxBody<Bytes, Infallible>;

/// Starts mock Anthropic and OpenAI servers and a gateway with the config that `config`
/// returns for them. `ANTHROPIC_API_KEY` and `OPENAI_API_KEY` hold the mocks' keys, and `env`
/// sets further variables.
pub async fn start_with_anthropic_and_openai(
    config: impl FnOnce(&Mock, &Mock) -> String,
    env: &[(&str, &str)],
) -> (crate::common::Gateway, Mock, Mock) {
    let anthropic = anthropic().await;
    let openai = openai().await;
    let mut variables = vec![
        ("ANTHROPIC_API_KEY", ANTHROPIC_KEY),
        ("OPENAI_API_KEY", OPENAI_KEY),
    ];
    variables.extend_from_slice(env);
    let gateway = crate::common::Gateway::start_with_env(&config(&anthropic, &openai), &variables);
    (gateway, anthropic, openai)
}

/// A request the mock received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    pub query: Option<String>,
    pub headers: http::HeaderMap,
    pub body: Value,
}

/// A running mock provider.
#[derive(Clone)]
pub struct Mock {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
}

impl Mock {
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

#[derive(Clone, Copy)]
enum Kind {
    OpenAi,
    Anthropic,
    Gemini,
    Azure,
}

pub async fn openai() -> Mock {
    spawn(Kind::OpenAi).await
}

pub async fn anthropic() -> Mock {
    spawn(Kind::Anthropic).await
}

/// Starts a Gemini mock; its API is under `/v1beta`.
pub async fn gemini() -> Mock {
    spawn(Kind::Gemini).await
}

/// Starts an Azure OpenAI mock that serves any deployment name.
pub async fn azure() -> Mock {
    spawn(Kind::Azure).await
}

async fn spawn(kind: Kind) -> Mock {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mock = Mock {
        addr: listener.local_addr().unwrap(),
        requests: Arc::default(),
    };
    let requests = mock.requests.clone();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let requests = requests.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let requests = requests.clone();
                    async move { Ok::<_, Infallible>(handle(kind, request, &requests).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(socket), service)
                    .await;
            });
        }
    });
    mock
}

async fn handle(
    kind: Kind,
    request: Request<Incoming>,
    requests: &Mutex<Vec<Recorded>>,
) -> Response<MockBody> {
    let (parts, body) = request.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let model = body["model"].as_str().unwrap_or("").to_string();
    let first_with_model = {
        let mut requests = requests.lock().unwrap();
        let first = !requests
            .iter()
            .any(|earlier| earlier.body["model"] == body["model"]);
        requests.push(Recorded {
            path: parts.uri.path().to_string(),
            query: parts.uri.query().map(str::to_string),
            headers: parts.headers.clone(),
            body: body.clone(),
        });
        first
    };
    match kind {
        Kind::Gemini => gemini::handle(&parts, &body),
        Kind::Azure => azure::handle(&parts, &body),
        Kind::OpenAi => {
            let key = parts
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            if key == OPENAI_RATE_LIMITED_KEY {
                let mut response = json_response(
                    429,
                    json!({"error": {"message": "Rate limit reached for requests", "type": "requests", "param": null, "code": "rate_limit_exceeded"}}),
                );
                response
                    .headers_mut()
                    .insert("retry-after", "30".parse().unwrap());
                return response;
            }
            if key != OPENAI_KEY && key != OPENAI_KEY_2 {
                return json_response(
                    401,
                    json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}),
                );
            }
            if let Err(message) = check_openai_tool_ids(&body) {
                return json_response(
                    400,
                    json!({"error": {"message": message, "type": "invalid_request_error", "param": "messages", "code": null}}),
                );
            }
            if model.contains("fail-once") && first_with_model {
                return json_response(
                    503,
                    json!({"error": {"message": "The server is overloaded", "type": "server_error", "param": null, "code": null}}),
                );
            }
            for status in [429, 500, 503] {
                if model.contains(&status.to_string()) {
                    return json_response(
                        status,
                        json!({"error": {"message": format!("mock failure {status}"), "type": "server_error", "param": null, "code": null}}),
                    );
                }
            }
            match parts.uri.path() {
                "/v1/chat/completions" if body["stream"] == true => openai_stream(&model, &body),
                "/v1/chat/completions" if model.contains("slow-body") => {
                    json_body_after(Duration::from_millis(500), openai_completion(&model, &body))
                }
                "/v1/chat/completions" => json_response(200, openai_completion(&model, &body)),
                "/v1/embeddings" => json_response(
                    200,
                    json!({
                        "object": "list",
                        "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5, 0.125]}],
                        "model": model,
                        "usage": {"prompt_tokens": 8, "total_tokens": 8}
                    }),
                ),
                _ => json_response(
                    404,
                    json!({"error": {"message": "not found", "type": "invalid_request_error"}}),
                ),
            }
        }
        Kind::Anthropic => {
            let authorized = parts.headers.get("x-api-key").and_then(|v| v.to_str().ok())
                == Some(ANTHROPIC_KEY)
                && parts.headers.get("anthropic-version").is_some();
            if !authorized {
                return json_response(
                    401,
                    json!({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}),
                );
            }
            if body.get("max_tokens").and_then(Value::as_u64).is_none() {
                return json_response(
                    400,
                    json!({"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"}}),
                );
            }
            if let Err(message) = check_anthropic_tool_ids(&body) {
                return json_response(
                    400,
                    json!({"type": "error", "error": {"type": "invalid_request_error", "message": message}}),
                );
            }
            for (status, kind) in [
                (429, "rate_limit_error"),
                (500, "api_error"),
                (529, "overloaded_error"),
            ] {
                if model.contains(&status.to_string()) {
                    return json_response(
                        status,
                        json!({"type": "error", "error": {"type": kind, "message": format!("mock {kind}")}}),
                    );
                }
            }
            if parts.uri.path() != "/v1/messages" {
                return json_response(
                    404,
                    json!({"type": "error", "error": {"type": "not_found_error", "message": "not found"}}),
                );
            }
            if body["stream"] == true {
                anthropic_stream(&model, &body)
            } else {
                json_response(200, anthropic_message(&model, &body))
            }
        }
    }
}

/// Checks tool call ids as OpenAI does: at most 40 characters, and every tool message replies to a
/// call of the assistant message before it.
fn check_openai_tool_ids(body: &Value) -> Result<(), String> {
    let mut open_calls: Vec<String> = Vec::new();
    for (i, message) in body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        if let Some(calls) = message["tool_calls"].as_array() {
            open_calls.clear();
            for (j, call) in calls.iter().enumerate() {
                let id = call["id"].as_str().unwrap_or("");
                if id.chars().count() > 40 {
                    return Err(format!(
                        "Invalid 'messages[{i}].tool_calls[{j}].id': string too long. Expected a string with maximum length 40, but got a string with length {} instead.",
                        id.chars().count()
                    ));
                }
                open_calls.push(id.to_string());
            }
        }
        if let Some(id) = message["tool_call_id"].as_str()
            && !open_calls.iter().any(|call| call == id)
        {
            return Err(format!(
                "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'. messages[{i}].tool_call_id `{id}` matches none."
            ));
        }
    }
    Ok(())
}

/// Checks tool ids as Anthropic does: `tool_use` ids match `^[a-zA-Z0-9_-]+$`, and each
/// `tool_result` replies to a `tool_use` of the message before it.
fn check_anthropic_tool_ids(body: &Value) -> Result<(), String> {
    let valid = |id: &str| {
        !id.is_empty()
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    let mut previous_uses: Vec<String> = Vec::new();
    for (i, message) in body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let mut uses = Vec::new();
        for (j, block) in message["content"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            if block["type"] == "tool_use" {
                let id = block["id"].as_str().unwrap_or("");
                if !valid(id) {
                    return Err(format!(
                        "messages.{i}.content.{j}.tool_use.id: String should match pattern '^[a-zA-Z0-9_-]+$'"
                    ));
                }
                uses.push(id.to_string());
            }
            if block["type"] == "tool_result" {
                let id = block["tool_use_id"].as_str().unwrap_or("");
                if !previous_uses.iter().any(|used| used == id) {
                    return Err(format!(
                        "messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: {id}. Each `tool_result` block must have a corresponding `tool_use` block in the previous message."
                    ));
                }
            }
        }
        previous_uses = uses;
    }
    Ok(())
}

fn json_response(status: u16, value: Value) -> Response<MockBody> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())).boxed_unsync());
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    response
}

/// Sends the headers of a 200 JSON response at once and its body, `value`, after `delay`.
fn json_body_after(delay: Duration, value: Value) -> Response<MockBody> {
    let body = stream::once(async move {
        tokio::time::sleep(delay).await;
        Ok::<_, Infallible>(Frame::data(Bytes::from(value.to_string())))
    });
    let mut response = Response::new(StreamBody::new(body).boxed_unsync());
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    response
}

/// Streams `events` with `delay` between them. A `None` event keeps the connection open for
/// up to 20 seconds without ending the stream.
fn sse_response(events: Vec<Option<String>>, delay: Duration) -> Response<MockBody> {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        for event in events {
            match event {
                Some(event) => {
                    if sender.send(Bytes::from(event)).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(delay).await;
                }
                None => {
                    tokio::select! {
                        _ = sender.closed() => {}
                        _ = tokio::time::sleep(Duration::from_secs(20)) => {}
                    }
                    return;
                }
            }
        }
    });
    let frames = stream::unfold(receiver, |mut receiver| async move {
        receiver
            .recv()
            .await
            .map(|bytes| (Ok::<_, Infallible>(Frame::data(bytes)), receiver))
    });
    let mut response = Response::new(StreamBody::new(frames).boxed_unsync());
    response
        .headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    response
}

fn openai_usage() -> Value {
    json!({
        "prompt_tokens": 100,
        "completion_tokens": 50,
        "total_tokens": 150,
        "prompt_tokens_details": {"cached_tokens": 40, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 20, "audio_tokens": 0}
    })
}

fn openai_completion(model: &str, request: &Value) -> Value {
    let message = if request.get("tools").is_some() {
        json!({"role": "assistant", "content": null, "refusal": null, "tool_calls": [
            {"id": "call_paris", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
            {"id": "call_oslo", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}
        ]})
    } else if replies::openai_wants_json(request) {
        let content = replies::structured(model, request).to_string();
        json!({"role": "assistant", "content": content, "refusal": null})
    } else if model.contains("echo") {
        json!({"role": "assistant", "content": replies::last_user_text(request), "refusal": null})
    } else {
        json!({"role": "assistant", "content": "Hello from gpt", "refusal": null})
    };
    let finish = if request.get("tools").is_some() {
        "tool_calls"
    } else {
        "stop"
    };
    json!({
        "id": "chatcmpl-mock1",
        "object": "chat.completion",
        "created": 1741569952,
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
        "usage": openai_usage(),
        "service_tier": "default",
        "system_fingerprint": "fp_mock"
    })
}

fn openai_stream(model: &str, request: &Value) -> Response<MockBody> {
    openai_stream_after(Vec::new(), model, request)
}

/// Streams a chat completion after the events in `events`.
fn openai_stream_after(
    mut events: Vec<Option<String>>,
    model: &str,
    request: &Value,
) -> Response<MockBody> {
    let chunk = |delta: Value, finish: Value| {
        Some(format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-mock2", "object": "chat.completion.chunk", "created": 1741569952, "model": model, "system_fingerprint": "fp_mock", "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
        ))
    };
    events.push(chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    ));
    let tools = request.get("tools").is_some();
    if tools {
        for (index, (id, city)) in [("call_paris", "Paris"), ("call_oslo", "Oslo")]
            .iter()
            .enumerate()
        {
            events.push(chunk(
                json!({"tool_calls": [{"index": index, "id": id, "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
                Value::Null,
            ));
            events.push(chunk(
                json!({"tool_calls": [{"index": index, "function": {"arguments": format!("{{\"city\":\"{city}\"}}")}}]}),
                Value::Null,
            ));
        }
    } else {
        let words = if model.contains("echo") {
            replies::echo_pieces(&replies::last_user_text(request))
        } else {
            vec!["Hello".into(), " from".into(), " gpt".into()]
        };
        for word in words {
            events.push(chunk(json!({"content": word}), Value::Null));
        }
    }
    if model.contains("hang") {
        events.push(None);
        return sse_response(events, Duration::from_millis(5));
    }
    events.push(chunk(
        json!({}),
        json!(if tools { "tool_calls" } else { "stop" }),
    ));
    let include_usage = request.pointer("/stream_options/include_usage") == Some(&json!(true));
    if include_usage && !model.contains("nousage") {
        events.push(Some(format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-mock2", "object": "chat.completion.chunk", "created": 1741569952, "model": model, "choices": [], "usage": openai_usage()})
        )));
    }
    events.push(Some("data: [DONE]\n\n".to_string()));
    sse_response(events, Duration::from_millis(2))
}

fn anthropic_usage() -> Value {
    json!({"input_tokens": 30, "cache_creation_input_tokens": 200, "cache_read_input_tokens": 1000, "output_tokens": 15})
}

fn anthropic_message(model: &str, request: &Value) -> Value {
    let forced = replies::anthropic_forced_tool(request);
    let content = if let Some(tool) = forced {
        json!([{"type": "tool_use", "id": "toolu_json", "name": tool, "input": replies::structured(model, request)}])
    } else if model.contains("echo") {
        json!([{"type": "text", "text": replies::last_user_text(request)}])
    } else if model.contains("tools") {
        json!([
            {"type": "text", "text": "Let me check both."},
            {"type": "tool_use", "id": "toolu_paris", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_oslo", "name": "get_weather", "input": {"city": "Oslo"}}
        ])
    } else {
        json!([{"type": "text", "text": "Hello from claude"}])
    };
    json!({
        "id": "msg_mock1",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": if model.contains("tools") || forced.is_some() { "tool_use" } else { "end_turn" },
        "stop_sequence": null,
        "usage": anthropic_usage()
    })
}

fn anthropic_stream(model: &str, request: &Value) -> Response<MockBody> {
    let event = |name: &str, data: Value| Some(format!("event: {name}\ndata: {data}\n\n"));
    let mut start_usage = anthropic_usage();
    start_usage["output_tokens"] = json!(1);
    let mut events = vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_mock2", "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": start_usage}}),
        ),
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        event("ping", json!({"type": "ping"})),
        event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}),
        ),
    ];
    if model.contains("error-mid") {
        events.push(event("error", json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})));
        return sse_response(events, Duration::from_millis(2));
    }
    if model.contains("hang") {
        events.push(event("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " from claude, streaming slowly"}})));
        events.push(None);
        return sse_response(events, Duration::from_millis(5));
    }
    if model.contains("echo") {
        // The echo replaces the "Hello" delta above.
        events.pop();
        for piece in replies::echo_pieces(&replies::last_user_text(request)) {
            events.push(event("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}})));
        }
    } else {
        events.push(event("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " from claude"}})));
    }
    events.push(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    let mut stop_reason = "end_turn";
    if model.contains("tools") {
        stop_reason = "tool_use";
        for (index, (id, city)) in [(1, ("toolu_paris", "Paris")), (2, ("toolu_oslo", "Oslo"))] {
            events.push(event("content_block_start", json!({"type": "content_block_start", "index": index, "content_block": {"type": "tool_use", "id": id, "name": "get_weather", "input": {}}})));
            events.push(event("content_block_delta", json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": "{\"city\": "}})));
            events.push(event("content_block_delta", json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": format!("\"{city}\"}}")}})));
            events.push(event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ));
        }
    }
    let final_usage = if model.contains("nousage") {
        json!({})
    } else {
        json!({"output_tokens": 15})
    };
    events.push(event("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null}, "usage": final_usage})));
    events.push(event("message_stop", json!({"type": "message_stop"})));
    sse_response(events, Duration::from_millis(2))
}
