//! Rejections: the one place where a failed phase becomes an HTTP response.
//!
//! Each phase returns a [`Rejection`] with a fixed status, a stable machine-readable `code`,
//! and a short message meant for clients. Details that would help an attacker (why a signature
//! failed, which key matched) go to the diagnostic log, never into the body.

use std::borrow::Cow;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::Serialize;

/// The side that caused a failed request, which picks the log level and whether a retry of the
/// upstream call could help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The client sent something invalid or was denied by a policy.
    Client,
    /// The upstream failed, timed out or is unavailable.
    Upstream,
    /// The gateway itself failed; a bug or a missing resource.
    Gateway,
}

/// A request that the gateway answers itself instead of forwarding.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: Cow<'static, str>,
    pub side: Side,
    /// The policy that rejected the request, recorded in the access log and metrics.
    pub policy: Option<&'static str>,
    /// Headers to send with the error response, such as `WWW-Authenticate` or `Retry-After`.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// A body that replaces the JSON error body, for answers that a policy gives itself and
    /// that are not errors, such as a redirect or a CORS preflight response. Its content type,
    /// if it has one, goes in `headers`.
    pub custom_body: Option<Bytes>,
}

impl Rejection {
    pub fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        let side = if status.is_server_error() {
            Side::Gateway
        } else {
            Side::Client
        };
        Rejection {
            status,
            code,
            message: message.into(),
            side,
            policy: None,
            headers: Vec::new(),
            custom_body: None,
        }
    }

    /// Returns an answer that a policy gives instead of forwarding the request, with its own
    /// `body` in place of the JSON error body. `code` names the answer in the access log.
    pub fn respond(status: StatusCode, code: &'static str, body: Bytes) -> Self {
        Rejection {
            custom_body: Some(body),
            ..Rejection::new(status, code, "")
        }
    }

    pub fn upstream(
        status: StatusCode,
        code: &'static str,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Rejection {
            side: Side::Upstream,
            ..Rejection::new(status, code, message)
        }
    }

    pub fn by_policy(mut self, policy: &'static str) -> Self {
        self.policy = Some(policy);
        self
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Adds every header of `headers` whose name the rejection does not set already, with all
    /// of its values, so that list fields such as `RateLimit-Policy` keep one entry per limit.
    pub fn add_missing_headers(&mut self, headers: &HeaderMap) {
        let already_set = self.headers.len();
        for (name, value) in headers {
            if !self.headers[..already_set]
                .iter()
                .any(|(existing, _)| existing == name)
            {
                self.headers.push((name.clone(), value.clone()));
            }
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Rejection::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// Renders the JSON body `{"error": {"status", "code", "message", "request_id"}}`.
    pub fn body(&self, request_id: &str) -> Bytes {
        #[derive(Serialize)]
        struct Body<'a> {
            error: Inner<'a>,
        }
        #[derive(Serialize)]
        struct Inner<'a> {
            status: u16,
            code: &'a str,
            message: &'a str,
            request_id: &'a str,
        }
        let body = Body {
            error: Inner {
                status: self.status.as_u16(),
                code: self.code,
                message: &self.message,
                request_id,
            },
        };
        let mut bytes = serde_json::to_vec(&body).expect("the error body serialises");
        bytes.push(b'\n');
        Bytes::from(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_headers_keep_every_value() {
        let mut rejection = Rejection::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "x")
            .with_header(
                HeaderName::from_static("ratelimit-limit"),
                HeaderValue::from_static("4"),
            );
        let mut headers = HeaderMap::new();
        let policy = HeaderName::from_static("ratelimit-policy");
        headers.append(&policy, HeaderValue::from_static("\"fast\";q=10;w=1"));
        headers.append(&policy, HeaderValue::from_static("\"hourly\";q=4;w=3600"));
        headers.insert("ratelimit-limit", HeaderValue::from_static("10"));
        rejection.add_missing_headers(&headers);

        let policies: Vec<&HeaderValue> = rejection
            .headers
            .iter()
            .filter(|(name, _)| name == policy)
            .map(|(_, value)| value)
            .collect();
        assert_eq!(policies.len(), 2, "{:?}", rejection.headers);
        let limits: Vec<&HeaderValue> = rejection
            .headers
            .iter()
            .filter(|(name, _)| name == "ratelimit-limit")
            .map(|(_, value)| value)
            .collect();
        assert_eq!(
            limits,
            [&HeaderValue::from_static("4")],
            "the rejection's own value wins"
        );
    }
}
