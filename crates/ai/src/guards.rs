//! Prompt guards: local checks on a prompt before any provider call, and PII redaction with
//! optional restoration in the response.
//!
//! The prompt is the text the client controls: the text of every message (and `system` on
//! `/messages`), the `input` strings of `/embeddings`, or the string values of a prompt
//! endpoint's request body. Deny and allow patterns and the size limit look at that text joined
//! by `\n`. Redaction replaces emails, phone numbers and Luhn-valid card numbers in each text
//! with placeholders such as `[EMAIL_1]`, and restoration puts the values back where the reply
//! repeats a placeholder, also when a stream splits one across events.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http::header;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use portcullis_config::{GuardSpec, PiiKind};
use regex::Regex;
use serde_json::{Value, json};

use crate::error::AiError;
use crate::gateway::{AiBody, BoxError};
use crate::sse::{SseEvent, SseParser};

/// Characters per token of the size estimate, as in the usage estimate of the access log.
const CHARS_PER_TOKEN: u64 = 4;
/// Largest event the restoring stream parses, in bytes.
const MAX_EVENT_BYTES: usize = 1024 * 1024;
/// Maximum length of a placeholder, such as `[EMAIL_4294967295]`, in characters. A held-back
/// tail is always shorter.
const MAX_PLACEHOLDER_CHARS: usize = 24;

/// Candidate card numbers: 13 to 19 digits, optionally grouped by single spaces or hyphens.
static CARD: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b\d(?:[ -]?\d){12,18}\b").expect("valid card pattern"));
static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
        .expect("valid email pattern")
});
/// Candidate phone numbers: an optional `+` and country code, an optional area code in
/// parentheses, then groups of digits separated by a space, a dot or a hyphen.
static PHONE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\b\d{2,4}(?:[ .-]?\d{2,4}){1,4}\b")
        .expect("valid phone pattern")
});
/// ISO dates, which the phone pattern would otherwise take for numbers.
static DATE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^\d{4}-\d{2}-\d{2}$").expect("valid date pattern"));
static PLACEHOLDER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\[(EMAIL|PHONE|CARD)_\d{1,10}\]").expect("valid placeholder pattern")
});

/// The endpoint of a guarded request, which determines where its prompt text is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Chat,
    Messages,
    Embeddings,
    Prompt,
}

impl Endpoint {
    /// Returns the endpoint of a request of `route` at `path`, the path after the route prefix.
    pub(crate) fn of(route: &portcullis_config::AiRouteSpec, path: &str) -> Endpoint {
        match (&route.prompt, path) {
            (Some(_), _) => Endpoint::Prompt,
            (None, "/messages") => Endpoint::Messages,
            (None, "/embeddings") => Endpoint::Embeddings,
            (None, _) => Endpoint::Chat,
        }
    }
}

/// A compiled `ai.guards` entry.
#[derive(Debug)]
pub struct Guard {
    name: String,
    deny: Vec<Regex>,
    allow: Vec<Regex>,
    max_chars: Option<u64>,
    max_tokens: Option<u64>,
    redact: Vec<PiiKind>,
    restore: bool,
}

/// The values a guard replaced in one request, by placeholder.
#[derive(Debug, Default)]
pub struct Redactions {
    /// `(placeholder, original)` in the order found.
    entries: Vec<(String, String)>,
    counts: HashMap<PiiKind, usize>,
    /// Restore the values in the response.
    restore: bool,
}

impl Redactions {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Returns the placeholder for `original`, the same one each time it occurs.
    fn placeholder(&mut self, kind: PiiKind, original: &str) -> String {
        if let Some((placeholder, _)) = self.entries.iter().find(|(_, value)| value == original) {
            return placeholder.clone();
        }
        let count = self.counts.entry(kind).or_insert(0);
        *count += 1;
        let placeholder = format!("[{}_{}]", kind.label(), count);
        self.entries
            .push((placeholder.clone(), original.to_string()));
        placeholder
    }

