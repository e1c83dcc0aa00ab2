//! A local share of a shared limit, for rates too high for one Redis call per request.
//!
//! [`LocalShare`] requests `batch` requests at once from the shared counters
//! ([`Counters::acquire_batch`]), which count them in Redis right away, and then admits them
//! locally without a round trip. A key's share is used only until the fixed window or quota
//! period it was granted for ends, measured from the moment the request was sent, so a share
//! never spills into a window that did not count it. Once Redis rejects a key, the node rejects
//! it locally until the reported `Retry-After` has passed.
//!
//! The cost is accuracy in the other direction: requests granted to a node that then receives
//! no more traffic for that key are counted but never used. With N nodes and a batch of B, a
//! sliding-window or quota limit admits between `limit - N * (B - 1)` and `limit` requests per
//! window. A GCRA grant reserves emission slots that stay usable for one burst span, so the
//! cluster can admit up to `N * (B - 1)` requests over the burst within one burst span.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::{Algorithm, Concurrency, CounterFuture, Counters, Decision};

/// Number of checks between two sweeps of shares that ran out.
const SWEEP_EVERY: u64 = 4_096;

/// Counters that admit from a locally held share of a shared limit.
pub struct LocalShare {
    shared: Arc<dyn Counters>,
    batch: u64,
    shares: DashMap<String, Arc<tokio::sync::Mutex<Share>>>,
    checks: AtomicU64,
}

/// The part of one key's limit that this node has been granted.
#[derive(Debug)]
struct Share {
    /// Requests granted and not yet admitted.
    tokens: u64,
    /// End of the window the tokens belong to.
    valid_until: Instant,
    /// Until when Redis rejects the key, after a rejection.
    rejected_until: Option<Instant>,
    /// The last decision from the shared counters, with `remaining` as seen then.
    last: Decision,
}

impl LocalShare {
    /// Wraps `shared` so that each key fetches `batch` requests per round trip.
    pub fn new(shared: Arc<dyn Counters>, batch: u64) -> Self {
        LocalShare {
            shared,
            batch: batch.max(1),
            shares: DashMap::new(),
            checks: AtomicU64::new(0),
        }
    }

    /// Drops shares whose tokens ran out or expired and that no request is using.
    fn sweep(&self, now: Instant) {
        self.shares.retain(|_, share| match share.try_lock() {
            Ok(share) => {
                let live = share.tokens > 0 && share.valid_until > now;
                let rejecting = share.rejected_until.is_some_and(|until| until > now);
                live || rejecting
            }
            Err(_) => true,
        });
    }

    async fn acquire_shared(
        &self,
        key: &str,
        algorithm: &Algorithm,
        now: u64,
    ) -> Result<Decision, super::CounterError> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.sweep(Instant::now());
        }
        let share = self
            .shares
            .entry(key.to_string())
            .or_insert_with(|| {
                Arc::new(tokio::sync::Mutex::new(Share {
                    tokens: 0,
                    valid_until: Instant::now(),
                    rejected_until: None,
                    last: Decision {
                        allowed: false,
                        remaining: 0,
                        reset_after: Duration::ZERO,
                        retry_after: None,
                    },
                }))
            })
            .clone();

        // Requests for one key queue here while one of them fetches the next share, so a burst
        // costs one round trip, not one per request.
        let mut share = share.lock().await;
        let started = Instant::now();

        // A recent rejection from Redis still applies.
        if let Some(until) = share.rejected_until {
            if until > started {
                return Ok(Decision {
                    allowed: false,
                    remaining: 0,
                    reset_after: share.last.reset_after,
                    retry_after: Some(until - started),
                });
            }
            share.rejected_until = None;
        }

        // Admit from the share while it lasts.
        if share.tokens > 0 && share.valid_until > started {
            share.tokens -= 1;
            return Ok(Decision {
                allowed: true,
                remaining: share.last.remaining + share.tokens,
                reset_after: share.valid_until - started,
                retry_after: None,
            });
        }

        // Fetch the next share.
        let grant = self
            .shared
            .acquire_batch(key, algorithm, self.batch, now)
            .await?;
        share.last = grant.decision;
        if grant.granted == 0 {
            share.tokens = 0;
            share.rejected_until = grant.decision.retry_after.map(|retry| started + retry);
            return Ok(grant.decision);
        }
        share.tokens = grant.granted - 1;
        share.valid_until = started + grant.valid_for;
        Ok(Decision {
            remaining: grant.decision.remaining + share.tokens,
            ..grant.decision
        })
    }
}

