//! The policy chain: the contract every policy adapter implements.
//!
//! A request passes these phases once, in order:
//!
//! 1. accept and parse (hyper, with header and URI size limits),
//! 2. canonicalise (one form of path, host and client IP, see [`crate::canonical`]),
//! 3. route,
//! 4. [`Phase::Browser`]: CORS, CSRF and security response headers; may answer a CORS
//!    preflight itself or reject with 403,
//! 5. [`Phase::Authenticate`]: find who the caller is, or reject with 401,
//! 6. [`Phase::Authorize`]: decide whether that caller may use the route, or reject with 403,
//! 7. [`Phase::Limit`]: count the request against rate limits, or reject with 429,
//! 8. [`Phase::Inspect`]: look at the request content (WAF), or reject with 403,
//! 9. forward to the upstream,
//! 10. log.
//!
//! A policy of the browser phase may set [`Exchange::answer`], a response the gateway gives in
//! place of forwarding, such as the answer to a CORS preflight. A browser sends a preflight
//! without credentials, so an answered request skips the authenticate and authorize phases;
//! it still passes the limit phase, where a limit that counts by consumer counts it by client
//! IP, and then gets the answer without reaching the inspect phase or the upstream.
//!
//! A route's chain holds its global, service and route policies merged (a more specific level
//! replaces a less specific one with the same override key) and sorted by phase. Once a
//! consumer is known, that consumer's own policies replace or join the remaining phases.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::{HeaderMap, Method, Uri, Version};

use portcullis_policy::rate_limit::Lease;

use crate::body::RequestBody;
use crate::canonical::CanonicalRequest;
use crate::error::Rejection;
use crate::header_edits::HeaderEdits;
use crate::policies::waf::WafRecord;
use crate::snapshot::{CompiledRoute, ConsumerInfo, Snapshot};
use crate::tls::ClientCertificate;

/// The phase a policy runs in. Phases run in declaration order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    Browser,
    Authenticate,
    Authorize,
    Limit,
    Inspect,
}

/// The request state that policies read and change.
pub struct Exchange<'r> {
    pub snapshot: &'r Snapshot,
    pub route: &'r CompiledRoute,
    pub request_id: &'r str,
    pub method: &'r Method,
    /// The request target as received, whose authority names the request's own origin.
    pub uri: &'r Uri,
    /// The request target's path and query as the client sent them, before canonicalisation.
    pub target: &'r str,
    pub version: Version,
    /// Request headers; an authentication policy removes the credential it consumed.
    pub headers: &'r mut HeaderMap,
    pub canonical: &'r mut CanonicalRequest,
    /// The client certificate verified in the TLS handshake of the request's connection.
    pub client_certificate: Option<&'r ClientCertificate>,
    /// The authenticated caller, set in [`Phase::Authenticate`].
    pub consumer: Option<Arc<ConsumerInfo>>,
    /// Id of the credential that authenticated the caller, for logs.
    pub credential_id: Option<Arc<str>>,
    /// Scopes granted to that credential.
    pub scopes: Cow<'r, [String]>,
    /// Roles that the credential carries on top of the consumer's configured roles, such as the
    /// roles claim of a JWT.
    pub credential_roles: Vec<String>,
    /// Claims of the verified JWT, for later phases such as `rate-limit` with `by: claim`.
    pub claims: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
    /// Headers to add to the response, such as rate-limit state.
    pub response_headers: HeaderMap,
    /// Other changes to the response headers, applied to every response of this request.
    pub header_edits: HeaderEdits,
    /// A response that a browser-phase policy gives in place of forwarding, sent after the
    /// limit phase.
    pub answer: Option<Rejection>,
    /// Concurrency-limit slots held by this request, returned when the response body ends or
    /// the client goes away.
    pub leases: Vec<Lease>,
    /// The client's request body. It streams to the upstream unless a policy reads its start
    /// with [`RequestBody::read_prefix`].
    pub body: &'r mut RequestBody,
    /// The verdict of a `waf` policy, for the access log.
    pub waf: Option<WafRecord>,
    /// `ai-limits` policies that apply to the request, reserved once the AI gateway has read
    /// the body.
    pub ai_limits: Vec<crate::policies::ai_limits::PendingLimit>,
}

/// A boxed future returned by [`Policy::on_request`].
pub type PolicyFuture<'a> = Pin<Box<dyn Future<Output = Result<(), Rejection>> + Send + 'a>>;

/// One policy instance attached to a route, service, consumer or globally.
pub trait Policy: Send + Sync + 'static {
    /// Returns the type name used in the config, logs and metrics, such as `key-auth`.
    fn name(&self) -> &'static str;

    /// Returns the phase this policy runs in.
    fn phase(&self) -> Phase;

    /// Runs the policy on a request. `Ok(())` lets the request continue to the next policy;
    /// `Err` ends it with that rejection, and no later policy or upstream sees it.
    fn on_request<'a, 'r: 'a>(&'a self, exchange: &'a mut Exchange<'r>) -> PolicyFuture<'a>;
}

/// A policy in a chain, with the key under which another level can override it.
#[derive(Clone)]
pub struct ChainEntry {
    pub override_key: Arc<str>,
    pub policy: Arc<dyn Policy>,
}

impl std::fmt::Debug for ChainEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}({:?})", self.policy.name(), self.policy.phase())
    }
}

/// Merges chains from the least to the most specific level: an entry replaces an earlier one
/// with the same override key, at the position of the earlier one. The result is sorted by
/// phase, keeping the merge order within a phase.
pub fn merge(levels: &[&[ChainEntry]]) -> Vec<ChainEntry> {
    let mut merged: Vec<ChainEntry> = Vec::new();
    for level in levels {
        for entry in level.iter() {
            match merged
                .iter_mut()
                .find(|existing| existing.override_key == entry.override_key)
            {
                Some(existing) => *existing = entry.clone(),
                None => merged.push(entry.clone()),
            }
        }
    }
    merged.sort_by_key(|entry| entry.policy.phase());
    merged
}

/// Runs a route's chain, switching to the consumer's merged chain after authentication.
pub async fn run(exchange: &mut Exchange<'_>) -> Result<(), Rejection> {
    let route = exchange.route;
    let route_chain = &route.chain;
    let mut index = 0;
    while index < route_chain.len() && route_chain[index].policy.phase() == Phase::Browser {
        let policy = route_chain[index].policy.clone();
        policy.on_request(exchange).await?;
        index += 1;
    }
    if let Some(answer) = exchange.answer.take() {
        for entry in route_chain[index..]
            .iter()
            .filter(|entry| entry.policy.phase() == Phase::Limit)
        {
            entry.policy.on_request(exchange).await?;
        }
        return Err(answer);
    }
    while index < route_chain.len() && route_chain[index].policy.phase() == Phase::Authenticate {
        let policy = route_chain[index].policy.clone();
        policy.on_request(exchange).await?;
        index += 1;
    }
    let consumer_policies = exchange
        .consumer
        .as_ref()
        .filter(|consumer| !consumer.policies.is_empty())
        .cloned();
    match consumer_policies {
        None => {
            for entry in &route_chain[index..] {
                entry.policy.on_request(exchange).await?;
            }
        }
        Some(consumer) => {
            let rest = merge(&[&route_chain[index..], &consumer.policies]);
            for entry in rest.iter().filter(|entry| {
                !matches!(entry.policy.phase(), Phase::Browser | Phase::Authenticate)
            }) {
                entry.policy.on_request(exchange).await?;
            }
        }
    }
    Ok(())
}