    fn original(&self, placeholder: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(candidate, _)| candidate == placeholder)
            .map(|(_, original)| original.as_str())
    }

    /// Replaces every known placeholder in `text` by its original value.
    pub fn restore_text(&self, text: &str) -> String {
        PLACEHOLDER
            .replace_all(text, |captures: &regex::Captures<'_>| {
                let placeholder = &captures[0];
                self.original(placeholder)
                    .unwrap_or(placeholder)
                    .to_string()
            })
            .into_owned()
    }
}

impl Guard {
    /// Compiles a guard from its validated spec.
    pub fn new(spec: &GuardSpec) -> Result<Guard, String> {
        let compile = |patterns: &[String]| {
            patterns
                .iter()
                .map(|pattern| Regex::new(pattern).map_err(|error| error.to_string()))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Guard {
            name: spec.name.clone(),
            deny: compile(&spec.deny_patterns)?,
            allow: compile(&spec.allow_patterns)?,
            max_chars: spec.max_prompt_chars,
            max_tokens: spec.max_prompt_tokens,
            redact: spec.redact.clone(),
            restore: spec.restore_redacted,
        })
    }

    /// Checks the prompt of `body` and redacts it in place. Returns the values replaced.
    pub(crate) fn apply(
        &self,
        endpoint: Endpoint,
        body: &mut Value,
        request_id: &str,
    ) -> Result<Redactions, AiError> {
        let mut texts = Vec::new();
        prompt_texts(endpoint, body, &mut texts);
        let prompt = texts
            .iter()
            .map(|text| text.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        self.check(&prompt, request_id)?;
        let mut redactions = Redactions {
            restore: self.restore,
            ..Redactions::default()
        };
        if !self.redact.is_empty() {
            for text in texts {
                *text = self.redact_text(text, &mut redactions);
            }
        }
        Ok(redactions)
    }

    /// Applies the size limits and the deny and allow patterns to the joined prompt text.
    fn check(&self, prompt: &str, request_id: &str) -> Result<(), AiError> {
        let chars = prompt.chars().count() as u64;
        if let Some(max) = self.max_chars
            && chars > max
        {
            return Err(AiError::invalid_request(
                "prompt_too_large",
                format!("the prompt has {chars} characters; the maximum is {max}"),
            ));
        }
        if let Some(max) = self.max_tokens {
            let tokens = chars.div_ceil(CHARS_PER_TOKEN);
            if tokens > max {
                return Err(AiError::invalid_request(
                    "prompt_too_large",
                    format!(
                        "the prompt has about {tokens} tokens (estimated at {CHARS_PER_TOKEN} characters per token); the maximum is {max}"
                    ),
                ));
            }
        }
        if let Some(index) = self
            .deny
            .iter()
            .position(|pattern| pattern.is_match(prompt))
        {
            tracing::info!(request.id = request_id, ai.guard = %self.name, deny_pattern = index, "prompt matched a deny pattern");
            return Err(AiError::invalid_request(
                "prompt_denied",
                "the prompt was rejected by a deny pattern of the route's prompt guard",
            ));
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|pattern| pattern.is_match(prompt)) {
            tracing::info!(request.id = request_id, ai.guard = %self.name, "prompt matched no allow pattern");
            return Err(AiError::invalid_request(
                "prompt_not_allowed",
                "the prompt matches none of the allow patterns of the route's prompt guard",
            ));
        }
        Ok(())
    }

    /// Replaces card numbers, then emails, then phone numbers in `text`.
    fn redact_text(&self, text: &str, redactions: &mut Redactions) -> String {
        let mut text = text.to_string();
        for kind in [PiiKind::PaymentCard, PiiKind::Email, PiiKind::Phone] {
            if !self.redact.contains(&kind) {
                continue;
            }
            let pattern: &Regex = match kind {
                PiiKind::PaymentCard => &CARD,
                PiiKind::Email => &EMAIL,
                PiiKind::Phone => &PHONE,
            };
            text = pattern
                .replace_all(&text, |captures: &regex::Captures<'_>| {
                    let found = &captures[0];
                    if is_redacted(kind, found) {
                        redactions.placeholder(kind, found)
                    } else {
                        found.to_string()
                    }
                })
                .into_owned();
        }
        text
    }
}

