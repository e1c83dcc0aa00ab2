//! `acl`: allows or denies authenticated callers by consumer, role and credential scope. Runs
//! in [`Phase::Authorize`], so the consumer is known.
//!
//! A request without a consumer gets 401 (nothing authenticated it); a known consumer that the
//! rules exclude gets 403 with the code `access_denied`, or `insufficient_scope` when only its
//! scopes fall short. For a JWT, the scope rejection also carries `WWW-Authenticate: Bearer
//! error="insufficient_scope"` with the required scopes (RFC 6750 section 3.1). The message does
//! not say which rule failed.

use std::collections::HashSet;

use http::StatusCode;
use http::header::WWW_AUTHENTICATE;
use portcullis_config::AclSpec;

use crate::chain::{Exchange, Phase, Policy, PolicyFuture};
use crate::error::Rejection;

pub struct Acl {
    roles: HashSet<String>,
    all_roles: Vec<String>,
    deny_roles: HashSet<String>,
    allow_consumers: HashSet<String>,
    deny_consumers: HashSet<String>,
    scopes: Vec<String>,
    any_scopes: Vec<String>,
}

/// The reason a caller was denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// The consumer or one of its roles is excluded, or a required role is missing.
    Access,
    /// The credential lacks a required scope.
    Scope,
}

impl Acl {
    pub fn new(spec: &AclSpec) -> Self {
        let set = |items: &[String]| items.iter().cloned().collect::<HashSet<_>>();
        Acl {
            roles: set(&spec.roles),
            all_roles: spec.all_roles.clone(),
            deny_roles: set(&spec.deny_roles),
            allow_consumers: set(&spec.allow_consumers),
            deny_consumers: set(&spec.deny_consumers),
            scopes: spec.scopes.clone(),
            any_scopes: spec.any_scopes.clone(),
        }
    }

    /// Checks a consumer named `name` with `roles` and credential `scopes` against the rules.
    pub fn check(&self, name: &str, roles: &[&str], scopes: &[String]) -> Result<(), Denial> {
        if self.deny_consumers.contains(name) {
            return Err(Denial::Access);
        }
        if !self.allow_consumers.is_empty() && !self.allow_consumers.contains(name) {
            return Err(Denial::Access);
        }
        if roles.iter().any(|role| self.deny_roles.contains(*role)) {
            return Err(Denial::Access);
        }
        if !self.roles.is_empty() && !roles.iter().any(|role| self.roles.contains(*role)) {
            return Err(Denial::Access);
        }
        if !self
            .all_roles
            .iter()
            .all(|required| roles.contains(&required.as_str()))
        {
            return Err(Denial::Access);
        }
        if !self.scopes.iter().all(|required| scopes.contains(required)) {
            return Err(Denial::Scope);
        }
        if !self.any_scopes.is_empty()
            && !self.any_scopes.iter().any(|scope| scopes.contains(scope))
        {
            return Err(Denial::Scope);
        }
        Ok(())
    }

    /// Builds the `WWW-Authenticate` value for a scope rejection of a bearer token.
    fn scope_challenge(&self) -> Option<http::HeaderValue> {
        let mut required: Vec<&str> = self.scopes.iter().map(String::as_str).collect();
        required.extend(self.any_scopes.iter().map(String::as_str));
        let value = format!(
            "Bearer realm=\"portcullis\", error=\"insufficient_scope\", scope=\"{}\"",
            required.join(" ")
        );
        http::HeaderValue::from_str(&value).ok()
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
            Some(consumer) => {
                let roles: Vec<&str> = consumer
                    .roles
                    .iter()
                    .chain(&exchange.credential_roles)
                    .map(String::as_str)
                    .collect();
                match self.check(&consumer.name, &roles, &exchange.scopes) {
                    Ok(()) => Ok(()),
                    Err(denial) => {
                        tracing::debug!(consumer.name = %consumer.name, route.name = %exchange.route.name, ?denial, "acl denied the consumer");
                        Err(self.rejection(denial, exchange.claims.is_some()))
                    }
                }
            }
        };
        Box::pin(std::future::ready(outcome))
    }
}

impl Acl {
    fn rejection(&self, denial: Denial, bearer_token: bool) -> Rejection {
        match denial {
            Denial::Access => Rejection::new(
                StatusCode::FORBIDDEN,
                "access_denied",
                "the caller may not use this route",
            )
            .by_policy("acl"),
            Denial::Scope => {
                let rejection = Rejection::new(
                    StatusCode::FORBIDDEN,
                    "insufficient_scope",
                    "the credential lacks a scope this route requires",
                )
                .by_policy("acl");
                match self.scope_challenge().filter(|_| bearer_token) {
                    Some(challenge) => rejection.with_header(WWW_AUTHENTICATE, challenge),
                    None => rejection,
                }
            }
        }
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
        assert_eq!(acl.check("a", &["silver"], &[]), Ok(()));
        assert_eq!(acl.check("a", &["bronze"], &[]), Err(Denial::Access));
        assert_eq!(acl.check("a", &[], &[]), Err(Denial::Access));
    }

    #[test]
    fn all_roles_need_every_match() {
        let acl = Acl::new(&AclSpec {
            all_roles: names(&["staff", "billing"]),
            ..AclSpec::default()
        });
        assert_eq!(acl.check("a", &["billing", "staff", "x"], &[]), Ok(()));
        assert_eq!(acl.check("a", &["staff"], &[]), Err(Denial::Access));
    }

    #[test]
    fn deny_wins_over_allow() {
        let acl = Acl::new(&AclSpec {
            allow_consumers: names(&["alice", "bob"]),
            deny_consumers: names(&["bob"]),
            deny_roles: names(&["banned"]),
            ..AclSpec::default()
        });
        assert_eq!(acl.check("alice", &[], &[]), Ok(()));
        assert_eq!(acl.check("bob", &[], &[]), Err(Denial::Access));
        assert_eq!(acl.check("carol", &[], &[]), Err(Denial::Access));
        assert_eq!(acl.check("alice", &["banned"], &[]), Err(Denial::Access));
    }

    #[test]
    fn scopes_need_all() {
        let acl = Acl::new(&AclSpec {
            scopes: names(&["read", "write"]),
            ..AclSpec::default()
        });
        assert_eq!(
            acl.check("a", &[], &names(&["write", "read", "admin"])),
            Ok(())
        );
        assert_eq!(acl.check("a", &[], &names(&["read"])), Err(Denial::Scope));
    }

    #[test]
    fn any_scopes_need_one() {
        let acl = Acl::new(&AclSpec {
            any_scopes: names(&["orders:read", "orders:admin"]),
            ..AclSpec::default()
        });
        assert_eq!(acl.check("a", &[], &names(&["orders:admin"])), Ok(()));
        assert_eq!(
            acl.check("a", &[], &names(&["billing:read"])),
            Err(Denial::Scope)
        );
        assert_eq!(acl.check("a", &[], &[]), Err(Denial::Scope));
    }
}
