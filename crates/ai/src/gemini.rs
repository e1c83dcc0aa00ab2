//! Translation between OpenAI Chat Completions and the Google Gemini API (`generateContent` and
//! `streamGenerateContent` of `v1beta`).
//!
//! Requests: `system` and `developer` messages become `systemInstruction`, and `assistant`
//! turns become `model` turns. Tool calls become `functionCall` parts and `tool` messages
//! `functionResponse` parts. Consecutive turns of one role are merged, so the results of
//! several calls go back in one turn. Sampling parameters move into `generationConfig`, and
//! JSON output uses `responseMimeType` with `responseSchema`. Gemini calls have no ids unless
//! the model sends one, so the gateway mints `call_` ids, and on replay it finds a result's
//! function name through the id of the assistant's call, because `functionResponse` is matched
//! by name.
//!
//! Gemini 3 signs its function calls with a `thoughtSignature` on the part, which must come
//! back on the same part in the next request. The signature travels in the tool call id, as
//! described in [`crate::tool_ids`].

use std::collections::HashMap;

use rand::Rng;
use rand::distributions::Alphanumeric;
use serde_json::{Map, Value, json};

use crate::chat::{invalid_message, read_tool_call, text_of};
use crate::error::AiError;
use crate::tool_ids;
use crate::usage::Usage;

/// Translates an OpenAI chat completion request into a Gemini `GenerateContentRequest`.
pub fn to_generate_request(request: &Value) -> Result<Value, AiError> {
    let messages = request
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            AiError::invalid_request("invalid_messages", "`messages` must be an array")
                .with_param("messages")
        })?;

    // Function names by tool call id, because a `functionResponse` names its function.
    let mut call_names: HashMap<&str, &str> = HashMap::new();
    let mut system = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let role = message.get("role").and_then(Value::as_str).unwrap_or("");
        let content = message.get("content").unwrap_or(&Value::Null);
        let (role, parts) = match role {
            "system" | "developer" => {
                let text = text_of(content, i)?;
                if !text.is_empty() {
                    system.push(json!({"text": text}));
                }
                continue;
            }
            "user" => ("user", user_parts(content, i)?),
            "assistant" => ("model", model_parts(message, i, &mut call_names)?),
            "tool" => ("user", vec![function_response(message, i, &call_names)?]),
            other => {
                return Err(AiError::invalid_request(
                    "invalid_role",
                    format!("messages[{i}]: unsupported role `{other}`"),
                )
                .with_param("messages"));
            }
        };
        if parts.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((last_role, last_parts)) if *last_role == role => last_parts.extend(parts),
            _ => turns.push((role, parts)),
        }
    }
    if turns.is_empty() {
        return Err(AiError::invalid_request(
            "invalid_messages",
            "`messages` needs at least one user or assistant message with content",
        )
        .with_param("messages"));
    }

    let mut body = Map::new();
    body.insert(
        "contents".into(),
        Value::Array(
            turns
                .into_iter()
                .map(|(role, parts)| json!({"role": role, "parts": parts}))
                .collect(),
        ),
    );
    if !system.is_empty() {
        body.insert("systemInstruction".into(), json!({"parts": system}));
    }
    let config = generation_config(request)?;
    if !config.is_empty() {
        body.insert("generationConfig".into(), Value::Object(config));
    }
    if let Some(tools) = request.get("tools").and_then(Value::as_array)
        && !tools.is_empty()
    {
        let declarations = tools
            .iter()
            .enumerate()
            .map(|(i, tool)| function_declaration(tool, i))
            .collect::<Result<Vec<_>, _>>()?;
        body.insert(
            "tools".into(),
            json!([{"functionDeclarations": declarations}]),
        );
    }
    if let Some(config) = tool_config(request.get("tool_choice"))? {
        body.insert("toolConfig".into(), config);
    }
    Ok(Value::Object(body))
}

