//! `ip-restriction`: allows or denies requests by canonical client IP. Runs in
//! [`Phase::Authorize`].
//!
//! The client IP is the one [`crate::canonical`] resolved, so a client behind an untrusted
//! proxy cannot choose it with `X-Forwarded-For`. Denied requests get 403.

use std::net::IpAddr;

use http::StatusCode;
use ipnet::IpNet;
use portcullis_config::IpRestrictionSpec;

use crate::chain::{Exchange, Phase, Policy, PolicyFuture};
use crate::error::Rejection;

pub struct IpRestriction {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

impl IpRestriction {
    pub fn new(spec: &IpRestrictionSpec) -> Self {
        IpRestriction {
            allow: spec.allow.iter().map(|cidr| cidr.0).collect(),
            deny: spec.deny.iter().map(|cidr| cidr.0).collect(),
        }
    }

    pub fn permits(&self, ip: IpAddr) -> bool {
        if self.deny.iter().any(|net| net.contains(&ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|net| net.contains(&ip))
    }
}

impl Policy for IpRestriction {
    fn name(&self) -> &'static str {
        "ip-restriction"
    }

    fn phase(&self) -> Phase {
        Phase::Authorize
    }

    fn on_request<'a, 'r: 'a>(&'a self, exchange: &'a mut Exchange<'r>) -> PolicyFuture<'a> {
        let outcome = if self.permits(exchange.canonical.client_ip) {
            Ok(())
        } else {
            Err(Rejection::new(
                StatusCode::FORBIDDEN,
                "ip_denied",
                "requests from this address are not allowed",
            )
            .by_policy("ip-restriction"))
        };
        Box::pin(std::future::ready(outcome))
    }
}

#[cfg(test)]
mod tests {
    use portcullis_config::Cidr;

    use super::*;

    fn cidr(text: &str) -> Cidr {
        Cidr(text.parse().unwrap())
    }

    #[test]
    fn deny_wins_and_allow_limits() {
        let rule = IpRestriction::new(&IpRestrictionSpec {
            allow: vec![cidr("10.0.0.0/8")],
            deny: vec![cidr("10.0.0.5/32")],
        });
        assert!(rule.permits("10.1.2.3".parse().unwrap()));
        assert!(!rule.permits("10.0.0.5".parse().unwrap()));
        assert!(!rule.permits("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn deny_only_allows_the_rest() {
        let rule = IpRestriction::new(&IpRestrictionSpec {
            allow: vec![],
            deny: vec![cidr("2001:db8::/32")],
        });
        assert!(!rule.permits("2001:db8::1".parse().unwrap()));
        assert!(rule.permits("2001:db9::1".parse().unwrap()));
    }
}
