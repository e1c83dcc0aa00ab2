//! Request and response bodies that stream through the gateway.
//!
//! Neither body is buffered: each frame passes through as it arrives. [`RequestBody`] counts the
//! bytes a client sends and ends the stream with an error once they exceed the limit, so that an
//! oversized chunked body is cut off without being held in memory. The one exception is a route
//! with a `waf` policy: it reads the start of the body with [`RequestBody::read_prefix`] to
//! inspect it, and those frames are sent first, unchanged. [`ResponseBody`] counts the bytes sent
//! back and runs a completion hook when the body ends or is dropped, which is when the access log
//! line is written: only then are the status, the size and the outcome all known.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::error::Rejection;
use crate::pool::PooledConnection;

/// Boxed error type of the bodies in this module.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request body exceeded the configured size limit.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {limit} bytes")]
pub struct BodyTooLarge {
    pub limit: u64,
}

/// Returns the rejection for a request body that could not be read: 413 when it exceeds the
/// gateway's size limit, 400 when it is malformed or ended early.
pub fn read_rejection(error: &BoxError) -> Rejection {
    if error.downcast_ref::<BodyTooLarge>().is_some() {
        Rejection::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "the request body is larger than the gateway accepts",
        )
    } else {
        Rejection::bad_request(
            "invalid_body",
            "the request body is malformed or ended early",
        )
    }
}

/// Byte counts and flags shared between a body and the request handler.
#[derive(Debug, Default)]
pub struct BodyStats {
    pub bytes: AtomicU64,
    pub too_large: AtomicBool,
    /// The client's body could not be read, for example because its chunked encoding is
    /// malformed or the client went away mid-body.
    pub client_error: AtomicBool,
}

/// A client request body on its way upstream.
pub struct RequestBody {
    inner: Option<Incoming>,
    limit: u64,
    stats: Arc<BodyStats>,
    /// Frames already read by [`RequestBody::read_prefix`], sent before the rest of `inner`.
    buffered: VecDeque<Frame<Bytes>>,
    /// Data bytes in `buffered`.
    buffered_bytes: u64,
}

/// The start of a request body, read for inspection.
#[derive(Debug)]
pub struct Prefix {
    /// At most the requested number of bytes.
    pub bytes: Bytes,
    /// True when `bytes` is the whole body.
    pub complete: bool,
}

impl RequestBody {
    pub fn new(inner: Incoming, limit: u64, stats: Arc<BodyStats>) -> Self {
        RequestBody {
            inner: Some(inner),
            limit,
            stats,
            buffered: VecDeque::new(),
            buffered_bytes: 0,
        }
    }

    /// A body with no content.
    pub fn empty(stats: Arc<BodyStats>) -> Self {
        RequestBody {
            inner: None,
            limit: 0,
            stats,
            buffered: VecDeque::new(),
            buffered_bytes: 0,
        }
    }

    /// Reads frames until more than `max` data bytes arrived or the body ended, and keeps them
    /// to be sent first. Returns a copy of the first `max` bytes. Fails like polling the body
    /// does: when the body exceeds the gateway's size limit or the client's body is malformed.
    pub async fn read_prefix(&mut self, max: usize) -> Result<Prefix, BoxError> {
        let mut collected = BytesMut::new();
        for frame in &self.buffered {
            if let Some(data) = frame.data_ref() {
                collected.extend_from_slice(data);
            }
        }
        let mut complete = self.inner.as_ref().is_none_or(Body::is_end_stream);
        while !complete && collected.len() <= max {
            match std::future::poll_fn(|cx| self.poll_inner(cx)).await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        collected.extend_from_slice(data);
                        self.buffered_bytes += data.len() as u64;
                    }
                    self.buffered.push_back(frame);
                    complete = self.inner.as_ref().is_none_or(Body::is_end_stream);
                }
                Some(Err(error)) => return Err(error),
                None => complete = true,
            }
        }
        if collected.len() > max {
            collected.truncate(max);
            complete = false;
        }
        Ok(Prefix {
            bytes: collected.freeze(),
            complete,
        })
    }

    /// Polls the client's body, counting its bytes against the limit.
    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let total = this
                        .stats
                        .bytes
                        .fetch_add(data.len() as u64, Ordering::Relaxed)
                        + data.len() as u64;
                    if total > this.limit {
                        this.stats.too_large.store(true, Ordering::Relaxed);
                        this.inner = None;
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge {
                            limit: this.limit,
                        }))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                this.stats.client_error.store(true, Ordering::Relaxed);
                Poll::Ready(Some(Err(Box::new(error))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(frame) = this.buffered.pop_front() {
            if let Some(data) = frame.data_ref() {
                this.buffered_bytes -= data.len() as u64;
            }
            return Poll::Ready(Some(Ok(frame)));
        }
        this.poll_inner(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.buffered.is_empty() && self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let rest = self
            .inner
            .as_ref()
            .map(Body::size_hint)
            .unwrap_or_else(|| SizeHint::with_exact(0));
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + self.buffered_bytes);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + self.buffered_bytes);
        }
        hint
    }
}

/// A request body offered to successive upstream attempts until one of them starts sending it.
///
/// Each attempt gets an [`AttemptBody`] that takes the client's body out of a shared slot on its
/// first poll. An attempt that fails before its body was polled (a refused connection, for one)
/// leaves the body in the slot, so a retry can still send it. A body that was empty from the
/// start can be sent any number of times.
pub struct ReplayableBody {
    slot: Arc<Mutex<Option<RequestBody>>>,
    empty: bool,
}

impl ReplayableBody {
    pub fn new(body: RequestBody) -> Self {
        let empty = body.is_end_stream();
        ReplayableBody {
            slot: Arc::new(Mutex::new(Some(body))),
            empty,
        }
    }

