//! In-process `ai-limits` counters: one entry per subject in a concurrent map.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

use super::{Amount, Levels, Limits, Outcome, Settlement, State, UsageFuture, UsageStore};

/// Operations between two sweeps of entries that no longer affect a decision.
const SWEEP_EVERY: u64 = 65_536;

/// `ai-limits` counters in the memory of this process.
#[derive(Debug, Default)]
pub struct MemoryUsage {
    state: DashMap<String, Entry>,
    operations: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    state: State,
    /// Microseconds after which the state no longer affects a decision.
    expires_at: u64,
}

impl MemoryUsage {
    pub fn new() -> Arc<Self> {
        Arc::new(MemoryUsage::default())
    }

    /// Runs `apply` on the state of `key` under the map's lock and stores the state it returns.
    fn update<T>(
        &self,
        key: &str,
        limits: &Limits,
        now_nanos: u64,
        apply: impl FnOnce(State, u64) -> (T, State),
    ) -> T {
        let now = now_nanos / 1_000;
        if self.operations.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.state.retain(|_, entry| entry.expires_at > now);
        }
        let mut entry = self.state.entry(key.to_string()).or_insert(Entry {
            state: State::default(),
            expires_at: 0,
        });
        let (result, state) = apply(entry.state, now);
        *entry = Entry {
            state,
            expires_at: super::expires_at(limits, &state),
        };
        result
    }
}

impl UsageStore for MemoryUsage {
    fn backend(&self) -> &'static str {
        "memory"
    }

    fn reserve<'a>(
        &'a self,
        key: &'a str,
        limits: &'a Limits,
        amount: Amount,
        now: u64,
    ) -> UsageFuture<'a, Outcome> {
        let outcome = self.update(key, limits, now, |state, now| {
            super::reserve(limits, state, amount, now)
        });
        Box::pin(std::future::ready(Ok(outcome)))
    }

    fn settle<'a>(
        &'a self,
        key: &'a str,
        limits: &'a Limits,
        settlement: Settlement,
        now: u64,
    ) -> UsageFuture<'a, Levels> {
        let levels = self.update(key, limits, now, |state, now| {
            super::settle(
                limits,
                state,
                settlement.reserved,
                settlement.actual,
                settlement.periods,
                now,
            )
        });
        Box::pin(std::future::ready(Ok(levels)))
    }
}
