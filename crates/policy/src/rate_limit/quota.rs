//! Fixed-window quotas aligned to the UTC calendar: per day or per month.
//!
//! A day starts at 00:00:00 UTC and a month on its first day at 00:00:00 UTC, so every node and
//! every shared counter agree on the period without storing its start. The count resets at once
//! when a period ends, as a billing quota does. That reset lets `2 * limit` requests through
//! around a boundary, so short rate limits use GCRA or the sliding window instead.

use std::time::Duration;

use super::{Decision, State};

const SECONDS_PER_DAY: u64 = 86_400;
const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// The calendar period of a quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Day,
    Month,
}

/// Quota parameters: at most `limit` requests per calendar period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub limit: u64,
    pub period: Period,
}

impl Quota {
    pub fn new(limit: u64, period: Period) -> Self {
        Quota {
            limit: limit.max(1),
            period,
        }
    }

    /// Returns the start of the period that contains `seconds` (since the epoch), in seconds.
    pub fn period_start(&self, seconds: u64) -> u64 {
        let day = seconds / SECONDS_PER_DAY;
        match self.period {
            Period::Day => day * SECONDS_PER_DAY,
            Period::Month => {
                let (year, month, _) = civil_from_days(day);
                days_from_civil(year, month, 1) * SECONDS_PER_DAY
            }
        }
    }

    /// Returns the end of the period that starts at `start` (seconds since the epoch).
    pub fn period_end(&self, start: u64) -> u64 {
        match self.period {
            Period::Day => start + SECONDS_PER_DAY,
            Period::Month => {
                let (year, month, _) = civil_from_days(start / SECONDS_PER_DAY);
                let (year, month) = if month == 12 {
                    (year + 1, 1)
                } else {
                    (year, month + 1)
                };
                days_from_civil(year, month, 1) * SECONDS_PER_DAY
            }
        }
    }

    /// Returns the length of the period that contains `now` (nanoseconds since the epoch).
    pub fn period_length_at(&self, now: u64) -> Duration {
        let start = self.period_start(now / NANOS_PER_SECOND);
        Duration::from_secs(self.period_end(start) - start)
    }

    /// Applies up to `count` requests at `now` and returns how many were admitted, the decision
    /// for the first one and the state to store.
    pub fn check_many(&self, state: Option<State>, now: u64, count: u64) -> (u64, Decision, State) {
        let start = self.period_start(now / NANOS_PER_SECOND);
        let used = match state {
            Some(State::Quota {
                period_start,
                count,
            }) if period_start == start => count,
            _ => 0,
        };
        let granted = self.limit.saturating_sub(used).min(count);
        let used = used + granted;
        let end_ns = self.period_end(start).saturating_mul(NANOS_PER_SECOND);
        let until_end = Duration::from_nanos(end_ns.saturating_sub(now));
        let decision = Decision {
            allowed: granted > 0,
            remaining: self.limit - used,
            reset_after: until_end,
            retry_after: (granted == 0).then_some(until_end),
        };
        let state = State::Quota {
            period_start: start,
            count: used,
        };
        (granted, decision, state)
    }

    /// Applies one request at `now`.
    pub fn check(&self, state: Option<State>, now: u64) -> (Decision, State) {
        let (_, decision, state) = self.check_many(state, now, 1);
        (decision, state)
    }
}

/// Converts days since 1970-01-01 to a proleptic Gregorian `(year, month, day)`, with the
/// algorithm of Howard Hinnant's "chrono-Compatible Low-Level Date Algorithms".
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Converts a proleptic Gregorian date from 1970 on to days since 1970-01-01; the inverse of
/// [`civil_from_days`].
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year / 400;
    let year_of_era = year - era * 400;
    let shifted_month = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * shifted_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Returns nanoseconds since the epoch for a UTC date and time.
    fn at(year: u64, month: u64, day: u64, hour: u64, minute: u64, second: u64) -> u64 {
        let seconds = days_from_civil(year, month, day) * SECONDS_PER_DAY
            + hour * 3_600
            + minute * 60
            + second;
        seconds * NANOS_PER_SECOND
    }

    #[test]
    fn calendar_conversion_round_trips() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        // 2024-02-29 is day 19782 (a leap day).
        assert_eq!(days_from_civil(2024, 2, 29), 19_782);
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        for day in (0..200_000).step_by(7) {
            let (year, month, day_of_month) = civil_from_days(day);
            assert_eq!(days_from_civil(year, month, day_of_month), day);
        }
    }

    #[test]
    fn daily_quota_rolls_over_at_midnight_utc() {
        let quota = Quota::new(2, Period::Day);
        let evening = at(2026, 3, 14, 23, 59, 59);
        let (first, state) = quota.check(None, evening);
        let (second, state) = quota.check(Some(state), evening);
        let (third, state) = quota.check(Some(state), evening);
        assert!(first.allowed);
        assert_eq!(second.remaining, 0);
        assert!(!third.allowed);
        assert_eq!(third.retry_after, Some(Duration::from_secs(1)));

        let midnight = at(2026, 3, 15, 0, 0, 0);
        let (after, state) = quota.check(Some(state), midnight);
        assert!(after.allowed);
        assert_eq!(after.remaining, 1);
        assert_eq!(after.reset_after, Duration::from_secs(86_400));
        assert_eq!(
            state,
            State::Quota {
                period_start: midnight / NANOS_PER_SECOND,
                count: 1
            }
        );
    }

    #[test]
    fn monthly_quota_follows_month_lengths() {
        let quota = Quota::new(1, Period::Month);
        let cases = [
            (at(2026, 1, 31, 12, 0, 0), at(2026, 2, 1, 0, 0, 0), 31),
            (at(2026, 2, 10, 0, 0, 0), at(2026, 3, 1, 0, 0, 0), 28),
            (at(2028, 2, 10, 0, 0, 0), at(2028, 3, 1, 0, 0, 0), 29),
            (at(2026, 4, 30, 23, 59, 59), at(2026, 5, 1, 0, 0, 0), 30),
            (at(2026, 12, 31, 23, 0, 0), at(2027, 1, 1, 0, 0, 0), 31),
        ];
        for (now, next_period, days) in cases {
            let (decision, state) = quota.check(None, now);
            assert!(decision.allowed, "first request at {now}");
            assert_eq!(
                decision.reset_after,
                Duration::from_nanos(next_period - now)
            );
            assert_eq!(
                quota.period_length_at(now),
                Duration::from_secs(days * 86_400)
            );
            let (rejected, state) = quota.check(Some(state), next_period - 1);
            assert!(!rejected.allowed, "second request in the period of {now}");
            let (renewed, _) = quota.check(Some(state), next_period);
            assert!(
                renewed.allowed,
                "first request of the next period after {now}"
            );
        }
    }

    #[test]
    fn check_many_grants_the_rest() {
        let quota = Quota::new(10, Period::Day);
        let now = at(2026, 6, 1, 8, 0, 0);
        let (granted, _, state) = quota.check_many(None, now, 7);
        assert_eq!(granted, 7);
        let (granted, decision, _) = quota.check_many(Some(state), now, 7);
        assert_eq!(granted, 3);
        assert_eq!(decision.remaining, 0);
    }
}
