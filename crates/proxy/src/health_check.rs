//! Active health checks: the periodic `GET` that each target with an active check receives.

use std::sync::Weak;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use portcullis_config::ActiveHealthCheckSpec;

use crate::targets::TargetState;

/// Probes one target until its state is dropped or its service loses the active check.
pub(crate) async fn run_probes(
    state: Weak<TargetState>,
    client: Client<HttpConnector, Empty<Bytes>>,
) {
    loop {
        let interval = {
            let Some(state) = state.upgrade() else {
                return;
            };
            let Some(check) = state.active_check() else {
                state.probe_running.store(false, Ordering::Release);
                return;
            };
            let success = probe(&client, &state, &check).await;
            state.record_probe(success);
            check.interval
        };
        tokio::time::sleep(interval).await;
    }
}

/// Sends one health-check request and returns whether the target passed.
async fn probe(
    client: &Client<HttpConnector, Empty<Bytes>>,
    state: &TargetState,
    check: &ActiveHealthCheckSpec,
) -> bool {
    let target = &state.target;
    let uri = match target.uri(&check.path, None) {
        Ok(uri) => uri,
        Err(_) => {
            tracing::warn!(service.name = %state.service, upstream.target = %state.url, path = %check.path, "cannot build the health-check URI");
            return false;
        }
    };
    let request = Request::get(uri)
        .header(header::HOST, target.host_header.clone())
        .header(header::USER_AGENT, "portcullis-health-check")
        .body(Empty::new());
    let request = match request {
        Ok(request) => request,
        Err(error) => {
            tracing::warn!(service.name = %state.service, upstream.target = %state.url, %error, "cannot build the health-check request");
            return false;
        }
    };
    match tokio::time::timeout(check.timeout, client.request(request)).await {
        Ok(Ok(response)) => {
            let status = response.status().as_u16();
            let passed = if check.expected_statuses.is_empty() {
                (200..400).contains(&status)
            } else {
                check.expected_statuses.contains(&status)
            };
            if !passed {
                tracing::debug!(service.name = %state.service, upstream.target = %state.url, status, "health check got an unexpected status");
            }
            passed
        }
        Ok(Err(error)) => {
            tracing::debug!(service.name = %state.service, upstream.target = %state.url, %error, "health check failed");
            false
        }
        Err(_) => {
            tracing::debug!(service.name = %state.service, upstream.target = %state.url, timeout_ms = check.timeout.as_millis() as u64, "health check timed out");
            false
        }
    }
}
