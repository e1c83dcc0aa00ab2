//! Translation between OpenAI Chat Completions and the Anthropic Messages API
//! (`anthropic-version: 2023-06-01`).
//!
//! Requests: `system` and `developer` messages become the top-level `system`, `tool` messages
//! become `tool_result` blocks in one user turn, consecutive turns of one role are merged
//! because Anthropic requires alternating roles, and `max_tokens` gets a default because
//! Anthropic requires it. OpenAI parameters that Anthropic lacks (`seed`, penalties,
//! `logit_bias`, `logprobs`) are dropped. JSON output mode is emulated with a forced tool whose
//! input is returned as the message content.

use serde_json::{Map, Value, json};

use crate::chat::{invalid_message, read_tool_call, text_of};
use crate::error::AiError;

/// Name of the tool that carries JSON output when `response_format` requests JSON.
pub const JSON_TOOL: &str = "json_response";

/// A translated request and what the response translation needs to know about it.
#[derive(Debug)]
pub struct MessagesRequest {
    pub body: Value,
    /// The forced JSON tool is in use, so its input is the response text.
    pub json_mode: bool,
}

/// Translates an OpenAI chat completion request into an Anthropic Messages request for `model`.
pub fn to_messages_request(
    request: &Value,
    model: &str,
    default_max_tokens: u32,
) -> Result<MessagesRequest, AiError> {
    let messages = request
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            AiError::invalid_request("invalid_messages", "`messages` must be an array")
                .with_param("messages")
        })?;
    if request
        .get("n")
        .and_then(Value::as_u64)
        .is_some_and(|n| n > 1)
    {
        return Err(AiError::invalid_request(
            "unsupported_parameter",
            "`n` greater than 1 is not supported by Anthropic models",
        )
        .with_param("n"));
    }

    let mut system = Vec::new();
    let mut turns: Vec<(String, Vec<Value>)> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let role = message.get("role").and_then(Value::as_str).unwrap_or("");
        let content = message.get("content").unwrap_or(&Value::Null);
        let (role, blocks) = match role {
            "system" | "developer" => {
                system.push(text_of(content, i)?);
                continue;
            }
            "user" => ("user", user_blocks(content, i)?),
            "assistant" => ("assistant", assistant_blocks(message, i)?),
            "tool" => ("user", vec![tool_result(message, i)?]),
            other => {
                return Err(AiError::invalid_request(
                    "invalid_role",
                    format!("messages[{i}]: unsupported role `{other}`"),
                )
                .with_param("messages"));
            }
        };
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((last_role, last_blocks)) if last_role == role => last_blocks.extend(blocks),
            _ => turns.push((role.to_string(), blocks)),
        }
    }
    // Anthropic requires tool results before any text in a user turn that follows tool calls.
    for (_, blocks) in &mut turns {
        blocks
            .sort_by_key(|block| block.get("type").and_then(Value::as_str) != Some("tool_result"));
    }

    let max_tokens = request
        .get("max_completion_tokens")
        .and_then(Value::as_u64)
        .or_else(|| request.get("max_tokens").and_then(Value::as_u64))
        .unwrap_or(u64::from(default_max_tokens));
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert("max_tokens".into(), json!(max_tokens));
    body.insert(
        "messages".into(),
        Value::Array(
            turns
                .into_iter()
                .map(|(role, content)| json!({"role": role, "content": content}))
                .collect(),
        ),
    );
    if let Some(temperature) = request.get("temperature").and_then(Value::as_f64) {
        // OpenAI accepts 0 to 2 and Anthropic 0 to 1.
        body.insert("temperature".into(), json!(temperature.clamp(0.0, 1.0)));
    }
    if let Some(top_p) = request.get("top_p").filter(|value| value.is_number()) {
        body.insert("top_p".into(), top_p.clone());
    }
    match request.get("stop") {
        Some(Value::String(stop)) => {
            body.insert("stop_sequences".into(), json!([stop]));
        }
        Some(Value::Array(stops)) if !stops.is_empty() => {
            body.insert("stop_sequences".into(), Value::Array(stops.clone()));
        }
        _ => {}
    }
    if let Some(user) = request.get("user").and_then(Value::as_str) {
        body.insert("metadata".into(), json!({"user_id": user}));
    }
    if request.get("stream").and_then(Value::as_bool) == Some(true) {
        body.insert("stream".into(), json!(true));
    }

    let mut tools: Vec<Value> = match request.get("tools") {
        Some(Value::Array(tools)) => tools
            .iter()
            .enumerate()
            .map(|(i, tool)| convert_tool(tool, i))
            .collect::<Result<_, _>>()?,
        _ => Vec::new(),
    };
    let mut tool_choice = match request.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(Value::String(choice)) => match choice.as_str() {
            "auto" => Some(json!({"type": "auto"})),
            "none" => Some(json!({"type": "none"})),
            "required" => Some(json!({"type": "any"})),
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
            Some(json!({"type": "tool", "name": name}))
        }
    };
    if request.get("parallel_tool_calls").and_then(Value::as_bool) == Some(false)
        && !tools.is_empty()
    {
        let choice = tool_choice.get_or_insert_with(|| json!({"type": "auto"}));
        if choice["type"] != "none" {
            choice["disable_parallel_tool_use"] = json!(true);
        }
    }

    let format = request
        .pointer("/response_format/type")
        .and_then(Value::as_str);
    let mut json_mode = false;
    match format {
        Some("json_object") | Some("json_schema") => {
            let schema = request
                .pointer("/response_format/json_schema/schema")
                .cloned()
                .unwrap_or_else(|| json!({"type": "object"}));
            if tools.is_empty() {
                tools.push(json!({
                    "name": JSON_TOOL,
                    "description": "Return the answer as JSON matching the input schema.",
                    "input_schema": schema,
                }));
                tool_choice = Some(json!({"type": "tool", "name": JSON_TOOL}));
                json_mode = true;
            } else {
                // The forced tool cannot coexist with the client's tools, so ask in the prompt.
                system.push(format!(
                    "Respond with JSON only, matching this JSON schema: {schema}"
                ));
            }
        }
        None | Some("text") => {}
        Some(other) => {
            return Err(AiError::invalid_request(
                "invalid_response_format",
                format!("unsupported response_format type `{other}`"),
            )
            .with_param("response_format"));
        }
    }
    if !tools.is_empty() {
        body.insert("tools".into(), Value::Array(tools));
    }
    if let Some(choice) = tool_choice {
        body.insert("tool_choice".into(), choice);
    }
    if !system.is_empty() {
        body.insert("system".into(), json!(system.join("\n\n")));
    }
    Ok(MessagesRequest {
        body: Value::Object(body),
        json_mode,
    })
}

