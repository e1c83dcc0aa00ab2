//! Gemini `streamGenerateContent?alt=sse` events translated into `chat.completion.chunk` events.
//!
//! Every Gemini event is a whole `GenerateContentResponse` fragment: text parts arrive as
//! deltas, a function call arrives whole in one part, `finishReason` marks a candidate's last
//! event, and `usageMetadata` repeats on events with the latest counts. The stream has no end
//! marker, so the gateway writes `[DONE]` when the provider closes the body after a finish
//! reason, and an error event when it closes before one.

use std::collections::{HashMap, HashSet};

use bytes::{BufMut, BytesMut};
use serde_json::{Value, json};

use super::{Flow, write_data, write_error};
use crate::gemini;
use crate::record::CallRecord;
use crate::usage::Usage;

/// Per-stream state of the Gemini translation.
#[derive(Debug)]
pub struct GeminiStream {
    /// Completion id of every chunk, from the first event's `responseId`.
    id: Option<String>,
    model: String,
    created: i64,
    include_usage: bool,
    /// Tool calls sent so far per candidate, which is the OpenAI `index` of the next one.
    tool_counts: HashMap<u64, usize>,
    /// Candidates whose first delta, which carries `role`, was sent.
    started: HashSet<u64>,
    /// Candidates whose finish chunk was sent.
    finished: HashSet<u64>,
}

impl GeminiStream {
    /// Starts a translation. `model` names the chunks until Gemini sends `modelVersion`.
    pub fn new(include_usage: bool, created: i64, model: &str) -> Self {
        GeminiStream {
            id: None,
            model: model.to_string(),
            created,
            include_usage,
            tool_counts: HashMap::new(),
            started: HashSet::new(),
            finished: HashSet::new(),
        }
    }