fn generation_config(request: &Value) -> Result<Map<String, Value>, AiError> {
    let mut config = Map::new();
    let numbers = [
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("seed", "seed"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
        ("n", "candidateCount"),
    ];
    for (openai, gemini) in numbers {
        if let Some(value) = request.get(openai).filter(|value| value.is_number()) {
            config.insert(gemini.into(), value.clone());
        }
    }
    let max_tokens = request
        .get("max_completion_tokens")
        .and_then(Value::as_u64)
        .or_else(|| request.get("max_tokens").and_then(Value::as_u64));
    if let Some(max_tokens) = max_tokens {
        config.insert("maxOutputTokens".into(), json!(max_tokens));
    }
    match request.get("stop") {
        Some(Value::String(stop)) => {
            config.insert("stopSequences".into(), json!([stop]));
        }
        Some(Value::Array(stops)) if !stops.is_empty() => {
            config.insert("stopSequences".into(), Value::Array(stops.clone()));
        }
        _ => {}
    }
    match request
        .pointer("/response_format/type")
        .and_then(Value::as_str)
    {
        None | Some("text") => {}
        Some("json_object") => {
            config.insert("responseMimeType".into(), json!("application/json"));
        }
        Some("json_schema") => {
            config.insert("responseMimeType".into(), json!("application/json"));
            if let Some(schema) = request.pointer("/response_format/json_schema/schema") {
                config.insert("responseSchema".into(), gemini_schema(schema));
            }
        }
        Some(other) => {
            return Err(AiError::invalid_request(
                "invalid_response_format",
                format!("unsupported response_format type `{other}`"),
            )
            .with_param("response_format"));
        }
    }
    Ok(config)
}

/// Keywords of the OpenAPI 3.0 schema subset that Gemini's `Schema` accepts. Gemini rejects a
/// schema with any other keyword, such as `additionalProperties` or `$schema`, which JSON
/// Schema generators add.
const SCHEMA_KEYWORDS: [&str; 20] = [
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
];

/// Converts a JSON Schema into Gemini's `Schema`: unsupported keywords are dropped, a `type`
/// list such as `["string", "null"]` becomes one type with `nullable`, and `const` becomes a
/// one-value `enum`.
///
/// NOTE: `$ref` and `$defs` are dropped too, so a schema that uses references loses the
/// referenced parts.
pub fn gemini_schema(schema: &Value) -> Value {
    let Value::Object(object) = schema else {
        return schema.clone();
    };
    let mut converted = Map::new();
    for (key, value) in object {
        match key.as_str() {
            "minimum" | "maximum" => {
                converted.insert(key.clone(), value.clone());
            }
            "type" => match value {
                Value::Array(types) => {
                    let mut named = types.iter().filter(|kind| *kind != "null");
                    if let Some(kind) = named.next() {
                        converted.insert("type".into(), kind.clone());
                    }
                    if types.iter().any(|kind| kind == "null") {
                        converted.insert("nullable".into(), json!(true));
                    }
                }
                _ => {
                    converted.insert("type".into(), value.clone());
                }
            },
            "const" => {
                converted.insert("enum".into(), json!([value]));
            }
            "properties" => {
                let properties = value
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(name, property)| (name.clone(), gemini_schema(property)))
                    .collect();
                converted.insert(key.clone(), Value::Object(properties));
            }
            "items" => {
                converted.insert(key.clone(), gemini_schema(value));
            }
            "anyOf" => {
                let variants = value
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(gemini_schema)
                    .collect();
                converted.insert(key.clone(), Value::Array(variants));
            }
            keyword if SCHEMA_KEYWORDS.contains(&keyword) => {
                converted.insert(key.clone(), value.clone());
            }
            _ => {}
        }
    }
    Value::Object(converted)
}

