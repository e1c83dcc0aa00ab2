//! The JSON access log: one line per request, separate from diagnostic logs.
//!
//! Lines are serialised on the request's task and handed to a writer thread through
//! `tracing-appender`'s non-blocking channel, so a slow disk or pipe never stalls a request.
//! When the channel is full, lines are dropped and counted in
//! `portcullis_access_log_dropped_total` instead of blocking. The record holds no credential:
//! the path is logged without its query, and no header values are logged.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use portcullis_config::AccessLogTarget;
use serde::Serialize;
use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};

use crate::body::Outcome;
use crate::policies::waf::WafRecord;

/// Lines buffered between request tasks and the writer thread.
const BUFFERED_LINES: usize = 131_072;

/// One access-log line.
#[derive(Debug, Serialize)]
pub struct AccessRecord {
    pub time: String,
    pub request_id: String,
    pub client_ip: String,
    pub method: String,
    /// Canonical path without the query string; the raw path when it could not be normalised.
    pub path: String,
    pub protocol: &'static str,
    pub host: String,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Milliseconds from the request's arrival to the end of its response body.
    pub duration_ms: f64,
    /// Milliseconds waiting for the upstream's response headers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_ms: Option<f64>,
    /// Address of the last target tried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_addr: Option<Arc<str>>,
    /// Upstream attempts after the first.
    #[serde(skip_serializing_if = "is_zero")]
    pub retries: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumer: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_id: Option<Arc<str>>,
    /// The policy that rejected the request, if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected_by: Option<&'static str>,
    /// The error code sent to the client, for requests the gateway answered itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
    pub outcome: Outcome,
    /// Model, provider, tokens and cost of a call on an `ai` route.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ai: Option<portcullis_ai::CallSummary>,
    /// Verdict, anomaly score and matched rule ids of a `waf` policy, without the values that
    /// matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waf: Option<WafRecord>,
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

/// The access-log sink.
#[derive(Clone)]
pub struct AccessLog {
    writer: Option<NonBlocking>,
    dropped: Option<ErrorCounter>,
    _guard: Option<Arc<WorkerGuard>>,
}

impl AccessLog {
    /// Opens the sink for `target`; a file is opened for appending and created when missing.
    pub fn open(target: &AccessLogTarget) -> std::io::Result<Self> {
        let builder = || {
            NonBlockingBuilder::default()
                .lossy(true)
                .buffered_lines_limit(BUFFERED_LINES)
                .thread_name("access-log")
        };
        let (writer, guard) = match target {
            AccessLogTarget::Off => return Ok(AccessLog::off()),
            AccessLogTarget::Stdout => builder().finish(buffered(std::io::stdout())),
            AccessLogTarget::Stderr => builder().finish(buffered(std::io::stderr())),
            AccessLogTarget::File(path) => builder().finish(buffered(open_append(path)?)),
        };
        Ok(AccessLog {
            dropped: Some(writer.error_counter()),
            writer: Some(writer),
            _guard: Some(Arc::new(guard)),
        })
    }

    pub fn off() -> Self {
        AccessLog {
            writer: None,
            dropped: None,
            _guard: None,
        }
    }

    pub fn is_on(&self) -> bool {
        self.writer.is_some()
    }

    pub fn write(&self, record: &AccessRecord) {
        let Some(writer) = &self.writer else { return };
        // A typical line is 350 to 450 bytes. Starting at 512 saves the reallocations that
        // serde_json's default start of 128 bytes would make.
        let mut line = Vec::with_capacity(512);
        if let Err(error) = serde_json::to_writer(&mut line, record) {
            tracing::error!(%error, "cannot serialise an access-log record");
            return;
        }
        line.push(b'\n');
        let mut writer = writer.clone();
        if let Err(error) = writer.write_all(&line) {
            tracing::error!(%error, "cannot write an access-log line");
        }
    }

    /// Returns the number of lines dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped
            .as_ref()
            .map_or(0, |counter| counter.dropped_lines() as u64)
    }
}

/// Buffers lines in the writer thread; it flushes whenever its queue runs empty, so a line
/// waits in the buffer only while more lines are queued behind it.
fn buffered<W: Write + Send + 'static>(writer: W) -> std::io::BufWriter<W> {
    std::io::BufWriter::with_capacity(64 * 1024, writer)
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}
