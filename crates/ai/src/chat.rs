//! Readers of OpenAI chat request fields, shared by the provider translations.

use serde_json::Value;

use crate::error::AiError;

/// Returns the 400 error for an invalid entry `i` of `messages`.
pub(crate) fn invalid_message(i: usize, message: &str) -> AiError {
    AiError::invalid_request("invalid_message", format!("messages[{i}]: {message}"))
        .with_param("messages")
}

/// Returns the text of a string or an array of `text` parts, the content of message `i`.
pub(crate) fn text_of(content: &Value, i: usize) -> Result<String, AiError> {
    match content {
        Value::String(text) => Ok(text.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => {
            let mut text = String::new();
            for part in parts {
                match part.get("text").and_then(Value::as_str) {
                    Some(part_text) if part["type"] == "text" => text.push_str(part_text),
                    _ => return Err(invalid_message(i, "expected only text parts")),
                }
            }
            Ok(text)
        }
        _ => Err(invalid_message(i, "content must be a string or an array")),
    }
}

/// Reads one entry of an assistant message's `tool_calls`, the call's `id`, function name and
/// parsed arguments. Empty arguments read as `{}`. `i` is the message's index, for errors.
pub(crate) fn read_tool_call(call: &Value, i: usize) -> Result<(&str, &str, Value), AiError> {
    let id = call.get("id").and_then(Value::as_str);
    let name = call.pointer("/function/name").and_then(Value::as_str);
    let (Some(id), Some(name)) = (id, name) else {
        return Err(invalid_message(
            i,
            "a tool call needs `id` and `function.name`",
        ));
    };
    let arguments = call
        .pointer("/function/arguments")
        .and_then(Value::as_str)
        .unwrap_or("");
    if arguments.trim().is_empty() {
        return Ok((id, name, Value::Object(serde_json::Map::new())));
    }
    let parsed = serde_json::from_str(arguments).map_err(|_| {
        invalid_message(
            i,
            &format!("the arguments of tool call `{id}` are not valid JSON"),
        )
    })?;
    Ok((id, name, parsed))
}
