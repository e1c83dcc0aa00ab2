//! The request pipeline: every phase of one request, in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode, request};
use hyper::body::Incoming;
use portcullis_policy::rate_limit::Lease;
use rand::Rng;

use crate::access_log::{AccessLog, AccessRecord};
use crate::balancer::HashInput;
use crate::body::{BodyStats, Completion, Outcome, ReplayableBody, RequestBody, ResponseBody};
use crate::canonical::{self, CanonicalRequest};
use crate::chain::{self, Exchange};
use crate::error::{Rejection, Side};
use crate::forward::{self, Answered, AttemptLog, Outgoing};
use crate::header_edits::HeaderEdits;
use crate::metrics::{Metrics, Name, RejectionLabels};
use crate::policies::ai_limits::Reservation;
use crate::policies::waf::WafRecord;
use crate::router::{self, NoMatch};
use crate::snapshot::{CompiledRoute, Snapshot, SnapshotHandle};
use crate::targets::InFlight;
use crate::upstream;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_CONSUMER_NAME: HeaderName = HeaderName::from_static("x-consumer-name");
pub const X_CONSUMER_ROLES: HeaderName = HeaderName::from_static("x-consumer-roles");
pub const X_CREDENTIAL_ID: HeaderName = HeaderName::from_static("x-credential-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers a client may not set, because the upstream trusts the gateway to set them.
const GATEWAY_HEADERS: [HeaderName; 3] = [X_CONSUMER_NAME, X_CONSUMER_ROLES, X_CREDENTIAL_ID];

/// The data plane shared by all listeners.
pub struct Proxy {
    pub snapshot: Arc<SnapshotHandle>,
    pub metrics: Arc<Metrics>,
    pub access_log: AccessLog,
    /// The queue to the AI usage writer; `None` without an `ai` section.
    pub ai_usage: Option<Arc<crate::ai_usage::UsageQueue>>,
}

/// What the gateway knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    /// The client certificate verified in the TLS handshake, on listeners with `client_auth`.
    pub client_certificate: Option<Arc<crate::tls::ClientCertificate>>,
}

/// Facts gathered while a request moves through the phases, for the log and metrics.
#[derive(Default)]
struct Trace {
    /// The usage record of a call on an `ai` route.
    ai_call: Option<Arc<portcullis_ai::CallRecord>>,
    /// `ai-limits` reservations of the call, settled when the response ends.
    ai_reservations: Vec<Reservation>,
    path: Option<String>,
    host: String,
    client_ip: Option<String>,
    route: Option<Arc<CompiledRoute>>,
    service: Option<Arc<str>>,
    consumer: Option<Arc<str>>,
    credential_id: Option<Arc<str>>,
    upstream_addr: Option<Arc<str>>,
    upstream_latency: Option<Duration>,
    /// Concurrency-limit slots, held until the response body ends.
    leases: Vec<Lease>,
    retries: u32,
    /// Counts the request on its target until the response body ends.
    in_flight: Option<InFlight>,
    /// Response header changes of the policies, for whichever response the request gets.
    header_edits: HeaderEdits,
    /// The verdict of a `waf` policy.
    waf: Option<WafRecord>,
}

/// Response header with the milliseconds the gateway added to an AI call: the time to the
/// response headers minus the time spent waiting for providers, which for a non-streamed call
/// includes reading the provider's body.
const X_OVERHEAD_MS: HeaderName = HeaderName::from_static("x-portcullis-overhead-ms");

impl Proxy {
    /// Serves one request through all phases and returns the response to send.
    pub async fn handle(
        self: &Arc<Self>,
        connection: &ConnectionInfo,
        request: Request<Incoming>,
    ) -> Response<ResponseBody> {
        let started = Instant::now();
        let snapshot = self.snapshot.load();
        let (mut parts, body) = request.into_parts();
        let request_id = request_id(&parts.headers);
        let stats = Arc::new(BodyStats::default());
        let mut trace = Trace::default();

        let result = self
            .process(
                &snapshot,
                connection,
                &mut parts,
                body,
                &request_id,
                &stats,
                &mut trace,
            )
            .await;
        let (mut response, rejection) = match result {
            Ok(response) => (response, None),
            Err(rejection) => (rejection_response(&rejection, &request_id), Some(rejection)),
        };
        trace.header_edits.apply(response.headers_mut());
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert(X_REQUEST_ID, value);
        }
        if let (Some(_), Some(upstream)) = (&trace.ai_call, trace.upstream_latency) {
            let overhead = started.elapsed().saturating_sub(upstream);
            let milliseconds = format!("{:.3}", overhead.as_secs_f64() * 1000.0);
            if let Ok(value) = HeaderValue::from_str(&milliseconds) {
                response.headers_mut().insert(X_OVERHEAD_MS, value);
            }
            let route = trace
                .route
                .as_ref()
                .map_or_else(String::new, |route| route.name.to_string());
            self.metrics
                .ai
                .overhead
                .get_or_create(&portcullis_ai::metrics::OverheadLabels { route })
                .observe(overhead.as_secs_f64());
        }

