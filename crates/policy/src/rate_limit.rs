//! Rate limiting with the generic cell rate algorithm (GCRA).
//!
//! A limit of `limit` requests per `window` with a burst of `burst` admits up to `burst`
//! requests at once and then one request every `window / limit`. GCRA keeps a single number per
//! key, the theoretical arrival time (TAT) of the next request, so the state is small and an
//! update is one compare and one write. That is what lets the same algorithm run in process
//! ([`MemoryCounters`]) and as an atomic script in a shared store.
//!
//! Time is passed in as nanoseconds on a caller-chosen monotonic clock, so tests drive the
//! algorithm with fixed instants.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;

/// GCRA parameters derived from a limit, a window and a burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Requests per window, as configured.
    pub limit: u64,
    pub window: Duration,
    pub burst: u64,
    /// Time between two admitted requests at the sustained rate, in nanoseconds.
    emission_interval: u64,
}

/// The outcome of one GCRA check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Requests that could still be admitted at once after this one.
    pub remaining: u64,
    /// Time until the key is back to its full burst.
    pub reset_after: Duration,
    /// For a rejected request, the time after which a retry is admitted.
    pub retry_after: Option<Duration>,
}

impl Gcra {
    /// Builds the parameters; `limit`, `window` and `burst` must be greater than zero.
    pub fn new(limit: u64, window: Duration, burst: u64) -> Self {
        let limit = limit.max(1);
        let burst = burst.max(1);
        let window_ns = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX).max(1);
        Gcra {
            limit,
            window,
            burst,
            emission_interval: (window_ns / limit).max(1),
        }
    }

    /// Returns the emission interval in nanoseconds.
    pub fn emission_interval(&self) -> u64 {
        self.emission_interval
    }

    /// Returns the span a full burst covers, in nanoseconds: how long a key's state matters.
    pub fn burst_span(&self) -> u64 {
        self.emission_interval.saturating_mul(self.burst)
    }

    /// Applies one request of cost 1 at `now` to a key whose stored TAT is `tat` (`None` for a
    /// key never seen). Returns the decision and the TAT to store; a rejected request leaves
    /// the TAT unchanged.
    pub fn check(&self, tat: Option<u64>, now: u64) -> (Decision, u64) {
        let tat = tat.unwrap_or(now).max(now);
        let new_tat = tat.saturating_add(self.emission_interval);
        let allow_at = new_tat.saturating_sub(self.burst_span());
        if now < allow_at {
            let decision = Decision {
                allowed: false,
                remaining: 0,
                reset_after: Duration::from_nanos(tat - now),
                retry_after: Some(Duration::from_nanos(allow_at - now)),
            };
            return (decision, tat);
        }
        let used = (new_tat - now).div_ceil(self.emission_interval);
        let decision = Decision {
            allowed: true,
            remaining: self.burst.saturating_sub(used),
            reset_after: Duration::from_nanos(new_tat - now),
            retry_after: None,
        };
        (decision, new_tat)
    }
}

/// A failed counter operation, such as an unreachable shared store.
#[derive(Debug, thiserror::Error)]
#[error("rate-limit counter `{backend}` failed: {message}")]
pub struct CounterError {
    pub backend: &'static str,
    pub message: String,
}

/// A boxed future returned by [`Counters`].
pub type CounterFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Decision, CounterError>> + Send + 'a>>;

/// Where GCRA state is kept: in process, or shared between nodes.
pub trait Counters: Send + Sync + 'static {
    /// Returns the backend name for logs and metrics.
    fn backend(&self) -> &'static str;

    /// Atomically applies one request to `key` under `gcra` at `now` (nanoseconds on the
    /// counter's clock).
    fn acquire<'a>(&'a self, key: &'a str, gcra: &'a Gcra, now: u64) -> CounterFuture<'a>;
}

/// In-process GCRA state, one entry per key, swept of entries whose burst has fully refilled.
#[derive(Debug, Default)]
pub struct MemoryCounters {
    state: DashMap<String, Entry>,
    checks: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    tat: u64,
}

/// Number of checks between two sweeps of stale entries.
const SWEEP_EVERY: u64 = 65_536;

impl MemoryCounters {
    pub fn new() -> Arc<Self> {
        Arc::new(MemoryCounters::default())
    }

