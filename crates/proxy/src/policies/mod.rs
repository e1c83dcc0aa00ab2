//! Adapters that run the policy models of `portcullis-policy` in the chain.

pub mod acl;
pub mod ai_limits;
pub mod cors;
pub mod csrf;
pub mod introspection;
pub mod ip_restriction;
pub mod jwt;
pub mod key_auth;
pub mod mtls_auth;
pub mod openid_connect;
pub mod rate_limit;
pub mod security_headers;
pub mod waf;

use std::sync::Arc;

use portcullis_config::PolicySpec;
use portcullis_policy::rate_limit::{Counters, MemoryCounters};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use portcullis_config::browser::Origin;

use crate::chain::{ChainEntry, Exchange};
use crate::jwks::JwksRegistry;
use crate::metrics::{BackendErrorLabels, WafVerdictLabels};

/// What an adapter needs from outside its spec when it is built.
#[derive(Clone)]
pub struct PolicyContext {
    /// Counters of limits with `backend: local`.
    pub counters: Arc<dyn Counters>,
    /// Counters of limits with `backend: redis`, when the node has a `redis` key.
    pub shared_counters: Option<Arc<dyn Counters>>,
    pub clock: Arc<dyn Clock>,
    /// JWK Set sources, kept across snapshots so that reloads keep the cached keys.
    pub jwks: Arc<JwksRegistry>,
    /// `portcullis_rate_limit_backend_errors`, shared with the metrics registry.
    pub backend_errors: Family<BackendErrorLabels, Counter>,
    /// Introspection caches, kept across snapshots so that reloads keep the cached results.
    pub introspection: Arc<introspection::IntrospectionRegistry>,
    /// `portcullis_waf_verdicts`, shared with the metrics registry.
    pub waf_verdicts: Family<WafVerdictLabels, Counter>,
    /// `openid-connect` state, kept across snapshots so that a reload does not forget which
    /// logins have finished.
    pub openid_connect: Arc<openid_connect::OpenIdConnectRegistry>,
    /// Counters and metrics of `ai-limits` policies.
    pub ai_limits: ai_limits::AiLimitsContext,
}

impl PolicyContext {
    /// Returns a context with in-memory counters and the system clock, and no Redis.
    pub fn local() -> Self {
        PolicyContext {
            counters: MemoryCounters::new(),
            shared_counters: None,
            clock: Arc::new(SystemClock::default()),
            jwks: Arc::default(),
            introspection: Arc::new(introspection::IntrospectionRegistry::new(Family::default())),
            backend_errors: Family::default(),
            waf_verdicts: Family::default(),
            openid_connect: Arc::default(),
            ai_limits: ai_limits::AiLimitsContext::default(),
        }
    }
}

/// Wall-clock time for policies, injectable in tests.
pub trait Clock: Send + Sync + 'static {
    /// Returns nanoseconds since the Unix epoch (UTC). Successive calls never go back.
    fn now_nanos(&self) -> u64;
}

/// The process clock: the system time read once, advanced by the monotonic clock, so that
/// quotas align to the UTC calendar and a step of the system clock does not move counters.
#[derive(Debug, Default)]
pub struct SystemClock {
    origin: std::sync::OnceLock<(std::time::Instant, u64)>,
}

impl Clock for SystemClock {
    fn now_nanos(&self) -> u64 {
        let (instant, unix) = self.origin.get_or_init(|| {
            let unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| {
                    u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
                });
            (std::time::Instant::now(), unix)
        });
        let elapsed = u64::try_from(instant.elapsed().as_nanos()).unwrap_or(u64::MAX);
        unix.saturating_add(elapsed)
    }
}

/// Returns the origin that a request was sent to: the scheme the client used, with the
/// authority of the request target or else the `Host` header.
// NOTE: `X-Forwarded-Host` is not read here, so behind a trusted proxy that rewrites `Host` this
// is the proxy's view of the origin. List the public origin in `allowed_origins` there.
pub(crate) fn own_origin(exchange: &Exchange<'_>) -> Option<Origin> {
    let authority = match exchange.uri.authority() {
        Some(authority) => authority.as_str(),
        None => exchange.headers.get(http::header::HOST)?.to_str().ok()?,
    };
    Origin::parse_authority(exchange.canonical.scheme, &authority.to_ascii_lowercase())
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
                PolicySpec::Cors(spec) => Arc::new(cors::Cors::new(spec)),
                PolicySpec::Csrf(spec) => Arc::new(
                    csrf::Csrf::new(spec, context)
                        .map_err(|message| format!("{scope}: csrf policy: {message}"))?,
                ),
                PolicySpec::SecurityHeaders(spec) => {
                    Arc::new(security_headers::SecurityHeaders::new(spec))
                }
                PolicySpec::MtlsAuth(_) => Arc::new(mtls_auth::MtlsAuth),
                PolicySpec::AiLimits(spec) => {
                    Arc::new(ai_limits::AiLimits::new(spec, scope, context))
                }
                PolicySpec::Oauth2Introspection(spec) => {
                    Arc::new(introspection::Introspection::new(spec, context).map_err(
                        |message| format!("{scope}: oauth2-introspection policy: {message}"),
                    )?)
                }
                PolicySpec::Waf(spec) => Arc::new(
                    waf::Waf::new(spec, context)
                        .map_err(|message| format!("{scope}: waf policy: {message}"))?,
                ),
                PolicySpec::OpenidConnect(spec) => Arc::new(
                    openid_connect::OpenIdConnect::new(spec, context)
                        .map_err(|message| format!("{scope}: openid-connect policy: {message}"))?,
                ),
            };
            Ok(ChainEntry {
                override_key: spec.override_key().into(),
                policy,
            })
        })
        .collect()
}
