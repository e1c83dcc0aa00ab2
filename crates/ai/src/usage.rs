//! Token usage in provider-neutral categories, and its cost.
//!
//! The five categories never overlap, so their sum is every token billed: `input` excludes cache
//! reads and writes, and `output` excludes reasoning. Each provider reports overlapping totals
//! differently, so each has its own constructor. A field is `None` while the provider has not
//! reported it, which is different from a reported 0.

use portcullis_config::PriceSpec;
use serde::Serialize;
use serde_json::Value;

/// Tokens of one call, by billing category.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Input tokens that were neither read from nor written to the prompt cache.
    pub input: Option<u64>,
    pub cache_read: Option<u64>,
    pub cache_write: Option<u64>,
    /// Output tokens other than reasoning tokens.
    pub output: Option<u64>,
    pub reasoning: Option<u64>,
}

impl Usage {
    /// Reads an OpenAI `usage` object. `prompt_tokens` includes cached tokens and
    /// `completion_tokens` includes reasoning tokens, so both are split here.
    pub fn from_openai(usage: &Value) -> Option<Usage> {
        if !usage.is_object() {
            return None;
        }
        let prompt = usage.get("prompt_tokens").and_then(Value::as_u64);
        let completion = usage.get("completion_tokens").and_then(Value::as_u64);
        let cached = usage
            .pointer("/prompt_tokens_details/cached_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let reasoning = usage
            .pointer("/completion_tokens_details/reasoning_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        Some(Usage {
            input: prompt.map(|prompt| prompt.saturating_sub(cached)),
            cache_read: prompt.map(|_| cached),
            cache_write: prompt.map(|_| 0),
            output: completion.map(|completion| completion.saturating_sub(reasoning)),
            reasoning: completion.map(|_| reasoning),
        })
    }

    /// Reads an Anthropic `usage` object. `input_tokens` already excludes cache reads and
    /// writes, and `output_tokens` includes thinking, which Anthropic does not count apart.
    pub fn from_anthropic(usage: &Value) -> Option<Usage> {
        if !usage.is_object() {
            return None;
        }
        let field = |name: &str| usage.get(name).and_then(Value::as_u64);
        let output = field("output_tokens");
        Some(Usage {
            input: field("input_tokens"),
            cache_read: field("cache_read_input_tokens"),
            cache_write: field("cache_creation_input_tokens"),
            output,
            reasoning: None,
        })
    }

    /// Reads a Gemini `usageMetadata` object. `promptTokenCount` includes
    /// `cachedContentTokenCount`, `toolUsePromptTokenCount` counts apart as input, and
    /// `candidatesTokenCount` excludes `thoughtsTokenCount`. Gemini has no cache-write count,
    /// because it bills cached content storage by time, so that category is 0.
    pub fn from_gemini(usage: &Value) -> Option<Usage> {
        if !usage.is_object() {
            return None;
        }
        let field = |name: &str| usage.get(name).and_then(Value::as_u64);
        let prompt = field("promptTokenCount");
        let cached = field("cachedContentTokenCount").unwrap_or(0);
        let tool_prompt = field("toolUsePromptTokenCount").unwrap_or(0);
        let candidates = field("candidatesTokenCount");
        let thoughts = field("thoughtsTokenCount");
        Some(Usage {
            input: prompt.map(|prompt| prompt.saturating_sub(cached) + tool_prompt),
            cache_read: prompt.map(|_| cached),
            cache_write: prompt.map(|_| 0),
            // A response of thoughts or calls only may leave out `candidatesTokenCount`.
            output: candidates.or(thoughts.map(|_| 0)),
            reasoning: thoughts.or(candidates.map(|_| 0)),
        })
    }

    /// Takes every field that `newer` reports, keeping the known value where `newer` has none.
    pub fn merge(&mut self, newer: Usage) {
        let pairs = [
            (&mut self.input, newer.input),
            (&mut self.cache_read, newer.cache_read),
            (&mut self.cache_write, newer.cache_write),
            (&mut self.output, newer.output),
            (&mut self.reasoning, newer.reasoning),
        ];
        for (known, newer) in pairs {
            if newer.is_some() {
                *known = newer;
            }
        }
    }

