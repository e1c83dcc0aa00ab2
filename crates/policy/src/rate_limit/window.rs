//! The sliding-window counter.
//!
//! Time is cut into fixed windows of length `window`, aligned to the epoch. A key keeps the
//! counts of the current and the previous window, and estimates the requests of the last
//! `window` as `previous * (1 - elapsed / window) + current`, where `elapsed` is the time since
//! the current window began. A request is admitted when that estimate plus one stays within
//! `limit`. The estimate assumes the previous window's requests were spread evenly, so it can
//! be off in either direction when they were not. In exchange, a window boundary never lets
//! `2 * limit` requests through as it does for a plain fixed window, and the state of a key is
//! three numbers.

use std::time::Duration;

use super::{Decision, State};

/// Sliding-window parameters: at most `limit` requests in any `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlidingWindow {
    pub limit: u64,
    pub window: Duration,
    window_ns: u64,
}

impl SlidingWindow {
    /// Builds the parameters; a `limit` or `window` of zero is raised to the smallest value.
    pub fn new(limit: u64, window: Duration) -> Self {
        SlidingWindow {
            limit: limit.max(1),
            window,
            window_ns: u64::try_from(window.as_nanos()).unwrap_or(u64::MAX).max(1),
        }
    }

    /// Returns the window length in nanoseconds.
    pub fn window_nanos(&self) -> u64 {
        self.window_ns
    }

    /// Returns the start, in nanoseconds, of the fixed window with this index.
    pub fn window_start(&self, index: u64) -> u64 {
        index.saturating_mul(self.window_ns)
    }

    /// Returns the counts `(current, previous)` in effect at the window `index`.
    fn counts_at(state: Option<State>, index: u64) -> (u64, u64) {
        match state {
            Some(State::Window {
                index: stored,
                current,
                previous,
            }) => {
                if stored == index {
                    (current, previous)
                } else if stored.checked_add(1) == Some(index) {
                    (0, current)
                } else {
                    (0, 0)
                }
            }
            _ => (0, 0),
        }
    }

    /// Applies up to `count` requests at `now` and returns how many were admitted, the decision
    /// for the first one and the state to store.
    pub fn check_many(&self, state: Option<State>, now: u64, count: u64) -> (u64, Decision, State) {
        let w = u128::from(self.window_ns);
        let index = now / self.window_ns;
        let elapsed = u128::from(now % self.window_ns);
        let (current, previous) = Self::counts_at(state, index);
        // Scaled by the window length so that the weighting stays in integers:
        // used * w = previous * (w - elapsed) + current * w.
        let used_scaled = u128::from(previous) * (w - elapsed) + u128::from(current) * w;
        let capacity_scaled = u128::from(self.limit) * w;
        let free = capacity_scaled.saturating_sub(used_scaled) / w;
        let granted = u64::try_from(free).unwrap_or(u64::MAX).min(count);
        let current = current.saturating_add(granted);
        let stored = State::Window {
            index,
            current,
            previous,
        };
        let until_window_end = self.window_ns - (now % self.window_ns);
        if granted == 0 {
            let decision = Decision {
                allowed: false,
                remaining: 0,
                reset_after: Duration::from_nanos(until_window_end),
                retry_after: Some(Duration::from_nanos(
                    self.retry_after(current, previous, elapsed),
                )),
            };
            return (0, decision, stored);
        }
        let used_after = u128::from(previous) * (w - elapsed) + u128::from(current) * w;
        let remaining = capacity_scaled.saturating_sub(used_after) / w;
        let decision = Decision {
            allowed: true,
            remaining: u64::try_from(remaining).unwrap_or(u64::MAX),
            reset_after: Duration::from_nanos(until_window_end),
            retry_after: None,
        };
        (granted, decision, stored)
    }

    /// Applies one request at `now`.
    pub fn check(&self, state: Option<State>, now: u64) -> (Decision, State) {
        let (_, decision, stored) = self.check_many(state, now, 1);
        (decision, stored)
    }