fn function_declaration(tool: &Value, i: usize) -> Result<Value, AiError> {
    let function = tool.get("function").filter(|_| tool["type"] == "function");
    let name = function
        .and_then(|function| function.get("name"))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            AiError::invalid_request(
                "invalid_tool",
                format!("tools[{i}]: expected {{type: function, function: {{name, parameters}}}}"),
            )
            .with_param("tools")
        })?;
    let mut declaration = json!({"name": name});
    if let Some(description) = function.and_then(|function| function.get("description")) {
        declaration["description"] = description.clone();
    }
    // Gemini rejects an object schema without properties, which a function without
    // arguments has, so such a function is declared without parameters.
    if let Some(parameters) = function.and_then(|function| function.get("parameters")) {
        let has_properties = parameters
            .get("properties")
            .and_then(Value::as_object)
            .is_some_and(|properties| !properties.is_empty());
        if has_properties || parameters.get("type").is_some_and(|kind| kind != "object") {
            declaration["parameters"] = gemini_schema(parameters);
        }
    }
    Ok(declaration)
}

fn tool_config(choice: Option<&Value>) -> Result<Option<Value>, AiError> {
    let config = match choice {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(choice)) => match choice.as_str() {
            "auto" => json!({"mode": "AUTO"}),
            "none" => json!({"mode": "NONE"}),
            "required" => json!({"mode": "ANY"}),
            other => {
                return Err(AiError::invalid_request(
                    "invalid_tool_choice",
                    format!("unsupported tool_choice `{other}`"),
                )
                .with_param("tool_choice"));
            }
        },
        Some(choice) => {
            let name = choice
                .pointer("/function/name")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    AiError::invalid_request(
                        "invalid_tool_choice",
                        "tool_choice must be none, auto, required or {type: function, function: {name}}",
                    )
                    .with_param("tool_choice")
                })?;
            json!({"mode": "ANY", "allowedFunctionNames": [name]})
        }
    };
    Ok(Some(json!({"functionCallingConfig": config})))
}

fn text_part(text: &str) -> Vec<Value> {
    if text.is_empty() {
        Vec::new()
    } else {
        vec![json!({"text": text})]
    }
}

fn user_parts(content: &Value, i: usize) -> Result<Vec<Value>, AiError> {
    let Value::Array(parts) = content else {
        return Ok(text_part(&text_of(content, i)?));
    };
    let mut converted = Vec::new();
    for part in parts {
        match part.get("type").and_then(Value::as_str) {
            Some("text") => {
                converted.extend(text_part(
                    part.get("text").and_then(Value::as_str).unwrap_or(""),
                ));
            }
            Some("image_url") => {
                let url = part
                    .pointer("/image_url/url")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid_message(i, "an image_url part needs image_url.url"))?;
                converted.push(inline_data(url, i)?);
            }
            Some(other) => {
                return Err(invalid_message(
                    i,
                    &format!("content parts of type `{other}` are not supported for Gemini models"),
                ));
            }
            None => return Err(invalid_message(i, "a content part needs a `type`")),
        }
    }
    Ok(converted)
}

/// Converts a `data:` image URI into an `inlineData` part.
///
/// NOTE: Gemini takes remote images only through its Files API, and the gateway does not fetch
/// URLs for it, so an `http(s)` image URL is rejected.
fn inline_data(url: &str, i: usize) -> Result<Value, AiError> {
    let Some(rest) = url.strip_prefix("data:") else {
        return Err(invalid_message(
            i,
            "Gemini models take images as base64 data URIs only, like data:image/png;base64,...",
        ));
    };
    let (mime_type, data) = rest.split_once(";base64,").ok_or_else(|| {
        invalid_message(
            i,
            "an image data URI must be base64, like data:image/png;base64,...",
        )
    })?;
    Ok(json!({"inlineData": {"mimeType": mime_type, "data": data}}))
}

fn model_parts<'a>(
    message: &'a Value,
    i: usize,
    call_names: &mut HashMap<&'a str, &'a str>,
) -> Result<Vec<Value>, AiError> {
    let mut parts = text_part(&text_of(message.get("content").unwrap_or(&Value::Null), i)?);
    for call in message
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let (id, name, args) = read_tool_call(call, i)?;
        call_names.insert(id, name);
        // The id stays out, because Gemini matches a response to its call by name, and some
        // Gemini model versions reject an `id` in a replayed call.
        let mut part = json!({"functionCall": {"name": name, "args": args}});
        if let (_, Some(signature)) = tool_ids::split_thought_signature(id) {
            part["thoughtSignature"] = json!(signature);
        }
        parts.push(part);
    }
    Ok(parts)
}