        if let Some(rejection) = &rejection {
            self.metrics
                .rejections
                .get_or_create(&RejectionLabels {
                    policy: Name(Arc::from(rejection.policy.unwrap_or("gateway"))),
                    code: Name(Arc::from(rejection.code)),
                })
                .inc();
            match rejection.side {
                Side::Client => {
                    tracing::debug!(request.id = %request_id, code = rejection.code, status = rejection.status.as_u16(), "request rejected")
                }
                Side::Upstream => {
                    tracing::info!(request.id = %request_id, code = rejection.code, upstream.addr = trace.upstream_addr.as_deref(), "upstream failure answered by the gateway")
                }
                Side::Gateway => {
                    tracing::error!(request.id = %request_id, code = rejection.code, message = %rejection.message, "gateway failure")
                }
            }
        }

        let record = AccessRecord {
            time: String::new(),
            request_id,
            client_ip: trace.client_ip.unwrap_or_else(|| {
                canonical::ip_to_string(canonical::canonical_ip(connection.peer.ip()))
            }),
            method: parts.method.as_str().to_string(),
            path: trace.path.unwrap_or_else(|| parts.uri.path().to_string()),
            protocol: protocol_name(parts.version),
            host: trace.host,
            status: response.status().as_u16(),
            bytes_in: 0,
            bytes_out: 0,
            duration_ms: 0.0,
            upstream_ms: trace
                .upstream_latency
                .map(|latency| latency.as_secs_f64() * 1000.0),
            upstream_addr: trace.upstream_addr,
            retries: trace.retries,
            route: trace.route.as_ref().map(|route| route.name.clone()),
            service: trace.service,
            consumer: trace.consumer,
            credential_id: trace.credential_id,
            rejected_by: rejection.as_ref().and_then(|rejection| rejection.policy),
            error: rejection.as_ref().map(|rejection| rejection.code),
            outcome: Outcome::Completed,
            ai: None,
            waf: trace.waf,
        };
        response.body_mut().on_complete(Box::new(LogOnComplete {
            ai_call: trace.ai_call,
            ai_reservations: trace.ai_reservations,
            proxy: self.clone(),
            route: trace.route,
            record,
            started,
            stats,
            upstream_latency: trace.upstream_latency,
            leases: trace.leases,
            _in_flight: trace.in_flight,
        }));
        response
    }

    #[allow(clippy::too_many_arguments)]
    async fn process(
        &self,
        snapshot: &Snapshot,
        connection: &ConnectionInfo,
        parts: &mut request::Parts,
        body: Incoming,
        request_id: &str,
        stats: &Arc<BodyStats>,
        trace: &mut Trace,
    ) -> Result<Response<ResponseBody>, Rejection> {
        // The host first, so that the access log names it for every later rejection.
        let host = canonical::canonical_host(&parts.uri, &parts.headers)?;
        trace.host = host.clone();

        // Parse: limits that hyper does not enforce itself.
        check_limits(parts, snapshot)?;

        // Canonicalise.
        let path = canonical::normalize_path(parts.uri.path())?;
        trace.path = Some(path.clone());
        let client = snapshot.client_ip.resolve(connection.peer, &parts.headers);
        trace.client_ip = Some(canonical::ip_to_string(client.ip));
        let scheme = match (
            client.via_trusted_proxy,
            parts
                .headers
                .get(&X_FORWARDED_PROTO)
                .and_then(|v| v.to_str().ok()),
        ) {
            (true, Some("https")) => "https",
            (true, Some("http")) => "http",
            _ if connection.tls => "https",
            _ => "http",
        };
        let mut canonical = CanonicalRequest {
            path,
            query: parts.uri.query().map(str::to_string),
            host,
            client_ip: client.ip,
            forwarded_for: client.forwarded_for,
            scheme,
        };

        // Route. A CORS preflight is routed by the method it requests, so that it reaches the
        // route, and the `cors` policy, of the request it prepares.
        let routing_method = preflight_method(parts).unwrap_or_else(|| parts.method.clone());
        let found = snapshot
            .router
            .find(&canonical.host, &canonical.path, &routing_method)
            .or_else(|_| {
                snapshot
                    .router
                    .find(&canonical.host, &canonical.path, &parts.method)
            })
            .map_err(|no_match| match no_match {
                NoMatch::NotFound => Rejection::new(
                    StatusCode::NOT_FOUND,
                    "route_not_found",
                    "no route matches the request",
                ),
                NoMatch::MethodNotAllowed => Rejection::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "the route does not accept this method",
                ),
            })?;
        let route: &CompiledRoute = found.route;
        let matched = found.matched.to_string();
        trace.route = Some(found.route.clone());
        trace.service = route.service.as_ref().map(|service| service.name.clone());

        // Authenticate, authorize, limit and inspect.
        let mut request_body =
            RequestBody::new(body, snapshot.limits.max_body_bytes, stats.clone());
        let mut exchange = Exchange {
            snapshot,
            route,
            request_id,
            method: &parts.method,
            uri: &parts.uri,
            target: parts
                .uri
                .path_and_query()
                .map_or("/", |path_and_query| path_and_query.as_str()),
            version: parts.version,
            headers: &mut parts.headers,
            canonical: &mut canonical,
            client_certificate: connection.client_certificate.as_deref(),
            consumer: None,
            credential_id: None,
            scopes: std::borrow::Cow::Borrowed(&[]),
            credential_roles: Vec::new(),
            claims: None,
            response_headers: HeaderMap::new(),
            header_edits: HeaderEdits::default(),
            answer: None,
            leases: Vec::new(),
            body: &mut request_body,
            waf: None,
            ai_limits: Vec::new(),
        };
        let chain_result = chain::run(&mut exchange).await;
        trace.leases = std::mem::take(&mut exchange.leases);
        trace.waf = exchange.waf.take();
        let ai_limits = std::mem::take(&mut exchange.ai_limits);
        let consumer = exchange.consumer.take();
        let credential_id = exchange.credential_id.take();
        let response_headers = std::mem::take(&mut exchange.response_headers);
        trace.header_edits = std::mem::take(&mut exchange.header_edits);
        trace.consumer = consumer.as_ref().map(|consumer| consumer.name.clone());
        trace.credential_id = credential_id;
        if let Err(mut rejection) = chain_result {
            rejection.add_missing_headers(&response_headers);
            return Err(rejection);
        }
        // A preflight that no `cors` policy answered is an `OPTIONS` request like any other, so
        // it needs a route that accepts `OPTIONS`.
        if routing_method != parts.method {
            let accepts_options = snapshot
                .router
                .find(&canonical.host, &canonical.path, &parts.method)
                .is_ok_and(|direct| Arc::ptr_eq(direct.route, found.route));
            if !accepts_options {
                let mut rejection = Rejection::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "the route does not accept this method",
                );
                rejection.add_missing_headers(&response_headers);
                return Err(rejection);
            }
        }

        // Forward: an `ai` route is served by the AI gateway instead of a service.
        if let Some(gateway) = &route.ai {
            let served = crate::ai::serve(
                gateway,
                &route.ai_route,
                parts,
                request_body,
                snapshot.limits.max_body_bytes,
                router::strip_prefix(&canonical.path, &matched),
                request_id,
                ai_limits,
            )
            .await
            .map_err(|mut rejection| {
                rejection.add_missing_headers(&response_headers);
                rejection
            })?;
            trace.ai_call = served.call;
            trace.ai_reservations = served.reservations;
            trace.upstream_latency = served.upstream_latency;
            let mut response = served.response;
            for (name, value) in &response_headers {
                response.headers_mut().append(name, value.clone());
            }
            return Ok(response);
        }
        let Some(service) = &route.service else {
            return Err(Rejection::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ai_not_configured",
                "this node has no `ai` section, so it cannot serve AI routes",
            ));
        };
        let upstream_path = if route.strip_prefix {
            router::strip_prefix(&canonical.path, &matched)
        } else {
            canonical.path.clone()
        };

        let mut headers = std::mem::take(&mut parts.headers);
        let original_host = headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|authority| HeaderValue::from_str(authority.as_str()).ok())
        });
        upstream::remove_hop_by_hop(&mut headers);
        for name in &GATEWAY_HEADERS {
            headers.remove(name);
        }
        set_forwarding_headers(
            &mut headers,
            &canonical,
            client.via_trusted_proxy,
            original_host.as_ref(),
        );
        if let Ok(value) = HeaderValue::from_str(request_id) {
            headers.insert(X_REQUEST_ID, value);
        }
        if let Some(consumer) = &consumer {
            if let Ok(value) = HeaderValue::from_str(&consumer.name) {
                headers.insert(X_CONSUMER_NAME, value);
            }
            if !consumer.roles.is_empty()
                && let Ok(value) = HeaderValue::from_str(&consumer.roles.join(","))
            {
                headers.insert(X_CONSUMER_ROLES, value);
            }
        }
        if let Some(id) = &trace.credential_id
            && let Ok(value) = HeaderValue::from_str(id)
        {
            headers.insert(X_CREDENTIAL_ID, value);
        }
        headers.remove(header::HOST);

        let hash = service.balancer.hash(&HashInput {
            client_ip: canonical.client_ip,
            headers: &headers,
            consumer: consumer.as_ref().map(|consumer| &*consumer.name),
            path: &canonical.path,
        });
        let outgoing = Outgoing {
            method: &parts.method,
            path: &upstream_path,
            query: canonical.query.as_deref(),
            headers,
            original_host,
            body: ReplayableBody::new(request_body),
            stats,
            hash,
        };
        let mut attempts = AttemptLog::default();
        let result = forward::forward(service, outgoing, &self.metrics, &mut attempts).await;
        trace.upstream_addr = attempts.upstream_addr;
        trace.retries = attempts.retries;
        let Answered {
            forwarded,
            in_flight,
        } = result.map_err(|mut rejection| {
            rejection.add_missing_headers(&response_headers);
            rejection
        })?;
        trace.upstream_latency = Some(forwarded.upstream_latency);
        trace.in_flight = Some(in_flight);

        let (mut response_parts, upstream_body) = forwarded.response.into_parts();
        upstream::remove_hop_by_hop(&mut response_parts.headers);
        for (name, value) in &response_headers {
            response_parts.headers.append(name, value.clone());
        }
        Ok(Response::from_parts(
            response_parts,
            ResponseBody::upstream(upstream_body, forwarded.connection),
        ))
    }
}