fn text_block(text: &str) -> Vec<Value> {
    if text.is_empty() {
        Vec::new()
    } else {
        vec![json!({"type": "text", "text": text})]
    }
}

fn user_blocks(content: &Value, i: usize) -> Result<Vec<Value>, AiError> {
    let Value::Array(parts) = content else {
        return Ok(text_block(&text_of(content, i)?));
    };
    let mut blocks = Vec::new();
    for part in parts {
        match part.get("type").and_then(Value::as_str) {
            Some("text") => {
                let text = part.get("text").and_then(Value::as_str).unwrap_or("");
                blocks.extend(text_block(text));
            }
            Some("image_url") => {
                let url = part
                    .pointer("/image_url/url")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid_message(i, "an image_url part needs image_url.url"))?;
                blocks.push(image_block(url, i)?);
            }
            Some(other) => {
                return Err(invalid_message(
                    i,
                    &format!(
                        "content parts of type `{other}` are not supported for Anthropic models"
                    ),
                ));
            }
            None => return Err(invalid_message(i, "a content part needs a `type`")),
        }
    }
    Ok(blocks)
}

/// Converts an image URL: a `data:` URI becomes a base64 source, anything else a URL source.
fn image_block(url: &str, i: usize) -> Result<Value, AiError> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (media_type, data) = rest.split_once(";base64,").ok_or_else(|| {
            invalid_message(
                i,
                "an image data URI must be base64, like data:image/png;base64,...",
            )
        })?;
        return Ok(json!({
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }));
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(json!({"type": "image", "source": {"type": "url", "url": url}}));
    }
    Err(invalid_message(
        i,
        "an image URL must be http(s) or a data URI",
    ))
}