fn function_response(
    message: &Value,
    i: usize,
    call_names: &HashMap<&str, &str>,
) -> Result<Value, AiError> {
    let id = message
        .get("tool_call_id")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid_message(i, "a tool message needs `tool_call_id`"))?;
    let name = call_names.get(id).ok_or_else(|| {
        invalid_message(
            i,
            &format!(
                "tool_call_id `{id}` matches no tool call of an earlier assistant message, and Gemini needs the function name"
            ),
        )
    })?;
    let content = text_of(message.get("content").unwrap_or(&Value::Null), i)?;
    // `response` must be an object: a JSON object result is sent as is, other text is wrapped.
    let response = match serde_json::from_str::<Value>(&content) {
        Ok(object @ Value::Object(_)) => object,
        _ => json!({"content": content}),
    };
    Ok(json!({"functionResponse": {"name": name, "response": response}}))
}

/// Returns a new tool call id in OpenAI's `call_` form.
pub fn new_call_id() -> String {
    let suffix: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    format!("call_{suffix}")
}

/// Returns the OpenAI tool call of a part with a `functionCall`, with the model's id or a new
/// one. The part's `thoughtSignature`, if any, is appended to the id.
pub fn tool_call(part: &Value) -> Value {
    let function_call = &part["functionCall"];
    let mut id = function_call
        .get("id")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .map_or_else(new_call_id, str::to_string);
    if let Some(signature) = part
        .get("thoughtSignature")
        .and_then(Value::as_str)
        .filter(|signature| !signature.is_empty())
    {
        id = tool_ids::with_thought_signature(&id, signature);
    }
    let arguments = match function_call.get("args") {
        Some(args) if !args.is_null() => args.to_string(),
        _ => "{}".to_string(),
    };
    json!({
        "id": id,
        "type": "function",
        "function": {"name": function_call["name"], "arguments": arguments},
    })
}

/// Maps a Gemini `finishReason` to an OpenAI `finish_reason`. Gemini ends a turn with function
/// calls with `STOP`, so `has_calls` turns that into `tool_calls`.
pub fn finish_reason(reason: &str, has_calls: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            "content_filter"
        }
        _ if has_calls => "tool_calls",
        // `STOP`, `MALFORMED_FUNCTION_CALL`, `LANGUAGE`, `OTHER` and reasons added later.
        _ => "stop",
    }
}

/// The content of one candidate in OpenAI terms.
#[derive(Debug, Default)]
pub struct CandidateContent {
    pub text: String,
    pub tool_calls: Vec<Value>,
}

/// Collects the text and function calls of a candidate's parts. Thought summaries
/// (`"thought": true`) have no Chat Completions field and are left out.
///
/// NOTE: a `thoughtSignature` on a text part is dropped. Gemini 3 validates only the
/// signatures of function calls, and documents the text part's signature as optional to
/// return.
pub fn candidate_content(candidate: &Value) -> CandidateContent {
    let mut content = CandidateContent::default();
    for part in candidate
        .pointer("/content/parts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if part.get("thought").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        if let Some(text) = part.get("text").and_then(Value::as_str) {
            content.text.push_str(text);
        }
        if part.get("functionCall").is_some() {
            content.tool_calls.push(tool_call(part));
        }
    }
    content
}

