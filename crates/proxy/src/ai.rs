//! Adapter for `ai` routes: runs in the forward phase, after authentication, authorization,
//! limits and inspection, and hands the request to the AI gateway instead of a service.
//!
//! The request body is read whole, up to `limits.max_body_bytes`, because the gateway parses
//! and translates it. The response streams back through [`ResponseBody`] unchanged.

use std::sync::Arc;

use http::request;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use portcullis_ai::{AiRequest, CallRecord, Gateway};

use crate::body::{BodyStats, ResponseBody};
use crate::error::Rejection;

/// A served AI call: the response and what the access log needs from it.
pub struct Served {
    pub response: http::Response<ResponseBody>,
    pub call: Option<Arc<CallRecord>>,
    pub upstream_latency: Option<std::time::Duration>,
}

/// Serves one request of an `ai` route. `relative_path` is the path after the route's matched
/// prefix, such as `/chat/completions`. The request body's size is counted in `stats` for the
/// access log.
pub async fn serve(
    gateway: &Gateway,
    parts: &request::Parts,
    body: Incoming,
    relative_path: String,
    max_body_bytes: u64,
    request_id: &str,
    stats: &BodyStats,
) -> Result<Served, Rejection> {
    let limit = usize::try_from(max_body_bytes).unwrap_or(usize::MAX);
    let body = Limited::new(body, limit)
        .collect()
        .await
        .map_err(|error| {
            if error.is::<http_body_util::LengthLimitError>() {
                Rejection::new(
                    http::StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    "the request body is larger than the gateway accepts",
                )
            } else {
                Rejection::bad_request(
                    "invalid_body",
                    "the request body is malformed or ended early",
                )
            }
        })?
        .to_bytes();
    stats
        .bytes
        .store(body.len() as u64, std::sync::atomic::Ordering::Relaxed);
    let reply = gateway
        .handle(AiRequest {
            method: parts.method.clone(),
            path: relative_path,
            headers: parts.headers.clone(),
            body,
            request_id: request_id.to_string(),
        })
        .await;
    let (response_parts, body) = reply.response.into_parts();
    Ok(Served {
        response: http::Response::from_parts(response_parts, ResponseBody::generated(body)),
        call: reply.call,
        upstream_latency: reply.upstream_latency,
    })
}
