//! A mock of the Gemini API (`v1beta`): `models/{model}:generateContent` and
//! `:streamGenerateContent?alt=sse`, with the `x-goog-api-key` header.
//!
//! It checks the request fields that translating gateways often get wrong, as Gemini does: unknown fields are
//! rejected with 400 `INVALID_ARGUMENT`, roles must be `user` or `model`, a replayed
//! `functionCall` must not carry an `id`, function schemas take the OpenAPI subset only, and a
//! turn of `functionResponse` parts must answer every call of the model turn before it. The
//! response shapes follow the examples of the Gemini API reference, with `\r\n` between
//! stream events as Gemini sends them.
//!
//! `models/{model}:batchEmbedContents` checks that each request names the URL's model and has
//! text parts, and returns one vector per request as `{"embeddings": [{"values": [...]}]}`, the
//! documented `BatchEmbedContentsResponse` without usage. A vector has `outputDimensionality`
//! values (4 by default), derived from the text so that tests can tell inputs apart.
//!
//! The model name picks the behaviour as in the other mocks: `429`, `500` and `503` fail with
//! that status, `error-mid` sends an error event after the first text, and `hang` stops after
//! the first events. A request with tools and no function results gets two function calls, and
//! a request with `responseMimeType: application/json` gets JSON text.
//!
//! A model whose name contains `gemini-3` handles thought signatures as Gemini 3 does. The
//! first `functionCall` part of a response carries a `thoughtSignature`. A request is rejected
//! with 400 `INVALID_ARGUMENT` when a model step of its current turn lacks that signature on its
//! first `functionCall` part. The current turn starts after the last `user` content with a
//! text part.

use std::time::Duration;

use http::Response;
use http::request::Parts;
use serde_json::{Value, json};

use super::{MockBody, json_response, sse_response};

pub const GEMINI_KEY: &str = "test-gemini-key";

const REQUEST_FIELDS: [&str; 7] = [
    "contents",
    "systemInstruction",
    "generationConfig",
    "tools",
    "toolConfig",
    "safetySettings",
    "cachedContent",
];

const SCHEMA_FIELDS: [&str; 22] = [
    "type",
    "format",
    "title",
    "description",
    "nullable",
    "enum",
    "maxItems",
    "minItems",
    "properties",
    "required",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "example",
    "anyOf",
    "propertyOrdering",
    "default",
    "items",
    "minimum",
    "maximum",
];

fn error(status: u16, code: &str, message: &str) -> Response<MockBody> {
    json_response(
        status,
        json!({"error": {"code": status, "message": message, "status": code}}),
    )
}

fn invalid(message: String) -> Response<MockBody> {
    error(400, "INVALID_ARGUMENT", &message)
}

