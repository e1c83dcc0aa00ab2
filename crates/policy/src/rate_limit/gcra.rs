//! Rate limiting with the generic cell rate algorithm (GCRA).
//!
//! A limit of `limit` requests per `window` with a burst of `burst` admits up to `burst`
//! requests at once and then one request every `window / limit`. GCRA keeps a single number per
//! key, the theoretical arrival time (TAT) of the next request, so the state is small and an
//! update is one compare and one write. That is what lets the same algorithm run in process
//! ([`super::MemoryCounters`]) and as an atomic script in a shared store.
//!
//! Time is passed in as nanoseconds on a caller-chosen monotonic clock, so tests drive the
//! algorithm with fixed instants.

use std::time::Duration;

use super::Decision;

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

    /// Applies up to `count` requests at `now` to a key whose stored TAT is `tat`. Returns how
    /// many were admitted, the decision for the first one and the TAT to store.
    pub fn check_many(&self, tat: Option<u64>, now: u64, count: u64) -> (u64, Decision, u64) {
        let (first, next_tat) = self.check(tat, now);
        if !first.allowed || count <= 1 {
            return (u64::from(first.allowed), first, next_tat);
        }
        // Each further request moves the TAT by one emission interval; it fits while the TAT
        // stays within one burst span of `now`.
        let limit_tat = now.saturating_add(self.burst_span());
        let more = (limit_tat.saturating_sub(next_tat) / self.emission_interval).min(count - 1);
        let final_tat = next_tat + more * self.emission_interval;
        let decision = Decision {
            remaining: first.remaining.saturating_sub(more),
            reset_after: std::time::Duration::from_nanos(final_tat - now),
            ..first
        };
        (1 + more, decision, final_tat)
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
    fn check_many_grants_up_to_the_burst() {
        let gcra = Gcra::new(10, Duration::from_secs(1), 10);
        let (granted, decision, tat) = gcra.check_many(None, 0, 4);
        assert_eq!(granted, 4);
        assert_eq!(decision.remaining, 6);
        let (granted, decision, tat) = gcra.check_many(Some(tat), 0, 100);
        assert_eq!(granted, 6);
        assert_eq!(decision.remaining, 0);
        let (granted, decision, _) = gcra.check_many(Some(tat), 0, 1);
        assert_eq!(granted, 0);
        assert_eq!(decision.retry_after, Some(Duration::from_millis(100)));
    }
}
