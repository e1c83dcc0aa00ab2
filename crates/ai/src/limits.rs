//! Request estimates for `ai-limits` reservations: estimated tokens, the price bound, and the
//! output cap that the gateway then sends to the provider.

use std::borrow::Cow;

use portcullis_config::ProviderKind;
use serde_json::{Value, json};

use crate::usage::{Price, Usage};

/// Bytes of request text per estimated input token, the rule of thumb for English text with
/// OpenAI and Anthropic tokenizers that the usage record also uses.
const BYTES_PER_TOKEN: u64 = 4;

/// The tokens of a request before it is sent, as far as the request shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Estimate {
    /// The `model` of the request: an alias or a `provider/model`.
    pub model: String,
    /// Input tokens estimated from the text of the request.
    pub input_tokens: u64,
    /// Output tokens per choice that the request allows, from `max_completion_tokens` or
    /// `max_tokens`; `None` when it sets neither.
    pub max_output_tokens: Option<u64>,
    /// Choices requested (`n`), each of which may use the output allowance.
    pub choices: u64,
    /// Whether the endpoint produces output tokens; embeddings do not.
    pub has_output: bool,
    /// The first of `max_completion_tokens` and `max_tokens` that is set to anything but a
    /// positive integer. Such a call cannot be reserved, so it is rejected before any
    /// provider call.
    pub invalid_output_field: Option<&'static str>,
}

/// Prices per token that bound the cost of a call on any target of a model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PriceBound {
    /// The highest price of an input token: plain, cache read or cache write.
    pub input: f64,
    /// The highest price of an output token: plain or reasoning.
    pub output: f64,
}

impl PriceBound {
    /// Returns the highest prices over `prices`, or `None` when one of them is missing.
    pub fn over(prices: &[Option<Price>]) -> Option<PriceBound> {
        let mut bound = PriceBound {
            input: 0.0,
            output: 0.0,
        };
        for price in prices {
            let price = (*price)?;
            let one = |usage: Usage| price.cost(&usage);
            let input = [
                one(Usage {
                    input: Some(1),
                    ..Usage::default()
                }),
                one(Usage {
                    cache_read: Some(1),
                    ..Usage::default()
                }),
                one(Usage {
                    cache_write: Some(1),
                    ..Usage::default()
                }),
            ];
            let output = [
                one(Usage {
                    output: Some(1),
                    ..Usage::default()
                }),
                one(Usage {
                    reasoning: Some(1),
                    ..Usage::default()
                }),
            ];
            bound.input = input.into_iter().fold(bound.input, f64::max);
            bound.output = output.into_iter().fold(bound.output, f64::max);
        }
        Some(bound)
    }

    /// Returns the cost of `input` and `output` tokens at these prices.
    pub fn cost(&self, input: u64, output: u64) -> f64 {
        input as f64 * self.input + output as f64 * self.output
    }
}

/// Estimates a request to `path` (such as `/chat/completions`) whose body is `body`. Returns
/// `None` for an endpoint without tokens, or for a body that the gateway rejects with 400.
pub fn estimate(path: &str, body: &[u8]) -> Option<Estimate> {
    let has_output = match path {
        "/chat/completions" | "/messages" => true,
        "/embeddings" => false,
        _ => return None,
    };
    let value: Value = serde_json::from_slice(body).ok()?;
    let model = value.get("model")?.as_str()?.to_string();
    let output_fields = ["max_completion_tokens", "max_tokens"];
    let invalid_output_field = output_fields.into_iter().find(|field| {
        value
            .get(*field)
            .is_some_and(|limit| !limit.is_null() && limit.as_u64().is_none_or(|n| n == 0))
    });
    let max_output_tokens = output_fields
        .iter()
        .find_map(|field| value.get(*field)?.as_u64());
    let choices = value.get("n").and_then(Value::as_u64).unwrap_or(1).max(1);
    let mut text_bytes = 0;
    let mut token_ids = 0;
    count_text(&value, &mut text_bytes, &mut token_ids);
    Some(Estimate {
        model,
        input_tokens: text_bytes.div_ceil(BYTES_PER_TOKEN) + token_ids,
        max_output_tokens: max_output_tokens.filter(|_| has_output),
        choices,
        has_output,
        invalid_output_field: invalid_output_field.filter(|_| has_output),
    })
}

/// Adds the bytes of every string in `value` to `bytes`, and counts integers in arrays, which
/// are token ids in an embeddings `input`. Object keys are not counted.
// NOTE: an image sent as a `data:` URI counts as text, so it raises the estimate far above the
// tokens a provider bills for it, until the settlement returns the difference.
fn count_text(value: &Value, bytes: &mut u64, token_ids: &mut u64) {
    match value {
        Value::String(text) => *bytes += text.len() as u64,
        Value::Array(items) => {
            for item in items {
                if item.is_u64() {
                    *token_ids += 1;
                } else {
                    count_text(item, bytes, token_ids);
                }
            }
        }
        Value::Object(fields) => {
            for field in fields.values() {
                count_text(field, bytes, token_ids);
            }
        }
        _ => {}
    }
}