    /// Returns the OpenAI-shaped `usage` object for a response to the client.
    pub fn to_openai(&self) -> Value {
        let cache_read = self.cache_read.unwrap_or(0);
        let prompt = self.input.unwrap_or(0) + cache_read + self.cache_write.unwrap_or(0);
        let reasoning = self.reasoning.unwrap_or(0);
        let completion = self.output.unwrap_or(0) + reasoning;
        serde_json::json!({
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": { "cached_tokens": cache_read },
            "completion_tokens_details": { "reasoning_tokens": reasoning },
        })
    }
}

/// Prices of one `provider/model` in currency units per token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    input: f64,
    cache_read: f64,
    cache_write: f64,
    output: f64,
    reasoning: f64,
}

impl Price {
    /// Converts a price spec; unset cache prices fall back to the input price and an unset
    /// reasoning price to the output price.
    pub fn from_spec(spec: &PriceSpec) -> Price {
        let per_token = |per_million: f64| per_million / 1_000_000.0;
        Price {
            input: per_token(spec.input_per_million),
            cache_read: per_token(
                spec.cache_read_per_million
                    .unwrap_or(spec.input_per_million),
            ),
            cache_write: per_token(
                spec.cache_write_per_million
                    .unwrap_or(spec.input_per_million),
            ),
            output: per_token(spec.output_per_million),
            reasoning: per_token(
                spec.reasoning_per_million
                    .unwrap_or(spec.output_per_million),
            ),
        }
    }

