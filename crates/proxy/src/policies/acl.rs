//! `acl`: allows or denies authenticated callers by consumer, role and credential scope. Runs
//! in [`Phase::Authorize`], so the consumer is known.
//!
//! A request without a consumer gets 401 (nothing authenticated it); a known consumer that the
//! rules exclude gets 403. The message does not say which rule failed.

use std::collections::HashSet;

use http::StatusCode;
use portcullis_config::AclSpec;

use crate::chain::{Exchange, Phase, Policy, PolicyFuture};
use crate::error::Rejection;

pub struct Acl {
    roles: HashSet<String>,
    deny_roles: HashSet<String>,
    allow_consumers: HashSet<String>,
    deny_consumers: HashSet<String>,
    scopes: Vec<String>,
}

impl Acl {
    pub fn new(spec: &AclSpec) -> Self {
        let set = |items: &[String]| items.iter().cloned().collect::<HashSet<_>>();
        Acl {
            roles: set(&spec.roles),
            deny_roles: set(&spec.deny_roles),
            allow_consumers: set(&spec.allow_consumers),
            deny_consumers: set(&spec.deny_consumers),
            scopes: spec.scopes.clone(),
        }
    }

    /// Returns whether a consumer with `name`, `roles` and credential `scopes` passes.
    pub fn permits(&self, name: &str, roles: &[String], scopes: &[String]) -> bool {
        if self.deny_consumers.contains(name) {
            return false;
        }
        if !self.allow_consumers.is_empty() && !self.allow_consumers.contains(name) {
            return false;
        }
        if roles.iter().any(|role| self.deny_roles.contains(role)) {
            return false;
        }
        if !self.roles.is_empty() && !roles.iter().any(|role| self.roles.contains(role)) {
            return false;
        }
        self.scopes.iter().all(|required| scopes.contains(required))
    }
}

impl Policy for Acl {
    fn name(&self) -> &'static str {
        "acl"
    }

    fn phase(&self) -> Phase {
        Phase::Authorize
    }

    fn on_request<'a, 'r: 'a>(&'a self, exchange: &'a mut Exchange<'r>) -> PolicyFuture<'a> {
        let outcome = match &exchange.consumer {
            None => Err(Rejection::new(
                StatusCode::UNAUTHORIZED,
                "authentication_required",
                "this route needs an authenticated caller",
            )
            .by_policy("acl")),
            Some(consumer) if !self.permits(&consumer.name, &consumer.roles, exchange.scopes) => {
                tracing::debug!(consumer.name = %consumer.name, route.name = %exchange.route.name, "acl denied the consumer");
                Err(Rejection::new(
                    StatusCode::FORBIDDEN,
                    "access_denied",
                    "the caller may not use this route",
                )
                .by_policy("acl"))
            }
            Some(_) => Ok(()),
        };
        Box::pin(std::future::ready(outcome))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(items: &[&str]) -> Vec<String> {
        items.iter().map(|item| item.to_string()).collect()
    }

    #[test]
    fn roles_need_one_match() {
        let acl = Acl::new(&AclSpec {
            roles: names(&["gold", "silver"]),
            ..AclSpec::default()
        });
        assert!(acl.permits("a", &names(&["silver"]), &[]));
        assert!(!acl.permits("a", &names(&["bronze"]), &[]));
        assert!(!acl.permits("a", &[], &[]));
    }

    #[test]
    fn deny_wins_over_allow() {
        let acl = Acl::new(&AclSpec {
            allow_consumers: names(&["alice", "bob"]),
            deny_consumers: names(&["bob"]),
            deny_roles: names(&["banned"]),
            ..AclSpec::default()
        });
        assert!(acl.permits("alice", &[], &[]));
        assert!(!acl.permits("bob", &[], &[]));
        assert!(!acl.permits("carol", &[], &[]));
        assert!(!acl.permits("alice", &names(&["banned"]), &[]));
    }

    #[test]
    fn scopes_need_all() {
        let acl = Acl::new(&AclSpec {
            scopes: names(&["read", "write"]),
            ..AclSpec::default()
        });
        assert!(acl.permits("a", &[], &names(&["write", "read", "admin"])));
        assert!(!acl.permits("a", &[], &names(&["read"])));
    }
}
