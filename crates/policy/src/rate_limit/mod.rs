//! Rate-limit algorithms and the counters that keep their state.
//!
//! Four algorithms are available:
//!
//! - [`Gcra`]: a rate with a burst (the generic cell rate algorithm, a token bucket in one
//!   number),
//! - [`SlidingWindow`]: at most `limit` requests in any `window`, estimated from two fixed
//!   windows,
//! - [`Quota`]: at most `limit` requests per calendar day or month in UTC,
//! - a concurrency limit: at most `limit` requests in flight, held by a [`Lease`].
//!
//! The first three are pure functions from a key's [`State`] and the time to a [`Decision`] and
//! the next state, so they run the same in process ([`MemoryCounters`]) and, mirrored as Lua
//! scripts, atomically in Redis ([`RedisCounters`]). Time is passed in as nanoseconds since the
//! Unix epoch on a clock that never steps back, so tests drive every algorithm with fixed
//! instants and quotas can align to the UTC calendar.

mod gcra;
mod memory;
mod quota;
pub(crate) mod redis;
mod share;
mod window;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub use gcra::Gcra;
pub use memory::MemoryCounters;
pub use quota::{Period, Quota};
pub use redis::{RedisCounters, RedisSettings};
pub use share::LocalShare;
pub use window::SlidingWindow;

/// A rate algorithm with its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Gcra(Gcra),
    SlidingWindow(SlidingWindow),
    Quota(Quota),
}

/// The stored state of one key under an [`Algorithm`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// GCRA: the theoretical arrival time of the next request, in nanoseconds.
    Gcra { tat: u64 },
    /// Sliding window: the index of the current fixed window (time / window) and the counts of
    /// the current and the previous window.
    Window {
        index: u64,
        current: u64,
        previous: u64,
    },
    /// Quota: the start of the current calendar period, in seconds since the epoch, and the
    /// requests counted in it.
    Quota { period_start: u64, count: u64 },
}

impl Algorithm {
    /// Returns the number of requests the limit admits per window or period.
    pub fn limit(&self) -> u64 {
        match self {
            Algorithm::Gcra(gcra) => gcra.limit,
            Algorithm::SlidingWindow(window) => window.limit,
            Algorithm::Quota(quota) => quota.limit,
        }
    }

    /// Returns the length of the window or period that contains `now`, for the `w` parameter
    /// of `RateLimit-Policy`.
    pub fn window_at(&self, now: u64) -> Duration {
        match self {
            Algorithm::Gcra(gcra) => gcra.window,
            Algorithm::SlidingWindow(window) => window.window,
            Algorithm::Quota(quota) => quota.period_length_at(now),
        }
    }

    /// Applies one request at `now` to a key in `state` (`None` for a key never seen, or one
    /// whose state no longer matters). Returns the decision and the state to store. A rejected
    /// request leaves the state unchanged.
    pub fn check(&self, state: Option<State>, now: u64) -> (Decision, State) {
        match self {
            Algorithm::Gcra(gcra) => {
                let tat = match state {
                    Some(State::Gcra { tat }) => Some(tat),
                    _ => None,
                };
                let (decision, tat) = gcra.check(tat, now);
                (decision, State::Gcra { tat })
            }
            Algorithm::SlidingWindow(window) => window.check(state, now),
            Algorithm::Quota(quota) => quota.check(state, now),
        }
    }

    /// Applies up to `count` requests at `now` and returns how many were admitted, the decision
    /// for the first one and the state to store.
    pub fn check_many(&self, state: Option<State>, now: u64, count: u64) -> (u64, Decision, State) {
        match self {
            Algorithm::Gcra(gcra) => {
                let tat = match state {
                    Some(State::Gcra { tat }) => Some(tat),
                    _ => None,
                };
                let (granted, decision, tat) = gcra.check_many(tat, now, count);
                (granted, decision, State::Gcra { tat })
            }
            Algorithm::SlidingWindow(window) => window.check_many(state, now, count),
            Algorithm::Quota(quota) => quota.check_many(state, now, count),
        }
    }

    /// Returns the time from `now` during which requests granted at `now` may be admitted:
    /// until the current fixed window or quota period ends. For GCRA it is one burst span,
    /// because reserved requests used later than that would exceed the burst.
    pub fn grant_validity(&self, now: u64) -> Duration {
        match self {
            Algorithm::Gcra(gcra) => Duration::from_nanos(gcra.burst_span()),
            Algorithm::SlidingWindow(window) => {
                Duration::from_nanos(window.window_nanos() - now % window.window_nanos())
            }
            Algorithm::Quota(quota) => {
                let seconds = now / 1_000_000_000;
                let end = quota.period_end(quota.period_start(seconds));
                Duration::from_nanos(end.saturating_mul(1_000_000_000).saturating_sub(now))
            }
        }
    }