/// Returns the method a CORS preflight requests: the `Access-Control-Request-Method` of an
/// `OPTIONS` request that has an `Origin`.
fn preflight_method(parts: &request::Parts) -> Option<http::Method> {
    if parts.method != http::Method::OPTIONS || !parts.headers.contains_key(header::ORIGIN) {
        return None;
    }
    let requested = parts.headers.get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
    http::Method::from_bytes(requested.as_bytes()).ok()
}

/// Rejects requests over the header, URI and declared body limits.
fn check_limits(parts: &request::Parts, snapshot: &Snapshot) -> Result<(), Rejection> {
    let limits = &snapshot.limits;
    let uri_length = parts.uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri_length > limits.max_uri_bytes {
        return Err(Rejection::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            "the request target is too long",
        ));
    }
    if parts.headers.len() > limits.max_headers {
        return Err(Rejection::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "the request has more than {} header fields",
                limits.max_headers
            ),
        ));
    }
    let header_bytes: usize = parts
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if header_bytes > limits.max_header_bytes {
        return Err(Rejection::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "the request header fields are larger than {} bytes",
                limits.max_header_bytes
            ),
        ));
    }
    let lengths: Vec<&HeaderValue> = parts
        .headers
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .collect();
    if !lengths.is_empty() && parts.headers.contains_key(header::TRANSFER_ENCODING) {
        return Err(Rejection::bad_request(
            "invalid_framing",
            "the request has both Content-Length and Transfer-Encoding",
        ));
    }
    if lengths.len() > 1 {
        return Err(Rejection::bad_request(
            "invalid_framing",
            "the request has more than one Content-Length",
        ));
    }
    if let Some(length) = lengths.first() {
        let length: u64 = length
            .to_str()
            .ok()
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| {
                Rejection::bad_request("invalid_framing", "the Content-Length is not a number")
            })?;
        if length > limits.max_body_bytes {
            return Err(Rejection::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "the request body is larger than {} bytes",
                    limits.max_body_bytes
                ),
            ));
        }
    }
    Ok(())
}