/// Translates a `GenerateContentResponse` into a chat completion. A prompt that Gemini blocked
/// has no candidates, and becomes one empty choice that ends with `content_filter`.
pub fn to_chat_completion(response: &Value, model: &str, created: i64) -> Value {
    let mut choices = Vec::new();
    for (position, candidate) in response
        .get("candidates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let content = candidate_content(candidate);
        let has_calls = !content.tool_calls.is_empty();
        let reason = candidate["finishReason"].as_str().unwrap_or("STOP");
        let mut message = json!({
            "role": "assistant",
            "content": if content.text.is_empty() && has_calls { Value::Null } else { json!(content.text) },
            "refusal": null,
        });
        if has_calls {
            message["tool_calls"] = Value::Array(content.tool_calls);
        }
        choices.push(json!({
            "index": candidate.get("index").and_then(Value::as_u64).unwrap_or(position as u64),
            "message": message,
            "finish_reason": finish_reason(reason, has_calls),
            "logprobs": null,
        }));
    }
    if choices.is_empty() {
        choices.push(json!({
            "index": 0,
            "message": {"role": "assistant", "content": null, "refusal": null},
            "finish_reason": "content_filter",
            "logprobs": null,
        }));
    }
    let usage = Usage::from_gemini(&response["usageMetadata"]).unwrap_or_default();
    json!({
        "id": response_id(response),
        "object": "chat.completion",
        "created": created,
        "model": response.get("modelVersion").and_then(Value::as_str).unwrap_or(model),
        "choices": choices,
        "usage": usage.to_openai(),
    })
}

/// Returns the completion id: Gemini's `responseId`, or a new id when it sent none.
pub fn response_id(response: &Value) -> String {
    match response.get("responseId").and_then(Value::as_str) {
        Some(id) if !id.is_empty() => format!("chatcmpl-{id}"),
        _ => format!("chatcmpl-{}", &new_call_id()["call_".len()..]),
    }
}

