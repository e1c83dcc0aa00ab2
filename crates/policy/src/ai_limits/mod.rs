//! Token limits and money budgets of AI calls, kept as reservations.
//!
//! A call first reserves an estimate: its input tokens estimated from the request, its maximum
//! output, and the cost of both at the highest price of its targets. The reservation is admitted
//! only when it fits every limit of the subject (a consumer or a team). When the call ends, it
//! is settled with the real usage, which returns the unused part or charges the difference.
//!
//! Three limits can apply together:
//!
//! - tokens per minute: a bucket of `limit` tokens refilled continuously at `limit` per minute,
//!   kept as one theoretical arrival time as in GCRA,
//! - tokens per calendar day in UTC,
//! - a budget in millionths of a currency unit per calendar day or month in UTC.
//!
//! The functions here are pure: [`reserve`] and [`settle`] take the stored [`State`] and the
//! time, and return the outcome and the next state. [`MemoryUsage`] runs them in process, and
//! [`RedisUsage`] runs a Lua script that mirrors them step by step, so that nodes sharing Redis
//! enforce one limit together. Times are microseconds since the Unix epoch, as in the script,
//! whose numbers are doubles.

mod memory;
mod redis;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub use memory::MemoryUsage;
pub use redis::RedisUsage;

use crate::rate_limit::{CounterError, Period, Quota};

/// Length of the token bucket's refill window, in microseconds.
pub const MINUTE_MICROS: u64 = 60_000_000;
const MICROS_PER_SECOND: u64 = 1_000_000;

/// The limits of one `ai-limits` instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub tokens_per_minute: Option<u64>,
    pub tokens_per_day: Option<u64>,
    pub budget: Option<Budget>,
}

/// A money budget per calendar period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Spend allowed per period, in millionths of the currency unit.
    pub micros: u64,
    pub period: Period,
}

/// Tokens and cost of one call, estimated or real.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Amount {
    pub tokens: u64,
    /// Cost in millionths of the currency unit.
    pub cost_micros: u64,
}

/// The stored counters of one subject.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct State {
    /// Theoretical arrival time of the token bucket (us): it is full at and after this time.
    pub minute_tat: u64,
    /// Start of the day counted in `day_used`, in seconds since the epoch.
    pub day_start: u64,
    pub day_used: u64,
    /// Start of the budget period counted in `budget_used`, in seconds since the epoch.
    pub budget_start: u64,
    pub budget_used: u64,
}

/// The calendar periods a reservation was counted in, so that the settlement corrects the same
/// counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Periods {
    pub day_start: u64,
    pub budget_start: u64,
}

/// One of the three limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    TokensPerMinute,
    TokensPerDay,
    Budget,
}

impl LimitKind {
    /// Returns the config key of the limit, for metrics and messages.
    pub fn name(self) -> &'static str {
        match self {
            LimitKind::TokensPerMinute => "tokens_per_minute",
            LimitKind::TokensPerDay => "tokens_per_day",
            LimitKind::Budget => "budget",
        }
    }
}

/// The state of one limit after an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Level {
    pub limit: u64,
    pub remaining: u64,
    /// Time until the limit is whole again: the refilled bucket or the end of the period.
    pub reset_after: Duration,
}

/// The state of each configured limit after an operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Levels {
    pub tokens_per_minute: Option<Level>,
    pub tokens_per_day: Option<Level>,
    pub budget: Option<Level>,
}

impl Levels {
    /// Returns each configured limit with its level.
    pub fn iter(&self) -> impl Iterator<Item = (LimitKind, Level)> + '_ {
        [
            (LimitKind::TokensPerMinute, self.tokens_per_minute),
            (LimitKind::TokensPerDay, self.tokens_per_day),
            (LimitKind::Budget, self.budget),
        ]
        .into_iter()
        .filter_map(|(kind, level)| Some((kind, level?)))
    }
}

/// The outcome of a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The estimate is counted; settle it with the same `periods`.
    Admitted { periods: Periods, levels: Levels },
    /// The estimate does not fit `kind`, and nothing was counted.
    Rejected {
        kind: LimitKind,
        /// When the reservation would fit, or `None` when it is larger than the limit itself.
        retry_after: Option<Duration>,
        levels: Levels,
    },
}

