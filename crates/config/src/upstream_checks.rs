//! Validation of the upstream settings of a service and of the `http2` node settings.

use std::collections::HashSet;
use std::time::Duration;

use crate::load::{KeyError, check_target};
use crate::model::ServiceSpec;
use crate::upstream::{HashOn, Http2Settings, MAX_RETRY_ATTEMPTS, MAX_TARGET_WEIGHT, TargetSpec};

/// Checks the URLs and weights of a service's targets.
pub(crate) fn validate_targets(at: &str, targets: &[TargetSpec]) -> Vec<KeyError> {
    let mut errors = Vec::new();
    let mut seen = HashSet::new();
    for (j, target) in targets.iter().enumerate() {
        let url_key = if target.is_mapping() {
            format!("{at}.targets[{j}].url")
        } else {
            format!("{at}.targets[{j}]")
        };
        if let Err(message) = check_target(&target.url) {
            errors.push(KeyError::new(url_key, message));
        } else if !seen.insert(target.url.trim_end_matches('/')) {
            // Health and circuit state is kept per URL, so two entries would share it.
            errors.push(KeyError::new(
                url_key,
                format!(
                    "target `{}` is listed twice; give it one entry with a weight instead",
                    target.url
                ),
            ));
        }
        if !(1..=MAX_TARGET_WEIGHT).contains(&target.weight) {
            errors.push(KeyError::new(
                format!("{at}.targets[{j}].weight"),
                format!("must be from 1 to {MAX_TARGET_WEIGHT}"),
            ));
        }
    }
    errors
}

/// Checks balancing, health checks, retries and the circuit breaker of one service.
pub(crate) fn validate_resilience(at: &str, service: &ServiceSpec) -> Vec<KeyError> {
    let mut errors = Vec::new();
    let balancing = &service.load_balancing;
    let hash_header_key = format!("{at}.load_balancing.hash_header");
    match (balancing.hash_on, &balancing.hash_header) {
        (HashOn::Header, None) => errors.push(KeyError::new(
            hash_header_key,
            "`hash_on: header` needs the header name in `hash_header`",
        )),
        (HashOn::Header, Some(name)) if http::HeaderName::from_bytes(name.as_bytes()).is_err() => {
            errors.push(KeyError::new(
                hash_header_key,
                format!("invalid header name `{name}`"),
            ))
        }
        (HashOn::Header, Some(_)) | (_, None) => {}
        (_, Some(_)) => errors.push(KeyError::new(
            hash_header_key,
            "`hash_header` is only read with `hash_on: header`",
        )),
    }

    if let Some(checks) = &service.health_checks {
        if let Some(active) = &checks.active {
            let key = format!("{at}.health_checks.active");
            if !active.path.starts_with('/')
                || http::uri::PathAndQuery::try_from(active.path.as_str()).is_err()
            {
                errors.push(KeyError::new(
                    format!("{key}.path"),
                    format!("invalid path `{}`; it must start with `/`", active.path),
                ));
            }
            at_least(
                &mut errors,
                &format!("{key}.interval"),
                active.interval,
                Duration::from_millis(10),
                "10ms",
            );
            at_least(
                &mut errors,
                &format!("{key}.timeout"),
                active.timeout,
                Duration::from_millis(1),
                "1ms",
            );
            positive(
                &mut errors,
                &format!("{key}.healthy_threshold"),
                active.healthy_threshold,
            );
            positive(
                &mut errors,
                &format!("{key}.unhealthy_threshold"),
                active.unhealthy_threshold,
            );
            check_statuses(
                &mut errors,
                &format!("{key}.expected_statuses"),
                &active.expected_statuses,
            );
        }
        if let Some(passive) = &checks.passive {
            let key = format!("{at}.health_checks.passive");
            positive(
                &mut errors,
                &format!("{key}.unhealthy_threshold"),
                passive.unhealthy_threshold,
            );
            check_statuses(
                &mut errors,
                &format!("{key}.failure_statuses"),
                &passive.failure_statuses,
            );
            at_least(
                &mut errors,
                &format!("{key}.ejection_time"),
                passive.ejection_time,
                Duration::from_millis(1),
                "1ms",
            );
        }
    }

    let retries = &service.retries;
    if retries.attempts > MAX_RETRY_ATTEMPTS {
        errors.push(KeyError::new(
            format!("{at}.retries.attempts"),
            format!("must be at most {MAX_RETRY_ATTEMPTS}"),
        ));
    }
    check_statuses(
        &mut errors,
        &format!("{at}.retries.on_statuses"),
        &retries.on_statuses,
    );
    check_ratio(
        &mut errors,
        &format!("{at}.retries.budget.ratio"),
        retries.budget.ratio,
        true,
    );
    at_least(
        &mut errors,
        &format!("{at}.retries.budget.window"),
        retries.budget.window,
        Duration::from_millis(100),
        "100ms",
    );

    if let Some(breaker) = &service.circuit_breaker {
        let key = format!("{at}.circuit_breaker");
        positive(
            &mut errors,
            &format!("{key}.consecutive_failures"),
            breaker.consecutive_failures,
        );
        if let Some(ratio) = breaker.failure_ratio {
            check_ratio(&mut errors, &format!("{key}.failure_ratio"), ratio, false);
        }
        positive(
            &mut errors,
            &format!("{key}.min_requests"),
            breaker.min_requests,
        );
        at_least(
            &mut errors,
            &format!("{key}.window"),
            breaker.window,
            Duration::from_millis(100),
            "100ms",
        );
        at_least(
            &mut errors,
            &format!("{key}.cooldown"),
            breaker.cooldown,
            Duration::from_millis(1),
            "1ms",
        );
        positive(
            &mut errors,
            &format!("{key}.half_open_requests"),
            breaker.half_open_requests,
        );
        check_statuses(
            &mut errors,
            &format!("{key}.failure_statuses"),
            &breaker.failure_statuses,
        );
    }
    errors
}