fn assistant_blocks(message: &Value, i: usize) -> Result<Vec<Value>, AiError> {
    let content = message.get("content").unwrap_or(&Value::Null);
    let mut blocks = text_block(&text_of(content, i)?);
    if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
        for call in calls {
            let (id, name, input) = read_tool_call(call, i)?;
            let id = crate::tool_ids::for_anthropic(id);
            blocks.push(json!({"type": "tool_use", "id": id, "name": name, "input": input}));
        }
    }
    Ok(blocks)
}

fn tool_result(message: &Value, i: usize) -> Result<Value, AiError> {
    let id = message
        .get("tool_call_id")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid_message(i, "a tool message needs `tool_call_id`"))?;
    let content = text_of(message.get("content").unwrap_or(&Value::Null), i)?;
    let id = crate::tool_ids::for_anthropic(id);
    Ok(json!({"type": "tool_result", "tool_use_id": id, "content": content}))
}

fn convert_tool(tool: &Value, i: usize) -> Result<Value, AiError> {
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
    let mut converted = json!({
        "name": name,
        "input_schema": function
            .and_then(|function| function.get("parameters"))
            .cloned()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
    });
    if let Some(description) = function.and_then(|function| function.get("description")) {
        converted["description"] = description.clone();
    }
    Ok(converted)
}

/// Maps an Anthropic `stop_reason` to an OpenAI `finish_reason`.
pub fn finish_reason(stop_reason: &str, json_mode: bool) -> &'static str {
    match stop_reason {
        "max_tokens" => "length",
        "tool_use" if json_mode => "stop",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        // `end_turn`, `stop_sequence`, and `pause_turn`, which only server tools produce.
        _ => "stop",
    }
}

