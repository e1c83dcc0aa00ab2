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