    /// Returns the cost of `usage`; categories not reported count as 0 tokens.
    pub fn cost(&self, usage: &Usage) -> f64 {
        let tokens = |value: Option<u64>| value.unwrap_or(0) as f64;
        tokens(usage.input) * self.input
            + tokens(usage.cache_read) * self.cache_read
            + tokens(usage.cache_write) * self.cache_write
            + tokens(usage.output) * self.output
            + tokens(usage.reasoning) * self.reasoning
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn price(spec: PriceSpec) -> Price {
        Price::from_spec(&spec)
    }

    fn spec(input: f64, output: f64) -> PriceSpec {
        PriceSpec {
            model: "p/m".into(),
            input_per_million: input,
            output_per_million: output,
            cache_read_per_million: None,
            cache_write_per_million: None,
            reasoning_per_million: None,
        }
    }

    #[test]
    fn openai_usage_splits_cached_and_reasoning() {
        let usage = Usage::from_openai(&json!({
            "prompt_tokens": 1000,
            "completion_tokens": 500,
            "total_tokens": 1500,
            "prompt_tokens_details": {"cached_tokens": 800},
            "completion_tokens_details": {"reasoning_tokens": 300}
        }))
        .unwrap();
        assert_eq!(usage.input, Some(200));
        assert_eq!(usage.cache_read, Some(800));
        assert_eq!(usage.cache_write, Some(0));
        assert_eq!(usage.output, Some(200));
        assert_eq!(usage.reasoning, Some(300));
    }

    #[test]
    fn anthropic_usage_keeps_cache_apart() {
        let usage = Usage::from_anthropic(&json!({
            "input_tokens": 50,
            "cache_creation_input_tokens": 2000,
            "cache_read_input_tokens": 3000,
            "output_tokens": 120
        }))
        .unwrap();
        assert_eq!(usage.input, Some(50));
        assert_eq!(usage.cache_write, Some(2000));
        assert_eq!(usage.cache_read, Some(3000));
        assert_eq!(usage.output, Some(120));
        assert_eq!(usage.reasoning, None);
        let openai = usage.to_openai();
        assert_eq!(openai["prompt_tokens"], 5050);
        assert_eq!(openai["prompt_tokens_details"]["cached_tokens"], 3000);
        assert_eq!(openai["completion_tokens"], 120);
    }

    #[test]
    fn gemini_usage_splits_cached_tool_prompt_and_thoughts() {
        let usage = Usage::from_gemini(&json!({
            "promptTokenCount": 1000,
            "cachedContentTokenCount": 700,
            "toolUsePromptTokenCount": 50,
            "candidatesTokenCount": 120,
            "thoughtsTokenCount": 300,
            "totalTokenCount": 1470
        }))
        .unwrap();
        assert_eq!(usage.input, Some(350));
        assert_eq!(usage.cache_read, Some(700));
        assert_eq!(usage.cache_write, Some(0));
        assert_eq!(usage.output, Some(120));
        assert_eq!(usage.reasoning, Some(300));
        let openai = usage.to_openai();
        assert_eq!(openai["prompt_tokens"], 1050);
        assert_eq!(openai["completion_tokens"], 420);

        let partial = Usage::from_gemini(&json!({"promptTokenCount": 9})).unwrap();
        assert_eq!(partial.input, Some(9));
        assert_eq!(partial.output, None, "absent stays unknown");
        assert_eq!(partial.reasoning, None);
    }

    #[test]
    fn merge_keeps_known_values() {
        let mut usage =
            Usage::from_anthropic(&json!({"input_tokens": 10, "output_tokens": 1})).unwrap();
        usage.merge(Usage::from_anthropic(&json!({"output_tokens": 42})).unwrap());
        assert_eq!(usage.input, Some(10));
        assert_eq!(usage.output, Some(42));
        usage.merge(Usage::from_anthropic(&json!({"output_tokens": 0})).unwrap());
        assert_eq!(
            usage.output,
            Some(0),
            "an explicit 0 replaces the known value"
        );
    }

    #[test]
    fn missing_usage_is_none() {
        assert_eq!(Usage::from_openai(&Value::Null), None);
        assert_eq!(Usage::from_anthropic(&json!("x")), None);
        let usage = Usage::from_openai(&json!({})).unwrap();
        assert_eq!(usage.input, None);
        assert_eq!(usage.output, None);
    }

    #[test]
    fn cost_prices_each_category() {
        let spec = PriceSpec {
            cache_read_per_million: Some(0.30),
            cache_write_per_million: Some(3.75),
            reasoning_per_million: Some(20.0),
            ..spec(3.0, 15.0)
        };
        let usage = Usage {
            input: Some(1_000_000),
            cache_read: Some(2_000_000),
            cache_write: Some(1_000_000),
            output: Some(100_000),
            reasoning: Some(50_000),
        };
        let cost = price(spec).cost(&usage);
        // 3.00 + 0.60 + 3.75 + 1.50 + 1.00
        assert!((cost - 9.85).abs() < 1e-9, "{cost}");
    }

    #[test]
    fn cost_defaults_cache_and_reasoning_prices() {
        let usage = Usage::from_openai(&json!({
            "prompt_tokens": 1_000_000,
            "completion_tokens": 1_000_000,
            "prompt_tokens_details": {"cached_tokens": 500_000},
            "completion_tokens_details": {"reasoning_tokens": 400_000}
        }))
        .unwrap();
        let cost = price(spec(2.0, 8.0)).cost(&usage);
        // Cached input at the input price and reasoning at the output price: 2.00 + 8.00.
        assert!((cost - 10.0).abs() < 1e-9, "{cost}");
    }

    #[test]
    fn cost_of_cached_and_reasoning_with_discounts() {
        let usage = Usage::from_openai(&json!({
            "prompt_tokens": 10_000,
            "completion_tokens": 3_000,
            "prompt_tokens_details": {"cached_tokens": 8_000},
            "completion_tokens_details": {"reasoning_tokens": 2_000}
        }))
        .unwrap();
        let spec = PriceSpec {
            cache_read_per_million: Some(0.5),
            ..spec(2.0, 8.0)
        };
        let cost = price(spec).cost(&usage);
        // 2000 uncached * 2.0 + 8000 cached * 0.5 + 1000 output * 8.0 + 2000 reasoning * 8.0,
        // per million.
        let expected = (2000.0 * 2.0 + 8000.0 * 0.5 + 1000.0 * 8.0 + 2000.0 * 8.0) / 1e6;
        assert!((cost - expected).abs() < 1e-12, "{cost} != {expected}");
    }
}