fn set_forwarding_headers(
    headers: &mut HeaderMap,
    canonical: &CanonicalRequest,
    trusted: bool,
    original_host: Option<&HeaderValue>,
) {
    if let Ok(value) = HeaderValue::from_str(&canonical.forwarded_for) {
        headers.insert(X_FORWARDED_FOR, value);
    }
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(canonical.scheme),
    );
    let forwarded_host = if trusted {
        headers.get(&X_FORWARDED_HOST).cloned()
    } else {
        None
    };
    match forwarded_host.or_else(|| original_host.cloned()) {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST, host);
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
    headers.remove(header::FORWARDED);
}

/// Returns the client's request id when it is 1 to 128 characters of `[A-Za-z0-9._:-]`, or a
/// new random one.
fn request_id(headers: &HeaderMap) -> String {
    if let Some(value) = headers
        .get(&X_REQUEST_ID)
        .and_then(|value| value.to_str().ok())
    {
        let valid = !value.is_empty()
            && value.len() <= 128
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        if valid {
            return value.to_string();
        }
    }
    const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";
    let bytes: [u8; 16] = rand::thread_rng().r#gen();
    let mut id = String::with_capacity(32);
    for byte in bytes {
        id.push(char::from(HEX_DIGITS[usize::from(byte >> 4)]));
        id.push(char::from(HEX_DIGITS[usize::from(byte & 0x0f)]));
    }
    id
}