    /// Returns the nanoseconds until one more request fits, for a key that is full now.
    fn retry_after(&self, current: u64, previous: u64, elapsed: u128) -> u64 {
        let w = u128::from(self.window_ns);
        let limit = u128::from(self.limit);
        let current = u128::from(current);
        let previous = u128::from(previous);
        // Within the current window the previous count fades: one more fits once
        // previous * (w - elapsed') <= (limit - current - 1) * w.
        if current < limit && previous > 0 {
            let allowed_weight = (limit - current - 1) * w;
            let fade_until = w - allowed_weight.div_ceil(previous).min(w);
            if fade_until < w {
                return u64::try_from(fade_until.saturating_sub(elapsed).max(1)).unwrap_or(1);
            }
        }
        // Otherwise in the next window, where this window's count becomes the fading one:
        // current * (w - e) <= (limit - 1) * w.
        let to_next = w - elapsed;
        // With no requests in this window, the next one starts empty (`checked_div` is `None`).
        let into_next = ((limit - 1) * w)
            .checked_div(current)
            .map_or(0, |fits_until| w - fits_until.min(w));
        u64::try_from(to_next + into_next).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const SECOND: u64 = 1_000 * MS;

    fn admit_all(window: &SlidingWindow, state: &mut Option<State>, now: u64, n: u64) -> u64 {
        let mut admitted = 0;
        for _ in 0..n {
            let (decision, next) = window.check(*state, now);
            *state = Some(next);
            admitted += u64::from(decision.allowed);
        }
        admitted
    }

    #[test]
    fn admits_the_limit_within_one_window() {
        let window = SlidingWindow::new(10, Duration::from_secs(1));
        let mut state = None;
        assert_eq!(admit_all(&window, &mut state, 100 * SECOND, 25), 10);
        let (decision, _) = window.check(state, 100 * SECOND + 999 * MS);
        assert!(!decision.allowed);
    }

    #[test]
    fn boundary_does_not_double_the_limit() {
        let window = SlidingWindow::new(10, Duration::from_secs(1));
        let mut state = None;
        // Ten requests at the very end of one window...
        assert_eq!(admit_all(&window, &mut state, 10 * SECOND - MS, 10), 10);
        // ...still weigh almost fully right after the boundary, where a fixed window resets.
        assert_eq!(admit_all(&window, &mut state, 10 * SECOND + MS, 10), 0);
        // Halfway through, half of them have faded.
        assert_eq!(
            admit_all(&window, &mut state, 10 * SECOND + 500 * MS, 10),
            5
        );
    }

    #[test]
    fn rejection_reports_exact_retry_after() {
        let window = SlidingWindow::new(10, Duration::from_secs(1));
        let mut state = None;
        admit_all(&window, &mut state, 0, 10);
        let (decision, _) = window.check(state, 0);
        assert!(!decision.allowed);
        // In the next window ten requests weigh 10 * (1 - e), so one more fits at e = 0.1 s.
        let retry = decision.retry_after.unwrap();
        assert_eq!(retry, Duration::from_millis(1_100));
        let (before, _) = window.check(state, retry.as_nanos() as u64 - 1);
        assert!(!before.allowed);
        let (at, _) = window.check(state, retry.as_nanos() as u64);
        assert!(at.allowed);
    }

    #[test]
    fn retry_within_window_as_previous_fades() {
        let window = SlidingWindow::new(4, Duration::from_secs(1));
        let mut state = None;
        admit_all(&window, &mut state, 0, 4);
        // At 1.5 s the previous four weigh 2, so two more fit.
        assert_eq!(admit_all(&window, &mut state, 1_500 * MS, 5), 2);
        let (decision, _) = window.check(state, 1_500 * MS);
        // Now 4 * (1 - e) + 2 <= 3 needs e >= 0.75 s, so 250 ms from now.
        assert_eq!(decision.retry_after, Some(Duration::from_millis(250)));
        let (at, _) = window.check(state, 1_750 * MS);
        assert!(at.allowed);
    }

    #[test]
    fn idle_key_starts_empty() {
        let window = SlidingWindow::new(3, Duration::from_secs(1));
        let mut state = None;
        admit_all(&window, &mut state, 0, 3);
        assert_eq!(admit_all(&window, &mut state, 5 * SECOND, 5), 3);
    }

    #[test]
    fn remaining_and_reset_follow_the_window() {
        let window = SlidingWindow::new(5, Duration::from_secs(10));
        let (decision, state) = window.check(None, 3 * SECOND);
        assert_eq!(decision.remaining, 4);
        assert_eq!(decision.reset_after, Duration::from_secs(7));
        let (decision, _) = window.check(Some(state), 4 * SECOND);
        assert_eq!(decision.remaining, 3);
    }

    #[test]
    fn check_many_grants_what_fits() {
        let window = SlidingWindow::new(10, Duration::from_secs(1));
        let (granted, decision, state) = window.check_many(None, 0, 4);
        assert_eq!(granted, 4);
        assert_eq!(decision.remaining, 6);
        let (granted, _, state) = window.check_many(Some(state), 0, 100);
        assert_eq!(granted, 6);
        let (granted, decision, _) = window.check_many(Some(state), 0, 1);
        assert_eq!(granted, 0);
        assert!(!decision.allowed);
    }

    #[test]
    fn steady_overload_admits_the_limit_per_window() {
        let window = SlidingWindow::new(100, Duration::from_secs(1));
        let mut state = None;
        let mut admitted = 0;
        // One request every millisecond for ten seconds.
        for i in 0..10_000u64 {
            let (decision, next) = window.check(state, i * MS);
            state = Some(next);
            admitted += u64::from(decision.allowed);
        }
        // The estimate weighs the previous window as if its requests were spread evenly, but they
        // bunch where the window had room, so a little under the limit gets through.
        assert!((985..=1_000).contains(&admitted), "admitted {admitted}");
    }
}