    fn chunk(&self, index: u64, delta: Value, finish_reason: Option<&str>) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": null}],
        })
    }

    /// Writes a content delta, with `role` when it is the candidate's first.
    fn write_delta(&mut self, out: &mut BytesMut, index: u64, mut delta: Value) {
        if self.started.insert(index) {
            delta["role"] = json!("assistant");
        }
        write_data(out, &self.chunk(index, delta, None));
    }

    pub(super) fn on_event(
        &mut self,
        event: &Value,
        out: &mut BytesMut,
        record: &CallRecord,
    ) -> Flow {
        if let Some(error) = event.get("error").filter(|error| !error.is_null()) {
            write_error(out, &gemini::error_of(error), record);
            return Flow::End;
        }
        if self.id.is_none() {
            self.id = Some(gemini::response_id(event));
        }
        if let Some(model) = event.get("modelVersion").and_then(Value::as_str) {
            self.model = model.to_string();
        }
        if let Some(usage) = Usage::from_gemini(&event["usageMetadata"]) {
            record.update(|state| state.usage.merge(usage));
        }

        let candidates = event.get("candidates").and_then(Value::as_array);
        for (position, candidate) in candidates.into_iter().flatten().enumerate() {
            let index = candidate
                .get("index")
                .and_then(Value::as_u64)
                .unwrap_or(position as u64);
            let content = gemini::candidate_content(candidate);
            let mut chars = content.text.len();
            if !content.text.is_empty() {
                self.write_delta(out, index, json!({"content": content.text}));
            }
            for mut call in content.tool_calls {
                let count = self.tool_counts.entry(index).or_insert(0);
                call["index"] = json!(*count);
                *count += 1;
                chars += call["function"]["arguments"].as_str().map_or(0, str::len);
                self.write_delta(out, index, json!({"tool_calls": [call]}));
            }
            record.update(|state| state.output_chars += chars as u64);
            if let Some(reason) = candidate.get("finishReason").and_then(Value::as_str) {
                let has_calls = self.tool_counts.get(&index).is_some_and(|count| *count > 0);
                let finish_reason = gemini::finish_reason(reason, has_calls);
                self.started.insert(index);
                self.finished.insert(index);
                write_data(out, &self.chunk(index, json!({}), Some(finish_reason)));
            }
        }
        let blocked = event.pointer("/promptFeedback/blockReason").is_some();
        if blocked && candidates.is_none_or(|candidates| candidates.is_empty()) {
            self.finished.insert(0);
            let delta = json!({"role": "assistant", "content": ""});
            write_data(out, &self.chunk(0, delta, Some("content_filter")));
        }
        Flow::Continue
    }

    /// Ends the translation when the provider closed its body. Returns `false` when no
    /// candidate had finished, so the stream broke off.
    pub(super) fn on_end(&mut self, out: &mut BytesMut, record: &CallRecord) -> bool {
        if self.finished.is_empty() {
            return false;
        }
        let usage = record.update(|state| {
            state.usage_final = state.usage.input.is_some() || state.usage.output.is_some();
            state.usage
        });
        if self.include_usage {
            let chunk = json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": usage.to_openai(),
            });
            write_data(out, &chunk);
        }
        out.put_slice(b"data: [DONE]\n\n");
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::tests::{data_lines, record};

    fn run(events: &[Value], include_usage: bool, record: &CallRecord) -> (Vec<Value>, bool) {
        let mut stream = GeminiStream::new(include_usage, 9, "gemini-x");
        let mut out = BytesMut::new();
        let mut ended = false;
        for event in events {
            if stream.on_event(event, &mut out, record) == Flow::End {
                ended = true;
                break;
            }
        }
        let clean = !ended && stream.on_end(&mut out, record);
        let lines = data_lines(&out);
        let chunks = lines
            .iter()
            .filter(|line| *line != "[DONE]")
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        (
            chunks,
            clean && lines.last().map(String::as_str) == Some("[DONE]"),
        )
    }

    fn text_event(text: &str) -> Value {
        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}],
               "usageMetadata": {"promptTokenCount": 12, "totalTokenCount": 12},
               "modelVersion": "gemini-2.5-flash", "responseId": "r1"})
    }

    #[test]
    fn text_stream_ends_with_usage_and_done() {
        let record = record();
        let events = [
            text_event("Hello"),
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": " there"}]}, "finishReason": "STOP", "index": 0}],
                   "usageMetadata": {"promptTokenCount": 12, "cachedContentTokenCount": 4, "candidatesTokenCount": 3, "thoughtsTokenCount": 5, "totalTokenCount": 20},
                   "modelVersion": "gemini-2.5-flash", "responseId": "r1"}),
        ];
        let (chunks, done) = run(&events, true, &record);
        assert!(done);
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(chunks[0]["choices"][0]["delta"]["content"], "Hello");
        assert!(chunks[1]["choices"][0]["delta"].get("role").is_none());
        assert!(chunks.iter().all(|chunk| chunk["id"] == "chatcmpl-r1"));
        assert!(
            chunks
                .iter()
                .all(|chunk| chunk["model"] == "gemini-2.5-flash")
        );
        assert_eq!(chunks[2]["choices"][0]["finish_reason"], "stop");
        let usage = &chunks[3]["usage"];
        assert_eq!(chunks[3]["choices"], json!([]));
        assert_eq!(usage["prompt_tokens"], 12);
        assert_eq!(usage["completion_tokens"], 8);
        assert_eq!(usage["completion_tokens_details"]["reasoning_tokens"], 5);
        let summary = record.summary();
        assert_eq!(summary.input_tokens, 8);
        assert_eq!(summary.cache_read_tokens, 4);
        assert_eq!(summary.output_tokens, 3);
        assert_eq!(summary.reasoning_tokens, 5);
        assert!(!summary.usage_estimated);
    }

    #[test]
    fn several_calls_get_their_own_indexes() {
        let record = record();
        let events = [
            json!({"candidates": [{"content": {"role": "model", "parts": [
                {"functionCall": {"name": "weather", "args": {"city": "Paris"}}},
            ]}, "index": 0}]}),
            json!({"candidates": [{"content": {"role": "model", "parts": [
                {"functionCall": {"name": "weather", "args": {"city": "Oslo"}}},
                {"functionCall": {"name": "time", "args": {}}},
            ]}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 30, "candidatesTokenCount": 9, "totalTokenCount": 39}}),
        ];
        let (chunks, done) = run(&events, false, &record);
        assert!(done);
        let calls: Vec<&Value> = chunks
            .iter()
            .filter_map(|chunk| chunk.pointer("/choices/0/delta/tool_calls/0"))
            .collect();
        assert_eq!(calls.len(), 3);
        for (expected, call) in calls.iter().enumerate() {
            assert_eq!(call["index"], expected);
            assert!(call["id"].as_str().unwrap().starts_with("call_"));
            assert_eq!(call["type"], "function");
        }
        assert_ne!(calls[0]["id"], calls[1]["id"]);
        assert_eq!(calls[1]["function"]["arguments"], "{\"city\":\"Oslo\"}");
        assert_eq!(calls[2]["function"]["name"], "time");
        let last = chunks.last().unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "tool_calls");
        assert!(
            !chunks.iter().any(|chunk| chunk.get("usage").is_some()),
            "no usage chunk unless asked"
        );
        assert_eq!(record.summary().output_tokens, 9);
    }

    #[test]
    fn error_event_ends_without_done() {
        let record = record();
        let events = [
            text_event("Hel"),
            json!({"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}),
        ];
        let (chunks, done) = run(&events, false, &record);
        assert!(!done);
        let error = &chunks.last().unwrap()["error"];
        assert_eq!(error["status"], 503);
        assert_eq!(error["code"], "UNAVAILABLE");
        assert_eq!(error["message"], "The model is overloaded.");
        let summary = record.summary();
        assert!(summary.stream_error);
        assert_eq!(summary.input_tokens, 12);
    }

    #[test]
    fn body_closed_before_finish_is_not_clean() {
        let record = record();
        let (_, done) = run(&[text_event("Hello")], true, &record);
        assert!(!done);
    }

    #[test]
    fn blocked_prompt_finishes_with_content_filter() {
        let record = record();
        let events = [json!({"promptFeedback": {"blockReason": "SAFETY"},
                             "usageMetadata": {"promptTokenCount": 7, "totalTokenCount": 7}})];
        let (chunks, done) = run(&events, false, &record);
        assert!(done);
        assert_eq!(chunks[0]["choices"][0]["finish_reason"], "content_filter");
    }
}