/// Reserves `amount` for a call at `now` (microseconds since the epoch) under `limits`.
pub fn reserve(limits: &Limits, state: State, amount: Amount, now: u64) -> (Outcome, State) {
    let mut next = state;
    // The first limit that rejects and the time after which every rejecting limit has room.
    // The budget is checked first, then the day, then the minute, so that the longest wait
    // names the rejection.
    let mut rejection: Option<(LimitKind, Option<u64>)> = None;
    let mut reject = |kind: LimitKind, retry: Option<u64>| {
        rejection = Some(match rejection {
            None => (kind, retry),
            Some((first, first_retry)) => (first, first_retry.zip(retry).map(|(a, b)| a.max(b))),
        });
    };

    if let Some(budget) = limits.budget {
        let (start, end) = period_bounds(&Quota::new(1, budget.period), now);
        let used = used_in(state.budget_start, state.budget_used, start);
        if amount.cost_micros > budget.micros {
            reject(LimitKind::Budget, None);
        } else if used + amount.cost_micros > budget.micros {
            reject(LimitKind::Budget, Some(end - now));
        }
        next.budget_start = start;
        next.budget_used = used + amount.cost_micros;
    }
    if let Some(limit) = limits.tokens_per_day {
        let (start, end) = period_bounds(&Quota::new(1, Period::Day), now);
        let used = used_in(state.day_start, state.day_used, start);
        if amount.tokens > limit {
            reject(LimitKind::TokensPerDay, None);
        } else if used + amount.tokens > limit {
            reject(LimitKind::TokensPerDay, Some(end - now));
        }
        next.day_start = start;
        next.day_used = used + amount.tokens;
    }
    if let Some(limit) = limits.tokens_per_minute {
        let new_tat = state.minute_tat.max(now) + bucket_cost(amount.tokens, limit);
        if amount.tokens > limit {
            reject(LimitKind::TokensPerMinute, None);
        } else if new_tat - now > MINUTE_MICROS {
            reject(
                LimitKind::TokensPerMinute,
                Some(new_tat - MINUTE_MICROS - now),
            );
        }
        next.minute_tat = new_tat;
    }

    match rejection {
        Some((kind, retry)) => (
            Outcome::Rejected {
                kind,
                retry_after: retry.map(Duration::from_micros),
                levels: current_levels(limits, &state, now),
            },
            state,
        ),
        None => {
            let periods = Periods {
                day_start: next.day_start,
                budget_start: next.budget_start,
            };
            let levels = current_levels(limits, &next, now);
            (Outcome::Admitted { periods, levels }, next)
        }
    }
}

/// Settles a call: replaces the `reserved` amount, counted in `periods`, with the `actual`
/// amount. `periods` is `None` for a call that was never reserved, such as one admitted while
/// the backend failed, whose actual amount is then charged to the current periods. A period
/// that ended since the reservation is left alone.
pub fn settle(
    limits: &Limits,
    state: State,
    reserved: Amount,
    actual: Amount,
    periods: Option<Periods>,
    now: u64,
) -> (Levels, State) {
    let mut next = state;
    if let Some(limit) = limits.tokens_per_minute {
        let charged = state.minute_tat.max(now) + bucket_cost(actual.tokens, limit);
        next.minute_tat = charged.saturating_sub(bucket_cost(reserved.tokens, limit));
    }
    if limits.tokens_per_day.is_some() {
        let (start, _) = period_bounds(&Quota::new(1, Period::Day), now);
        (next.day_start, next.day_used) = correct(
            (state.day_start, state.day_used),
            periods.map(|periods| periods.day_start),
            start,
            reserved.tokens,
            actual.tokens,
        );
    }
    if let Some(budget) = limits.budget {
        let (start, _) = period_bounds(&Quota::new(1, budget.period), now);
        (next.budget_start, next.budget_used) = correct(
            (state.budget_start, state.budget_used),
            periods.map(|periods| periods.budget_start),
            start,
            reserved.cost_micros,
            actual.cost_micros,
        );
    }
    (current_levels(limits, &next, now), next)
}

/// Returns the instant (us) after which `state` no longer affects a decision.
pub fn expires_at(limits: &Limits, state: &State) -> u64 {
    let mut at = state.minute_tat;
    if limits.tokens_per_day.is_some() {
        let period = Quota::new(1, Period::Day);
        at = at.max(period.period_end(state.day_start) * MICROS_PER_SECOND);
    }
    if let Some(budget) = limits.budget {
        let period = Quota::new(1, budget.period);
        at = at.max(period.period_end(state.budget_start) * MICROS_PER_SECOND);
    }
    at
}

/// Returns the level of each limit in `state` at `now`.
fn current_levels(limits: &Limits, state: &State, now: u64) -> Levels {
    let mut levels = Levels::default();
    if let Some(limit) = limits.tokens_per_minute {
        levels.tokens_per_minute = Some(bucket_level(limit, state.minute_tat.max(now), now));
    }
    if let Some(limit) = limits.tokens_per_day {
        let (start, end) = period_bounds(&Quota::new(1, Period::Day), now);
        let used = used_in(state.day_start, state.day_used, start);
        levels.tokens_per_day = Some(calendar_level(limit, used, end - now));
    }
    if let Some(budget) = limits.budget {
        let (start, end) = period_bounds(&Quota::new(1, budget.period), now);
        let used = used_in(state.budget_start, state.budget_used, start);
        levels.budget = Some(calendar_level(budget.micros, used, end - now));
    }
    levels
}

