//! The order in which an alias's targets are tried, and the calls to one target: its retries
//! and the choice of API key from the provider's pool.

use std::time::{Duration, Instant};

use http::{Response, StatusCode};
use hyper::body::Incoming;
use rand::Rng;

use crate::error::AiError;
use crate::gateway::{MAX_ERROR_BYTES, Prepared, Provider, Target, read_limited, send};
use crate::pool::{KeyOutcome, Unavailable, retry_after};

/// Returns the indexes of targets with `weights` in the order to try them. Without weights
/// this is the configured order. When any target has a weight, the first target is drawn with
/// probability proportional to its weight (1 for a target without one), the next from the
/// rest in the same way. So fallback still reaches every target.
pub(crate) fn target_order(weights: &[Option<u32>], rng: &mut impl Rng) -> Vec<usize> {
    if weights.iter().all(Option::is_none) {
        return (0..weights.len()).collect();
    }
    // Weighted sampling without replacement (Efraimidis and Spirakis, 2006): sorting by
    // u^(1/w) for uniform u in (0, 1) draws each next target in proportion to its weight.
    let mut keyed: Vec<(f64, usize)> = weights
        .iter()
        .enumerate()
        .map(|(index, weight)| {
            let weight = f64::from(weight.unwrap_or(1).max(1));
            let uniform: f64 = rng.gen_range(f64::EPSILON..1.0);
            (uniform.powf(1.0 / weight), index)
        })
        .collect();
    keyed.sort_by(|a, b| b.0.total_cmp(&a.0));
    keyed.into_iter().map(|(_, index)| index).collect()
}

/// Outcome of the calls to one target.
pub(crate) enum TargetOutcome {
    /// The provider returned a success status.
    Served(Response<Incoming>),
    /// The provider rejected the request with a status that another target would return too,
    /// such as 400.
    Rejected(AiError),
    /// The target failed; the next target may serve.
    Failed(AiError),
}

/// Calls `target` until it returns a response, taking a key from the provider's pool for each call.
///
/// A 429 cools the key down, and a 401, 403 or 5xx counts towards its cool-down. After a 429,
/// 401 or 403 the next available key is tried at once, at most once per key. A 429, a 5xx
/// and a connect error are retried with the provider's `retries`, waiting `backoff` and then
/// twice as long each time. A response timeout is not retried, because the provider may still
/// be working on the request. The target fails when its retries are spent or when every key is
/// cooling down.
pub(crate) async fn call_target(
    target: &Target,
    prepared: &Prepared,
    request_id: &str,
    latency: &mut Duration,
) -> TargetOutcome {
    let provider = &target.provider;
    let mut retries_left = provider.retries.attempts;
    let mut backoff = provider.retries.backoff;
    let mut key_switches_left = provider.keys.len().saturating_sub(1);
    let mut last_error = None;
    loop {
        let lease = match provider.keys.acquire() {
            Ok(lease) => lease,
            Err(Unavailable::CoolingDown { wait }) => {
                tracing::warn!(
                    request.id = request_id,
                    ai.target = %target.key,
                    wait_ms = wait.as_millis() as u64,
                    "every key of the provider is cooling down; trying the next target"
                );
                return TargetOutcome::Failed(
                    last_error.unwrap_or_else(|| all_keys_cooling_error(provider, wait)),
                );
            }
            Err(Unavailable::Credential { credential }) => {
                // The pool logs the reason, rate-limited, with the provider and credential.
                return TargetOutcome::Failed(
                    last_error.unwrap_or_else(|| credential_error(provider, &credential)),
                );
            }
        };
        let key_index = lease.as_ref().map(|lease| lease.index);
        let started = Instant::now();
        let key = lease.as_ref().map(|lease| lease.key.as_ref());
        let result = send(provider, prepared, request_id, key).await;
        *latency += started.elapsed();

        let response = match result {
            Ok(response) if response.status().is_success() => {
                report(provider, key_index, KeyOutcome::Success);
                return TargetOutcome::Served(response);
            }
            Ok(response) => response,
            Err(error) if error.status == StatusCode::GATEWAY_TIMEOUT => {
                tracing::warn!(request.id = request_id, ai.target = %target.key, error = %error.message, "provider timed out; trying the next target");
                return TargetOutcome::Failed(error);
            }
            Err(error) => {
                tracing::warn!(request.id = request_id, ai.target = %target.key, error = %error.message, "provider call failed");
                if !wait_for_retry(&mut retries_left, &mut backoff).await {
                    return TargetOutcome::Failed(error);
                }
                last_error = Some(error);
                continue;
            }
        };

        let status = response.status();
        let headers = response.headers().clone();
        let body = read_limited(response.into_body(), MAX_ERROR_BYTES)
            .await
            .unwrap_or_default();
        let error = AiError::from_provider(status, &body, &provider.name);
        // `from_provider` turns a rejected key (401, 403, Gemini's `API_KEY_INVALID`) into 502.
        let key_rejected = status.is_client_error() && error.status == StatusCode::BAD_GATEWAY;
        let rate_limited = status == StatusCode::TOO_MANY_REQUESTS;
        let outcome = if rate_limited {
            KeyOutcome::RateLimited(retry_after(&headers, &body))
        } else if key_rejected || status.is_server_error() {
            KeyOutcome::Failed
        } else {
            KeyOutcome::Success
        };
        report(provider, key_index, outcome);
        tracing::warn!(
            request.id = request_id,
            ai.target = %target.key,
            ai.key_index = key_index,
            status = status.as_u16(),
            "provider returned an error status"
        );

        let switch_key = (rate_limited || key_rejected)
            && key_switches_left > 0
            && key_index.is_some_and(|index| provider.keys.has_other_available(index));
        if switch_key {
            key_switches_left -= 1;
            last_error = Some(error);
            continue;
        }
        if key_rejected || !(rate_limited || status.is_server_error()) {
            return TargetOutcome::Rejected(error);
        }
        if !wait_for_retry(&mut retries_left, &mut backoff).await {
            return TargetOutcome::Failed(error);
        }
        last_error = Some(error);
    }
}

