//! The retry budget of one service, in the form Linkerd uses.
//!
//! Over a sliding `window`, retries may number at most `ratio` times the requests plus
//! `min_per_second` times the window length in seconds. The ratio caps the extra load that
//! retries add to a failing upstream (0.2 allows at most 1.2 attempts per request on average,
//! however many retries one request may make). The fixed allowance lets a service with little
//! traffic still retry.

use super::window::SlidingCounts;
use super::{NANOS_PER_SECOND, nanos};

/// Retry-budget settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetParams {
    pub ratio: f64,
    pub min_per_second: u32,
    pub window_ns: u64,
}

impl BudgetParams {
    pub fn from_spec(spec: &portcullis_config::RetryBudgetSpec) -> Self {
        BudgetParams {
            ratio: spec.ratio,
            min_per_second: spec.min_per_second,
            window_ns: nanos(spec.window),
        }
    }

    /// Returns the fixed allowance of retries per window.
    fn reserve(&self) -> f64 {
        f64::from(self.min_per_second) * self.window_ns as f64 / NANOS_PER_SECOND as f64
    }
}

/// Requests and retries of one service over the window.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    params: BudgetParams,
    /// First count: requests; second: retries.
    counts: SlidingCounts,
}

impl RetryBudget {
    pub fn new(params: BudgetParams) -> Self {
        RetryBudget {
            params,
            counts: SlidingCounts::new(params.window_ns),
        }
    }

    /// Replaces the settings, keeping the counts unless the window changed.
    pub fn set_params(&mut self, params: BudgetParams) {
        if params.window_ns != self.params.window_ns {
            self.counts = SlidingCounts::new(params.window_ns);
        }
        self.params = params;
    }

    /// Counts one request (its first attempt).
    pub fn record_request(&mut self, now: u64) {
        self.counts.add(now, 1, 0);
    }

    /// Takes one retry from the budget; returns false, taking nothing, when it is spent.
    pub fn try_retry(&mut self, now: u64) -> bool {
        let (requests, retries) = self.counts.sum(now);
        let allowed = self.params.ratio * requests as f64 + self.params.reserve();
        if (retries + 1) as f64 > allowed {
            return false;
        }
        self.counts.add(now, 0, 1);
        true
    }

    /// Returns the requests and retries counted in the window ending at `now`.
    pub fn counts(&self, now: u64) -> (u64, u64) {
        self.counts.sum(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = NANOS_PER_SECOND;

    #[test]
    fn retries_stay_within_ratio() {
        let mut budget = RetryBudget::new(BudgetParams {
            ratio: 0.2,
            min_per_second: 0,
            window_ns: 10 * SECOND,
        });
        let mut granted = 0;
        for i in 0..100 {
            let now = i * SECOND / 20;
            budget.record_request(now);
            // Every request tries three retries, as when all targets fail.
            for _ in 0..3 {
                if budget.try_retry(now) {
                    granted += 1;
                }
            }
        }
        assert_eq!(granted, 20, "20% of 100 requests");
    }

    #[test]
    fn reserve_allows_retries_at_low_traffic() {
        let mut budget = RetryBudget::new(BudgetParams {
            ratio: 0.2,
            min_per_second: 1,
            window_ns: 10 * SECOND,
        });
        budget.record_request(0);
        let granted = (0..20).filter(|_| budget.try_retry(0)).count();
        // 10 from the reserve (1 per second over 10 s); 0.2 of one request adds nothing whole.
        assert_eq!(granted, 10);
    }

    #[test]
    fn budget_refills_as_window_slides() {
        let mut budget = RetryBudget::new(BudgetParams {
            ratio: 0.5,
            min_per_second: 0,
            window_ns: 10 * SECOND,
        });
        for _ in 0..4 {
            budget.record_request(0);
        }
        assert!(budget.try_retry(0));
        assert!(budget.try_retry(0));
        assert!(!budget.try_retry(0));
        assert_eq!(budget.counts(0), (4, 2));
        // Past the window the old requests and retries no longer count.
        let later = 11 * SECOND;
        assert_eq!(budget.counts(later), (0, 0));
        assert!(!budget.try_retry(later), "no requests, no reserve");
        budget.record_request(later);
        budget.record_request(later);
        assert!(budget.try_retry(later));
    }

    #[test]
    fn zero_ratio_and_reserve_deny_all() {
        let mut budget = RetryBudget::new(BudgetParams {
            ratio: 0.0,
            min_per_second: 0,
            window_ns: SECOND,
        });
        for _ in 0..10 {
            budget.record_request(5);
        }
        assert!(!budget.try_retry(5));
    }
}
