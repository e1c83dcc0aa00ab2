//! In-process counters: one entry per key in a concurrent map.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

use super::{Algorithm, Concurrency, CounterFuture, Counters, Decision, State};

/// In-process limit state, one entry per key, swept of entries that no longer affect a
/// decision.
#[derive(Debug, Default)]
pub struct MemoryCounters {
    state: DashMap<String, Entry>,
    /// Requests in flight per key under concurrency limits; a key leaves at zero.
    slots: DashMap<String, u64>,
    checks: AtomicU64,
    next_lease: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    state: State,
    /// Nanoseconds after which the state no longer affects a decision.
    expires_at: u64,
}

/// Number of checks between two sweeps of stale entries.
const SWEEP_EVERY: u64 = 65_536;

impl MemoryCounters {
    pub fn new() -> Arc<Self> {
        Arc::new(MemoryCounters::default())
    }

    /// Applies one request synchronously; [`Counters::acquire`] wraps this.
    pub fn acquire_now(&self, key: &str, algorithm: &Algorithm, now: u64) -> Decision {
        let (_, decision) = self.acquire_many_now(key, algorithm, now, 1);
        decision
    }

    /// Applies up to `count` requests synchronously and returns how many were granted.
    pub fn acquire_many_now(
        &self,
        key: &str,
        algorithm: &Algorithm,
        now: u64,
        count: u64,
    ) -> (u64, Decision) {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.sweep(now);
        }
        let apply = |previous: Option<Entry>| {
            let state = previous
                .filter(|entry| entry.expires_at > now)
                .map(|entry| entry.state);
            let (granted, decision, state) = algorithm.check_many(state, now, count);
            let entry = Entry {
                state,
                expires_at: algorithm.expires_at(&state),
            };
            (granted, decision, entry)
        };
        if let Some(mut entry) = self.state.get_mut(key) {
            let (granted, decision, next) = apply(Some(*entry));
            *entry = next;
            return (granted, decision);
        }
        let mut slot = self.state.entry(key.to_string()).or_insert(Entry {
            state: State::Gcra { tat: 0 },
            expires_at: 0,
        });
        let (granted, decision, next) = apply(Some(*slot));
        *slot = next;
        (granted, decision)
    }

    /// Removes keys whose state no longer affects a decision: their next check behaves as for
    /// a new key.
    pub fn sweep(&self, now: u64) {
        self.state.retain(|_, entry| entry.expires_at > now);
    }

    /// Returns the number of keys with rate state.
    pub fn len(&self) -> usize {
        self.state.len()
    }

    pub fn is_empty(&self) -> bool {
        self.state.is_empty()
    }

    /// Returns the requests in flight for `key` under a concurrency limit.
    pub fn in_flight(&self, key: &str) -> u64 {
        self.slots.get(key).map_or(0, |count| *count)
    }
}

