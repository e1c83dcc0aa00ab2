//! Streaming responses: provider SSE in, OpenAI `chat.completion.chunk` SSE out, or the
//! provider's Anthropic events unchanged for the Anthropic-compatible endpoint. The Gemini
//! translation is in [`gemini`].
//!
//! [`TranslatedStream`] reads the provider's body frame by frame, parses events with a bounded
//! [`SseParser`], and writes the translated events of each frame as one output frame. It keeps
//! no more than one unfinished event and one frame's output, so memory stays bounded however
//! long the stream runs. Usage is written to the shared [`CallRecord`] as each event arrives,
//! so a client that disconnects mid-stream is still billed for what was received.

mod gemini;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http_body::{Body, Frame};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::time::Sleep;

use crate::anthropic::{self, JSON_TOOL};
use crate::error::AiError;
use crate::record::CallRecord;
use crate::sse::{SseEvent, SseParser};
use crate::usage::Usage;

pub use gemini::GeminiStream;

/// Largest provider event accepted, in bytes.
const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// Per-stream state of the Anthropic translation.
#[derive(Debug)]
pub struct AnthropicStream {
    id: String,
    model: String,
    created: i64,
    include_usage: bool,
    json_mode: bool,
    /// Anthropic content-block index to OpenAI tool-call index. Anthropic counts text and tool
    /// blocks together, while OpenAI numbers tool calls alone, from 0.
    tool_indexes: HashMap<u64, usize>,
    /// Content-block indexes of the forced JSON tool, whose input is streamed as text.
    json_blocks: Vec<u64>,
    finish_reason: Option<&'static str>,
}

/// Per-stream state of an OpenAI-compatible stream that passes through.
#[derive(Debug)]
pub struct OpenAiStream {
    /// The client asked for the usage chunk; when false the gateway asked for it upstream
    /// and removes it from the client's stream.
    include_usage: bool,
}

/// State of an Anthropic stream passed through unchanged to an Anthropic client.
#[derive(Debug, Default)]
pub struct AnthropicPassthrough {}

/// The translation a stream applies.
#[derive(Debug)]
pub enum Translator {
    Anthropic(AnthropicStream),
    OpenAi(OpenAiStream),
    AnthropicPassthrough(AnthropicPassthrough),
    Gemini(GeminiStream),
}

/// The next step after an event.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    /// The stream is complete; the output ends after this event.
    End,
}