fn rejection_response(rejection: &Rejection, request_id: &str) -> Response<ResponseBody> {
    let body = match &rejection.custom_body {
        Some(body) => body.clone(),
        None => rejection.body(request_id),
    };
    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() = rejection.status;
    let headers = response.headers_mut();
    if rejection.custom_body.is_none() {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for (name, value) in &rejection.headers {
        headers.append(name.clone(), value.clone());
    }
    response
}

fn protocol_name(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/0.9",
    }
}

/// Writes the access-log line and the request metrics when the response body ends.
struct LogOnComplete {
    ai_call: Option<Arc<portcullis_ai::CallRecord>>,
    /// Settled with the call's usage; returned whole when no provider served the call.
    ai_reservations: Vec<Reservation>,
    proxy: Arc<Proxy>,
    /// The matched route, whose metric series are kept with it.
    route: Option<Arc<CompiledRoute>>,
    record: AccessRecord,
    started: Instant,
    stats: Arc<BodyStats>,
    upstream_latency: Option<Duration>,
    /// Returned to their counters when this is dropped, at the end of the response body.
    leases: Vec<Lease>,
    /// Dropped with this hook, which ends the request's in-flight count on its target.
    _in_flight: Option<InFlight>,
}

impl Completion for LogOnComplete {
    fn complete(self: Box<Self>, bytes_out: u64, outcome: Outcome) {
        let LogOnComplete {
            ai_call,
            ai_reservations,
            proxy,
            route,
            mut record,
            started,
            stats,
            upstream_latency,
            leases,
            _in_flight,
        } = *self;
        drop(leases);
        let elapsed = started.elapsed();
        let metrics = &proxy.metrics;
        match &route {
            Some(route) => route.metrics.record(
                metrics,
                &route.name,
                record.status,
                elapsed,
                upstream_latency,
            ),
            None => {
                metrics.record_request(&Arc::from(""), record.status, elapsed, upstream_latency)
            }
        }
        if let Some(call) = ai_call {
            // Read at the end of the body, including a client disconnect, so the tokens
            // received so far are counted.
            let summary = call.summary();
            for reservation in ai_reservations {
                reservation.settle(&summary);
            }
            let consumer = record.consumer.as_deref().unwrap_or("");
            let route_name = route.as_ref().map_or("", |route| &*route.name);
            metrics.ai.record(&summary, consumer, route_name);
            if let Some(queue) = &proxy.ai_usage {
                queue.push(crate::ai_usage::UsageEvent {
                    unix_seconds: time::OffsetDateTime::now_utc().unix_timestamp(),
                    consumer: consumer.to_string(),
                    credential_id: record.credential_id.as_deref().unwrap_or("").to_string(),
                    route: route_name.to_string(),
                    summary: summary.clone(),
                });
            }
            record.ai = Some(summary);
        }
        if !proxy.access_log.is_on() {
            return;
        }
        record.time = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        record.bytes_in = stats.bytes.load(Ordering::Relaxed);
        record.bytes_out = bytes_out;
        record.duration_ms = elapsed.as_secs_f64() * 1000.0;
        record.outcome = outcome;
        proxy.access_log.write(&record);
    }
}