pub fn handle(parts: &Parts, body: &Value) -> Response<MockBody> {
    if parts
        .headers
        .get("x-goog-api-key")
        .and_then(|v| v.to_str().ok())
        != Some(GEMINI_KEY)
    {
        return json_response(
            400,
            json!({"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.", "status": "INVALID_ARGUMENT",
                "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]}}),
        );
    }
    let Some((model, method)) = parts
        .uri
        .path()
        .strip_prefix("/v1beta/models/")
        .and_then(|rest| rest.split_once(':'))
    else {
        return error(404, "NOT_FOUND", "Requested entity was not found.");
    };
    if method != "batchEmbedContents"
        && let Err(message) = check_request(body)
    {
        return invalid(message);
    }
    if model.contains("gemini-3")
        && let Err(message) = check_thought_signatures(body)
    {
        return invalid(message);
    }
    for (status, code) in [
        (429, "RESOURCE_EXHAUSTED"),
        (500, "INTERNAL"),
        (503, "UNAVAILABLE"),
    ] {
        if model.contains(&status.to_string()) {
            return error(status, code, &format!("mock {code}"));
        }
    }
    match method {
        "batchEmbedContents" => batch_embed(model, body),
        "generateContent" => json_response(200, response(model, body, &answer(model, body), true)),
        "streamGenerateContent" if parts.uri.query() == Some("alt=sse") => stream(model, body),
        "streamGenerateContent" => invalid("the mock streams with alt=sse only".into()),
        _ => error(404, "NOT_FOUND", "Requested entity was not found."),
    }
}

fn batch_embed(model: &str, body: &Value) -> Response<MockBody> {
    if let Some(key) = body
        .as_object()
        .and_then(|object| object.keys().find(|key| *key != "requests"))
    {
        return invalid(format!(
            "Invalid JSON payload received. Unknown name \"{key}\": Cannot find field."
        ));
    }
    let Some(requests) = body["requests"]
        .as_array()
        .filter(|requests| !requests.is_empty())
    else {
        return invalid("* BatchEmbedContentsRequest.requests: requests is not specified".into());
    };
    if requests.len() > 100 {
        return invalid(
            "* BatchEmbedContentsRequest.requests: at most 100 requests can be in one batch".into(),
        );
    }
    let mut embeddings = Vec::new();
    for (i, request) in requests.iter().enumerate() {
        if request["model"] != format!("models/{model}") {
            return invalid(format!(
                "requests[{i}].model must be `models/{model}`, the model of the URL, got {}",
                request["model"]
            ));
        }
        let text: String = request
            .pointer("/content/parts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|part| part["text"].as_str())
            .collect();
        if text.is_empty() {
            return invalid(format!("requests[{i}].content must have text parts"));
        }
        let dimensions = request["outputDimensionality"].as_u64().unwrap_or(4) as usize;
        let values: Vec<f64> = (0..dimensions)
            .map(|d| (text.len() + d) as f64 / 8.0)
            .collect();
        embeddings.push(json!({"values": values}));
    }
    json_response(200, json!({"embeddings": embeddings}))
}

fn check_request(body: &Value) -> Result<(), String> {
    let Some(object) = body.as_object() else {
        return Err("Invalid JSON payload received.".into());
    };
    for key in object.keys() {
        if !REQUEST_FIELDS.contains(&key.as_str()) {
            return Err(format!(
                "Invalid JSON payload received. Unknown name \"{key}\": Cannot find field."
            ));
        }
    }
    let contents = body["contents"]
        .as_array()
        .filter(|contents| !contents.is_empty());
    let Some(contents) = contents else {
        return Err("* GenerateContentRequest.contents: contents is not specified".into());
    };
    let mut previous_calls = 0;
    for (i, content) in contents.iter().enumerate() {
        let role = content["role"].as_str().unwrap_or("");
        if role != "user" && role != "model" {
            return Err(format!(
                "Please use a valid role: user, model. Got `{role}` at contents[{i}]"
            ));
        }
        let parts = content["parts"].as_array().cloned().unwrap_or_default();
        if parts.is_empty() {
            return Err(format!("contents[{i}].parts must not be empty"));
        }
        let calls = parts
            .iter()
            .filter(|part| part.get("functionCall").is_some())
            .count();
        let responses = parts
            .iter()
            .filter(|part| part.get("functionResponse").is_some())
            .count();
        if parts
            .iter()
            .any(|part| part.pointer("/functionCall/id").is_some())
        {
            return Err(format!(
                "Invalid JSON payload received. Unknown name \"id\" at 'contents[{i}].parts.function_call'"
            ));
        }
        if responses > 0 && responses != previous_calls {
            return Err(format!(
                "Please ensure that the number of function response parts is equal to the number of function call parts of the function call turn. contents[{i}] has {responses} for {previous_calls} calls"
            ));
        }
        previous_calls = calls;
    }
    let declarations = body
        .pointer("/tools/0/functionDeclarations")
        .and_then(Value::as_array);
    for (i, declaration) in declarations.into_iter().flatten().enumerate() {
        if let Some(parameters) = declaration.get("parameters") {
            check_schema(
                parameters,
                &format!("tools[0].function_declarations[{i}].parameters"),
            )?;
        }
    }
    if let Some(schema) = body.pointer("/generationConfig/responseSchema") {
        check_schema(schema, "generation_config.response_schema")?;
    }
    Ok(())
}

fn check_schema(schema: &Value, at: &str) -> Result<(), String> {
    let Some(object) = schema.as_object() else {
        return Ok(());
    };
    for (key, value) in object {
        if !SCHEMA_FIELDS.contains(&key.as_str()) {
            return Err(format!(
                "Invalid JSON payload received. Unknown name \"{key}\" at '{at}': Cannot find field."
            ));
        }
        if key == "type" && !value.is_string() {
            return Err(format!("Invalid value at '{at}.type'"));
        }
    }
    for (name, property) in object
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        check_schema(property, &format!("{at}.properties[{name}]"))?;
    }
    if let Some(items) = object.get("items") {
        check_schema(items, &format!("{at}.items"))?;
    }
    Ok(())
}

/// Returns the signature that the mock attaches to the first `functionCall` part of a response,
/// derived from the call so that a replay of another call's signature fails. Like a Gemini
/// signature, it is base64 with `+`, `/` and `=`.
pub fn thought_signature(function_call: &Value) -> String {
    let letters: String = function_call
        .to_string()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    format!("CiQB/{letters}+Aw==")
}

fn check_thought_signatures(body: &Value) -> Result<(), String> {
    let contents = body["contents"].as_array().cloned().unwrap_or_default();
    let turn_start = contents
        .iter()
        .rposition(|content| {
            content["role"] == "user"
                && content["parts"]
                    .as_array()
                    .is_some_and(|parts| parts.iter().any(|part| part.get("text").is_some()))
        })
        .map_or(0, |position| position + 1);
    for (i, content) in contents.iter().enumerate().skip(turn_start) {
        if content["role"] != "model" {
            continue;
        }
        let parts = content["parts"].as_array().cloned().unwrap_or_default();
        let Some((position, first_call)) = parts
            .iter()
            .enumerate()
            .find(|(_, part)| part.get("functionCall").is_some())
        else {
            continue;
        };
        let name = first_call["functionCall"]["name"].as_str().unwrap_or("");
        match first_call.get("thoughtSignature").and_then(Value::as_str) {
            None => {
                return Err(format!(
                    "Function call is missing a thought_signature in functionCall parts. Additional data, function call `default_api:{name}` , position {}. Please refer to https://ai.google.dev/gemini-api/docs/thought-signatures for more details.",
                    position + 1
                ));
            }
            Some(signature) if signature != thought_signature(&first_call["functionCall"]) => {
                return Err(format!(
                    "Corrupted thought signature in contents[{i}].parts[{position}]."
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Returns the model's parts for `request` to `model`.
fn answer(model: &str, request: &Value) -> Vec<Value> {
    let last_turn = request["contents"]
        .as_array()
        .and_then(|contents| contents.last())
        .cloned()
        .unwrap_or(Value::Null);
    let results: Vec<String> = last_turn["parts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|part| part.get("functionResponse"))
        .map(|response| {
            format!(
                "{}={}",
                response["name"].as_str().unwrap_or(""),
                response["response"]
            )
        })
        .collect();
    if !results.is_empty() {
        return vec![json!({"text": format!("Results: {}", results.join("; "))})];
    }
    if request.pointer("/generationConfig/responseMimeType") == Some(&json!("application/json")) {
        return vec![json!({"text": "{\"sentiment\": \"positive\"}"})];
    }
    if request.get("tools").is_some() {
        let mut calls = vec![
            json!({"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}),
            json!({"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}}),
        ];
        if model.contains("gemini-3") {
            // Gemini signs only the first of parallel calls.
            calls[0]["thoughtSignature"] = json!(thought_signature(&calls[0]["functionCall"]));
        }
        return calls;
    }
    vec![json!({"text": "Hello from gemini"})]
}

fn usage(complete: bool) -> Value {
    if complete {
        json!({
            "promptTokenCount": 120,
            "cachedContentTokenCount": 80,
            "candidatesTokenCount": 12,
            "thoughtsTokenCount": 40,
            "totalTokenCount": 172,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 120}],
            "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": 80}]
        })
    } else {
        json!({"promptTokenCount": 120, "totalTokenCount": 120})
    }
}

fn response(model: &str, _request: &Value, parts: &[Value], last: bool) -> Value {
    let mut candidate = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
    if last {
        candidate["finishReason"] = json!("STOP");
    }
    json!({
        "candidates": [candidate],
        "usageMetadata": usage(last),
        "modelVersion": model,
        "responseId": "mock-gemini-response-1"
    })
}

fn stream(model: &str, request: &Value) -> Response<MockBody> {
    let event = |value: Value| Some(format!("data: {value}\r\n\r\n"));
    let parts = answer(model, request);
    let mut events = Vec::new();
    if parts[0].get("functionCall").is_some() {
        // Text first, then both calls whole in the last event, as Gemini streams them.
        events.push(event(response(
            model,
            request,
            &[json!({"text": "Let me check."})],
            false,
        )));
        events.push(event(response(model, request, &parts, true)));
        return sse_response(events, Duration::from_millis(2));
    }
    let text = parts[0]["text"].as_str().unwrap_or("").to_string();
    let words: Vec<String> = text.split_inclusive(' ').map(str::to_string).collect();
    for (i, word) in words.iter().enumerate() {
        if i == 1 && model.contains("error-mid") {
            events.push(event(json!({"error": {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}})));
            return sse_response(events, Duration::from_millis(2));
        }
        if i == 1 && model.contains("hang") {
            events.push(event(response(
                model,
                request,
                &[json!({"text": "from gemini, streaming slowly"})],
                false,
            )));
            events.push(None);
            return sse_response(events, Duration::from_millis(5));
        }
        let last = i + 1 == words.len();
        events.push(event(response(
            model,
            request,
            &[json!({"text": word})],
            last,
        )));
    }
    sse_response(events, Duration::from_millis(2))
}
