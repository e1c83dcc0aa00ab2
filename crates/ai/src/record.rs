//! The usage record of one AI call, shared between the response body that fills it and the
//! access-log hook that reads it when the response ends.

use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::usage::{Price, Usage};

/// Characters per token used to estimate a count that the provider never sent. About 4 for
/// English text with OpenAI and Anthropic tokenizers; an estimate, marked as such in the log.
const CHARS_PER_TOKEN: u64 = 4;

/// Estimates the tokens of `chars` characters of text.
pub(crate) fn estimate_tokens(chars: u64) -> u64 {
    chars.div_ceil(CHARS_PER_TOKEN)
}

/// The usage observed so far while a call's response streams.
#[derive(Debug, Default)]
pub struct CallState {
    pub usage: Usage,
    /// The provider sent its final usage, so no count needs estimating.
    pub usage_final: bool,
    /// Characters of text and tool arguments received from the provider.
    pub output_chars: u64,
    /// The provider reported an error in the middle of a stream, or the stream broke off.
    pub stream_error: bool,
    /// The prompt endpoint and version that made the call.
    pub prompt: Option<(Arc<str>, u32)>,
    /// Values that the route's guard replaced by placeholders in the prompt.
    pub redactions: u32,
}

/// The shared record of one call.
#[derive(Debug)]
pub struct CallRecord {
    /// The `model` the client sent: an alias or `provider/model`.
    pub requested_model: String,
    pub provider: Arc<str>,
    /// The provider's own model name.
    pub provider_model: String,
    /// `provider/model` of the target that served the call, the metric label and price key.
    pub target: Arc<str>,
    /// Targets tried, including the one that served.
    pub attempts: u32,
    pub streamed: bool,
    /// Characters of the request's messages, for estimating input when it was never reported.
    pub prompt_chars: u64,
    /// The gateway's request id, repeated in error events written into the stream.
    pub request_id: String,
    price: Option<Price>,
    state: Mutex<CallState>,
}

/// The usage and cost of a finished call, as written to the access log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallSummary {
    pub model: String,
    pub provider: Arc<str>,
    pub provider_model: String,
    pub target: Arc<str>,
    pub attempts: u32,
    pub stream: bool,
    pub input_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub output_tokens: u64,
    pub reasoning_tokens: u64,
    /// Cost from the price table; absent when the target has no price.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
    /// Some counts were estimated from characters because the provider never sent them, as
    /// when the client disconnected before the end of a stream.
    pub usage_estimated: bool,
    pub stream_error: bool,
    /// The prompt endpoint that made the call; absent on other endpoints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_version: Option<u32>,
    /// Values that the route's guard redacted; absent when none were.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redactions: Option<u32>,
}

impl CallRecord {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        requested_model: String,
        provider: Arc<str>,
        provider_model: String,
        target: Arc<str>,
        attempts: u32,
        streamed: bool,
        prompt_chars: u64,
        price: Option<Price>,
    ) -> Self {
        CallRecord {
            requested_model,
            provider,
            provider_model,
            target,
            attempts,
            streamed,
            prompt_chars,
            request_id: String::new(),
            price,
            state: Mutex::new(CallState::default()),
        }
    }

    /// Sets the request id that error events in the stream carry.
    pub fn with_request_id(mut self, request_id: &str) -> Self {
        self.request_id = request_id.to_string();
        self
    }

    /// Runs `update` on the state under the lock.
    pub fn update<R>(&self, update: impl FnOnce(&mut CallState) -> R) -> R {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        update(&mut state)
    }

    /// Summarises the call with what was received so far. A count the provider did not send
    /// is estimated from characters: input from the request, output from the text received.
    pub fn summary(&self) -> CallSummary {
        let state = self.update(|state| {
            (
                state.usage,
                state.usage_final,
                state.output_chars,
                state.stream_error,
                state.prompt.clone(),
                state.redactions,
            )
        });
        let (mut usage, usage_final, output_chars, stream_error, prompt, redactions) = state;
        let mut estimated = false;
        if !usage_final {
            if usage.input.is_none() {
                usage.input = Some(self.prompt_chars.div_ceil(CHARS_PER_TOKEN));
                estimated = true;
            }
            let received = output_chars.div_ceil(CHARS_PER_TOKEN);
            let reported = usage.output.unwrap_or(0) + usage.reasoning.unwrap_or(0);
            if received > reported {
                usage.output = Some(received - usage.reasoning.unwrap_or(0));
                estimated = true;
            }
        }
        CallSummary {
            model: self.requested_model.clone(),
            provider: self.provider.clone(),
            provider_model: self.provider_model.clone(),
            target: self.target.clone(),
            attempts: self.attempts,
            stream: self.streamed,
            input_tokens: usage.input.unwrap_or(0),
            cache_read_tokens: usage.cache_read.unwrap_or(0),
            cache_write_tokens: usage.cache_write.unwrap_or(0),
            output_tokens: usage.output.unwrap_or(0),
            reasoning_tokens: usage.reasoning.unwrap_or(0),
            cost: self.price.map(|price| price.cost(&usage)),
            usage_estimated: estimated,
            stream_error,
            prompt_version: prompt.as_ref().map(|(_, version)| *version),
            prompt: prompt.map(|(name, _)| name),
            redactions: (redactions > 0).then_some(redactions),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> CallRecord {
        CallRecord::new(
            "smart".into(),
            "p".into(),
            "m".into(),
            "p/m".into(),
            1,
            true,
            400,
            None,
        )
    }

    #[test]
    fn final_usage_is_not_estimated() {
        let record = record();
        record.update(|state| {
            state.usage = Usage {
                input: Some(0),
                output: Some(0),
                ..Usage::default()
            };
            state.output_chars = 400;
            state.usage_final = true;
        });
        let summary = record.summary();
        assert_eq!(summary.input_tokens, 0);
        assert_eq!(summary.output_tokens, 0);
        assert!(!summary.usage_estimated);
    }

    #[test]
    fn interrupted_stream_counts_what_was_received() {
        let record = record();
        record.update(|state| {
            state.usage.input = Some(25);
            state.usage.output = Some(1);
            state.output_chars = 41;
        });
        let summary = record.summary();
        assert_eq!(summary.input_tokens, 25);
        assert_eq!(summary.output_tokens, 11);
        assert!(summary.usage_estimated);
    }

    #[test]
    fn missing_input_is_estimated_from_the_request() {
        let summary = record().summary();
        assert_eq!(summary.input_tokens, 100);
        assert!(summary.usage_estimated);
    }
}