fn report(provider: &Provider, key_index: Option<usize>, outcome: KeyOutcome) {
    if let Some(index) = key_index {
        provider.keys.report(index, outcome);
    }
}

/// Waits before a retry and returns `true`, or returns `false` when no retry is left.
async fn wait_for_retry(retries_left: &mut u32, backoff: &mut Duration) -> bool {
    if *retries_left == 0 {
        return false;
    }
    *retries_left -= 1;
    tokio::time::sleep(*backoff).await;
    *backoff = backoff.saturating_mul(2);
    true
}

/// Returns the error of a provider whose stored credentials are missing or cannot be decrypted.
/// The reason stays in the gateway log, because it names master key ids.
fn credential_error(provider: &Provider, credential: &str) -> AiError {
    AiError::upstream(
        StatusCode::SERVICE_UNAVAILABLE,
        "provider_credential_unavailable",
        format!(
            "provider `{}` has no usable API key: stored credential `{credential}` is missing or \
             cannot be decrypted; the gateway log has the reason",
            provider.name
        ),
    )
}

fn all_keys_cooling_error(provider: &Provider, wait: Duration) -> AiError {
    AiError::upstream(
        StatusCode::TOO_MANY_REQUESTS,
        "provider_keys_cooling_down",
        format!(
            "every API key of provider `{}` is cooling down after rate limits or failures; the first is available again in {} s",
            provider.name,
            wait.as_secs().max(1)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn weighted_order_follows_weights() {
        let weights = [Some(3), Some(1)];
        let mut rng = StdRng::seed_from_u64(7);
        let mut first = [0u32; 2];
        for _ in 0..4000 {
            let order = target_order(&weights, &mut rng);
            assert_eq!(order.len(), 2);
            assert_ne!(order[0], order[1]);
            first[order[0]] += 1;
        }
        // Expected 3000 and 1000; the bounds are about 6 standard deviations wide.
        assert!((2830..=3170).contains(&first[0]), "{first:?}");
    }

    #[test]
    fn plain_order_is_kept() {
        let mut rng = StdRng::seed_from_u64(7);
        let order = target_order(&[None, None, None], &mut rng);
        assert_eq!(order, [0, 1, 2]);
    }
}