/// Checks the HTTP/2 limits of client connections.
pub(crate) fn validate_http2(settings: &Http2Settings) -> Vec<KeyError> {
    let mut errors = Vec::new();
    positive(
        &mut errors,
        "http2.max_concurrent_streams",
        settings.max_concurrent_streams,
    );
    for (key, value) in [
        (
            "http2.max_pending_accept_reset_streams",
            settings.max_pending_accept_reset_streams,
        ),
        (
            "http2.max_local_error_reset_streams",
            settings.max_local_error_reset_streams,
        ),
    ] {
        if value == 0 {
            errors.push(KeyError::new(key, "must be greater than 0"));
        }
    }
    if let Some(size) = settings.max_header_list_size
        && size < 1024
    {
        errors.push(KeyError::new(
            "http2.max_header_list_size",
            "must be at least 1024",
        ));
    }
    if settings.max_send_buf_size < 1024 {
        errors.push(KeyError::new(
            "http2.max_send_buf_size",
            "must be at least 1024",
        ));
    }
    if let Some(interval) = settings.keep_alive_interval {
        at_least(
            &mut errors,
            "http2.keep_alive_interval",
            interval,
            Duration::from_millis(10),
            "10ms",
        );
    }
    at_least(
        &mut errors,
        "http2.keep_alive_timeout",
        settings.keep_alive_timeout,
        Duration::from_millis(10),
        "10ms",
    );
    errors
}

fn positive(errors: &mut Vec<KeyError>, key: &str, value: u32) {
    if value == 0 {
        errors.push(KeyError::new(key, "must be greater than 0"));
    }
}

fn at_least(errors: &mut Vec<KeyError>, key: &str, value: Duration, minimum: Duration, text: &str) {
    if value < minimum {
        errors.push(KeyError::new(key, format!("must be at least {text}")));
    }
}

fn check_ratio(errors: &mut Vec<KeyError>, key: &str, value: f64, zero_allowed: bool) {
    let valid =
        value.is_finite() && value <= 1.0 && (value > 0.0 || (zero_allowed && value == 0.0));
    if !valid {
        let range = if zero_allowed {
            "from 0 to 1"
        } else {
            "greater than 0 and at most 1"
        };
        errors.push(KeyError::new(key, format!("must be {range}, such as 0.2")));
    }
}

fn check_statuses(errors: &mut Vec<KeyError>, key: &str, statuses: &[u16]) {
    for (i, status) in statuses.iter().enumerate() {
        if !(100..=599).contains(status) {
            errors.push(KeyError::new(
                format!("{key}[{i}]"),
                format!("invalid status {status}; use 100 to 599"),
            ));
        }
    }
}