/// Translates a Messages response into a chat completion.
pub fn to_chat_completion(response: &Value, json_mode: bool, created: i64) -> Value {
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in response
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(block["text"].as_str().unwrap_or("")),
            Some("tool_use") if json_mode && block["name"] == JSON_TOOL => {
                text.push_str(&block["input"].to_string());
            }
            Some("tool_use") => tool_calls.push(json!({
                "id": block["id"],
                "type": "function",
                "function": {"name": block["name"], "arguments": block["input"].to_string()},
            })),
            _ => {}
        }
    }
    let stop_reason = response["stop_reason"].as_str().unwrap_or("end_turn");
    let mut message = json!({
        "role": "assistant",
        "content": if text.is_empty() && !tool_calls.is_empty() { Value::Null } else { json!(text) },
        "refusal": null,
    });
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    let usage = crate::usage::Usage::from_anthropic(&response["usage"]).unwrap_or_default();
    json!({
        "id": response["id"],
        "object": "chat.completion",
        "created": created,
        "model": response["model"],
        "choices": [{
            "index": 0,
            "message": message,
            "finish_reason": finish_reason(stop_reason, json_mode),
            "logprobs": null,
        }],
        "usage": usage.to_openai(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translate(request: Value) -> MessagesRequest {
        to_messages_request(&request, "claude-x", 1024).unwrap()
    }

    #[test]
    fn system_history_and_max_tokens() {
        let out = translate(json!({
            "model": "smart",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "No emoji."}]},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "Bye"},
            ],
            "stop": "END",
            "temperature": 1.5,
            "user": "u-1",
            "seed": 4,
        }))
        .body;
        assert_eq!(out["system"], "Be brief.\n\nNo emoji.");
        assert_eq!(out["model"], "claude-x");
        assert_eq!(out["max_tokens"], 1024);
        assert_eq!(out["messages"].as_array().unwrap().len(), 3);
        assert_eq!(out["messages"][1]["role"], "assistant");
        assert_eq!(out["stop_sequences"], json!(["END"]));
        assert_eq!(out["temperature"], 1.0);
        assert_eq!(out["metadata"]["user_id"], "u-1");
        assert!(out.get("seed").is_none());
    }

    #[test]
    fn max_completion_tokens_wins() {
        let out = translate(json!({
            "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 10,
            "max_completion_tokens": 20,
        }))
        .body;
        assert_eq!(out["max_tokens"], 20);
    }

    #[test]
    fn images_become_blocks() {
        let out = translate(json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
        ]}]}))
        .body;
        let content = &out["messages"][0]["content"];
        assert_eq!(content[1]["source"]["type"], "base64");
        assert_eq!(content[1]["source"]["media_type"], "image/png");
        assert_eq!(content[1]["source"]["data"], "iVBORw0KGgo=");
        assert_eq!(content[2]["source"]["type"], "url");
        assert_eq!(content[2]["source"]["url"], "https://example.com/cat.jpg");
    }

    #[test]
    fn tool_calls_and_results_are_coalesced() {
        let out = translate(json!({
            "messages": [
                {"role": "user", "content": "Weather in Paris and Oslo?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}},
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
                {"role": "tool", "tool_call_id": "call_2", "content": "4C"},
            ],
            "tools": [{"type": "function", "function": {"name": "weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
            "tool_choice": "required",
            "parallel_tool_calls": false,
        }))
        .body;
        let messages = out["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 3);
        let calls = messages[1]["content"].as_array().unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[1]["type"], "tool_use");
        assert_eq!(calls[1]["input"]["city"], "Oslo");
        let results = messages[2]["content"].as_array().unwrap();
        assert_eq!(messages[2]["role"], "user");
        assert_eq!(results.len(), 2);
        assert_eq!(results[0]["tool_use_id"], "call_1");
        assert_eq!(results[1]["tool_use_id"], "call_2");
        assert_eq!(
            out["tools"][0]["input_schema"]["properties"]["city"]["type"],
            "string"
        );
        assert_eq!(out["tool_choice"]["type"], "any");
        assert_eq!(out["tool_choice"]["disable_parallel_tool_use"], true);
    }

    #[test]
    fn named_tool_choice() {
        let out = translate(json!({
            "messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": {"type": "function", "function": {"name": "f"}},
        }))
        .body;
        assert_eq!(out["tool_choice"], json!({"type": "tool", "name": "f"}));
    }

    #[test]
    fn json_mode_forces_a_tool() {
        let translated = translate(json!({
            "messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}},
        }));
        assert!(translated.json_mode);
        assert_eq!(translated.body["tool_choice"]["name"], JSON_TOOL);
        assert_eq!(
            translated.body["tools"][0]["input_schema"]["properties"]["a"]["type"],
            "integer"
        );

        let response = json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": JSON_TOOL, "input": {"a": 1}}],
            "stop_reason": "tool_use", "usage": {"input_tokens": 5, "output_tokens": 3}
        });
        let completion = to_chat_completion(&response, true, 0);
        assert_eq!(completion["choices"][0]["message"]["content"], "{\"a\":1}");
        assert_eq!(completion["choices"][0]["finish_reason"], "stop");
    }

    #[test]
    fn invalid_input_is_rejected() {
        for request in [
            json!({"messages": "x"}),
            json!({"messages": [{"role": "robot", "content": "x"}]}),
            json!({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}),
            json!({"messages": [{"role": "tool", "content": "x"}]}),
            json!({"messages": [{"role": "assistant", "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": "{"}}]}]}),
            json!({"messages": [], "n": 2}),
        ] {
            let error = to_messages_request(&request, "m", 1).unwrap_err();
            assert_eq!(error.status, http::StatusCode::BAD_REQUEST, "{request}");
        }
    }

    #[test]
    fn response_with_several_tool_calls() {
        let response = json!({
            "id": "msg_2", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_a", "name": "weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_b", "name": "weather", "input": {"city": "Oslo"}},
            ],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 10, "cache_read_input_tokens": 5, "output_tokens": 7}
        });
        let completion = to_chat_completion(&response, false, 1);
        let choice = &completion["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(choice["message"]["content"], "Checking.");
        let calls = choice["message"]["tool_calls"].as_array().unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0]["id"], "toolu_a");
        assert_eq!(calls[1]["function"]["arguments"], "{\"city\":\"Oslo\"}");
        assert_eq!(completion["usage"]["prompt_tokens"], 15);
        assert_eq!(
            completion["usage"]["prompt_tokens_details"]["cached_tokens"],
            5
        );
    }

    #[test]
    fn stop_reasons_map() {
        assert_eq!(finish_reason("end_turn", false), "stop");
        assert_eq!(finish_reason("stop_sequence", false), "stop");
        assert_eq!(finish_reason("max_tokens", false), "length");
        assert_eq!(finish_reason("tool_use", false), "tool_calls");
        assert_eq!(finish_reason("refusal", false), "content_filter");
    }
}