    /// Returns the instant (nanoseconds) after which `state` no longer affects a decision, so
    /// the key can be dropped.
    pub fn expires_at(&self, state: &State) -> u64 {
        match (self, state) {
            (_, State::Gcra { tat }) => *tat,
            (Algorithm::SlidingWindow(window), State::Window { index, .. }) => {
                window.window_start(index.saturating_add(2))
            }
            (Algorithm::Quota(quota), State::Quota { period_start, .. }) => quota
                .period_end(*period_start)
                .saturating_mul(1_000_000_000),
            // The algorithm of the key changed: the old state can go at once.
            _ => 0,
        }
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Requests that could still be admitted at once after this one.
    pub remaining: u64,
    /// Time until the key is back to its full limit: the refilled burst, the end of the fixed
    /// window or of the quota period.
    pub reset_after: Duration,
    /// For a rejected request, the time after which a retry is admitted.
    pub retry_after: Option<Duration>,
}

/// A concurrency limit: at most `limit` requests in flight per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Concurrency {
    pub limit: u64,
    /// Time after which a shared counter drops a slot that was never released, such as the
    /// slot of a node that crashed mid-request.
    pub lease_ttl: Duration,
}

/// A failed counter operation, such as an unreachable shared store.
#[derive(Debug, thiserror::Error)]
#[error("rate-limit counter `{backend}` failed: {message}")]
pub struct CounterError {
    pub backend: &'static str,
    pub message: String,
}

/// A boxed future returned by [`Counters`].
pub type CounterFuture<'a, T = Decision> =
    Pin<Box<dyn Future<Output = Result<T, CounterError>> + Send + 'a>>;

/// Requests granted to a node at once by [`Counters::acquire_batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Requests granted, from 0 to the count asked for. They are already counted.
    pub granted: u64,
    /// The decision for the first of them, with `remaining` as seen after the whole grant.
    pub decision: Decision,
    /// Time during which the granted requests may be admitted: until the fixed window or the
    /// quota period ends. Later they would count against a window that did not count them.
    pub valid_for: Duration,
}

/// A store of limit state: in process, or shared between nodes.
pub trait Counters: Send + Sync + 'static {
    /// Returns the backend name for logs and metrics.
    fn backend(&self) -> &'static str;

    /// Returns the address of the backend for logs, such as `redis://127.0.0.1:6379`.
    fn address(&self) -> &str {
        ""
    }

    /// Atomically applies one request to `key` under `algorithm`. `now` is nanoseconds since
    /// the Unix epoch on the caller's clock; a shared backend may use its own clock instead.
    fn acquire<'a>(&'a self, key: &'a str, algorithm: &'a Algorithm, now: u64)
    -> CounterFuture<'a>;

    /// Atomically applies up to `count` requests to `key` and returns how many were granted.
    /// The default grants one request at a time through [`Counters::acquire`].
    fn acquire_batch<'a>(
        &'a self,
        key: &'a str,
        algorithm: &'a Algorithm,
        count: u64,
        now: u64,
    ) -> CounterFuture<'a, Grant> {
        let _ = count;
        Box::pin(async move {
            let decision = self.acquire(key, algorithm, now).await?;
            Ok(Grant {
                granted: u64::from(decision.allowed),
                decision,
                valid_for: Duration::ZERO,
            })
        })
    }

    /// Takes one slot of `key` under a concurrency limit. Returns the decision and, when
    /// admitted, the lease id to pass to [`Counters::release_slot`].
    fn acquire_slot<'a>(
        &'a self,
        key: &'a str,
        limit: &'a Concurrency,
        now: u64,
    ) -> CounterFuture<'a, (Decision, Option<u64>)>;

    /// Returns a slot taken by [`Counters::acquire_slot`]. It must not block, because it runs
    /// when a response body is dropped; a shared backend sends the release in a task of its own.
    fn release_slot(&self, key: &str, lease: u64);
}

/// A slot under a concurrency limit, returned to its counters when dropped.
pub struct Lease {
    counters: std::sync::Arc<dyn Counters>,
    key: String,
    id: u64,
}

impl Lease {
    pub fn new(counters: std::sync::Arc<dyn Counters>, key: String, id: u64) -> Self {
        Lease { counters, key, id }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.counters.release_slot(&self.key, self.id);
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lease({}, {})", self.key, self.id)
    }
}
