//! `rate-limit`: GCRA limits keyed by consumer, route, service, client IP or a header. Runs in
//! [`Phase::Limit`].
//!
//! Admitted and rejected responses carry `RateLimit-Limit`, `RateLimit-Remaining` and
//! `RateLimit-Reset` (draft-ietf-httpapi-ratelimit-headers-07) and `RateLimit-Policy` with
//! `RateLimit` in the structured form of later drafts; a rejection adds `Retry-After`. When the
//! counter backend fails, the request is admitted and the failure is logged, so an outage of a
//! shared counter store cannot take the API down.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use portcullis_config::{LimitKey, RateLimitSpec};
use portcullis_policy::rate_limit::{Counters, Decision, Gcra};

use crate::chain::{Exchange, Phase, Policy, PolicyFuture};
use crate::error::Rejection;
use crate::policies::{Clock, PolicyContext};

pub struct RateLimit {
    gcra: Gcra,
    by: LimitKey,
    header: Option<HeaderName>,
    /// Prefix of every counter key: the attachment scope and the instance name.
    key_prefix: String,
    policy_name: String,
    legacy_headers: bool,
    counters: Arc<dyn Counters>,
    clock: Arc<dyn Clock>,
}

impl RateLimit {
    pub fn new(spec: &RateLimitSpec, scope: &str, context: &PolicyContext) -> Self {
        let burst = spec.burst.unwrap_or(spec.limit);
        let instance = spec.name.as_deref().unwrap_or("default");
        RateLimit {
            gcra: Gcra::new(spec.limit, spec.window, burst),
            by: spec.by,
            header: spec
                .header
                .as_deref()
                .and_then(|name| HeaderName::from_bytes(name.as_bytes()).ok()),
            key_prefix: format!("{scope}|{instance}|"),
            policy_name: instance.to_string(),
            legacy_headers: spec.legacy_headers,
            counters: context.counters.clone(),
            clock: context.clock.clone(),
        }
    }

    fn counter_key(&self, exchange: &Exchange<'_>) -> String {
        let mut key = self.key_prefix.clone();
        let client_ip = || format!("ip:{}", exchange.canonical.client_ip);
        match self.by {
            LimitKey::Consumer => match &exchange.consumer {
                Some(consumer) => {
                    key.push_str("consumer:");
                    key.push_str(&consumer.name);
                }
                None => key.push_str(&client_ip()),
            },
            LimitKey::Route => {
                key.push_str("route:");
                key.push_str(&exchange.route.name);
            }
            // An `ai` route has no service, so its route name stands in.
            LimitKey::Service => match &exchange.route.service {
                Some(service) => {
                    key.push_str("service:");
                    key.push_str(&service.name);
                }
                None => {
                    key.push_str("route:");
                    key.push_str(&exchange.route.name);
                }
            },
            LimitKey::Ip => key.push_str(&client_ip()),
            LimitKey::Header => {
                key.push_str("header:");
                let value = self
                    .header
                    .as_ref()
                    .and_then(|name| exchange.headers.get(name));
                key.push_str(value.and_then(|v| v.to_str().ok()).unwrap_or(""));
            }
        }
        key
    }

    /// Adds this limit's state to `headers`. `RateLimit-Policy` and `RateLimit` list every
    /// limit that ran; the single-valued `RateLimit-Limit`, `-Remaining` and `-Reset` (and their
    /// `X-` forms) describe the limit with the fewest requests remaining, the one that binds.
    fn write_headers(&self, headers: &mut HeaderMap, decision: &Decision) {
        let window = self.gcra.window.as_secs().max(1);
        let reset = decision.reset_after.as_secs_f64().ceil() as u64;
        let policy = format!(
            "\"{}\";q={};w={}",
            self.policy_name, self.gcra.limit, window
        );
        let state = format!(
            "\"{}\";r={};t={}",
            self.policy_name, decision.remaining, reset
        );
        if let (Ok(policy), Ok(state)) = (
            HeaderValue::from_str(&policy),
            HeaderValue::from_str(&state),
        ) {
            headers.append(HeaderName::from_static("ratelimit-policy"), policy);
            headers.append(HeaderName::from_static("ratelimit"), state);
        }

        let binding_remaining = headers
            .get("ratelimit-remaining")
            .and_then(|value| value.to_str().ok())
            .and_then(|text| text.parse::<u64>().ok());
        if binding_remaining.is_some_and(|remaining| remaining <= decision.remaining) {
            return;
        }
        let mut names = vec![("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset")];
        if self.legacy_headers {
            names.push((
                "x-ratelimit-limit",
                "x-ratelimit-remaining",
                "x-ratelimit-reset",
            ));
        }
        for (limit, remaining, reset_name) in names {
            headers.insert(
                HeaderName::from_static(limit),
                HeaderValue::from(self.gcra.limit),
            );
            headers.insert(
                HeaderName::from_static(remaining),
                HeaderValue::from(decision.remaining),
            );
            headers.insert(
                HeaderName::from_static(reset_name),
                HeaderValue::from(reset),
            );
        }
    }
}

impl Policy for RateLimit {
    fn name(&self) -> &'static str {
        "rate-limit"
    }

    fn phase(&self) -> Phase {
        Phase::Limit
    }

    fn on_request<'a, 'r: 'a>(&'a self, exchange: &'a mut Exchange<'r>) -> PolicyFuture<'a> {
        Box::pin(async move {
            let key = self.counter_key(exchange);
            let now = self.clock.now_nanos();
            let decision = match self.counters.acquire(&key, &self.gcra, now).await {
                Ok(decision) => decision,
                Err(error) => {
                    tracing::warn!(policy = "rate-limit", route.name = %exchange.route.name, %error, "rate-limit counter failed; admitting the request");
                    return Ok(());
                }
            };
            if decision.allowed {
                self.write_headers(&mut exchange.response_headers, &decision);
                return Ok(());
            }
            let mut rejection = Rejection::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests; retry after the time in Retry-After",
            )
            .by_policy("rate-limit");
            let mut headers = HeaderMap::new();
            self.write_headers(&mut headers, &decision);
            let retry_after = decision
                .retry_after
                .unwrap_or_default()
                .as_secs_f64()
                .ceil()
                .max(1.0) as u64;
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from(retry_after));
            rejection.add_missing_headers(&headers);
            Err(rejection)
        })
    }
}
