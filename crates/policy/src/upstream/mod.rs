//! Models of upstream resilience: target selection, health, circuit breaking and the retry
//! budget.
//!
//! Each model is plain state plus the decisions made on it. Time is passed in as nanoseconds on
//! a caller-chosen monotonic clock, as in [`crate::rate_limit`], so tests drive every state
//! machine with fixed instants. The data plane keeps one model per target or service behind a
//! lock and does the I/O around it.

pub mod balance;
pub mod breaker;
pub mod health;
pub mod retry_budget;
mod window;

/// Nanoseconds in one second, for converting configured durations.
const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// Converts a duration to nanoseconds, saturating at `u64::MAX`.
pub fn nanos(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}
