//! Rewriting of tool call ids that the target provider would reject.
//!
//! A conversation keeps the ids of the provider that made each tool call, and fallback or a
//! changed alias may send it to another provider. Anthropic accepts only ids that match
//! `^[a-zA-Z0-9_-]+$`, and OpenAI rejects ids longer than 40 characters. The rewrite is a pure
//! function of the id, so a tool call and its result keep matching ids, and a valid id is
//! sent unchanged. Gemini matches results to calls by function name and takes no ids.
//!
//! Gemini 3 returns a `thoughtSignature` next to a `functionCall` part and rejects the next
//! turn with 400 unless the same part carries it back. OpenAI clients, the official SDKs among
//! them, echo a tool call's `id` and drop fields they do not know. So the gateway appends the
//! signature to the id ([`with_thought_signature`]), and takes it off again
//! ([`split_thought_signature`]) before it sends the call to Gemini or to any other provider.

use std::borrow::Cow;
use std::hash::{Hash, Hasher};

use serde_json::Value;

/// Maximum length of a tool call id that OpenAI accepts.
const OPENAI_MAX_ID_CHARS: usize = 40;

/// Separator between a tool call id and the Gemini thought signature that follows it. A
/// signature is base64, which has no `~`, so the last separator in an id starts the signature.
const THOUGHT_SIGNATURE_SEPARATOR: &str = "~ts~";

/// Returns `id` with the Gemini thought `signature` appended.
pub fn with_thought_signature(id: &str, signature: &str) -> String {
    format!("{id}{THOUGHT_SIGNATURE_SEPARATOR}{signature}")
}

/// Splits an id made by [`with_thought_signature`] into the original id and the signature.
/// An id without a signature, or whose text after the separator is not base64, is returned
/// whole with `None`.
pub fn split_thought_signature(id: &str) -> (&str, Option<&str>) {
    let Some((original, signature)) = id.rsplit_once(THOUGHT_SIGNATURE_SEPARATOR) else {
        return (id, None);
    };
    let base64 = !signature.is_empty()
        && signature
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'-' | b'_'));
    if base64 {
        (original, Some(signature))
    } else {
        (id, None)
    }
}

/// Returns `id` in a form that Anthropic accepts: characters other than ASCII letters, digits,
/// `_` and `-` become `_`, followed by a hash of the original id so that two ids that differ
/// only in those characters stay apart.
pub fn for_anthropic(id: &str) -> Cow<'_, str> {
    let (id, _signature) = split_thought_signature(id);
    let valid = !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        return Cow::Borrowed(id);
    }
    let cleaned: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    Cow::Owned(format!("{cleaned}_{:016x}", id_hash(id)))
}

/// Returns `id` in a form that OpenAI accepts: a Gemini thought signature is removed, and an
/// id longer than 40 characters becomes `call_` and a 16-digit hash of it.
pub fn for_openai(id: &str) -> Cow<'_, str> {
    let (id, _signature) = split_thought_signature(id);
    if id.chars().count() <= OPENAI_MAX_ID_CHARS {
        return Cow::Borrowed(id);
    }
    Cow::Owned(format!("call_{:016x}", id_hash(id)))
}

/// Rewrites the tool call ids of OpenAI chat `messages` with [`for_openai`]: the `id` of each
/// assistant tool call and the `tool_call_id` of each tool message.
pub fn fit_openai_messages(messages: &mut Value) {
    for message in messages.as_array_mut().into_iter().flatten() {
        if let Some(id) = message.get_mut("tool_call_id") {
            rewrite(id);
        }
        let calls = message.get_mut("tool_calls").and_then(Value::as_array_mut);
        for call in calls.into_iter().flatten() {
            if let Some(id) = call.get_mut("id") {
                rewrite(id);
            }
        }
    }
}

fn rewrite(id: &mut Value) {
    if let Some(text) = id.as_str()
        && let Cow::Owned(fitted) = for_openai(text)
    {
        *id = Value::String(fitted);
    }
}

/// Hashes an id. `DefaultHasher::new` hashes with fixed keys, so the result is the same for
/// every request of one build.
fn id_hash(id: &str) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    id.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn valid_ids_are_kept() {
        assert_eq!(
            for_anthropic("toolu_01A09q90qw90lq917835lq9"),
            "toolu_01A09q90qw90lq917835lq9"
        );
        assert_eq!(for_anthropic("call_abc-1"), "call_abc-1");
        assert_eq!(
            for_openai("toolu_01A09q90qw90lq917835lq9"),
            "toolu_01A09q90qw90lq917835lq9"
        );
    }

    #[test]
    fn anthropic_ids_are_cleaned() {
        let id = for_anthropic("functions.get_weather:0");
        assert!(id.starts_with("functions_get_weather_0_"), "{id}");
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
            "{id}"
        );
        assert_eq!(id, for_anthropic("functions.get_weather:0"));
        assert_ne!(id, for_anthropic("functions:get_weather.0"));
    }

    #[test]
    fn long_ids_are_shortened_for_openai() {
        let long = "chatcmpl-tool-0123456789abcdef0123456789abcdef";
        let id = for_openai(long);
        assert_eq!(id.len(), 21);
        assert!(id.starts_with("call_"));
        assert_eq!(id, for_openai(long));
    }

    #[test]
    fn thought_signature_round_trips() {
        let signature = "CiQBcsjafL2+h/3k9Q==";
        let id = with_thought_signature("call_abc", signature);
        assert_eq!(split_thought_signature(&id), ("call_abc", Some(signature)));
        assert_eq!(split_thought_signature("call_abc"), ("call_abc", None));
        assert_eq!(
            split_thought_signature("call~ts~not base64"),
            ("call~ts~not base64", None)
        );
        assert_eq!(split_thought_signature("call~ts~"), ("call~ts~", None));
    }

    #[test]
    fn thought_signature_is_removed_for_other_providers() {
        let id = with_thought_signature("call_abc", "CiQBcsjafL2+h/3k9Q==");
        assert_eq!(for_openai(&id), "call_abc");
        assert_eq!(for_anthropic(&id), "call_abc");
    }

    #[test]
    fn messages_keep_matching_ids() {
        let long = "chatcmpl-tool-0123456789abcdef0123456789abcdef";
        let mut messages = json!([
            {"role": "assistant", "tool_calls": [{"id": long, "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": long, "content": "ok"}
        ]);
        fit_openai_messages(&mut messages);
        let call_id = &messages[0]["tool_calls"][0]["id"];
        assert_eq!(call_id, &messages[1]["tool_call_id"]);
        assert!(call_id.as_str().unwrap().len() <= 40);
    }
}
