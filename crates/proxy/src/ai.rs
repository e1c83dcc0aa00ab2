//! Adapter for `ai` routes: runs in the forward phase, after authentication, authorization,
//! limits and inspection, and hands the request to the AI gateway instead of a service.
//!
//! The request body is read whole, up to `limits.max_body_bytes`, because the gateway parses
//! and translates it. A body with a `Content-Encoding` is decoded first, with the limits of the
//! `waf` policy's decoding. The `ai-limits` policies that apply reserve the call's estimate
//! here, before the gateway calls a provider. The response streams back through
//! [`ResponseBody`] unchanged.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, StatusCode, header, request};
use http_body_util::BodyExt;
use portcullis_ai::{AiError, AiRequest, CallRecord, Gateway};
use portcullis_waf::content_encoding;

use crate::body::{RequestBody, ResponseBody};
use crate::error::Rejection;
use crate::policies::ai_limits::{self, PendingLimit, Reservation};

/// A served AI call: the response and what the access log needs from it.
pub struct Served {
    pub response: http::Response<ResponseBody>,
    pub call: Option<Arc<CallRecord>>,
    pub upstream_latency: Option<std::time::Duration>,
    /// The call's `ai-limits` reservations, to settle when the response ends.
    pub reservations: Vec<Reservation>,
}

/// Serves one request of an `ai` route. `relative_path` is the path after the route's matched
/// prefix, such as `/chat/completions`. `body` enforces the gateway's body size limit,
/// `max_body_bytes`, and counts its bytes for the access log. `limits` are the `ai-limits`
/// policies that apply to the request.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    gateway: &Gateway,
    route: &portcullis_config::AiRouteSpec,
    parts: &request::Parts,
    body: RequestBody,
    max_body_bytes: u64,
    relative_path: String,
    request_id: &str,
    limits: Vec<PendingLimit>,
) -> Result<Served, Rejection> {
    let body = body
        .collect()
        .await
        .map_err(|error| crate::body::read_rejection(&error))?
        .to_bytes();
    let mut headers = parts.headers.clone();
    let body = match decode_body(&mut headers, body, max_body_bytes) {
        Ok(body) => body,
        Err(error) => {
            tracing::debug!(request.id = %request_id, code = %error.code, %error, "cannot decode the AI request body");
            let response = Gateway::reject(route, &relative_path, &error, request_id);
            return Ok(Served {
                response: response.map(ResponseBody::generated),
                call: None,
                upstream_latency: None,
                reservations: Vec::new(),
            });
        }
    };
    let mut request = AiRequest {
        method: parts.method.clone(),
        path: relative_path,
        headers,
        body,
        request_id: request_id.to_string(),
        max_output_tokens: None,
        query: parts.uri.query().map(str::to_string),
        route: route.clone(),
    };
    let estimate = match (limits.is_empty(), &route.prompt) {
        (true, _) => None,
        // A prompt endpoint is estimated on the chat request that it sends for its inputs.
        (false, Some(prompt)) => gateway
            .prompt_chat_body(prompt, &request)
            .and_then(|chat| portcullis_ai::limits::estimate("/chat/completions", &chat)),
        (false, None) => portcullis_ai::limits::estimate(&request.path, &request.body),
    };
    if let Some(field) = estimate.as_ref().and_then(|e| e.invalid_output_field) {
        return Err(Rejection::bad_request(
            "invalid_max_tokens",
            format!("`{field}` must be a positive integer"),
        ));
    }
    let admission = match &estimate {
        Some(estimate) => ai_limits::admit(gateway, estimate, limits).await?,
        None => ai_limits::Admission::default(),
    };
    request.max_output_tokens = admission.max_output_tokens;
    let reply = gateway.handle(request).await;
    let (mut response_parts, body) = reply.response.into_parts();
    for (name, value) in &admission.headers {
        response_parts.headers.insert(name, value.clone());
    }
    Ok(Served {
        response: http::Response::from_parts(response_parts, ResponseBody::generated(body)),
        call: reply.call,
        upstream_latency: reply.upstream_latency,
        reservations: admission.reservations,
    })
}

/// Decodes a body sent with a `Content-Encoding` (gzip, deflate or br) with
/// [`content_encoding::decode`], as the `waf` policy does, and removes the header, because the
/// gateway reads the decoded body. The decoded body may have at most `max_body_bytes`, and the
/// decoder's ratio cap rejects decompression bombs.
fn decode_body(
    headers: &mut HeaderMap,
    body: Bytes,
    max_body_bytes: u64,
) -> Result<Bytes, AiError> {
    let Some(value) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(body);
    };
    let coding = String::from_utf8_lossy(value.as_bytes()).into_owned();
    if body.is_empty() || !content_encoding::is_encoded(&coding) {
        headers.remove(header::CONTENT_ENCODING);
        return Ok(body);
    }
    let max_output = usize::try_from(max_body_bytes).unwrap_or(usize::MAX);
    let decoded = content_encoding::decode(&coding, &body, true, max_output).map_err(|error| {
        let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::BAD_REQUEST);
        AiError {
            status,
            ..AiError::invalid_request(error.code(), error.to_string())
        }
    })?;
    if decoded.truncated {
        return Err(AiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            ..AiError::invalid_request(
                "body_too_large",
                format!(
                    "the decoded request body is larger than the {max_body_bytes} bytes that \
                     limits.max_body_bytes allows"
                ),
            )
        });
    }
    headers.remove(header::CONTENT_ENCODING);
    headers.remove(header::CONTENT_LENGTH);
    Ok(Bytes::from(decoded.body))
}