impl AnthropicStream {
    pub fn new(include_usage: bool, json_mode: bool, created: i64) -> Self {
        AnthropicStream {
            id: String::new(),
            model: String::new(),
            created,
            include_usage,
            json_mode,
            tool_indexes: HashMap::new(),
            json_blocks: Vec::new(),
            finish_reason: None,
        }
    }

    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": null}],
        })
    }

    fn on_event(&mut self, event: &Value, out: &mut BytesMut, record: &CallRecord) -> Flow {
        let kind = event.get("type").and_then(Value::as_str).unwrap_or("");
        match kind {
            "message_start" => {
                let message = &event["message"];
                self.id = message["id"].as_str().unwrap_or("").to_string();
                self.model = message["model"].as_str().unwrap_or("").to_string();
                if let Some(usage) = Usage::from_anthropic(&message["usage"]) {
                    record.update(|state| state.usage.merge(usage));
                }
                write_data(
                    out,
                    &self.chunk(json!({"role": "assistant", "content": ""}), None),
                );
            }
            "content_block_start" => {
                let index = event["index"].as_u64().unwrap_or(0);
                let block = &event["content_block"];
                match block["type"].as_str() {
                    Some("tool_use") if self.json_mode && block["name"] == JSON_TOOL => {
                        self.json_blocks.push(index);
                    }
                    Some("tool_use") => {
                        let tool_index = self.tool_indexes.len();
                        self.tool_indexes.insert(index, tool_index);
                        let delta = json!({"tool_calls": [{
                            "index": tool_index,
                            "id": block["id"],
                            "type": "function",
                            "function": {"name": block["name"], "arguments": ""},
                        }]});
                        write_data(out, &self.chunk(delta, None));
                    }
                    Some("text") => {
                        let text = block["text"].as_str().unwrap_or("");
                        if !text.is_empty() {
                            record.update(|state| state.output_chars += text.len() as u64);
                            write_data(out, &self.chunk(json!({"content": text}), None));
                        }
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let index = event["index"].as_u64().unwrap_or(0);
                let delta = &event["delta"];
                let (text, is_arguments) = match delta["type"].as_str() {
                    Some("text_delta") => (delta["text"].as_str().unwrap_or(""), false),
                    Some("input_json_delta") => {
                        (delta["partial_json"].as_str().unwrap_or(""), true)
                    }
                    // Thinking, signature and citation deltas have no Chat Completions form.
                    _ => return Flow::Continue,
                };
                record.update(|state| state.output_chars += text.len() as u64);
                let delta = match (is_arguments, self.tool_indexes.get(&index)) {
                    (true, Some(tool_index)) => json!({"tool_calls": [{
                        "index": tool_index,
                        "function": {"arguments": text},
                    }]}),
                    (true, None) if !self.json_blocks.contains(&index) => return Flow::Continue,
                    _ => json!({"content": text}),
                };
                write_data(out, &self.chunk(delta, None));
            }
            "message_delta" => {
                if let Some(reason) = event.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    self.finish_reason = Some(anthropic::finish_reason(reason, self.json_mode));
                }
                if let Some(usage) = Usage::from_anthropic(&event["usage"]) {
                    record.update(|state| state.usage.merge(usage));
                }
            }
            "message_stop" => {
                let finish_reason = self.finish_reason.unwrap_or("stop");
                write_data(out, &self.chunk(json!({}), Some(finish_reason)));
                let usage = record.update(|state| {
                    state.usage_final = true;
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
                return Flow::End;
            }
            "error" => {
                let error = &event["error"];
                let status = match error["type"].as_str() {
                    Some("overloaded_error") => http::StatusCode::SERVICE_UNAVAILABLE,
                    Some("rate_limit_error") => http::StatusCode::TOO_MANY_REQUESTS,
                    _ => http::StatusCode::BAD_GATEWAY,
                };
                let error = AiError::upstream(
                    status,
                    error["type"].as_str().unwrap_or("provider_error"),
                    error["message"]
                        .as_str()
                        .unwrap_or("the provider reported an error mid-stream"),
                );
                write_error(out, &error, record);
                return Flow::End;
            }
            // `ping` and event types added later carry nothing to translate.
            _ => {}
        }
        Flow::Continue
    }
}

impl OpenAiStream {
    pub fn new(include_usage: bool) -> Self {
        OpenAiStream { include_usage }
    }

    fn on_event(&mut self, data: &str, out: &mut BytesMut, record: &CallRecord) -> Flow {
        if data.trim() == "[DONE]" {
            record.update(|state| {
                // The usage chunk comes before `[DONE]`, so without it the counts stay unknown.
                state.usage_final = state.usage.input.is_some() || state.usage.output.is_some();
            });
            out.put_slice(b"data: [DONE]\n\n");
            return Flow::End;
        }
        let Ok(mut chunk) = serde_json::from_str::<Value>(data) else {
            write_raw(out, data);
            return Flow::Continue;
        };
        if chunk.get("error").is_some_and(|error| !error.is_null()) {
            record.update(|state| state.stream_error = true);
            write_raw(out, data);
            return Flow::End;
        }
        let mut chars = 0u64;
        for choice in chunk["choices"].as_array().into_iter().flatten() {
            let delta = &choice["delta"];
            chars += delta["content"].as_str().map_or(0, str::len) as u64;
            for call in delta["tool_calls"].as_array().into_iter().flatten() {
                chars += call
                    .pointer("/function/arguments")
                    .and_then(Value::as_str)
                    .map_or(0, str::len) as u64;
            }
        }
        let usage = chunk.get("usage").and_then(Usage::from_openai);
        record.update(|state| {
            state.output_chars += chars;
            if let Some(usage) = usage {
                state.usage.merge(usage);
            }
        });
        if self.include_usage || usage.is_none() {
            write_raw(out, data);
            return Flow::Continue;
        }
        // Some servers send the usage chunk with `choices: null` instead of `[]`.
        let has_choices = chunk["choices"]
            .as_array()
            .is_some_and(|choices| !choices.is_empty());
        if has_choices {
            if let Some(object) = chunk.as_object_mut() {
                object.remove("usage");
            }
            write_data(out, &chunk);
        }
        Flow::Continue
    }
}

impl AnthropicPassthrough {
    /// Re-emits the event as received and records its usage.
    fn on_event(&mut self, event: &SseEvent, out: &mut BytesMut, record: &CallRecord) -> Flow {
        if let Some(name) = &event.event {
            out.put_slice(b"event: ");
            out.put_slice(name.as_bytes());
            out.put_slice(b"\n");
        }
        write_raw(out, &event.data);
        let Ok(value) = serde_json::from_str::<Value>(&event.data) else {
            return Flow::Continue;
        };
        match value["type"].as_str() {
            Some("message_start") => {
                if let Some(usage) = Usage::from_anthropic(&value["message"]["usage"]) {
                    record.update(|state| state.usage.merge(usage));
                }
            }
            Some("message_delta") => {
                if let Some(usage) = Usage::from_anthropic(&value["usage"]) {
                    record.update(|state| state.usage.merge(usage));
                }
            }
            Some("content_block_delta") => {
                let delta = &value["delta"];
                let text = delta["text"]
                    .as_str()
                    .or_else(|| delta["partial_json"].as_str())
                    .unwrap_or("");
                record.update(|state| state.output_chars += text.len() as u64);
            }
            Some("message_stop") => {
                record.update(|state| state.usage_final = true);
                return Flow::End;
            }
            Some("error") => {
                record.update(|state| state.stream_error = true);
                return Flow::End;
            }
            _ => {}
        }
        Flow::Continue
    }
}

fn write_raw(out: &mut BytesMut, data: &str) {
    out.put_slice(b"data: ");
    out.put_slice(data.as_bytes());
    out.put_slice(b"\n\n");
}

fn write_data(out: &mut BytesMut, value: &Value) {
    out.put_slice(b"data: ");
    out.put_slice(value.to_string().as_bytes());
    out.put_slice(b"\n\n");
}

fn write_error(out: &mut BytesMut, error: &AiError, record: &CallRecord) {
    record.update(|state| state.stream_error = true);
    write_data(out, &json!({"error": error.to_value(&record.request_id)}));
}

/// A provider stream translated for the client.
pub struct TranslatedStream {
    upstream: Incoming,
    parser: SseParser,
    translator: Translator,
    record: Arc<CallRecord>,
    done: bool,
    /// Maximum pause between two frames of the provider's body.
    idle_timeout: Duration,
    idle: Pin<Box<Sleep>>,
}

impl TranslatedStream {
    pub fn new(
        upstream: Incoming,
        translator: Translator,
        record: Arc<CallRecord>,
        idle_timeout: Duration,
    ) -> Self {
        TranslatedStream {
            upstream,
            parser: SseParser::new(MAX_EVENT_BYTES),
            translator,
            record,
            done: false,
            idle_timeout,
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
        }
    }

    fn translate(&mut self, event: SseEvent, out: &mut BytesMut) -> Flow {
        match &mut self.translator {
            Translator::OpenAi(stream) => stream.on_event(&event.data, out, &self.record),
            Translator::AnthropicPassthrough(stream) => stream.on_event(&event, out, &self.record),
            Translator::Anthropic(stream) => match serde_json::from_str::<Value>(&event.data) {
                Ok(value) => stream.on_event(&value, out, &self.record),
                Err(_) => {
                    tracing::warn!(provider = %self.record.provider, "provider sent an event that is not JSON");
                    Flow::Continue
                }
            },
            Translator::Gemini(stream) => match serde_json::from_str::<Value>(&event.data) {
                Ok(value) => stream.on_event(&value, out, &self.record),
                Err(_) => {
                    tracing::warn!(provider = %self.record.provider, "provider sent an event that is not JSON");
                    Flow::Continue
                }
            },
        }
    }

    /// Finishes the output when the provider closed its body. Returns `false` when the stream
    /// had not reached its end marker, which only Gemini streams lack.
    fn finish(&mut self, out: &mut BytesMut) -> bool {
        match &mut self.translator {
            Translator::Gemini(stream) => stream.on_end(out, &self.record),
            _ => false,
        }
    }

    /// Ends the stream with an error frame for a provider stream that broke off.
    fn fail(&mut self, out: &mut BytesMut, message: String) {
        tracing::warn!(provider = %self.record.provider, error = %message, "provider stream failed");
        if let Translator::AnthropicPassthrough(_) = self.translator {
            // Anthropic clients expect the Messages API's own `error` event.
            let error =
                json!({"type": "error", "error": {"type": "api_error", "message": message}});
            out.put_slice(b"event: error\n");
            write_data(out, &error);
            self.record.update(|state| state.stream_error = true);
        } else {
            let error =
                AiError::upstream(http::StatusCode::BAD_GATEWAY, "stream_interrupted", message);
            write_error(out, &error, &self.record);
        }
        self.done = true;
    }
}

impl Body for TranslatedStream {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            let mut out = BytesMut::new();
            match Pin::new(&mut this.upstream).poll_frame(cx) {
                Poll::Pending => {
                    if this.idle.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    let seconds = this.idle_timeout.as_secs_f64();
                    this.fail(
                        &mut out,
                        format!("the provider sent nothing for {seconds} s"),
                    );
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let deadline = tokio::time::Instant::now() + this.idle_timeout;
                    this.idle.as_mut().reset(deadline);
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    match this.parser.push(&data) {
                        Ok(events) => {
                            for event in events {
                                if this.translate(event, &mut out) == Flow::End {
                                    this.done = true;
                                    break;
                                }
                            }
                        }
                        Err(error) => this.fail(&mut out, error.to_string()),
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    this.fail(&mut out, format!("the provider stream failed: {error}"));
                }
                Poll::Ready(None) => {
                    if this.finish(&mut out) {
                        this.done = true;
                    } else {
                        this.fail(&mut out, "the provider stream ended early".to_string());
                    }
                }
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn record() -> CallRecord {
        CallRecord::new(
            "smart".into(),
            "claude".into(),
            "claude-x".into(),
            "claude/claude-x".into(),
            1,
            true,
            40,
            None,
        )
    }

    /// Runs the Anthropic translation over `events` and returns the `data:` payloads.
    fn run_anthropic(events: &[Value], include_usage: bool, record: &CallRecord) -> Vec<String> {
        let mut stream = AnthropicStream::new(include_usage, false, 7);
        let mut out = BytesMut::new();
        for event in events {
            if stream.on_event(event, &mut out, record) == Flow::End {
                break;
            }
        }
        data_lines(&out)
    }

    pub(super) fn data_lines(out: &[u8]) -> Vec<String> {
        String::from_utf8(out.to_vec())
            .unwrap()
            .split("\n\n")
            .filter(|event| !event.is_empty())
            .map(|event| event.strip_prefix("data: ").unwrap().to_string())
            .collect()
    }

    fn tool_stream() -> Vec<Value> {
        vec![
            json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "content": [], "stop_reason": null, "usage": {"input_tokens": 20, "cache_read_input_tokens": 100, "output_tokens": 1}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Checking"}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "ping"}),
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_a", "name": "weather", "input": {}}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"city\":"}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "\"Paris\"}"}}),
            json!({"type": "content_block_stop", "index": 1}),
            json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "toolu_b", "name": "weather", "input": {}}}),
            json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{\"city\":\"Oslo\"}"}}),
            json!({"type": "content_block_stop", "index": 2}),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 30}}),
            json!({"type": "message_stop"}),
        ]
    }

    #[test]
    fn several_tool_calls_keep_their_indexes() {
        let record = record();
        let lines = run_anthropic(&tool_stream(), true, &record);
        let chunks: Vec<Value> = lines
            .iter()
            .filter(|line| *line != "[DONE]")
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines.last().unwrap(), "[DONE]");
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert!(chunks.iter().all(|chunk| chunk["id"] == "msg_1"));
        let starts: Vec<&Value> = chunks
            .iter()
            .filter_map(|chunk| chunk.pointer("/choices/0/delta/tool_calls/0"))
            .filter(|call| call.get("id").is_some())
            .collect();
        assert_eq!(starts.len(), 2);
        assert_eq!(starts[0]["index"], 0);
        assert_eq!(starts[0]["id"], "toolu_a");
        assert_eq!(starts[1]["index"], 1);
        assert_eq!(starts[1]["id"], "toolu_b");
        let mut arguments = [String::new(), String::new()];
        for call in chunks
            .iter()
            .filter_map(|chunk| chunk.pointer("/choices/0/delta/tool_calls/0"))
        {
            let index = call["index"].as_u64().unwrap() as usize;
            arguments[index].push_str(call["function"]["arguments"].as_str().unwrap());
        }
        assert_eq!(arguments[0], "{\"city\":\"Paris\"}");
        assert_eq!(arguments[1], "{\"city\":\"Oslo\"}");
        let finish = &chunks[chunks.len() - 2];
        assert_eq!(finish["choices"][0]["finish_reason"], "tool_calls");
        let usage = &chunks[chunks.len() - 1];
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["prompt_tokens"], 120);
        assert_eq!(usage["usage"]["completion_tokens"], 30);
        let summary = record.summary();
        assert_eq!(summary.output_tokens, 30);
        assert_eq!(summary.cache_read_tokens, 100);
        assert!(!summary.usage_estimated);
    }

    #[test]
    fn json_mode_streams_tool_input_as_content() {
        let record = record();
        let mut stream = AnthropicStream::new(false, true, 7);
        let mut out = BytesMut::new();
        let events = [
            json!({"type": "message_start", "message": {"id": "msg_j", "model": "claude-x", "usage": {"input_tokens": 5, "output_tokens": 1}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "toolu_j", "name": JSON_TOOL, "input": {}}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{\"a\":"}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "1}"}}),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 6}}),
            json!({"type": "message_stop"}),
        ];
        for event in &events {
            stream.on_event(event, &mut out, &record);
        }
        let chunks: Vec<Value> = data_lines(&out)
            .iter()
            .filter(|line| *line != "[DONE]")
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        let content: String = chunks
            .iter()
            .filter_map(|chunk| chunk.pointer("/choices/0/delta/content")?.as_str())
            .collect();
        assert_eq!(content, "{\"a\":1}");
        assert!(
            chunks
                .iter()
                .all(|chunk| chunk.pointer("/choices/0/delta/tool_calls").is_none())
        );
        assert_eq!(
            chunks.last().unwrap()["choices"][0]["finish_reason"],
            "stop"
        );
    }

    #[test]
    fn usage_chunk_only_when_asked() {
        let lines = run_anthropic(&tool_stream(), false, &record());
        let last_chunk: Value = serde_json::from_str(&lines[lines.len() - 2]).unwrap();
        assert_eq!(last_chunk["choices"][0]["finish_reason"], "tool_calls");
        assert!(lines.iter().all(|line| !line.contains("\"usage\"")));
    }

    #[test]
    fn error_mid_stream_becomes_error_frame() {
        let record = record();
        let mut events = tool_stream();
        events.truncate(3);
        events.push(json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}));
        let lines = run_anthropic(&events, false, &record);
        let error: Value = serde_json::from_str(lines.last().unwrap()).unwrap();
        assert_eq!(error["error"]["code"], "overloaded_error");
        assert_eq!(error["error"]["status"], 503);
        assert!(!lines.iter().any(|line| line == "[DONE]"));
        let summary = record.summary();
        assert!(summary.stream_error);
        assert_eq!(summary.input_tokens, 20);
        assert_eq!(summary.output_tokens, 2, "8 characters received");
    }

    #[test]
    fn missing_usage_in_anthropic_stream() {
        let record = record();
        let events = vec![
            json!({"type": "message_start", "message": {"id": "m", "model": "claude-x"}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello there"}}),
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}}),
            json!({"type": "message_stop"}),
        ];
        let lines = run_anthropic(&events, true, &record);
        assert_eq!(lines.last().unwrap(), "[DONE]");
        let summary = record.summary();
        assert_eq!(summary.input_tokens, 0, "final without counts reads as 0");
        assert!(!summary.usage_estimated);
    }

    fn run_openai(data: &[&str], include_usage: bool, record: &CallRecord) -> Vec<String> {
        let mut stream = OpenAiStream::new(include_usage);
        let mut out = BytesMut::new();
        for line in data {
            if stream.on_event(line, &mut out, record) == Flow::End {
                break;
            }
        }
        data_lines(&out)
    }

    const OPENAI_STREAM: [&str; 4] = [
        r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4.1","choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},"finish_reason":null}],"usage":null}"#,
        r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4.1","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}"#,
        r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4.1","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17,"prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":2}}}"#,
        "[DONE]",
    ];

    #[test]
    fn openai_usage_chunk_is_stripped_when_not_asked() {
        let record = record();
        let lines = run_openai(&OPENAI_STREAM, false, &record);
        assert_eq!(lines.len(), 3);
        assert!(!lines.iter().any(|line| line.contains("prompt_tokens")));
        assert_eq!(lines[2], "[DONE]");
        let summary = record.summary();
        assert_eq!(summary.input_tokens, 8);
        assert_eq!(summary.cache_read_tokens, 4);
        assert_eq!(summary.output_tokens, 3);
        assert_eq!(summary.reasoning_tokens, 2);
        assert!(!summary.usage_estimated);
    }

    #[test]
    fn openai_usage_chunk_kept_when_asked() {
        let lines = run_openai(&OPENAI_STREAM, true, &record());
        assert_eq!(lines.len(), 4);
        assert!(lines[2].contains("\"prompt_tokens\":12"));
    }

    #[test]
    fn openai_stream_without_usage_is_estimated() {
        let record = record();
        let lines = run_openai(
            &[OPENAI_STREAM[0], OPENAI_STREAM[1], "[DONE]"],
            false,
            &record,
        );
        assert_eq!(lines.len(), 3);
        let summary = record.summary();
        assert!(summary.usage_estimated);
        assert_eq!(summary.input_tokens, 10, "40 request characters");
        assert_eq!(summary.output_tokens, 1, "2 characters received");
    }

    #[test]
    fn openai_zero_usage_is_kept() {
        let record = record();
        run_openai(
            &[
                OPENAI_STREAM[0],
                r#"{"id":"c1","choices":[],"usage":{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}}"#,
                "[DONE]",
            ],
            false,
            &record,
        );
        let summary = record.summary();
        assert_eq!(summary.input_tokens, 0);
        assert_eq!(summary.output_tokens, 0);
        assert!(!summary.usage_estimated);
    }
}
