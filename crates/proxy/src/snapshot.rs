//! The immutable snapshot of configuration that the data plane reads.
//!
//! The control plane compiles a [`Snapshot`] from the node settings, the store's entities and
//! key records, and swaps it in atomically with [`SnapshotHandle::store`]. A request loads the
//! current snapshot once at its start and uses it to the end, so a change never applies to half
//! a request and the data plane never waits on the store.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::Method;
use portcullis_config::{
    Config, ConsumerSpec, Entities, PathMatch, PolicySpec, RequestLimits, ServiceSpec,
};
use portcullis_policy::api_key::{KeyHasher, KeyTable};
use portcullis_policy::client_certificate::CertificateTable;

use crate::balancer::Balancer;
use crate::canonical::ClientIpResolver;
use crate::chain::{self, ChainEntry};
use crate::metrics::RouteMetrics;
use crate::policies::{self, PolicyContext};
use crate::pool::{ClientPool, ConnectionPool};
use crate::router::{HostRule, PathRule, RouteDefinition, Router};
use crate::targets::TargetRegistry;
use crate::upstream::Target;
use crate::usage::KeyUsage;

/// One compiled configuration.
pub struct Snapshot {
    /// Store config version this snapshot was built from.
    pub version: u64,
    pub router: Router<CompiledRoute>,
    /// Every service by name, including services no route uses.
    pub services: HashMap<String, Arc<CompiledService>>,
    pub consumers: HashMap<String, Arc<ConsumerInfo>>,
    pub keys: KeyTable,
    /// Client certificate names of the consumers, for `mtls-auth`.
    pub certificates: CertificateTable,
    pub hasher: KeyHasher,
    pub key_usage: Arc<KeyUsage>,
    pub limits: RequestLimits,
    pub client_ip: ClientIpResolver,
}

/// A route with its service and merged policy chain.
pub struct CompiledRoute {
    pub name: Arc<str>,
    /// The service requests are forwarded to; `None` on an `ai` route.
    pub service: Option<Arc<CompiledService>>,
    /// The AI gateway that serves an `ai` route after the policy chain.
    pub ai: Option<Arc<portcullis_ai::Gateway>>,
    /// The route's `ai` settings: the prompt it serves and the guard it applies.
    pub ai_route: portcullis_config::AiRouteSpec,
    pub strip_prefix: bool,
    pub chain: Vec<ChainEntry>,
    pub metrics: RouteMetrics,
}

/// A service with its upstream targets and their connection pools.
pub struct CompiledService {
    pub name: Arc<str>,
    pub balancer: Balancer,
    /// The connection pool of each target, at the target's index in `balancer.targets`.
    pools: Vec<Arc<ConnectionPool>>,
    pub preserve_host: bool,
    pub response_timeout: std::time::Duration,
    /// Retries after the first attempt.
    pub retry_attempts: u32,
    /// Statuses retried for idempotent requests.
    pub retry_statuses: Vec<u16>,
}

impl CompiledService {
    /// Returns the connection pool of the target at `index` in `balancer.targets`.
    pub fn pool(&self, index: usize) -> &Arc<ConnectionPool> {
        &self.pools[index]
    }
}

/// A consumer as the data plane sees it.
#[derive(Debug)]
pub struct ConsumerInfo {
    pub name: Arc<str>,
    pub roles: Vec<String>,
    /// The consumer's own policies, merged into a route's chain after authentication.
    pub policies: Vec<ChainEntry>,
}

/// A key record in the form the data plane needs.
pub struct KeyInput<'a> {
    pub id: &'a str,
    pub consumer: &'a str,
    pub hex_digest: &'a str,
    pub expires_at: Option<i64>,
    pub scopes: &'a [String],
}

/// A problem that keeps a snapshot from being built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the configuration snapshot: {0}")]
pub struct SnapshotError(pub String);

