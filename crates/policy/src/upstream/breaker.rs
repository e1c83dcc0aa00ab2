//! The circuit breaker of one target.
//!
//! - **Closed**: requests pass. `consecutive_failures` failures in a row, or a failure share of
//!   at least `failure_ratio` once `window` contains `min_requests` requests, open the circuit.
//! - **Open**: no request passes until `cooldown` has passed since the circuit opened.
//! - **Half-open**: up to `half_open_requests` trial requests pass at once. That many successes
//!   close the circuit, and one failure opens it again for another `cooldown`.

use super::nanos;
use super::window::SlidingCounts;

/// Circuit-breaker settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerParams {
    pub consecutive_failures: u32,
    pub failure_ratio: Option<f64>,
    pub min_requests: u32,
    pub window_ns: u64,
    pub cooldown_ns: u64,
    pub half_open_requests: u32,
}

impl BreakerParams {
    pub fn from_spec(spec: &portcullis_config::CircuitBreakerSpec) -> Self {
        BreakerParams {
            consecutive_failures: spec.consecutive_failures.max(1),
            failure_ratio: spec.failure_ratio,
            min_requests: spec.min_requests.max(1),
            window_ns: nanos(spec.window),
            cooldown_ns: nanos(spec.cooldown),
            half_open_requests: spec.half_open_requests.max(1),
        }
    }
}

/// The state of a circuit, as reported to operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    pub fn name(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed,
    Open { since: u64 },
    HalfOpen { trials: u32, successes: u32 },
}

/// One target's circuit breaker.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    params: BreakerParams,
    state: State,
    consecutive_failures: u32,
    /// Requests and failures in the window, for `failure_ratio`.
    window: SlidingCounts,
}

impl CircuitBreaker {
    pub fn new(params: BreakerParams) -> Self {
        CircuitBreaker {
            params,
            state: State::Closed,
            consecutive_failures: 0,
            window: SlidingCounts::new(params.window_ns),
        }
    }

    /// Replaces the settings, keeping the state, as a config reload does.
    pub fn set_params(&mut self, params: BreakerParams) {
        if params.window_ns != self.params.window_ns {
            self.window = SlidingCounts::new(params.window_ns);
        }
        self.params = params;
    }

