//! Upstream targets, pooled clients and the forwarding of one request.
//!
//! Clients are pooled per pair of connect and idle timeouts and kept across snapshots, so a
//! config reload keeps its warm keep-alive connections. The upstream protocol is HTTP/1.1 with
//! keep-alive whatever the client spoke.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::header::{self, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use std::sync::atomic::Ordering;

use crate::body::{AttemptBody, BodyStats};
use crate::error::Rejection;

/// A pooled HTTP/1.1 client for upstream requests.
pub type UpstreamClient = Client<HttpConnector, AttemptBody>;

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

    /// Builds the upstream URI for a canonical path and query.
    pub fn uri(&self, path: &str, query: Option<&str>) -> Result<Uri, Rejection> {
        let mut path_and_query = String::with_capacity(
            self.base_path.len() + path.len() + query.map_or(0, str::len) + 1,
        );
        path_and_query.push_str(&self.base_path);
        path_and_query.push_str(path);
        if let Some(query) = query {
            path_and_query.push('?');
            path_and_query.push_str(query);
        }
        let path_and_query = PathAndQuery::try_from(path_and_query).map_err(|_| {
            Rejection::bad_request("invalid_query", "the request query string is invalid")
        })?;
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(|_| {
                Rejection::bad_request("invalid_request_target", "the request target is invalid")
            })
    }
}

/// Upstream clients shared by all snapshots.
#[derive(Default)]
pub struct ClientPool {
    clients: Mutex<HashMap<(Duration, Duration), UpstreamClient>>,
}

impl ClientPool {
    /// Returns the client for a connect timeout and an idle timeout, creating it on first use.
    pub fn client(&self, connect_timeout: Duration, idle_timeout: Duration) -> UpstreamClient {
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        clients
            .entry((connect_timeout, idle_timeout))
            .or_insert_with(|| {
                let mut connector = HttpConnector::new();
                connector.set_connect_timeout(Some(connect_timeout));
                connector.set_nodelay(true);
                connector.set_keepalive(Some(Duration::from_secs(60)));
                Client::builder(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .pool_timer(TokioTimer::new())
                    .pool_idle_timeout(idle_timeout)
                    .pool_max_idle_per_host(1024)
                    .build(connector)
            })
            .clone()
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
    client: &UpstreamClient,
    mut request: Request<AttemptBody>,
    response_timeout: Duration,
    target: &Target,
    body: &BodyStats,
) -> Result<Forwarded, SendError> {
    *request.version_mut() = Version::HTTP_11;
    let started = Instant::now();
    let result = tokio::time::timeout(response_timeout, client.request(request)).await;
    let upstream_latency = started.elapsed();
    match result {
        Ok(Ok(response)) => Ok(Forwarded {
            response,
            upstream_latency,
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

/// Maps a client error to a rejection and logs it with the target address.
fn classify(error: &hyper_util::client::legacy::Error, target: &Target) -> SendError {
    let timed_out = error_chain(error).any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
            || cause.to_string().contains("timed out")
            || cause.to_string().contains("timeout")
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