/// Everything outside the entities that compilation needs, kept across snapshots so that
/// counters and upstream connection pools survive a reload.
#[derive(Clone)]
pub struct CompileContext {
    pub policy: PolicyContext,
    pub clients: Arc<ClientPool>,
    pub key_usage: Arc<KeyUsage>,
    pub hasher: KeyHasher,
    pub targets: Arc<TargetRegistry>,
    /// The AI gateway built from the node's `ai` section, shared by every `ai` route.
    pub ai: Option<Arc<portcullis_ai::Gateway>>,
}

/// Compiles a snapshot. `entities` are the store's, which already include the file's.
pub fn compile<'k>(
    config: &Config,
    entities: &Entities,
    keys: impl IntoIterator<Item = KeyInput<'k>>,
    version: u64,
    context: &CompileContext,
) -> Result<Snapshot, SnapshotError> {
    let global =
        policies::build(&config.policies, "global", &context.policy).map_err(SnapshotError)?;

    let mut services: HashMap<&str, (Arc<CompiledService>, Vec<ChainEntry>)> = HashMap::new();
    for spec in &entities.services {
        let service = compile_service(spec, context)?;
        let chain = policies::build(
            &spec.policies,
            &format!("service:{}", spec.name),
            &context.policy,
        )
        .map_err(SnapshotError)?;
        services.insert(spec.name.as_str(), (Arc::new(service), chain));
    }

    let mut definitions = Vec::new();
    let no_chain: Vec<ChainEntry> = Vec::new();
    for spec in &entities.routes {
        let (service, service_chain, ai) = match (&spec.service, &spec.ai) {
            (None, Some(_)) => {
                // The route may come from another node through the store, so a node without
                // an `ai` section keeps serving its other routes and responds to this one with 503.
                if context.ai.is_none() {
                    tracing::warn!(
                        route.name = %spec.name,
                        "the node's config has no `ai` section, so the `ai` route answers 503"
                    );
                }
                if let (Some(gateway), Some(ai_route)) = (&context.ai, &spec.ai) {
                    for problem in gateway.missing_settings(ai_route) {
                        tracing::warn!(route.name = %spec.name, "{problem}, so the route responds with 503");
                    }
                }
                (None, &no_chain, context.ai.clone())
            }
            (Some(service_name), _) => {
                let (service, service_chain) =
                    services.get(service_name.as_str()).ok_or_else(|| {
                        SnapshotError(format!(
                            "route `{}` names the missing service `{service_name}`",
                            spec.name
                        ))
                    })?;
                (Some(service.clone()), service_chain, None)
            }
            (None, None) => {
                return Err(SnapshotError(format!(
                    "route `{}` has no service",
                    spec.name
                )));
            }
        };
        let route_chain = policies::build(
            &spec.policies,
            &format!("route:{}", spec.name),
            &context.policy,
        )
        .map_err(SnapshotError)?;
        let chain = chain::merge(&[&global, service_chain, &route_chain]);
        let methods = spec
            .methods
            .iter()
            .map(|method| Method::from_bytes(method.as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| SnapshotError(format!("route `{}` has an invalid method", spec.name)))?;
        let route = CompiledRoute {
            name: spec.name.as_str().into(),
            service,
            ai,
            ai_route: spec.ai.clone().unwrap_or_default(),
            strip_prefix: spec.strip_prefix,
            chain,
            metrics: RouteMetrics::default(),
        };
        definitions.push(RouteDefinition {
            paths: spec
                .paths
                .iter()
                .map(|path| match path {
                    PathMatch::Prefix(prefix) => PathRule::Prefix(prefix.clone()),
                    PathMatch::Exact { exact } => PathRule::Exact(exact.clone()),
                })
                .collect(),
            hosts: spec
                .hosts
                .iter()
                .map(|host| HostRule::parse(host))
                .collect(),
            methods,
            route: Arc::new(route),
        });
    }

    let consumers = entities
        .consumers
        .iter()
        .map(|spec| {
            let consumer = compile_consumer(spec, &context.policy)?;
            Ok((spec.name.clone(), Arc::new(consumer)))
        })
        .collect::<Result<HashMap<_, _>, SnapshotError>>()?;

    let mut table = KeyTable::default();
    for key in keys {
        if !consumers.contains_key(key.consumer) {
            continue;
        }
        if !table.insert(
            key.hex_digest,
            key.id.to_string(),
            key.consumer.to_string(),
            key.expires_at,
            key.scopes.to_vec(),
        ) {
            tracing::warn!(
                key.id = key.id,
                "skipping an API key record whose hash is not 64 hex characters"
            );
        }
    }

    Ok(Snapshot {
        version,
        router: Router::build(definitions),
        services: services
            .into_iter()
            .map(|(name, (service, _))| (name.to_string(), service))
            .collect(),
        consumers,
        keys: table,
        certificates: certificate_table(&entities.consumers),
        hasher: context.hasher.clone(),
        key_usage: context.key_usage.clone(),
        limits: config.limits.clone(),
        client_ip: ClientIpResolver::new(
            config.trusted_proxies.iter().map(|cidr| cidr.0).collect(),
        ),
    })
}

fn compile_service(
    spec: &ServiceSpec,
    context: &CompileContext,
) -> Result<CompiledService, SnapshotError> {
    let targets = spec
        .targets
        .iter()
        .map(|target| {
            Target::parse(&target.url)
                .map_err(|message| SnapshotError(format!("service `{}`: {message}", spec.name)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if targets.is_empty() {
        return Err(SnapshotError(format!(
            "service `{}` has no targets",
            spec.name
        )));
    }
    let pools = targets
        .iter()
        .map(|target| {
            context
                .clients
                .pool(&target.address, spec.timeouts.connect, spec.timeouts.idle)
        })
        .collect();
    Ok(CompiledService {
        name: spec.name.as_str().into(),
        balancer: Balancer::new(spec, targets, &context.targets),
        pools,
        preserve_host: spec.preserve_host,
        response_timeout: spec.timeouts.response,
        retry_attempts: spec.retries.attempts,
        retry_statuses: spec.retries.on_statuses.clone(),
    })
}

fn compile_consumer(
    spec: &ConsumerSpec,
    context: &PolicyContext,
) -> Result<ConsumerInfo, SnapshotError> {
    let post_auth: Vec<PolicySpec> = spec.policies.clone();
    Ok(ConsumerInfo {
        name: spec.name.as_str().into(),
        roles: spec.roles.clone(),
        policies: policies::build(&post_auth, &format!("consumer:{}", spec.name), context)
            .map_err(SnapshotError)?,
    })
}

/// Builds the table of the consumers' certificate names. A name that two consumers claim maps to
/// neither, because validation rejects such a pair and only a store written around validation,
/// such as by two nodes at once, can hold one.
fn certificate_table(consumers: &[ConsumerSpec]) -> CertificateTable {
    let mut table = CertificateTable::default();
    let mut claimed_twice = Vec::new();
    for consumer in consumers {
        let owner: Arc<str> = Arc::from(consumer.name.as_str());
        for entry in &consumer.certificates {
            let name = match entry.name() {
                Ok(name) => name,
                Err(message) => {
                    tracing::warn!(consumer.name = %consumer.name, %message, "skipping an invalid client certificate name");
                    continue;
                }
            };
            if let Err(other) = table.insert(name.clone(), owner.clone()) {
                tracing::warn!(consumer.name = %consumer.name, other.name = %other, certificate.name = %name, "two consumers claim the same client certificate name, so it identifies neither");
                claimed_twice.push(name);
            }
        }
    }
    for name in &claimed_twice {
        table.remove(name);
    }
    table
}

/// The atomically swapped current snapshot.
pub struct SnapshotHandle {
    current: ArcSwap<Snapshot>,
}

impl SnapshotHandle {
    pub fn new(snapshot: Snapshot) -> Self {
        SnapshotHandle {
            current: ArcSwap::from_pointee(snapshot),
        }
    }

    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn store(&self, snapshot: Snapshot) {
        self.current.store(Arc::new(snapshot));
    }
}