impl Counters for MemoryCounters {
    fn backend(&self) -> &'static str {
        "memory"
    }

    fn acquire<'a>(
        &'a self,
        key: &'a str,
        algorithm: &'a Algorithm,
        now: u64,
    ) -> CounterFuture<'a> {
        let decision = self.acquire_now(key, algorithm, now);
        Box::pin(std::future::ready(Ok(decision)))
    }

    fn acquire_slot<'a>(
        &'a self,
        key: &'a str,
        limit: &'a Concurrency,
        _now: u64,
    ) -> CounterFuture<'a, (Decision, Option<u64>)> {
        let mut count = self.slots.entry(key.to_string()).or_insert(0);
        let allowed = *count < limit.limit;
        if allowed {
            *count += 1;
        }
        let decision = Decision {
            allowed,
            remaining: limit.limit.saturating_sub(*count),
            reset_after: std::time::Duration::ZERO,
            retry_after: None,
        };
        drop(count);
        let lease = allowed.then(|| self.next_lease.fetch_add(1, Ordering::Relaxed));
        Box::pin(std::future::ready(Ok((decision, lease))))
    }

    fn release_slot(&self, key: &str, _lease: u64) {
        self.slots.remove_if_mut(key, |_, count| {
            *count = count.saturating_sub(1);
            *count == 0
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::{Gcra, Lease, Period, Quota, SlidingWindow};
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn memory_counters_admit_exactly_the_burst() {
        let counters = MemoryCounters::default();
        let gcra = Algorithm::Gcra(Gcra::new(10, Duration::from_secs(60), 10));
        let admitted = (0..200)
            .filter(|_| {
                counters
                    .acquire_now("consumer:alice", &gcra, 5 * MS)
                    .allowed
            })
            .count();
        assert_eq!(admitted, 10);
        assert!(counters.acquire_now("consumer:bob", &gcra, 5 * MS).allowed);
    }

    #[test]
    fn new_key_starts_full() {
        let counters = MemoryCounters::default();
        let gcra = Algorithm::Gcra(Gcra::new(2, Duration::from_secs(1), 2));
        let now = 123_456 * MS;
        assert_eq!(counters.acquire_now("k", &gcra, now).remaining, 1);
        assert_eq!(counters.acquire_now("k", &gcra, now).remaining, 0);
        assert!(!counters.acquire_now("k", &gcra, now).allowed);
    }

    #[test]
    fn sweep_drops_refilled_keys() {
        let counters = MemoryCounters::default();
        let gcra = Algorithm::Gcra(Gcra::new(1, Duration::from_secs(1), 1));
        counters.acquire_now("k", &gcra, 0);
        counters.sweep(500 * MS);
        assert_eq!(counters.len(), 1);
        counters.sweep(1_000 * MS);
        assert!(counters.is_empty());
    }

    #[test]
    fn sustained_overload_admits_the_rate() {
        let gcra = Algorithm::Gcra(Gcra::new(100, Duration::from_secs(1), 100));
        let counters = MemoryCounters::default();
        // One request every millisecond for ten seconds: 10,000 offered.
        let admitted = (0..10_000u64)
            .filter(|i| counters.acquire_now("k", &gcra, i * MS).allowed)
            .count();
        // Burst of 100 plus 100 per second over the ten seconds.
        assert!((1_090..=1_101).contains(&admitted), "admitted {admitted}");
    }

    #[test]
    fn keys_of_every_algorithm_expire() {
        let counters = MemoryCounters::default();
        let window = Algorithm::SlidingWindow(SlidingWindow::new(1, Duration::from_secs(1)));
        let quota = Algorithm::Quota(Quota::new(1, Period::Day));
        counters.acquire_now("window", &window, 0);
        counters.acquire_now("quota", &quota, 0);
        counters.sweep(1_999 * MS);
        assert_eq!(counters.len(), 2);
        counters.sweep(2_000 * MS);
        assert_eq!(
            counters.len(),
            1,
            "the window key is gone after two windows"
        );
        counters.sweep(86_400_000 * MS);
        assert!(counters.is_empty());
    }

    #[test]
    fn concurrency_slots_return_on_drop() {
        let counters = MemoryCounters::new();
        let limit = Concurrency {
            limit: 2,
            lease_ttl: Duration::from_secs(60),
        };
        let shared: Arc<dyn Counters> = counters.clone();
        let mut leases = Vec::new();
        for i in 0..3 {
            let future = shared.acquire_slot("k", &limit, 0);
            let (decision, lease) = ready_output(future);
            assert_eq!(decision.allowed, i < 2, "request {i}");
            if let Some(id) = lease {
                leases.push(Lease::new(shared.clone(), "k".into(), id));
            }
        }
        assert_eq!(counters.in_flight("k"), 2);
        leases.pop();
        assert_eq!(counters.in_flight("k"), 1);
        let (decision, _) = ready_output(shared.acquire_slot("k", &limit, 0));
        assert!(decision.allowed);
        assert_eq!(decision.remaining, 0);
    }

    /// Returns the output of a memory-counter future, which is always ready.
    fn ready_output<T>(future: CounterFuture<'_, T>) -> T {
        let waker = std::task::Waker::noop();
        let mut context = std::task::Context::from_waker(waker);
        let mut future = future;
        match future.as_mut().poll(&mut context) {
            std::task::Poll::Ready(result) => result.expect("memory counters do not fail"),
            std::task::Poll::Pending => panic!("a memory-counter future was pending"),
        }
    }
}