    /// Returns whether another attempt could still send the whole body.
    pub fn is_replayable(&self) -> bool {
        self.empty || lock(&self.slot).is_some()
    }

    /// Returns the body for the next attempt, or `None` when an earlier attempt has started
    /// sending it.
    pub fn attempt(&self) -> Option<AttemptBody> {
        if self.empty {
            return Some(AttemptBody {
                slot: None,
                polled_body: None,
            });
        }
        if lock(&self.slot).is_none() {
            return None;
        }
        Some(AttemptBody {
            slot: Some(self.slot.clone()),
            polled_body: None,
        })
    }
}

fn lock(slot: &Mutex<Option<RequestBody>>) -> std::sync::MutexGuard<'_, Option<RequestBody>> {
    slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The request body of one upstream attempt, described at [`ReplayableBody`].
pub struct AttemptBody {
    /// `None` for a body that was empty from the start.
    slot: Option<Arc<Mutex<Option<RequestBody>>>>,
    /// The client's body, which the first poll of this attempt takes out of the slot.
    polled_body: Option<RequestBody>,
}

impl Body for AttemptBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.polled_body.is_none() {
            this.polled_body = this.slot.as_ref().and_then(|slot| lock(slot).take());
        }
        match this.polled_body.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match (&self.polled_body, &self.slot) {
            (Some(body), _) => body.is_end_stream(),
            (None, Some(slot)) => lock(slot).as_ref().is_none_or(Body::is_end_stream),
            (None, None) => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.polled_body, &self.slot) {
            (Some(body), _) => body.size_hint(),
            (None, Some(slot)) => lock(slot)
                .as_ref()
                .map_or_else(|| SizeHint::with_exact(0), Body::size_hint),
            (None, None) => SizeHint::with_exact(0),
        }
    }
}

/// How a response body ended, for the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every byte was handed to the client connection.
    Completed,
    /// The upstream failed while the body was streaming.
    UpstreamError,
    /// The client went away before the body ended.
    ClientAborted,
}

/// Runs once when a response body ends or is dropped.
pub trait Completion: Send + 'static {
    fn complete(self: Box<Self>, bytes_out: u64, outcome: Outcome);
}

enum Content {
    Full(Option<Bytes>),
    Upstream {
        body: Incoming,
        /// The upstream connection, until the body has been read to the end and it goes back
        /// to its pool.
        connection: Option<PooledConnection>,
    },
    /// A body the gateway produces itself, such as a translated AI stream.
    Generated(portcullis_ai::AiBody),
}

/// A response body on its way to the client.
pub struct ResponseBody {
    content: Content,
    bytes: u64,
    outcome: Option<Outcome>,
    completion: Option<Box<dyn Completion>>,
}

impl ResponseBody {
    pub fn full(bytes: Bytes) -> Self {
        ResponseBody::new(Content::Full(Some(bytes).filter(|bytes| !bytes.is_empty())))
    }

    /// Creates a body read from the upstream `connection`. The connection goes back to its pool
    /// when the body ends, and is closed when the body fails or is dropped before its end.
    pub fn upstream(body: Incoming, connection: PooledConnection) -> Self {
        ResponseBody::new(Content::Upstream {
            body,
            connection: Some(connection),
        })
    }

    /// Wraps a body that the gateway generates, such as an AI response.
    pub fn generated(body: portcullis_ai::AiBody) -> Self {
        ResponseBody::new(Content::Generated(body))
    }

    fn new(content: Content) -> Self {
        ResponseBody {
            content,
            bytes: 0,
            outcome: None,
            completion: None,
        }
    }

    pub fn on_complete(&mut self, completion: Box<dyn Completion>) {
        self.completion = Some(completion);
    }

    fn finish(&mut self, outcome: Outcome) {
        if self.outcome.is_none() {
            self.outcome = Some(outcome);
        }
        if let Content::Upstream { connection, .. } = &mut self.content
            && let Some(connection) = connection.take()
        {
            // Only a body read to its end leaves the connection ready for another request.
            if outcome == Outcome::Completed {
                connection.release();
            }
        }
        if let Some(completion) = self.completion.take() {
            completion.complete(self.bytes, outcome);
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // hyper stops polling once `is_end_stream` is true, so a body dropped at its end has
        // been sent whole.
        let outcome = match self.outcome {
            Some(outcome) => outcome,
            None if self.is_end_stream() => Outcome::Completed,
            None => Outcome::ClientAborted,
        };
        self.finish(outcome);
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = match &mut this.content {
            Content::Full(bytes) => Poll::Ready(bytes.take().map(|bytes| Ok(Frame::data(bytes)))),
            Content::Upstream { body, .. } => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Err(error))) => {
                    tracing::warn!(%error, "upstream response body failed mid-stream");
                    this.outcome = Some(Outcome::UpstreamError);
                    Poll::Ready(Some(Err(Box::new(error) as BoxError)))
                }
                other => other.map(|frame| {
                    frame.map(|result| result.map_err(|error| Box::new(error) as BoxError))
                }),
            },
            Content::Generated(body) => Pin::new(body).poll_frame(cx),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
                if this.is_end_stream() {
                    this.finish(Outcome::Completed);
                }
            }
            Poll::Ready(None) => this.finish(Outcome::Completed),
            Poll::Ready(Some(Err(_))) => this.finish(Outcome::UpstreamError),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.content {
            Content::Full(bytes) => bytes.is_none(),
            Content::Upstream { body, .. } => body.is_end_stream(),
            Content::Generated(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.content {
            Content::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Content::Full(None) => SizeHint::with_exact(0),
            Content::Upstream { body, .. } => body.size_hint(),
            Content::Generated(body) => body.size_hint(),
        }
    }
}
