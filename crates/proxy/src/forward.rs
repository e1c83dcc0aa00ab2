//! The forward phase: upstream attempts, retries and the retry budget.
//!
//! A request gets one attempt, plus up to `retries.attempts` retries on other targets when an
//! attempt fails in a way a retry can fix:
//!
//! - the connection failed, for any method, because the upstream saw nothing of the request;
//! - the connection closed before a response arrived, or the response status is listed in
//!   `retries.on_statuses`, for idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE, TRACE).
//!
//! Either way the body must still be whole: empty from the start, or never polled by the failed
//! attempt. Response timeouts are not retried, because the upstream may still be working on the
//! request. Each retry also takes one unit of the service's retry budget.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Request, StatusCode};

use crate::body::{BodyStats, ReplayableBody};
use crate::error::Rejection;
use crate::metrics::{Metrics, Name, ServiceLabels, UnavailableLabels};
use crate::snapshot::CompiledService;
use crate::targets::{InFlight, Observed};
use crate::upstream::{self, FailureKind, Forwarded};

/// A request ready to go upstream, before a target is chosen.
pub(crate) struct Outgoing<'a> {
    pub method: &'a Method,
    /// Path after `strip_prefix`; the target's base path goes in front of it.
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// Headers to send, without `Host`, which depends on the target.
    pub headers: HeaderMap,
    /// The client's `Host`, sent instead of the target's when the service preserves it.
    pub original_host: Option<HeaderValue>,
    pub body: ReplayableBody,
    pub stats: &'a Arc<BodyStats>,
    /// The consistent-hash key of the request, for services that balance by one.
    pub hash: Option<u64>,
}

/// Facts about the attempts of one request, for the access log.
#[derive(Default)]
pub(crate) struct AttemptLog {
    /// Address of the last target tried.
    pub upstream_addr: Option<Arc<str>>,
    pub retries: u32,
}

/// The response of the last attempt, with the target's in-flight count that lasts until the
/// response body ends.
pub(crate) struct Answered {
    pub forwarded: Forwarded,
    pub in_flight: InFlight,
}

enum Last {
    Failure(Rejection),
    Response(Answered),
}

/// Sends `request` to the service's targets until one returns a response or no retry is left.
pub(crate) async fn forward(
    service: &CompiledService,
    request: Outgoing<'_>,
    metrics: &Metrics,
    log: &mut AttemptLog,
) -> Result<Answered, Rejection> {
    let balancer = &service.balancer;
    let clock = balancer.targets[0].clock();
    lock_budget(service).record_request(clock.now_nanos());
    let idempotent = matches!(
        *request.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    );
    let mut tried: Vec<usize> = Vec::new();
    let mut last: Option<Last> = None;

    loop {
        let attempt = match balancer.select(request.hash, &tried) {
            Ok(attempt) => attempt,
            // A retry with nowhere to go returns what the last attempt got.
            Err(_) if last.is_some() => break,
            Err(unavailable) => {
                metrics
                    .upstream_unavailable
                    .get_or_create(&UnavailableLabels {
                        service: Name(service.name.clone()),
                        reason: Name(Arc::from(unavailable.reason())),
                    })
                    .inc();
                // Debug, not warn: during an outage this runs for every request, and the
                // metric above and the target's own transitions already report it.
                tracing::debug!(service.name = %service.name, reason = unavailable.reason(), "no upstream target is available");
                return Err(Rejection::upstream(
                    StatusCode::SERVICE_UNAVAILABLE,
                    unavailable.code(),
                    match unavailable {
                        crate::balancer::Unavailable::Unhealthy => {
                            "every upstream target is failing its health checks"
                        }
                        crate::balancer::Unavailable::CircuitOpen => {
                            "every upstream target has an open circuit breaker"
                        }
                    },
                ));
            }
        };
        // `select` only returns attempts on the balancer's own targets, so the index is known.
        let Some(index) = balancer.index_of(&attempt) else {
            break;
        };
        tried.push(index);
        let target_state = attempt.target().clone();
        let target = &target_state.target;
        log.upstream_addr = Some(target.address.clone());
        let Some(body) = request.body.attempt() else {
            // Only reached when a retry was allowed for a body already sent, which the retry
            // checks below rule out.
            break;
        };

        let uri = target.origin_form(request.path, request.query)?;
        let mut headers = request.headers.clone();
        let host = match (&request.original_host, service.preserve_host) {
            (Some(host), true) => host.clone(),
            _ => target.host_header.clone(),
        };
        headers.insert(header::HOST, host);
        let mut upstream_request = Request::builder()
            .method(request.method.clone())
            .uri(uri)
            .body(body)
            .map_err(|_| {
                Rejection::bad_request("invalid_request", "the request could not be forwarded")
            })?;
        *upstream_request.headers_mut() = headers;

        let result = upstream::send(
            service.pool(index),
            upstream_request,
            service.response_timeout,
            target,
            request.stats,
        )
        .await;
        // NOTE: bodies stream through unbuffered, so a PUT or DELETE whose body reached the
        // upstream is not retried even though the method is idempotent.
        let can_retry = log.retries < service.retry_attempts && request.body.is_replayable();
        match result {
            Ok(forwarded) => {
                let status = forwarded.response.status().as_u16();
                let in_flight = attempt.finish(Observed::Response(status));
                let answered = Answered {
                    forwarded,
                    in_flight,
                };
                let retry_status = idempotent && service.retry_statuses.contains(&status);
                if !(retry_status && can_retry && take_retry(service, metrics, log)) {
                    return Ok(answered);
                }
                tracing::debug!(service.name = %service.name, upstream.addr = %target.address, status, "retrying on another target after a retryable status");
                last = Some(Last::Response(answered));
            }
            Err(error) => {
                if error.kind == FailureKind::Client {
                    // Dropping the attempt returns its circuit slot without blaming the target.
                    drop(attempt);
                    return Err(error.rejection);
                }
                drop(attempt.finish(Observed::TransportFailure));
                let retryable = match error.kind {
                    FailureKind::Connect => true,
                    FailureKind::Transport => idempotent,
                    FailureKind::Timeout | FailureKind::Client => false,
                };
                if !(retryable && can_retry && take_retry(service, metrics, log)) {
                    return Err(error.rejection);
                }
                tracing::debug!(service.name = %service.name, upstream.addr = %target.address, code = error.rejection.code, "retrying on another target after a failed attempt");
                last = Some(Last::Failure(error.rejection));
            }
        }
    }

    match last {
        Some(Last::Response(answered)) => Ok(answered),
        Some(Last::Failure(rejection)) => Err(rejection),
        None => Err(Rejection::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the request could not be forwarded",
        )),
    }
}

/// Takes one retry from the service's budget, counting it in the metrics either way.
fn take_retry(service: &CompiledService, metrics: &Metrics, log: &mut AttemptLog) -> bool {
    let now = service.balancer.targets[0].clock().now_nanos();
    let labels = ServiceLabels {
        service: Name(service.name.clone()),
    };
    if !lock_budget(service).try_retry(now) {
        metrics.upstream_retries_denied.get_or_create(&labels).inc();
        tracing::debug!(service.name = %service.name, "retry budget spent; not retrying");
        return false;
    }
    metrics.upstream_retries.get_or_create(&labels).inc();
    log.retries += 1;
    true
}

fn lock_budget(
    service: &CompiledService,
) -> std::sync::MutexGuard<'_, portcullis_policy::upstream::retry_budget::RetryBudget> {
    service
        .balancer
        .budget
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