/// Returns the start (seconds) and end (us) of the period that contains `now` (us).
fn period_bounds(period: &Quota, now: u64) -> (u64, u64) {
    let start = period.period_start(now / MICROS_PER_SECOND);
    (start, period.period_end(start) * MICROS_PER_SECOND)
}

/// Returns the count stored for the period `stored_start` if it is the period `start`, else 0.
fn used_in(stored_start: u64, stored_used: u64, start: u64) -> u64 {
    if stored_start == start {
        stored_used
    } else {
        0
    }
}

/// Applies a settlement to one calendar count: `(start, used)` stored, the period the
/// reservation was counted in, and the current period `start`.
fn correct(
    stored: (u64, u64),
    reserved_in: Option<u64>,
    start: u64,
    reserved: u64,
    actual: u64,
) -> (u64, u64) {
    let (stored_start, stored_used) = stored;
    match reserved_in {
        Some(period) if period == stored_start => (
            stored_start,
            (stored_used + actual).saturating_sub(reserved),
        ),
        // The reservation's period has ended and its count no longer matters.
        Some(_) => stored,
        None => (start, used_in(stored_start, stored_used, start) + actual),
    }
}

/// Returns the bucket time (us) that `tokens` take under a limit of `limit` tokens per minute,
/// rounded up. Computed in doubles in the same order as the Lua script.
fn bucket_cost(tokens: u64, limit: u64) -> u64 {
    (tokens as f64 * MINUTE_MICROS as f64 / limit as f64).ceil() as u64
}

fn bucket_level(limit: u64, tat: u64, now: u64) -> Level {
    let busy = (tat - now).min(MINUTE_MICROS);
    let free = ((MINUTE_MICROS - busy) as f64 * limit as f64 / MINUTE_MICROS as f64).floor();
    Level {
        limit,
        remaining: free as u64,
        reset_after: Duration::from_micros(tat - now),
    }
}

fn calendar_level(limit: u64, used: u64, until_end: u64) -> Level {
    Level {
        limit,
        remaining: limit.saturating_sub(used),
        reset_after: Duration::from_micros(until_end),
    }
}

/// A boxed future returned by [`UsageStore`].
pub type UsageFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, CounterError>> + Send + 'a>>;

/// A store of `ai-limits` counters: in process, or shared between nodes.
pub trait UsageStore: Send + Sync + 'static {
    /// Returns the backend name for logs and metrics.
    fn backend(&self) -> &'static str;

    /// Returns the address of the backend for logs, such as `127.0.0.1:6379`.
    fn address(&self) -> &str {
        ""
    }

    /// Atomically reserves `amount` for `key`. `now` is nanoseconds since the Unix epoch on the
    /// caller's clock; a shared backend uses its own clock instead.
    fn reserve<'a>(
        &'a self,
        key: &'a str,
        limits: &'a Limits,
        amount: Amount,
        now: u64,
    ) -> UsageFuture<'a, Outcome>;

    /// Atomically settles a reservation of `key`; see [`settle`].
    fn settle<'a>(
        &'a self,
        key: &'a str,
        limits: &'a Limits,
        settlement: Settlement,
        now: u64,
    ) -> UsageFuture<'a, Levels>;
}

