//! `security-headers`: security response headers such as `Strict-Transport-Security` and
//! `Content-Security-Policy`. Runs in [`Phase::Browser`], so rejections by later policies get
//! the headers too.
//!
//! A header that the response already has is kept, unless the policy's `override` lists it.
//! `Strict-Transport-Security` goes only on responses to requests that reached the gateway
//! over HTTPS (a TLS listener, or a trusted proxy that sent `X-Forwarded-Proto: https`),
//! unless `hsts_on_plain_http` is set.
//!
//! NOTE: policies attach to routes, so responses that the gateway gives before a route is found
//! (404 `route_not_found`, 405, 400 `invalid_host`) get no security headers.

use http::{HeaderName, HeaderValue};
use portcullis_config::SecurityHeadersSpec;
use portcullis_policy::security_headers::SecurityHeaders as Model;

use crate::chain::{Exchange, Phase, Policy, PolicyFuture};

/// One header, converted to `http` types once.
struct Prepared {
    name: HeaderName,
    value: HeaderValue,
    replace: bool,
}

pub struct SecurityHeaders {
    plain: Vec<Prepared>,
    secure: Vec<Prepared>,
}

impl SecurityHeaders {
    pub fn new(spec: &SecurityHeadersSpec) -> Self {
        let model = Model::new(spec);
        let prepare = |secure: bool| -> Vec<Prepared> {
            model
                .headers(secure)
                .filter_map(|header| {
                    Some(Prepared {
                        name: HeaderName::from_static(header.name),
                        value: HeaderValue::from_str(&header.value).ok()?,
                        replace: header.replace,
                    })
                })
                .collect()
        };
        SecurityHeaders {
            plain: prepare(false),
            secure: prepare(true),
        }
    }
}

impl Policy for SecurityHeaders {
    fn name(&self) -> &'static str {
        "security-headers"
    }

    fn phase(&self) -> Phase {
        Phase::Browser
    }

    fn on_request<'a, 'r: 'a>(&'a self, exchange: &'a mut Exchange<'r>) -> PolicyFuture<'a> {
        let headers = if exchange.canonical.scheme == "https" {
            &self.secure
        } else {
            &self.plain
        };
        let edits = &mut exchange.header_edits;
        for header in headers {
            let entry = (header.name.clone(), header.value.clone());
            if header.replace {
                edits.replace.push(entry);
            } else {
                edits.set_if_missing.push(entry);
            }
        }
        Box::pin(std::future::ready(Ok(())))
    }
}
