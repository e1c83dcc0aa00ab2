//! An incremental parser for server-sent events (the WHATWG HTML "event stream" format).
//!
//! Bytes are fed in as they arrive, in chunks that may split lines or events anywhere. The
//! parser keeps only the unfinished event, and fails once that exceeds `max_event_bytes`, so a
//! provider that never ends an event cannot make the gateway buffer without bound.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, if the event had one.
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// An event grew past the size limit.
#[derive(Debug, thiserror::Error)]
#[error("a server-sent event is larger than {0} bytes")]
pub struct EventTooLarge(pub usize);

/// Parser state between chunks.
#[derive(Debug)]
pub struct SseParser {
    line: Vec<u8>,
    event: Option<String>,
    data: Option<String>,
    pending_bytes: usize,
    max_event_bytes: usize,
    /// The previous chunk ended in `\r`, so a `\n` at the start of the next one belongs to it.
    after_carriage_return: bool,
}

impl SseParser {
    pub fn new(max_event_bytes: usize) -> Self {
        SseParser {
            line: Vec::new(),
            event: None,
            data: None,
            pending_bytes: 0,
            max_event_bytes,
            after_carriage_return: false,
        }
    }

    /// Feeds `chunk` and returns the events it completes.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, EventTooLarge> {
        let mut events = Vec::new();
        for &byte in chunk {
            if self.after_carriage_return {
                self.after_carriage_return = false;
                if byte == b'\n' {
                    continue;
                }
            }
            match byte {
                b'\n' | b'\r' => {
                    self.after_carriage_return = byte == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(event) = self.process_line(&line) {
                        events.push(event);
                    }
                }
                _ => {
                    self.line.push(byte);
                    self.pending_bytes += 1;
                    if self.pending_bytes > self.max_event_bytes {
                        return Err(EventTooLarge(self.max_event_bytes));
                    }
                }
            }
        }
        Ok(events)
    }

    fn process_line(&mut self, line: &[u8]) -> Option<SseEvent> {
        if line.is_empty() {
            self.pending_bytes = 0;
            let event = self.event.take();
            return self.data.take().map(|data| SseEvent { event, data });
        }
        if line[0] == b':' {
            return None;
        }
        let text = String::from_utf8_lossy(line);
        let (field, value) = match text.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (text.as_ref(), ""),
        };
        match field {
            "event" => self.event = Some(value.to_string()),
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks() {
        let mut parser = SseParser::new(1024);
        let mut events = parser.push(b"event: ping\nda").unwrap();
        assert!(events.is_empty());
        events.extend(parser.push(b"ta: {\"a\":1}\n\ndata: x\n").unwrap());
        events.extend(parser.push(b"\n").unwrap());
        assert_eq!(
            events,
            vec![
                SseEvent {
                    event: Some("ping".into()),
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    event: None,
                    data: "x".into()
                },
            ]
        );
    }

    #[test]
    fn crlf_comments_and_multiline_data() {
        let mut parser = SseParser::new(1024);
        let mut events = parser.push(b": keep-alive\r\ndata: a\r").unwrap();
        events.extend(parser.push(b"\ndata: b\r\n\r\n").unwrap());
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].data, "a\nb");
    }

    #[test]
    fn oversized_event_fails() {
        let mut parser = SseParser::new(16);
        assert!(parser.push(b"data: 0123456789abcdef").is_err());
    }
}