    /// Returns the state at `now`; an open circuit whose cooldown has passed reports half-open.
    pub fn state(&self, now: u64) -> CircuitState {
        match self.state {
            State::Closed => CircuitState::Closed,
            State::Open { since } if now.saturating_sub(since) >= self.params.cooldown_ns => {
                CircuitState::HalfOpen
            }
            State::Open { .. } => CircuitState::Open,
            State::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// Returns whether a request could pass at `now`, without taking a trial slot.
    pub fn would_allow(&self, now: u64) -> bool {
        match self.state {
            State::Closed => true,
            State::Open { since } => now.saturating_sub(since) >= self.params.cooldown_ns,
            State::HalfOpen { trials, .. } => trials < self.params.half_open_requests,
        }
    }

    /// Lets one request pass if the circuit allows it, taking a trial slot while half-open.
    /// Every `true` must be followed by exactly one [`record`](Self::record) or
    /// [`release`](Self::release).
    pub fn try_acquire(&mut self, now: u64) -> bool {
        if let State::Open { since } = self.state {
            if now.saturating_sub(since) < self.params.cooldown_ns {
                return false;
            }
            self.state = State::HalfOpen {
                trials: 0,
                successes: 0,
            };
        }
        match &mut self.state {
            State::Closed => true,
            State::HalfOpen { trials, .. } if *trials < self.params.half_open_requests => {
                *trials += 1;
                true
            }
            _ => false,
        }
    }

    /// Returns a slot taken by [`try_acquire`](Self::try_acquire) for a request that ended
    /// without an outcome, such as one the client cancelled.
    pub fn release(&mut self) {
        if let State::HalfOpen { trials, .. } = &mut self.state {
            *trials = trials.saturating_sub(1);
        }
    }

    /// Records the outcome of a request that [`try_acquire`](Self::try_acquire) let through and
    /// returns the new state when it changed.
    pub fn record(&mut self, success: bool, now: u64) -> Option<CircuitState> {
        match &mut self.state {
            State::Closed => {
                self.window.add(now, 1, u64::from(!success));
                if success {
                    self.consecutive_failures = 0;
                    return None;
                }
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                if self.consecutive_failures >= self.params.consecutive_failures
                    || self.ratio_exceeded(now)
                {
                    self.open(now);
                    return Some(CircuitState::Open);
                }
                None
            }
            State::HalfOpen { trials, successes } => {
                *trials = trials.saturating_sub(1);
                if !success {
                    self.open(now);
                    return Some(CircuitState::Open);
                }
                *successes += 1;
                if *successes >= self.params.half_open_requests {
                    self.close();
                    return Some(CircuitState::Closed);
                }
                None
            }
            // A request let through before the circuit opened; its outcome changes nothing.
            State::Open { .. } => None,
        }
    }

    fn ratio_exceeded(&self, now: u64) -> bool {
        let Some(ratio) = self.params.failure_ratio else {
            return false;
        };
        let (requests, failures) = self.window.sum(now);
        requests >= u64::from(self.params.min_requests)
            && failures as f64 >= ratio * requests as f64
    }

    fn open(&mut self, now: u64) {
        self.state = State::Open { since: now };
        self.consecutive_failures = 0;
        self.window.clear();
    }

    fn close(&mut self) {
        self.state = State::Closed;
        self.consecutive_failures = 0;
        self.window.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn params() -> BreakerParams {
        BreakerParams {
            consecutive_failures: 3,
            failure_ratio: None,
            min_requests: 10,
            window_ns: 10 * SECOND,
            cooldown_ns: 30 * SECOND,
            half_open_requests: 2,
        }
    }

    fn fail(breaker: &mut CircuitBreaker, now: u64) -> Option<CircuitState> {
        assert!(breaker.try_acquire(now), "the circuit rejected at {now}");
        breaker.record(false, now)
    }

    #[test]
    fn consecutive_failures_open_circuit() {
        let mut breaker = CircuitBreaker::new(params());
        assert_eq!(fail(&mut breaker, 1), None);
        assert_eq!(fail(&mut breaker, 2), None);
        assert_eq!(fail(&mut breaker, 3), Some(CircuitState::Open));
        assert_eq!(breaker.state(4), CircuitState::Open);
        assert!(!breaker.try_acquire(4));
        assert!(!breaker.would_allow(4));
    }

    #[test]
    fn success_resets_consecutive_count() {
        let mut breaker = CircuitBreaker::new(params());
        fail(&mut breaker, 1);
        fail(&mut breaker, 2);
        assert!(breaker.try_acquire(3));
        breaker.record(true, 3);
        assert_eq!(fail(&mut breaker, 4), None);
        assert_eq!(breaker.state(5), CircuitState::Closed);
    }

    #[test]
    fn cooldown_leads_to_half_open_trials() {
        let mut breaker = CircuitBreaker::new(params());
        for now in 1..=3 {
            fail(&mut breaker, now);
        }
        let after = 3 + 30 * SECOND;
        assert_eq!(breaker.state(after - 1), CircuitState::Open);
        assert_eq!(breaker.state(after), CircuitState::HalfOpen);
        assert!(breaker.try_acquire(after));
        assert!(breaker.try_acquire(after));
        assert!(
            !breaker.try_acquire(after),
            "only two trial requests at once"
        );
        assert_eq!(breaker.record(true, after + 1), None);
        assert_eq!(breaker.record(true, after + 2), Some(CircuitState::Closed));
        assert!(breaker.try_acquire(after + 3));
    }

    #[test]
    fn failed_trial_reopens_circuit() {
        let mut breaker = CircuitBreaker::new(params());
        for now in 1..=3 {
            fail(&mut breaker, now);
        }
        let after = 3 + 30 * SECOND;
        assert_eq!(fail(&mut breaker, after), Some(CircuitState::Open));
        assert!(!breaker.try_acquire(after + 29 * SECOND));
        assert!(breaker.try_acquire(after + 30 * SECOND));
    }

    #[test]
    fn released_trial_frees_slot() {
        let mut breaker = CircuitBreaker::new(BreakerParams {
            half_open_requests: 1,
            ..params()
        });
        for now in 1..=3 {
            fail(&mut breaker, now);
        }
        let after = 3 + 30 * SECOND;
        assert!(breaker.try_acquire(after));
        assert!(!breaker.try_acquire(after));
        breaker.release();
        assert!(breaker.try_acquire(after));
    }

    #[test]
    fn failure_ratio_opens_after_min_requests() {
        let mut breaker = CircuitBreaker::new(BreakerParams {
            consecutive_failures: 100,
            failure_ratio: Some(0.5),
            ..params()
        });
        // Alternate success and failure: a 50% failure share, never three failures in a row.
        for i in 0..9u64 {
            assert!(breaker.try_acquire(i));
            assert_eq!(breaker.record(i % 2 == 1, i), None, "request {i}");
        }
        // The 10th request reaches min_requests with 5 failures out of 10.
        assert!(breaker.try_acquire(9));
        assert_eq!(breaker.record(false, 9), Some(CircuitState::Open));
    }

    #[test]
    fn old_failures_leave_ratio_window() {
        let mut breaker = CircuitBreaker::new(BreakerParams {
            consecutive_failures: 100,
            failure_ratio: Some(0.5),
            min_requests: 4,
            ..params()
        });
        fail(&mut breaker, 0);
        fail(&mut breaker, 0);
        // Eleven seconds later the two failures have left the 10-second window.
        let later = 11 * SECOND;
        for i in 0..3 {
            assert!(breaker.try_acquire(later + i));
            assert_eq!(breaker.record(true, later + i), None);
        }
        assert_eq!(
            fail(&mut breaker, later + 3),
            None,
            "1 failure in 4 is below 0.5"
        );
    }
}