    /// Applies one request synchronously; [`Counters::acquire`] wraps this.
    pub fn acquire_now(&self, key: &str, gcra: &Gcra, now: u64) -> Decision {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.sweep(now);
        }
        if let Some(mut entry) = self.state.get_mut(key) {
            let (decision, tat) = gcra.check(Some(entry.tat), now);
            entry.tat = tat;
            return decision;
        }
        let mut entry = self
            .state
            .entry(key.to_string())
            .or_insert(Entry { tat: now });
        let previous = if entry.tat == now {
            None
        } else {
            Some(entry.tat)
        };
        let (decision, tat) = gcra.check(previous, now);
        entry.tat = tat;
        decision
    }

    /// Removes keys whose TAT lies in the past: their next check behaves as for a new key.
    pub fn sweep(&self, now: u64) {
        self.state.retain(|_, entry| entry.tat > now);
    }

    pub fn len(&self) -> usize {
        self.state.len()
    }

    pub fn is_empty(&self) -> bool {
        self.state.is_empty()
    }
}

impl Counters for MemoryCounters {
    fn backend(&self) -> &'static str {
        "memory"
    }

    fn acquire<'a>(&'a self, key: &'a str, gcra: &'a Gcra, now: u64) -> CounterFuture<'a> {
        let decision = self.acquire_now(key, gcra, now);
        Box::pin(std::future::ready(Ok(decision)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn burst_then_sustained_rate() {
        let gcra = Gcra::new(5, Duration::from_secs(1), 5);
        let mut tat = None;
        for i in 0..5 {
            let (decision, next) = gcra.check(tat, 0);
            assert!(decision.allowed, "request {i} of the burst");
            assert_eq!(decision.remaining, 4 - i);
            tat = Some(next);
        }
        let (decision, _) = gcra.check(tat, 0);
        assert!(!decision.allowed);
        assert_eq!(decision.retry_after, Some(Duration::from_millis(200)));

        let (decision, _) = gcra.check(tat, 199 * MS);
        assert!(!decision.allowed);
        let (decision, _) = gcra.check(tat, 200 * MS);
        assert!(decision.allowed);
        assert_eq!(decision.remaining, 0);
    }

    #[test]
    fn rejection_does_not_consume() {
        let gcra = Gcra::new(1, Duration::from_secs(1), 1);
        let (_, tat) = gcra.check(None, 0);
        let (rejected, unchanged) = gcra.check(Some(tat), 10 * MS);
        assert!(!rejected.allowed);
        assert_eq!(unchanged, tat);
    }

    #[test]
    fn idle_key_refills_to_full_burst() {
        let gcra = Gcra::new(10, Duration::from_secs(1), 3);
        let (_, tat) = gcra.check(None, 0);
        let (decision, _) = gcra.check(Some(tat), 10_000 * MS);
        assert!(decision.allowed);
        assert_eq!(decision.remaining, 2);
    }

    #[test]
    fn memory_counters_admit_exactly_the_burst() {
        let counters = MemoryCounters::default();
        let gcra = Gcra::new(10, Duration::from_secs(60), 10);
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
    fn memory_counters_start_new_keys_full_at_any_time() {
        let counters = MemoryCounters::default();
        let gcra = Gcra::new(2, Duration::from_secs(1), 2);
        let now = 123_456 * MS;
        assert_eq!(counters.acquire_now("k", &gcra, now).remaining, 1);
        assert_eq!(counters.acquire_now("k", &gcra, now).remaining, 0);
        assert!(!counters.acquire_now("k", &gcra, now).allowed);
    }

    #[test]
    fn sweep_drops_refilled_keys() {
        let counters = MemoryCounters::default();
        let gcra = Gcra::new(1, Duration::from_secs(1), 1);
        counters.acquire_now("k", &gcra, 0);
        counters.sweep(500 * MS);
        assert_eq!(counters.len(), 1);
        counters.sweep(1_000 * MS);
        assert!(counters.is_empty());
    }

    #[test]
    fn sustained_overload_admits_the_rate() {
        let gcra = Gcra::new(100, Duration::from_secs(1), 100);
        let counters = MemoryCounters::default();
        // One request every millisecond for ten seconds: 10,000 offered.
        let admitted = (0..10_000u64)
            .filter(|i| counters.acquire_now("k", &gcra, i * MS).allowed)
            .count();
        // Burst of 100 plus 100 per second over the ten seconds.
        assert!((1_090..=1_101).contains(&admitted), "admitted {admitted}");
    }
}