/// Returns the status, code and message of a Gemini error object, `{code, message, status}`.
pub fn error_of(error: &Value) -> AiError {
    let status = match error.get("code").and_then(Value::as_u64) {
        Some(429) => http::StatusCode::TOO_MANY_REQUESTS,
        Some(503) => http::StatusCode::SERVICE_UNAVAILABLE,
        Some(504) => http::StatusCode::GATEWAY_TIMEOUT,
        _ => http::StatusCode::BAD_GATEWAY,
    };
    AiError::upstream(
        status,
        error
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("provider_error"),
        error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("the provider reported an error mid-stream"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translate(request: Value) -> Value {
        to_generate_request(&request).unwrap()
    }

    #[test]
    fn system_history_and_generation_config() {
        let out = translate(json!({
            "model": "fast",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "No emoji."}]},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "Bye"},
                {"role": "user", "content": "Really"},
            ],
            "stop": ["END"],
            "temperature": 1.5,
            "top_p": 0.9,
            "max_tokens": 10,
            "max_completion_tokens": 20,
            "seed": 4,
            "n": 2,
            "user": "u-1",
        }));
        assert_eq!(
            out["systemInstruction"],
            json!({"parts": [{"text": "Be brief."}, {"text": "No emoji."}]})
        );
        let contents = out["contents"].as_array().unwrap();
        assert_eq!(contents.len(), 3);
        assert_eq!(contents[1]["role"], "model");
        assert_eq!(contents[1]["parts"][0]["text"], "Hello");
        assert_eq!(contents[2]["parts"].as_array().unwrap().len(), 2);
        let config = &out["generationConfig"];
        assert_eq!(config["temperature"], 1.5);
        assert_eq!(config["topP"], 0.9);
        assert_eq!(config["maxOutputTokens"], 20);
        assert_eq!(config["stopSequences"], json!(["END"]));
        assert_eq!(config["seed"], 4);
        assert_eq!(config["candidateCount"], 2);
        assert!(out.get("model").is_none());
        assert!(out.to_string().find("u-1").is_none());
    }

    #[test]
    fn images_become_inline_data() {
        let out = translate(json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        ]}]}));
        let parts = &out["contents"][0]["parts"];
        assert_eq!(parts[0]["text"], "What is this?");
        assert_eq!(parts[1]["inlineData"]["mimeType"], "image/png");
        assert_eq!(parts[1]["inlineData"]["data"], "iVBORw0KGgo=");
    }

    #[test]
    fn tool_calls_and_results_replay() {
        let out = translate(json!({
            "messages": [
                {"role": "user", "content": "Weather in Paris and Oslo?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "forecast", "arguments": "{\"city\":\"Oslo\"}"}},
                ]},
                {"role": "tool", "tool_call_id": "call_2", "content": "rain"},
                {"role": "tool", "tool_call_id": "call_1", "content": "{\"celsius\": 18}"},
            ],
            "tools": [{"type": "function", "function": {"name": "weather", "description": "Weather", "parameters": {
                "type": "object", "additionalProperties": false, "$schema": "http://json-schema.org/draft-07/schema#",
                "properties": {"city": {"type": ["string", "null"], "const": "Paris"}},
                "required": ["city"],
            }}}, {"type": "function", "function": {"name": "forecast", "parameters": {"type": "object", "properties": {}}}}],
            "tool_choice": {"type": "function", "function": {"name": "weather"}},
        }));
        let contents = out["contents"].as_array().unwrap();
        assert_eq!(contents.len(), 3);
        let calls = contents[1]["parts"].as_array().unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0]["functionCall"]["name"], "weather");
        assert_eq!(calls[1]["functionCall"]["args"]["city"], "Oslo");
        assert!(calls[0]["functionCall"].get("id").is_none());
        let results = contents[2]["parts"].as_array().unwrap();
        assert_eq!(contents[2]["role"], "user");
        assert_eq!(results.len(), 2);
        assert_eq!(results[0]["functionResponse"]["name"], "forecast");
        assert_eq!(
            results[0]["functionResponse"]["response"],
            json!({"content": "rain"})
        );
        assert_eq!(results[1]["functionResponse"]["name"], "weather");
        assert_eq!(results[1]["functionResponse"]["response"]["celsius"], 18);

        let declarations = &out["tools"][0]["functionDeclarations"];
        let parameters = &declarations[0]["parameters"];
        assert!(parameters.get("additionalProperties").is_none());
        assert!(parameters.get("$schema").is_none());
        assert_eq!(parameters["properties"]["city"]["type"], "string");
        assert_eq!(parameters["properties"]["city"]["nullable"], true);
        assert_eq!(parameters["properties"]["city"]["enum"], json!(["Paris"]));
        assert!(declarations[1].get("parameters").is_none());
        assert_eq!(
            out["toolConfig"]["functionCallingConfig"],
            json!({"mode": "ANY", "allowedFunctionNames": ["weather"]})
        );
    }

    #[test]
    fn json_schema_output() {
        let out = translate(json!({
            "messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "a", "strict": true, "schema": {
                "type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": false,
            }}},
        }));
        let config = &out["generationConfig"];
        assert_eq!(config["responseMimeType"], "application/json");
        assert_eq!(
            config["responseSchema"],
            json!({"type": "object", "properties": {"a": {"type": "integer"}}})
        );
        let out = translate(json!({
            "messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_object"},
        }));
        assert_eq!(
            out["generationConfig"]["responseMimeType"],
            "application/json"
        );
        assert!(out["generationConfig"].get("responseSchema").is_none());
    }

    #[test]
    fn invalid_input_is_rejected() {
        for request in [
            json!({"messages": "x"}),
            json!({"messages": []}),
            json!({"messages": [{"role": "system", "content": "only a system prompt"}]}),
            json!({"messages": [{"role": "robot", "content": "x"}]}),
            json!({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}),
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]}]}),
            json!({"messages": [{"role": "tool", "tool_call_id": "call_x", "content": "x"}]}),
            json!({"messages": [{"role": "assistant", "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": "{"}}]}]}),
            json!({"messages": [{"role": "user", "content": "x"}], "tool_choice": "sometimes"}),
            json!({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "yaml"}}),
        ] {
            let error = to_generate_request(&request).unwrap_err();
            assert_eq!(error.status, http::StatusCode::BAD_REQUEST, "{request}");
        }
    }

    #[test]
    fn response_with_text_and_calls() {
        let response = json!({
            "candidates": [{
                "content": {"role": "model", "parts": [
                    {"text": "thinking about it", "thought": true},
                    {"text": "Checking."},
                    {"functionCall": {"name": "weather", "args": {"city": "Paris"}}},
                    {"functionCall": {"id": "fc-7", "name": "weather", "args": {"city": "Oslo"}}},
                ]},
                "finishReason": "STOP",
                "index": 0,
            }],
            "usageMetadata": {"promptTokenCount": 100, "cachedContentTokenCount": 60, "candidatesTokenCount": 20, "thoughtsTokenCount": 30, "totalTokenCount": 150},
            "modelVersion": "gemini-2.5-flash",
            "responseId": "abc",
        });
        let completion = to_chat_completion(&response, "gemini-x", 5);
        assert_eq!(completion["id"], "chatcmpl-abc");
        assert_eq!(completion["model"], "gemini-2.5-flash");
        let choice = &completion["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(choice["message"]["content"], "Checking.");
        let calls = choice["message"]["tool_calls"].as_array().unwrap();
        assert_eq!(calls.len(), 2);
        assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
        assert_eq!(calls[0]["id"].as_str().unwrap().len(), 29);
        assert_eq!(calls[1]["id"], "fc-7");
        assert_eq!(calls[1]["function"]["arguments"], "{\"city\":\"Oslo\"}");
        let usage = &completion["usage"];
        assert_eq!(usage["prompt_tokens"], 100);
        assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 60);
        assert_eq!(usage["completion_tokens"], 50);
        assert_eq!(usage["completion_tokens_details"]["reasoning_tokens"], 30);
    }

    #[test]
    fn thought_signature_round_trips_in_the_id() {
        let response = json!({"candidates": [{"index": 0, "finishReason": "STOP", "content": {"role": "model", "parts": [
            {"functionCall": {"name": "weather", "args": {"city": "Paris"}}, "thoughtSignature": "CiQBcsjafL2+h/3k9Q=="},
            {"functionCall": {"name": "weather", "args": {"city": "Oslo"}}},
        ]}}]});
        let completion = to_chat_completion(&response, "gemini-3-flash-preview", 0);
        let calls = completion["choices"][0]["message"]["tool_calls"].clone();
        let signed = calls[0]["id"].as_str().unwrap();
        assert!(signed.ends_with("~ts~CiQBcsjafL2+h/3k9Q=="), "{signed}");
        assert!(!calls[1]["id"].as_str().unwrap().contains("~ts~"));

        let out = translate(json!({"messages": [
            {"role": "user", "content": "Weather in Paris and Oslo?"},
            {"role": "assistant", "content": null, "tool_calls": calls},
            {"role": "tool", "tool_call_id": calls[0]["id"], "content": "sun"},
            {"role": "tool", "tool_call_id": calls[1]["id"], "content": "rain"},
        ]}));
        let parts = out["contents"][1]["parts"].as_array().unwrap();
        assert_eq!(parts[0]["thoughtSignature"], "CiQBcsjafL2+h/3k9Q==");
        assert!(parts[1].get("thoughtSignature").is_none());
        assert!(parts[0]["functionCall"].get("id").is_none());
        assert_eq!(out["contents"][2]["parts"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn blocked_prompt_is_content_filter() {
        let response = json!({
            "promptFeedback": {"blockReason": "SAFETY"},
            "usageMetadata": {"promptTokenCount": 8, "totalTokenCount": 8},
        });
        let completion = to_chat_completion(&response, "gemini-x", 5);
        assert_eq!(completion["model"], "gemini-x");
        assert_eq!(completion["choices"][0]["finish_reason"], "content_filter");
        assert!(completion["choices"][0]["message"]["content"].is_null());
    }

    #[test]
    fn finish_reasons_map() {
        assert_eq!(finish_reason("STOP", false), "stop");
        assert_eq!(finish_reason("STOP", true), "tool_calls");
        assert_eq!(finish_reason("MAX_TOKENS", true), "length");
        assert_eq!(finish_reason("SAFETY", false), "content_filter");
        assert_eq!(finish_reason("PROHIBITED_CONTENT", false), "content_filter");
        assert_eq!(finish_reason("MALFORMED_FUNCTION_CALL", false), "stop");
    }
}
