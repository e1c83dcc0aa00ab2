//! Upstream targets and the forwarding of one request.
//!
//! The upstream protocol is HTTP/1.1 with keep-alive, whatever protocol the client used.
//! [`crate::pool`] keeps the connections.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::header::{self, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;

use crate::body::{AttemptBody, BodyStats};
use crate::error::Rejection;
use crate::pool::{ConnectionPool, PooledConnection, UpstreamError};

/// One upstream base URL.
#[derive(Debug, Clone)]
pub struct Target {
    pub scheme: Scheme,
    pub authority: Authority,
    /// Path prefix of the target URL without a trailing `/`; empty for `http://host:port`.
    pub base_path: String,
    pub host_header: HeaderValue,
    /// `host:port` for logs.
    pub address: Arc<str>,
}

impl Target {
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: Uri = url
            .parse()
            .map_err(|_| format!("invalid target URL `{url}`"))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| format!("target `{url}` has no scheme"))?;
        if scheme != Scheme::HTTP {
            return Err(format!(
                "target `{url}`: only http:// upstreams are supported"
            ));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("target `{url}` has no host"))?;
        let base_path = uri.path().trim_end_matches('/').to_string();
        let host_header = HeaderValue::from_str(authority.as_str())
            .map_err(|_| format!("target `{url}` has an invalid host"))?;
        // `Authority::port` is `None` for a port that does not fit in 16 bits, so read the text.
        let after_host = authority
            .as_str()
            .rsplit_once(']')
            .map_or(authority.as_str(), |(_, rest)| rest);
        let port = match after_host.rsplit_once(':') {
            None => 80,
            Some((_, port)) => match port.parse::<u16>() {
                Ok(port) if port != 0 => port,
                _ => return Err(format!("target `{url}` has an invalid port")),
            },
        };
        let address = format!("{}:{port}", authority.host()).into();
        Ok(Target {
            scheme,
            authority,
            base_path,
            host_header,
            address,
        })
    }

    /// Builds the absolute upstream URI for a canonical path and query.
    pub fn uri(&self, path: &str, query: Option<&str>) -> Result<Uri, Rejection> {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(self.path_and_query(path, query)?)
            .build()
            .map_err(|_| {
                Rejection::bad_request("invalid_request_target", "the request target is invalid")
            })
    }

    /// Builds the origin-form request target (path and query) that [`ConnectionPool::send`]
    /// writes on the connection, for a canonical path and query.
    pub fn origin_form(&self, path: &str, query: Option<&str>) -> Result<Uri, Rejection> {
        Ok(Uri::from(self.path_and_query(path, query)?))
    }

    fn path_and_query(&self, path: &str, query: Option<&str>) -> Result<PathAndQuery, Rejection> {
        let mut path_and_query = String::with_capacity(
            self.base_path.len() + path.len() + query.map_or(0, str::len) + 1,
        );
        path_and_query.push_str(&self.base_path);
        path_and_query.push_str(path);
        if let Some(query) = query {
            path_and_query.push('?');
            path_and_query.push_str(query);
        }
        PathAndQuery::try_from(path_and_query).map_err(|_| {
            Rejection::bad_request("invalid_query", "the request query string is invalid")
        })
    }
}

/// Headers defined as hop-by-hop by RFC 9110 section 7.6.1, plus the older `Keep-Alive` and
/// `Proxy-Connection`. They describe one connection and are never forwarded.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers and every header that `Connection` names. Callers add the headers
/// the gateway sets only afterwards, so `Connection` cannot remove them.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of these headers. One pass over the names finds that out,
    // where each `remove` below would hash its name and probe the map.
    let any_hop_by_hop = headers
        .keys()
        .any(|name| name == header::UPGRADE || HOP_BY_HOP.contains(name));
    if !any_hop_by_hop {
        return;
    }
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

/// The outcome of a forwarded request that reached the upstream.
pub struct Forwarded {
    pub response: Response<Incoming>,
    pub upstream_latency: Duration,
    /// The connection the response arrives on, to release once its body has been read.
    pub connection: PooledConnection,
}

/// How an upstream attempt failed, which decides whether a retry may follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// No connection was made, so the upstream saw nothing of the request.
    Connect,
    /// No response headers arrived within the response timeout.
    Timeout,
    /// The connection closed or the response was invalid.
    Transport,
    /// The client's body was too large or could not be read; the upstream is not at fault.
    Client,
}

/// A failed upstream attempt.
#[derive(Debug)]
pub struct SendError {
    pub rejection: Rejection,
    pub kind: FailureKind,
}

/// Sends `request` to the upstream and waits for its response headers.
pub async fn send(
    pool: &Arc<ConnectionPool>,
    mut request: Request<AttemptBody>,
    response_timeout: Duration,
    target: &Target,
    body: &BodyStats,
) -> Result<Forwarded, SendError> {
    *request.version_mut() = Version::HTTP_11;
    let started = Instant::now();
    let result = tokio::time::timeout(response_timeout, pool.send(request)).await;
    let upstream_latency = started.elapsed();
    match result {
        Ok(Ok((response, connection))) => Ok(Forwarded {
            response,
            upstream_latency,
            connection,
        }),
        Ok(Err(error)) => {
            if body.too_large.load(Ordering::Relaxed) {
                return Err(SendError {
                    rejection: Rejection::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "body_too_large",
                        "the request body is larger than the gateway accepts",
                    ),
                    kind: FailureKind::Client,
                });
            }
            if body.client_error.load(Ordering::Relaxed) {
                tracing::debug!(upstream.addr = %target.address, "the client's request body could not be read");
                return Err(SendError {
                    rejection: Rejection::bad_request(
                        "invalid_body",
                        "the request body is malformed or ended early",
                    ),
                    kind: FailureKind::Client,
                });
            }
            Err(classify(&error, target))
        }
        Err(_) => {
            tracing::warn!(upstream.addr = %target.address, timeout_ms = response_timeout.as_millis() as u64, "upstream response timed out");
            Err(SendError {
                rejection: Rejection::upstream(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    "the upstream did not respond in time",
                ),
                kind: FailureKind::Timeout,
            })
        }
    }
}

/// Maps an upstream error to a rejection and a failure kind, and logs it with the target address.
fn classify(error: &UpstreamError, target: &Target) -> SendError {
    let timed_out = matches!(error, UpstreamError::ConnectTimedOut)
        || error_chain(error).any(|cause| {
            cause
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        });
    let detail = error_chain(error)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ");
    if error.is_connect() {
        if timed_out {
            tracing::warn!(upstream.addr = %target.address, error = %detail, "upstream connect timed out");
            return SendError {
                rejection: Rejection::upstream(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    "the upstream did not accept a connection in time",
                ),
                kind: FailureKind::Connect,
            };
        }
        tracing::warn!(upstream.addr = %target.address, error = %detail, "upstream connect failed");
        return SendError {
            rejection: Rejection::upstream(
                StatusCode::BAD_GATEWAY,
                "upstream_unavailable",
                "the upstream is not reachable",
            ),
            kind: FailureKind::Connect,
        };
    }
    tracing::warn!(upstream.addr = %target.address, error = %detail, "upstream request failed");
    SendError {
        rejection: Rejection::upstream(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            "the upstream closed the connection or sent an invalid response",
        ),
        kind: FailureKind::Transport,
    }
}

fn error_chain<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(error), |error| error.source())
}
