//! Adapter for `ai` routes: runs in the forward phase, after authentication, authorization,
//! limits and inspection, and hands the request to the AI gateway instead of a service.
//!
//! The request body is read whole, up to `limits.max_body_bytes`, because the gateway parses
//! and translates it. The response streams back through [`ResponseBody`] unchanged.

use std::sync::Arc;

use http::request;
use http_body_util::BodyExt;
use portcullis_ai::{AiRequest, CallRecord, Gateway};

use crate::body::{RequestBody, ResponseBody};
use crate::error::Rejection;

/// A served AI call: the response and what the access log needs from it.
pub struct Served {
    pub response: http::Response<ResponseBody>,
    pub call: Option<Arc<CallRecord>>,
    pub upstream_latency: Option<std::time::Duration>,
}

/// Serves one request of an `ai` route. `relative_path` is the path after the route's matched
/// prefix, such as `/chat/completions`. `body` enforces the gateway's body size limit and counts
/// its bytes for the access log.
pub async fn serve(
    gateway: &Gateway,
    route: &portcullis_config::AiRouteSpec,
    parts: &request::Parts,
    body: RequestBody,
    relative_path: String,
    request_id: &str,
) -> Result<Served, Rejection> {
    let body = body
        .collect()
        .await
        .map_err(|error| crate::body::read_rejection(&error))?
        .to_bytes();
    let reply = gateway
        .handle(AiRequest {
            method: parts.method.clone(),
            path: relative_path,
            headers: parts.headers.clone(),
            body,
            request_id: request_id.to_string(),
            query: parts.uri.query().map(str::to_string),
            route: route.clone(),
        })
        .await;
    let (response_parts, body) = reply.response.into_parts();
    Ok(Served {
        response: http::Response::from_parts(response_parts, ResponseBody::generated(body)),
        call: reply.call,
        upstream_latency: reply.upstream_latency,
    })
}