/// Decides whether a match of the kind's candidate pattern is a value to redact.
fn is_redacted(kind: PiiKind, found: &str) -> bool {
    let digits: Vec<u32> = found.chars().filter_map(|c| c.to_digit(10)).collect();
    match kind {
        PiiKind::Email => true,
        PiiKind::PaymentCard => (13..=19).contains(&digits.len()) && luhn_valid(&digits),
        // E.164 numbers have at most 15 digits; local numbers at least 7.
        PiiKind::Phone => (7..=15).contains(&digits.len()) && !DATE.is_match(found),
    }
}

/// Checks the Luhn checksum of a card number's digits.
fn luhn_valid(digits: &[u32]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &digit)| {
            if i % 2 == 1 {
                let doubled = digit * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                digit
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Collects the strings of `body` that make up the prompt of `endpoint`.
fn prompt_texts<'a>(endpoint: Endpoint, body: &'a mut Value, out: &mut Vec<&'a mut String>) {
    match endpoint {
        Endpoint::Chat | Endpoint::Messages => {
            let Some(object) = body.as_object_mut() else {
                return;
            };
            for (key, value) in object.iter_mut() {
                match key.as_str() {
                    "system" if endpoint == Endpoint::Messages => content_texts(value, out),
                    "messages" => {
                        for message in value.as_array_mut().into_iter().flatten() {
                            if let Some(content) = message.get_mut("content") {
                                content_texts(content, out);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        Endpoint::Embeddings => match body.get_mut("input") {
            Some(Value::String(text)) => out.push(text),
            Some(Value::Array(items)) => {
                for item in items {
                    if let Value::String(text) = item {
                        out.push(text);
                    }
                }
            }
            _ => {}
        },
        Endpoint::Prompt => string_leaves(body, out),
    }
}

/// Collects a message content: a string, or the `text` of each text part or block.
fn content_texts<'a>(content: &'a mut Value, out: &mut Vec<&'a mut String>) {
    match content {
        Value::String(text) => out.push(text),
        Value::Array(parts) => {
            for part in parts {
                if part.get("type").and_then(Value::as_str) != Some("text") {
                    continue;
                }
                if let Some(Value::String(text)) = part.get_mut("text") {
                    out.push(text);
                }
            }
        }
        _ => {}
    }
}

fn string_leaves<'a>(value: &'a mut Value, out: &mut Vec<&'a mut String>) {
    match value {
        Value::String(text) => out.push(text),
        Value::Array(items) => items.iter_mut().for_each(|item| string_leaves(item, out)),
        Value::Object(map) => map.values_mut().for_each(|item| string_leaves(item, out)),
        _ => {}
    }
}

/// Restores the redacted values in a response: in every string of a JSON body, or event by
/// event in a stream in the shape of `endpoint`.
pub(crate) async fn restore_response(
    response: http::Response<AiBody>,
    redactions: Redactions,
    endpoint: Endpoint,
) -> http::Response<AiBody> {
    if !redactions.restore || redactions.is_empty() {
        return response;
    }
    let is_stream = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("text/event-stream"));
    let (mut parts, body) = response.into_parts();
    if is_stream {
        let body = RestoringStream::new(body, redactions, endpoint);
        return http::Response::from_parts(parts, body.boxed_unsync());
    }
    let bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            tracing::warn!(error = %error, "cannot read the response to restore redacted values");
            return http::Response::from_parts(parts, crate::gateway::full(Bytes::new()));
        }
    };
    let bytes = match serde_json::from_slice::<Value>(&bytes) {
        Ok(mut value) => {
            restore_strings(&mut value, &redactions);
            Bytes::from(value.to_string())
        }
        Err(_) => bytes,
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    http::Response::from_parts(parts, crate::gateway::full(bytes))
}

/// Restores placeholders in every string of `value`, tool-call arguments included.
pub(crate) fn restore_strings(value: &mut Value, redactions: &Redactions) {
    match value {
        Value::String(text) if PLACEHOLDER.is_match(text) => {
            *text = redactions.restore_text(text);
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|item| restore_strings(item, redactions)),
        Value::Object(map) => map
            .values_mut()
            .for_each(|item| restore_strings(item, redactions)),
        _ => {}
    }
}

/// Restores placeholders in text that arrives in pieces. A piece that ends with what may be
/// the start of a placeholder keeps that tail back until the next piece shows how it ends.
#[derive(Debug, Default)]
struct TextRestorer {
    pending: String,
}

impl TextRestorer {
    /// Returns the restored text of `piece` that is safe to send now.
    fn push(&mut self, piece: &str, redactions: &Redactions) -> String {
        self.pending.push_str(piece);
        let text = std::mem::take(&mut self.pending);
        let keep_from = text
            .rfind('[')
            .filter(|&start| is_placeholder_prefix(&text[start..]));
        match keep_from {
            Some(start) => {
                self.pending = text[start..].to_string();
                redactions.restore_text(&text[..start])
            }
            None => redactions.restore_text(&text),
        }
    }

    /// Returns the held-back tail, restored, at the end of the text.
    fn flush(&mut self, redactions: &Redactions) -> String {
        redactions.restore_text(&std::mem::take(&mut self.pending))
    }
}

/// Tells whether `tail`, which starts with `[`, is a proper prefix of a placeholder.
fn is_placeholder_prefix(tail: &str) -> bool {
    if tail.chars().count() >= MAX_PLACEHOLDER_CHARS {
        return false;
    }
    let rest = &tail[1..];
    ["EMAIL", "PHONE", "CARD"].iter().any(|label| {
        if label.starts_with(rest) {
            return true;
        }
        rest.strip_prefix(label)
            .and_then(|after| after.strip_prefix('_'))
            .is_some_and(|digits| digits.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// A streamed response with its placeholders restored: OpenAI `chat.completion.chunk` events
/// for `/chat/completions`, Anthropic events for `/messages`.
struct RestoringStream {
    inner: AiBody,
    parser: SseParser,
    redactions: Redactions,
    endpoint: Endpoint,
    /// One restorer per choice index (OpenAI) or content block index (Anthropic).
    restorers: HashMap<u64, TextRestorer>,
    done: bool,
}

impl RestoringStream {
    fn new(inner: AiBody, redactions: Redactions, endpoint: Endpoint) -> Self {
        RestoringStream {
            inner,
            parser: SseParser::new(MAX_EVENT_BYTES),
            redactions,
            endpoint,
            restorers: HashMap::new(),
            done: false,
        }
    }

    fn on_event(&mut self, event: SseEvent, out: &mut BytesMut) {
        let Ok(mut value) = serde_json::from_str::<Value>(&event.data) else {
            write_event(out, event.event.as_deref(), &event.data);
            return;
        };
        if self.endpoint == Endpoint::Messages {
            self.on_anthropic_event(event.event.as_deref(), &mut value, out);
        } else {
            self.on_openai_chunk(&mut value);
            write_event(out, event.event.as_deref(), &value.to_string());
        }
    }

    fn on_openai_chunk(&mut self, chunk: &mut Value) {
        for choice in chunk
            .get_mut("choices")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let index = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
            let finished = choice
                .get("finish_reason")
                .is_some_and(|reason| !reason.is_null());
            let restorer = self.restorers.entry(index).or_default();
            let Some(delta) = choice.get_mut("delta").and_then(Value::as_object_mut) else {
                continue;
            };
            let mut text = match delta.get("content").and_then(Value::as_str) {
                Some(piece) => restorer.push(piece, &self.redactions),
                None => String::new(),
            };
            if finished {
                text.push_str(&restorer.flush(&self.redactions));
            }
            if delta.contains_key("content") || !text.is_empty() {
                delta.insert("content".into(), Value::String(text));
            }
            if let Some(calls) = delta.get_mut("tool_calls") {
                restore_strings(calls, &self.redactions);
            }
        }
    }

    fn on_anthropic_event(&mut self, name: Option<&str>, value: &mut Value, out: &mut BytesMut) {
        let index = value.get("index").and_then(Value::as_u64).unwrap_or(0);
        match value.get("type").and_then(Value::as_str) {
            Some("content_block_delta") => {
                let restorer = self.restorers.entry(index).or_default();
                if let Some(text) = value.pointer_mut("/delta/text")
                    && let Some(piece) = text.as_str()
                {
                    *text = Value::String(restorer.push(piece, &self.redactions));
                }
            }
            Some("content_block_stop") => {
                let held = self
                    .restorers
                    .get_mut(&index)
                    .map(|restorer| restorer.flush(&self.redactions))
                    .unwrap_or_default();
                if !held.is_empty() {
                    let delta = json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": held}});
                    write_event(out, Some("content_block_delta"), &delta.to_string());
                }
            }
            _ => {}
        }
        write_event(out, name, &value.to_string());
    }
}

fn write_event(out: &mut BytesMut, name: Option<&str>, data: &str) {
    if let Some(name) = name {
        out.put_slice(b"event: ");
        out.put_slice(name.as_bytes());
        out.put_slice(b"\n");
    }
    for line in data.split('\n') {
        out.put_slice(b"data: ");
        out.put_slice(line.as_bytes());
        out.put_slice(b"\n");
    }
    out.put_slice(b"\n");
}

impl Body for RestoringStream {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error))),
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let events = match this.parser.push(&data) {
                Ok(events) => events,
                Err(error) => return Poll::Ready(Some(Err(Box::new(error)))),
            };
            let mut out = BytesMut::new();
            for event in events {
                this.on_event(event, &mut out);
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(yaml_redact: Vec<PiiKind>) -> Guard {
        Guard::new(&GuardSpec {
            name: "g".into(),
            deny_patterns: vec![r"(?i)ignore (all|previous) instructions".into()],
            allow_patterns: Vec::new(),
            max_prompt_chars: Some(200),
            max_prompt_tokens: None,
            redact: yaml_redact,
            restore_redacted: true,
        })
        .unwrap()
    }

    fn all_kinds() -> Vec<PiiKind> {
        vec![PiiKind::Email, PiiKind::Phone, PiiKind::PaymentCard]
    }

    #[test]
    fn luhn_checksum() {
        let digits = |s: &str| s.chars().filter_map(|c| c.to_digit(10)).collect::<Vec<_>>();
        assert!(luhn_valid(&digits("4111111111111111")));
        assert!(luhn_valid(&digits("5555 5555 5555 4444")));
        assert!(luhn_valid(&digits("378282246310005")));
        assert!(!luhn_valid(&digits("4111111111111112")));
    }

    #[test]
    fn redaction_replaces_each_kind() {
        let guard = guard(all_kinds());
        let mut redactions = Redactions::default();
        let text = "Mail bob@example.com or bob@example.com, call +1 415-555-0132, pay 4111 1111 1111 1111, not 4111 1111 1111 1112, on 2025-06-01.";
        let redacted = guard.redact_text(text, &mut redactions);
        assert_eq!(
            redacted,
            "Mail [EMAIL_1] or [EMAIL_1], call [PHONE_1], pay [CARD_1], not 4111 1111 1111 1112, on 2025-06-01."
        );
        assert_eq!(redactions.len(), 3);
        assert_eq!(redactions.restore_text(&redacted), text);
    }

    #[test]
    fn checks_reject_with_codes() {
        let guard = guard(Vec::new());
        let deny = guard.check("Please IGNORE previous instructions", "r");
        assert_eq!(deny.unwrap_err().code, "prompt_denied");
        let large = guard.check(&"x".repeat(201), "r");
        assert_eq!(large.unwrap_err().code, "prompt_too_large");
        assert!(
            guard.check(&"é".repeat(200), "r").is_ok(),
            "characters, not bytes"
        );
    }

    #[test]
    fn chat_texts_include_parts() {
        let mut body = json!({"model": "m", "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": [{"type": "text", "text": "part"}, {"type": "image_url", "image_url": {"url": "data:x"}}]}
        ]});
        let mut texts = Vec::new();
        prompt_texts(Endpoint::Chat, &mut body, &mut texts);
        let texts: Vec<&str> = texts.iter().map(|text| text.as_str()).collect();
        assert_eq!(texts, ["sys", "part"]);
    }

    #[test]
    fn restorer_handles_split_placeholders() {
        let guard = guard(all_kinds());
        let mut redactions = Redactions::default();
        guard.redact_text("a@b.io", &mut redactions);
        let mut restorer = TextRestorer::default();
        let mut out = String::new();
        for piece in [
            "Write to [EM",
            "AIL",
            "_1",
            "] or [not a placeholder] [",
            "CARD",
        ] {
            out.push_str(&restorer.push(piece, &redactions));
        }
        assert_eq!(out, "Write to a@b.io or [not a placeholder] ");
        out.push_str(&restorer.flush(&redactions));
        assert_eq!(out, "Write to a@b.io or [not a placeholder] [CARD");
    }

    /// Runs `events` through a restoring stream and returns the `data:` payloads it writes.
    fn restore_events(endpoint: Endpoint, events: &[(Option<&str>, Value)]) -> Vec<Value> {
        let guard = guard(all_kinds());
        let mut redactions = Redactions {
            restore: true,
            ..Redactions::default()
        };
        guard.redact_text("a@b.io", &mut redactions);
        let mut stream =
            RestoringStream::new(crate::gateway::full(Bytes::new()), redactions, endpoint);
        let mut out = BytesMut::new();
        for (name, data) in events {
            let event = SseEvent {
                event: name.map(str::to_string),
                data: data.to_string(),
            };
            stream.on_event(event, &mut out);
        }
        String::from_utf8(out.to_vec())
            .unwrap()
            .split("\n\n")
            .filter_map(|event| event.lines().find_map(|line| line.strip_prefix("data: ")))
            .map(|data| serde_json::from_str(data).unwrap())
            .collect()
    }

    #[test]
    fn openai_finish_flushes_held_text() {
        let chunk = |content: &str, finish: Value| json!({"choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]});
        let chunks = restore_events(
            Endpoint::Chat,
            &[
                (None, chunk("to [EMAI", Value::Null)),
                (None, chunk("L_1] and [EM", Value::Null)),
                (None, chunk("", json!("stop"))),
            ],
        );
        let contents: Vec<&str> = chunks
            .iter()
            .map(|chunk| chunk["choices"][0]["delta"]["content"].as_str().unwrap())
            .collect();
        assert_eq!(contents, ["to ", "a@b.io and ", "[EM"]);
    }

    #[test]
    fn anthropic_block_stop_flushes_held_text() {
        let delta = |text: &str| json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}});
        let events = restore_events(
            Endpoint::Messages,
            &[
                (Some("content_block_delta"), delta("mail [EMAIL_")),
                (Some("content_block_delta"), delta("1] [CA")),
                (
                    Some("content_block_stop"),
                    json!({"type": "content_block_stop", "index": 0}),
                ),
            ],
        );
        let texts: Vec<&str> = events
            .iter()
            .filter_map(|event| event.pointer("/delta/text")?.as_str())
            .collect();
        assert_eq!(texts, ["mail ", "a@b.io ", "[CA"]);
        assert_eq!(events.last().unwrap()["type"], "content_block_stop");
    }
}
