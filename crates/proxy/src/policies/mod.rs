//! Adapters that run the policy models of `portcullis-policy` in the chain.

pub mod acl;
pub mod introspection;
pub mod ip_restriction;
pub mod jwt;
pub mod key_auth;
pub mod rate_limit;

use std::sync::Arc;

use portcullis_config::PolicySpec;
use portcullis_policy::rate_limit::Counters;

use crate::chain::ChainEntry;
use crate::jwks::JwksRegistry;

/// What an adapter needs from outside its spec when it is built.
#[derive(Clone)]
pub struct PolicyContext {
    pub counters: Arc<dyn Counters>,
    pub clock: Arc<dyn Clock>,
    /// JWK Set sources, kept across snapshots so that reloads keep the cached keys.
    pub jwks: Arc<JwksRegistry>,
    /// Introspection caches, kept across snapshots so that reloads keep the cached results.
    pub introspection: Arc<introspection::IntrospectionRegistry>,
}

/// Monotonic time for policies, injectable in tests.
pub trait Clock: Send + Sync + 'static {
    /// Returns nanoseconds since an arbitrary fixed origin.
    fn now_nanos(&self) -> u64;
}

/// The process clock: nanoseconds since the first call.
#[derive(Debug, Default)]
pub struct MonotonicClock {
    origin: std::sync::OnceLock<std::time::Instant>,
}

impl Clock for MonotonicClock {
    fn now_nanos(&self) -> u64 {
        let origin = self.origin.get_or_init(std::time::Instant::now);
        // Offset by one second so that no real instant is zero.
        u64::try_from(origin.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(1_000_000_000)
    }
}

/// Builds the chain entries for the policies attached at one level. `scope` names the level,
/// such as `service:echo`, and keeps the counters of different attachments apart. Fails with a
/// message that names the level when a policy cannot be built, such as a `jwt` key that does not
/// parse.
pub fn build(
    specs: &[PolicySpec],
    scope: &str,
    context: &PolicyContext,
) -> Result<Vec<ChainEntry>, String> {
    specs
        .iter()
        .map(|spec| {
            let policy: Arc<dyn crate::chain::Policy> = match spec {
                PolicySpec::KeyAuth(spec) => Arc::new(key_auth::KeyAuth::new(spec)),
                PolicySpec::Acl(spec) => Arc::new(acl::Acl::new(spec)),
                PolicySpec::IpRestriction(spec) => {
                    Arc::new(ip_restriction::IpRestriction::new(spec))
                }
                PolicySpec::RateLimit(spec) => {
                    Arc::new(rate_limit::RateLimit::new(spec, scope, context))
                }
                PolicySpec::Jwt(spec) => Arc::new(
                    jwt::Jwt::new(spec, context)
                        .map_err(|message| format!("{scope}: jwt policy: {message}"))?,
                ),
                PolicySpec::Oauth2Introspection(spec) => {
                    Arc::new(introspection::Introspection::new(spec, context).map_err(
                        |message| format!("{scope}: oauth2-introspection policy: {message}"),
                    )?)
                }
            };
            Ok(ChainEntry {
                override_key: spec.override_key().into(),
                policy,
            })
        })
        .collect()
}