/// Returns `body` with its output allowance at most `cap` tokens per choice. A request that sets
/// no allowance gets one in `absent_field`, such as `max_completion_tokens`.
fn cap_output<'a>(body: &'a Value, cap: Option<u64>, absent_field: &str) -> Cow<'a, Value> {
    let Some(cap) = cap else {
        return Cow::Borrowed(body);
    };
    let fields = ["max_completion_tokens", "max_tokens"];
    let set: Vec<&str> = fields
        .into_iter()
        .filter(|field| body.get(*field).is_some_and(|value| !value.is_null()))
        .collect();
    let within = !set.is_empty()
        && set
            .iter()
            .all(|field| body[*field].as_u64().is_some_and(|value| value <= cap));
    if within {
        return Cow::Borrowed(body);
    }
    let mut capped = body.clone();
    if set.is_empty() {
        capped[absent_field] = json!(cap);
    }
    for field in set {
        if body[field].as_u64().is_none_or(|value| value > cap) {
            capped[field] = json!(cap);
        }
    }
    Cow::Owned(capped)
}

/// Returns a chat request with its output capped for a provider of `kind`. OpenAI and Azure
/// OpenAI take `max_completion_tokens`, which their reasoning models require, while Mistral and
/// other OpenAI-compatible servers take `max_tokens`. The Anthropic and Gemini translations
/// read either.
pub(crate) fn cap_chat_output(
    body: &Value,
    cap: Option<u64>,
    kind: ProviderKind,
) -> Cow<'_, Value> {
    let absent_field = match kind {
        ProviderKind::Mistral | ProviderKind::OpenaiCompatible => "max_tokens",
        _ => "max_completion_tokens",
    };
    cap_output(body, cap, absent_field)
}

/// Returns an Anthropic Messages request with `max_tokens` at most `cap`.
pub(crate) fn cap_messages_output(body: &Value, cap: Option<u64>) -> Cow<'_, Value> {
    cap_output(body, cap, "max_tokens")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_estimate_counts_text_and_allowance() {
        let body = br#"{"model":"smart","n":2,"max_tokens":100,"messages":[{"role":"user","content":"abcdefgh"}]}"#;
        let estimate = estimate("/chat/completions", body).unwrap();
        assert_eq!(estimate.model, "smart");
        // "smart", "user" and "abcdefgh": 17 bytes.
        assert_eq!(estimate.input_tokens, 5);
        assert_eq!(estimate.max_output_tokens, Some(100));
        assert_eq!(estimate.choices, 2);
        assert!(estimate.has_output);
    }

    #[test]
    fn output_limit_must_be_positive_integer() {
        for limit in ["-5", "0", "2.5", "1e30", "\"abc\""] {
            let body = format!(r#"{{"model":"m","max_tokens":{limit},"messages":[]}}"#);
            let estimate = estimate("/chat/completions", body.as_bytes()).unwrap();
            assert_eq!(estimate.invalid_output_field, Some("max_tokens"), "{limit}");
        }
        let body = br#"{"model":"m","max_completion_tokens":null,"max_tokens":7,"messages":[]}"#;
        let estimate = estimate("/chat/completions", body).unwrap();
        assert_eq!(estimate.invalid_output_field, None);
        assert_eq!(estimate.max_output_tokens, Some(7));
    }

    #[test]
    fn embeddings_count_token_ids() {
        let body = br#"{"model":"e","input":[[1,2,3],[4,5]]}"#;
        let estimate = estimate("/embeddings", body).unwrap();
        assert_eq!(estimate.input_tokens, 1 + 5);
        assert!(!estimate.has_output);
        assert_eq!(estimate.max_output_tokens, None);
    }

    #[test]
    fn no_estimate_for_models_or_invalid_body() {
        assert_eq!(estimate("/models", b"{}"), None);
        assert_eq!(estimate("/chat/completions", b"not json"), None);
        assert_eq!(estimate("/chat/completions", br#"{"messages":[]}"#), None);
    }

    #[test]
    fn cap_sets_or_lowers_allowance() {
        let body = json!({"model": "m"});
        let capped = cap_chat_output(&body, Some(50), ProviderKind::Openai);
        assert_eq!(capped["max_completion_tokens"], 50);
        let capped = cap_chat_output(&body, Some(50), ProviderKind::Mistral);
        assert_eq!(capped["max_tokens"], 50);
        assert!(capped.get("max_completion_tokens").is_none());

        let body = json!({"model": "m", "max_tokens": 500});
        let capped = cap_chat_output(&body, Some(50), ProviderKind::Openai);
        assert_eq!(capped["max_tokens"], 50);
        assert!(capped.get("max_completion_tokens").is_none());

        let body = json!({"model": "m", "max_tokens": 20});
        assert!(matches!(
            cap_messages_output(&body, Some(50)),
            Cow::Borrowed(_)
        ));
        assert!(matches!(cap_messages_output(&body, None), Cow::Borrowed(_)));
    }

    #[test]
    fn price_bound_takes_highest_prices() {
        let spec = |input: f64, output: f64, reasoning: Option<f64>| {
            Some(Price::from_spec(&portcullis_config::PriceSpec {
                model: "p/m".into(),
                input_per_million: input,
                output_per_million: output,
                cache_read_per_million: Some(input / 10.0),
                cache_write_per_million: Some(input * 1.25),
                reasoning_per_million: reasoning,
            }))
        };
        let bound = PriceBound::over(&[spec(2.0, 8.0, None), spec(1.0, 4.0, Some(20.0))]).unwrap();
        assert!((bound.input - 2.5e-6).abs() < 1e-15, "{}", bound.input);
        assert!((bound.output - 20e-6).abs() < 1e-15, "{}", bound.output);
        assert_eq!(PriceBound::over(&[spec(2.0, 8.0, None), None]), None);
    }
}
