//! Reply texts that depend on the request: echoes of the prompt, and JSON for structured output.
//!
//! A model name containing `echo` replies with the text of the last user message, and streams
//! it in pieces of 3 characters so that a placeholder such as `[EMAIL_1]` is split across
//! events. A request for JSON (OpenAI `response_format` `json_schema`, or the Anthropic tool
//! that the gateway forces for it) gets `{"sentiment": ...}`, which is `negative` when the
//! prompt contains "terrible" and `positive` otherwise. A model name containing `badjson`
//! replies with the value `ecstatic`, which the sentiment schemas of the tests do not allow.

use serde_json::{Value, json};

/// Size of the pieces of a streamed echo, in characters.
const ECHO_PIECE_CHARS: usize = 3;

/// Returns the text of the last user message of an OpenAI or Anthropic request.
pub fn last_user_text(request: &Value) -> String {
    let Some(message) = request["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .rev()
        .find(|message| message["role"] == "user")
    else {
        return String::new();
    };
    match &message["content"] {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|part| part["text"].as_str())
            .collect(),
        _ => String::new(),
    }
}

/// Returns the structured reply for a JSON request.
pub fn structured(model: &str, request: &Value) -> Value {
    let sentiment = if model.contains("badjson") {
        "ecstatic"
    } else if last_user_text(request).contains("terrible") {
        "negative"
    } else {
        "positive"
    };
    json!({"sentiment": sentiment})
}

/// Tells whether an OpenAI request requests JSON with a schema.
pub fn openai_wants_json(request: &Value) -> bool {
    request.pointer("/response_format/type") == Some(&json!("json_schema"))
}

/// Returns the name of the tool an Anthropic request forces, if any.
pub fn anthropic_forced_tool(request: &Value) -> Option<&str> {
    (request.pointer("/tool_choice/type") == Some(&json!("tool")))
        .then(|| request.pointer("/tool_choice/name")?.as_str())
        .flatten()
}

/// Splits an echo into the pieces it is streamed in.
pub fn echo_pieces(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars
        .chunks(ECHO_PIECE_CHARS)
        .map(|piece| piece.iter().collect())
        .collect()
}