/// What a settlement replaces and with what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settlement {
    pub reserved: Amount,
    pub actual: Amount,
    pub periods: Option<Periods>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400 * MICROS_PER_SECOND;
    /// 2026-12-04T12:00:00Z in microseconds.
    const NOON: u64 = 1_796_385_600 * MICROS_PER_SECOND;

    fn limits() -> Limits {
        Limits {
            tokens_per_minute: Some(1_000),
            tokens_per_day: Some(5_000),
            budget: Some(Budget {
                micros: 10_000,
                period: Period::Month,
            }),
        }
    }

    fn amount(tokens: u64, cost_micros: u64) -> Amount {
        Amount {
            tokens,
            cost_micros,
        }
    }

    fn admitted(outcome: Outcome) -> (Periods, Levels) {
        match outcome {
            Outcome::Admitted { periods, levels } => (periods, levels),
            Outcome::Rejected { kind, .. } => panic!("rejected by {kind:?}"),
        }
    }

    #[test]
    fn reservation_counts_every_limit() {
        let (outcome, state) = reserve(&limits(), State::default(), amount(600, 4_000), NOON);
        let (periods, levels) = admitted(outcome);
        assert_eq!(periods.day_start, NOON / MICROS_PER_SECOND - 12 * 3_600);
        assert_eq!(levels.tokens_per_minute.unwrap().remaining, 400);
        assert_eq!(levels.tokens_per_day.unwrap().remaining, 4_400);
        assert_eq!(levels.budget.unwrap().remaining, 6_000);
        assert_eq!(state.minute_tat, NOON + 36_000_000);
    }

    #[test]
    fn reservation_over_minute_waits_for_refill() {
        let (_, state) = reserve(&limits(), State::default(), amount(600, 0), NOON);
        let (outcome, same) = reserve(&limits(), state, amount(600, 0), NOON);
        assert_eq!(same, state, "a rejection changes nothing");
        let Outcome::Rejected {
            kind, retry_after, ..
        } = outcome
        else {
            panic!("admitted");
        };
        assert_eq!(kind, LimitKind::TokensPerMinute);
        // 200 more tokens refill in 12 s.
        assert_eq!(retry_after, Some(Duration::from_secs(12)));
        let later = NOON + 12 * MICROS_PER_SECOND;
        admitted(reserve(&limits(), state, amount(600, 0), later).0);
    }

    #[test]
    fn larger_than_limit_never_fits() {
        let (outcome, _) = reserve(&limits(), State::default(), amount(1_001, 0), NOON);
        let Outcome::Rejected {
            kind, retry_after, ..
        } = outcome
        else {
            panic!("admitted");
        };
        assert_eq!(kind, LimitKind::TokensPerMinute);
        assert_eq!(retry_after, None);
    }

    #[test]
    fn budget_rejects_until_month_ends() {
        let (_, state) = reserve(&limits(), State::default(), amount(10, 9_000), NOON);
        let (outcome, _) = reserve(&limits(), state, amount(10, 2_000), NOON);
        let Outcome::Rejected {
            kind, retry_after, ..
        } = outcome
        else {
            panic!("admitted");
        };
        assert_eq!(kind, LimitKind::Budget);
        // December 2026 ends in 27.5 days.
        assert_eq!(retry_after, Some(Duration::from_micros(27 * DAY + DAY / 2)));
    }

    #[test]
    fn settlement_returns_unused_part() {
        let reserved = amount(800, 5_000);
        let (outcome, state) = reserve(&limits(), State::default(), reserved, NOON);
        let (periods, _) = admitted(outcome);
        let settlement_time = NOON + MICROS_PER_SECOND;
        let (levels, state) = settle(
            &limits(),
            state,
            reserved,
            amount(150, 1_200),
            Some(periods),
            settlement_time,
        );
        assert_eq!(state.day_used, 150);
        assert_eq!(state.budget_used, 1_200);
        assert_eq!(levels.tokens_per_day.unwrap().remaining, 4_850);
        assert_eq!(levels.budget.unwrap().remaining, 8_800);
        // 150 tokens at 60 ms each, minus the second that passed since the reservation.
        assert_eq!(state.minute_tat, NOON + 9_000_000);
        assert_eq!(levels.tokens_per_minute.unwrap().remaining, 866);
    }

    #[test]
    fn settlement_charges_more_than_reserved() {
        let reserved = amount(100, 100);
        let (outcome, state) = reserve(&limits(), State::default(), reserved, NOON);
        let (periods, _) = admitted(outcome);
        let actual = amount(1_500, 300);
        let (levels, state) = settle(&limits(), state, reserved, actual, Some(periods), NOON);
        assert_eq!(state.day_used, 1_500);
        assert_eq!(levels.tokens_per_minute.unwrap().remaining, 0);
        let (outcome, _) = reserve(&limits(), state, amount(1, 1), NOON);
        assert!(matches!(
            outcome,
            Outcome::Rejected {
                kind: LimitKind::TokensPerMinute,
                ..
            }
        ));
    }

    #[test]
    fn unreserved_settlement_charges_current_period() {
        let (levels, state) = settle(
            &limits(),
            State::default(),
            Amount::default(),
            amount(300, 700),
            None,
            NOON,
        );
        assert_eq!(state.day_used, 300);
        assert_eq!(state.budget_used, 700);
        assert_eq!(levels.budget.unwrap().remaining, 9_300);
    }

    #[test]
    fn settlement_after_day_ends_leaves_new_day() {
        let reserved = amount(500, 0);
        let (outcome, state) = reserve(&limits(), State::default(), reserved, NOON);
        let (periods, _) = admitted(outcome);
        let tomorrow = NOON + DAY;
        let (_, state) = reserve(&limits(), state, amount(200, 0), tomorrow);
        let (_, state) = settle(
            &limits(),
            state,
            reserved,
            amount(0, 0),
            Some(periods),
            tomorrow,
        );
        assert_eq!(state.day_used, 200);
    }
}