impl Counters for LocalShare {
    fn backend(&self) -> &'static str {
        self.shared.backend()
    }

    fn address(&self) -> &str {
        self.shared.address()
    }

    fn acquire<'a>(
        &'a self,
        key: &'a str,
        algorithm: &'a Algorithm,
        now: u64,
    ) -> CounterFuture<'a> {
        Box::pin(self.acquire_shared(key, algorithm, now))
    }

    fn acquire_slot<'a>(
        &'a self,
        key: &'a str,
        limit: &'a Concurrency,
        now: u64,
    ) -> CounterFuture<'a, (Decision, Option<u64>)> {
        self.shared.acquire_slot(key, limit, now)
    }

    fn release_slot(&self, key: &str, lease: u64) {
        self.shared.release_slot(key, lease);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Gcra, MemoryCounters, SlidingWindow};
    use super::*;

    /// Memory counters that count their calls and grant batches like Redis does.
    struct CountingCounters {
        inner: MemoryCounters,
        calls: AtomicU64,
    }

    impl Counters for CountingCounters {
        fn backend(&self) -> &'static str {
            "counting"
        }

        fn acquire<'a>(
            &'a self,
            key: &'a str,
            algorithm: &'a Algorithm,
            now: u64,
        ) -> CounterFuture<'a> {
            self.inner.acquire(key, algorithm, now)
        }

        fn acquire_batch<'a>(
            &'a self,
            key: &'a str,
            algorithm: &'a Algorithm,
            count: u64,
            now: u64,
        ) -> CounterFuture<'a, super::super::Grant> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            let (granted, decision) = self.inner.acquire_many_now(key, algorithm, now, count);
            Box::pin(std::future::ready(Ok(super::super::Grant {
                granted,
                decision,
                valid_for: algorithm.grant_validity(now),
            })))
        }

        fn acquire_slot<'a>(
            &'a self,
            key: &'a str,
            limit: &'a Concurrency,
            now: u64,
        ) -> CounterFuture<'a, (Decision, Option<u64>)> {
            self.inner.acquire_slot(key, limit, now)
        }

        fn release_slot(&self, key: &str, lease: u64) {
            self.inner.release_slot(key, lease);
        }
    }

    fn counting() -> Arc<CountingCounters> {
        Arc::new(CountingCounters {
            inner: MemoryCounters::default(),
            calls: AtomicU64::new(0),
        })
    }

    #[tokio::test]
    async fn shares_never_exceed_the_limit() {
        let shared = counting();
        let nodes: Vec<LocalShare> = (0..3).map(|_| LocalShare::new(shared.clone(), 4)).collect();
        let algorithm = Algorithm::SlidingWindow(SlidingWindow::new(10, Duration::from_secs(60)));
        let mut admitted = 0;
        for round in 0..20 {
            let node = &nodes[round % 3];
            if node.acquire("k", &algorithm, 0).await.unwrap().allowed {
                admitted += 1;
            }
        }
        // Ten fit, and three nodes with a batch of four can leave up to 3 * 3 unused.
        assert!(admitted <= 10, "admitted {admitted}");
        assert!(admitted >= 10 - 3 * 3, "admitted {admitted}");
    }

    #[tokio::test]
    async fn one_round_trip_per_batch() {
        let shared = counting();
        let node = LocalShare::new(shared.clone(), 50);
        let algorithm = Algorithm::Gcra(Gcra::new(1_000, Duration::from_secs(1), 1_000));
        for _ in 0..200 {
            assert!(node.acquire("k", &algorithm, 0).await.unwrap().allowed);
        }
        assert_eq!(shared.calls.load(Ordering::Relaxed), 4);
    }

    #[tokio::test]
    async fn rejection_is_cached_until_retry_after() {
        let shared = counting();
        let node = LocalShare::new(shared.clone(), 5);
        let algorithm = Algorithm::SlidingWindow(SlidingWindow::new(5, Duration::from_secs(60)));
        for _ in 0..5 {
            assert!(node.acquire("k", &algorithm, 0).await.unwrap().allowed);
        }
        let calls = shared.calls.load(Ordering::Relaxed);
        for _ in 0..10 {
            let decision = node.acquire("k", &algorithm, 0).await.unwrap();
            assert!(!decision.allowed);
            assert!(decision.retry_after.is_some());
        }
        assert_eq!(shared.calls.load(Ordering::Relaxed), calls + 1);
    }
}
