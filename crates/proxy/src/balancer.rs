//! Target selection for one service: the balancing algorithm run over the targets that health
//! checks and circuit breakers let through.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::{HeaderMap, HeaderName};
use portcullis_config::{Algorithm, HashOn, ServiceSpec};
use portcullis_policy::upstream::balance::{self, HashRing, SmoothWeighted};
use portcullis_policy::upstream::retry_budget::RetryBudget;

use crate::targets::{Attempt, TargetRegistry, TargetState};
use crate::upstream::Target;

/// The reason no target could take a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// Health checks keep every target out.
    Unhealthy,
    /// Every target that health checks allow has an open circuit.
    CircuitOpen,
}

impl Unavailable {
    pub fn code(self) -> &'static str {
        match self {
            Unavailable::Unhealthy => "upstream_unhealthy",
            Unavailable::CircuitOpen => "circuit_open",
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Unavailable::Unhealthy => "unhealthy",
            Unavailable::CircuitOpen => "circuit_open",
        }
    }
}

/// The targets of one service and how requests are spread over them.
pub struct Balancer {
    pub targets: Vec<Arc<TargetState>>,
    weights: Vec<u32>,
    pub algorithm: Algorithm,
    hash_on: HashOn,
    hash_header: Option<HeaderName>,
    smooth: Mutex<SmoothWeighted>,
    rotation: AtomicUsize,
    ring: Option<HashRing>,
    /// Shared with the other snapshots of the service.
    pub budget: Arc<Mutex<RetryBudget>>,
}

/// The request values that a consistent-hash key is taken from.
pub struct HashInput<'a> {
    pub client_ip: IpAddr,
    pub headers: &'a HeaderMap,
    pub consumer: Option<&'a str>,
    pub path: &'a str,
}

impl Balancer {
    /// Builds the balancer of `spec` from its parsed targets, taking each target's state from
    /// the registry so that health and circuits carry over from the previous snapshot.
    pub fn new(spec: &ServiceSpec, parsed: Vec<Target>, registry: &TargetRegistry) -> Self {
        let weights: Vec<u32> = spec.targets.iter().map(|target| target.weight).collect();
        let targets: Vec<Arc<TargetState>> = spec
            .targets
            .iter()
            .zip(parsed)
            .map(|(target_spec, target)| {
                registry.target(spec, &target_spec.url, target, target_spec.weight)
            })
            .collect();
        let ring = (spec.load_balancing.algorithm == Algorithm::ConsistentHash).then(|| {
            let named: Vec<(&str, u32)> = spec
                .targets
                .iter()
                .map(|target| (target.url.as_str(), target.weight))
                .collect();
            HashRing::new(&named)
        });
        Balancer {
            smooth: Mutex::new(SmoothWeighted::new(targets.len())),
            targets,
            weights,
            algorithm: spec.load_balancing.algorithm,
            hash_on: spec.load_balancing.hash_on,
            hash_header: spec
                .load_balancing
                .hash_header
                .as_deref()
                .and_then(|name| HeaderName::from_bytes(name.as_bytes()).ok()),
            rotation: AtomicUsize::new(0),
            ring,
            budget: registry.budget(spec),
        }
    }

    /// Returns the hash of the request's consistent-hash key, or `None` for other algorithms.
    pub fn hash(&self, input: &HashInput<'_>) -> Option<u64> {
        self.ring.as_ref()?;
        let ip = || balance::hash_key(input.client_ip.to_string().as_bytes());
        Some(match self.hash_on {
            HashOn::Ip => ip(),
            HashOn::Path => balance::hash_key(input.path.as_bytes()),
            HashOn::Consumer => input
                .consumer
                .map_or_else(ip, |name| balance::hash_key(name.as_bytes())),
            HashOn::Header => self
                .hash_header
                .as_ref()
                .and_then(|name| input.headers.get(name))
                .map_or_else(ip, |value| balance::hash_key(value.as_bytes())),
        })
    }

    /// Starts an attempt on the next target. Targets in `tried` are skipped while any other
    /// target is available, so a retry goes elsewhere when it can.
    pub fn select(&self, hash: Option<u64>, tried: &[usize]) -> Result<Attempt, Unavailable> {
        let (healthy, mut available): (Vec<bool>, Vec<bool>) = self
            .targets
            .iter()
            .map(|target| {
                let (healthy, circuit_allows) = target.availability();
                (healthy, healthy && circuit_allows)
            })
            .unzip();
        loop {
            let untried = |index: usize| available[index] && !tried.contains(&index);
            let any_untried = (0..self.targets.len()).any(untried);
            let index = if any_untried {
                self.pick(hash, untried)
            } else {
                self.pick(hash, |index| available[index])
            };
            let Some(index) = index else {
                return Err(if healthy.iter().any(|healthy| *healthy) {
                    Unavailable::CircuitOpen
                } else {
                    Unavailable::Unhealthy
                });
            };
            match self.targets[index].try_start() {
                Some(attempt) => return Ok(attempt),
                // Another request took the last half-open trial slot first.
                None => available[index] = false,
            }
        }
    }

    /// Returns the index of `attempt`'s target.
    pub fn index_of(&self, attempt: &Attempt) -> Option<usize> {
        self.targets
            .iter()
            .position(|target| Arc::ptr_eq(target, attempt.target()))
    }

    fn pick(&self, hash: Option<u64>, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        match self.algorithm {
            Algorithm::RoundRobin => self
                .smooth
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .pick(&self.weights, eligible),
            Algorithm::LeastConnections => {
                let in_flight: Vec<u64> = self
                    .targets
                    .iter()
                    .map(|target| target.in_flight())
                    .collect();
                let start = self.rotation.fetch_add(1, Ordering::Relaxed);
                balance::least_connections(&in_flight, &self.weights, start, eligible)
            }
            Algorithm::ConsistentHash => {
                let ring = self.ring.as_ref()?;
                ring.pick(hash.unwrap_or(0), eligible)
            }
        }
    }
}
