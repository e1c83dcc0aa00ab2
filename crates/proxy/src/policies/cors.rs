//! `cors`: cross-origin resource sharing. Runs in [`Phase::Browser`], before authentication.
//!
//! A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered by the
//! gateway with 204 and never reaches the upstream. A browser sends a preflight without
//! credentials, so the answer skips authentication and authorization, but it is still counted
//! by the route's rate limits (see [`crate::chain`]). A preflight that asks for an origin,
//! method or header that is not allowed gets 204 without CORS headers, so the browser stops,
//! or 403 with `disallowed_origin: reject`.
//!
//! An actual request from an allowed origin gets `Access-Control-Allow-Origin` and the other
//! response headers on every response, including rejections by later policies, so that pages
//! can read error bodies. The policy owns CORS on its routes: it removes the upstream's
//! `Access-Control-*` response headers, so a request from an origin that is not allowed gets
//! none. Every response carries `Vary: Origin` unless any origin is allowed.

use bytes::Bytes;
use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN,
};
use http::{HeaderName, HeaderValue, Method, StatusCode};
use portcullis_config::CorsSpec;
use portcullis_policy::cors::{Cors as Model, PreflightDenial};

use crate::chain::{Exchange, Phase, Policy, PolicyFuture};
use crate::error::Rejection;
use crate::policies::own_origin;

const NAME: &str = "cors";

/// The CORS response headers that this policy sets and so removes from upstream responses.
const OWNED_HEADERS: [HeaderName; 6] = [
    ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_ALLOW_CREDENTIALS,
    ACCESS_CONTROL_EXPOSE_HEADERS,
    ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_HEADERS,
    ACCESS_CONTROL_MAX_AGE,
];

pub struct Cors {
    model: Model,
}

impl Cors {
    pub fn new(spec: &CorsSpec) -> Self {
        Cors {
            model: Model::new(spec),
        }
    }

    fn apply(&self, exchange: &mut Exchange<'_>) -> Result<(), Rejection> {
        let edits = &mut exchange.header_edits;
        edits.remove.extend(OWNED_HEADERS);
        if self.model.varies_by_origin() {
            edits.vary.push(ORIGIN);
        }
        // Several `Origin` values, or one that is not text, match no allowed origin.
        let mut origins = exchange.headers.get_all(ORIGIN).iter();
        let origin = match (origins.next(), origins.next()) {
            (Some(value), None) => Some(value.to_str().unwrap_or("")),
            (Some(_), Some(_)) => Some(""),
            (None, _) => None,
        };
        let Some(origin) = origin.map(str::to_string) else {
            return Ok(());
        };
        if exchange.method == Method::OPTIONS {
            let requested = exchange
                .headers
                .get(ACCESS_CONTROL_REQUEST_METHOD)
                .and_then(|value| value.to_str().ok())
                .map(str::to_string);
            if let Some(requested) = requested {
                self.preflight(exchange, &origin, &requested);
                return Ok(());
            }
        }
        match self.model.allow_origin(&origin) {
            Some(allow_origin) => {
                for (name, value) in self.model.response_headers(allow_origin) {
                    if let Ok(value) = HeaderValue::from_str(&value) {
                        exchange
                            .header_edits
                            .replace
                            .push((HeaderName::from_static(name), value));
                    }
                }
                Ok(())
            }
            // A browser sends `Origin` on same-origin requests with unsafe methods too, and those
            // need no CORS headers.
            None if self.model.reject_disallowed && !is_own_origin(exchange, &origin) => {
                let denial = PreflightDenial::OriginNotAllowed;
                Err(
                    Rejection::new(StatusCode::FORBIDDEN, denial.code(), denial.message())
                        .by_policy(NAME),
                )
            }
            None => Ok(()),
        }
    }

    fn preflight(&self, exchange: &mut Exchange<'_>, origin: &str, requested: &str) {
        let request_headers = exchange
            .headers
            .get(ACCESS_CONTROL_REQUEST_HEADERS)
            .and_then(|value| value.to_str().ok());
        let mut answer = match self.model.preflight(origin, requested, request_headers) {
            Ok(headers) => {
                // Set as edits, after the removal of upstream CORS headers.
                for (name, value) in headers {
                    if let Ok(value) = HeaderValue::from_str(&value) {
                        exchange
                            .header_edits
                            .replace
                            .push((HeaderName::from_static(name), value));
                    }
                }
                Rejection::respond(StatusCode::NO_CONTENT, "cors_preflight", Bytes::new())
            }
            Err(denial) if self.model.reject_disallowed => {
                Rejection::new(StatusCode::FORBIDDEN, denial.code(), denial.message())
            }
            Err(denial) => {
                tracing::debug!(
                    code = denial.code(),
                    "CORS preflight answered without CORS headers"
                );
                Rejection::respond(StatusCode::NO_CONTENT, preflight_code(denial), Bytes::new())
            }
        };
        answer.policy = Some(NAME);
        exchange.answer = Some(answer);
        let vary = &mut exchange.header_edits.vary;
        vary.push(ACCESS_CONTROL_REQUEST_METHOD);
        vary.push(ACCESS_CONTROL_REQUEST_HEADERS);
    }
}

fn is_own_origin(exchange: &Exchange<'_>, origin: &str) -> bool {
    own_origin(exchange).is_some_and(|own| own.to_string() == origin)
}

/// Returns the access-log code of a preflight answered without CORS headers.
fn preflight_code(denial: PreflightDenial) -> &'static str {
    match denial {
        PreflightDenial::OriginNotAllowed => "cors_preflight_origin_not_allowed",
        PreflightDenial::MethodNotAllowed => "cors_preflight_method_not_allowed",
        PreflightDenial::HeaderNotAllowed => "cors_preflight_header_not_allowed",
    }
}

impl Policy for Cors {
    fn name(&self) -> &'static str {
        NAME
    }

    fn phase(&self) -> Phase {
        Phase::Browser
    }

    fn on_request<'a, 'r: 'a>(&'a self, exchange: &'a mut Exchange<'r>) -> PolicyFuture<'a> {
        let outcome = self.apply(exchange);
        Box::pin(std::future::ready(outcome))
    }
}
