//! `ai-limits` counters shared by the nodes of a cluster, kept in Redis.
//!
//! Each subject is one hash, and each reservation or settlement is one run of [`USAGE_SCRIPT`],
//! which mirrors [`super::reserve`] and [`super::settle`], so Redis applies it atomically. The
//! script reads the time from the Redis server. The connection, the timeout and the pause after
//! failures are those of the rate-limit counters ([`RedisCounters`]), so both kinds of limit
//! share one connection and one key prefix.

use std::sync::Arc;
use std::time::Duration;

use super::{
    Amount, Budget, Level, Levels, LimitKind, Limits, Outcome, Periods, Settlement, UsageFuture,
    UsageStore,
};
use crate::rate_limit::redis::calendar_script;
use crate::rate_limit::{CounterError, Counters, Period, RedisCounters};

/// `ai-limits` counters in the Redis server of the rate-limit counters.
pub struct RedisUsage {
    counters: Arc<RedisCounters>,
    script: redis::Script,
}

impl RedisUsage {
    pub fn new(counters: Arc<RedisCounters>) -> Arc<Self> {
        Arc::new(RedisUsage {
            counters,
            script: calendar_script(USAGE_SCRIPT),
        })
    }

    /// Runs the script and converts its reply.
    async fn run(
        &self,
        key: &str,
        limits: &Limits,
        mode: &str,
        settlement: Settlement,
    ) -> Result<(bool, LimitKind, Option<Duration>, Periods, Levels), CounterError> {
        let args = script_arguments(limits, mode, settlement);
        let reply: Vec<i64> = self.counters.run(&self.script, key, &args).await?;
        let [
            admitted,
            kind,
            retry_us,
            day_start,
            budget_start,
            minute_remaining,
            minute_reset,
            day_remaining,
            day_reset,
            budget_remaining,
            budget_reset,
        ] = reply[..]
        else {
            return Err(CounterError {
                backend: "redis",
                message: format!(
                    "the ai-limits script returned an unexpected reply (Redis at {})",
                    self.counters.address()
                ),
            });
        };
        let kind = match kind {
            3 => LimitKind::Budget,
            2 => LimitKind::TokensPerDay,
            _ => LimitKind::TokensPerMinute,
        };
        let micros = |value: i64| Duration::from_micros(u64::try_from(value).unwrap_or(0));
        let level = |limit: Option<u64>, remaining: i64, reset: i64| {
            limit.map(|limit| Level {
                limit,
                remaining: u64::try_from(remaining).unwrap_or(0),
                reset_after: micros(reset),
            })
        };
        let levels = Levels {
            tokens_per_minute: level(limits.tokens_per_minute, minute_remaining, minute_reset),
            tokens_per_day: level(limits.tokens_per_day, day_remaining, day_reset),
            budget: level(
                limits.budget.map(|budget| budget.micros),
                budget_remaining,
                budget_reset,
            ),
        };
        let periods = Periods {
            day_start: u64::try_from(day_start).unwrap_or(0),
            budget_start: u64::try_from(budget_start).unwrap_or(0),
        };
        let retry_after = (retry_us >= 0).then(|| micros(retry_us));
        Ok((admitted == 1, kind, retry_after, periods, levels))
    }
}

/// Returns the ARGV of [`USAGE_SCRIPT`].
fn script_arguments(limits: &Limits, mode: &str, settlement: Settlement) -> [String; 11] {
    let (budget, period) = match limits.budget {
        Some(Budget { micros, period }) => (micros, period),
        None => (0, Period::Day),
    };
    let period = match period {
        Period::Day => "day",
        Period::Month => "month",
    };
    let (day_start, budget_start) = match settlement.periods {
        Some(periods) => (periods.day_start as i64, periods.budget_start as i64),
        None => (-1, -1),
    };
    [
        mode.to_string(),
        limits.tokens_per_minute.unwrap_or(0).to_string(),
        limits.tokens_per_day.unwrap_or(0).to_string(),
        budget.to_string(),
        period.to_string(),
        settlement.reserved.tokens.to_string(),
        settlement.reserved.cost_micros.to_string(),
        settlement.actual.tokens.to_string(),
        settlement.actual.cost_micros.to_string(),
        day_start.to_string(),
        budget_start.to_string(),
    ]
}

impl UsageStore for RedisUsage {
    fn backend(&self) -> &'static str {
        "redis"
    }

    fn address(&self) -> &str {
        self.counters.address()
    }

    fn reserve<'a>(
        &'a self,
        key: &'a str,
        limits: &'a Limits,
        amount: Amount,
        _now: u64,
    ) -> UsageFuture<'a, Outcome> {
        Box::pin(async move {
            let request = Settlement {
                reserved: amount,
                actual: Amount::default(),
                periods: None,
            };
            let (admitted, kind, retry_after, periods, levels) =
                self.run(key, limits, "reserve", request).await?;
            Ok(if admitted {
                Outcome::Admitted { periods, levels }
            } else {
                Outcome::Rejected {
                    kind,
                    retry_after,
                    levels,
                }
            })
        })
    }

    fn settle<'a>(
        &'a self,
        key: &'a str,
        limits: &'a Limits,
        settlement: Settlement,
        _now: u64,
    ) -> UsageFuture<'a, Levels> {
        Box::pin(async move {
            let (_, _, _, _, levels) = self.run(key, limits, "settle", settlement).await?;
            Ok(levels)
        })
    }
}

/// Reservation and settlement of one subject. The hash has the fields `t` (bucket arrival time,
/// us), `ds` and `du` (day start in seconds, tokens used), `bs` and `bu` (budget period start,
/// millionths used). A limit of 0 is not configured.
///
/// ARGV: mode (`reserve` or `settle`), tokens per minute, tokens per day, budget (millionths),
/// budget period (`day` or `month`), reserved tokens, reserved cost, actual tokens, actual cost,
/// reserved day start or -1, reserved budget start or -1.
///
/// Returns {admitted (0 or 1), rejecting limit (1 minute, 2 day, 3 budget), retry after (us) or
/// -1, day start, budget start, then remaining and reset (us) of the minute, day and budget}.
const USAGE_SCRIPT: &str = r#"
local mode = ARGV[1]
local tpm = tonumber(ARGV[2])
local tpd = tonumber(ARGV[3])
local budget = tonumber(ARGV[4])
local budget_period = ARGV[5]
local tokens = tonumber(ARGV[6])
local cost = tonumber(ARGV[7])
local actual_tokens = tonumber(ARGV[8])
local actual_cost = tonumber(ARGV[9])
local reserved_day = tonumber(ARGV[10])
local reserved_budget = tonumber(ARGV[11])
local minute = 60000000
local stored = redis.call('HMGET', KEYS[1], 't', 'ds', 'du', 'bs', 'bu')
local tat = tonumber(stored[1]) or 0
local ds = tonumber(stored[2]) or 0
local du = tonumber(stored[3]) or 0
local bs = tonumber(stored[4]) or 0
local bu = tonumber(stored[5]) or 0
local day_start, day_end = period_bounds('day')
local budget_start, budget_end = period_bounds(budget_period)
local function used_in(stored_start, stored_used, start)
  if stored_start == start then return stored_used end
  return 0
end
local function bucket_cost(count)
  return math.ceil(count * minute / tpm)
end
local function levels(t, dstart, dused, bstart, bused)
  local base = math.max(t, now)
  local busy = math.min(base - now, minute)
  local m = math.floor((minute - busy) * tpm / minute)
  local d = math.max(tpd - used_in(dstart, dused, day_start), 0)
  local b = math.max(budget - used_in(bstart, bused, budget_start), 0)
  return {m, base - now, d, day_end * 1000000 - now, b, budget_end * 1000000 - now}
end
local function reply(admitted, kind, retry, t, dstart, dused, bstart, bused)
  local result = {admitted, kind, retry, day_start, budget_start}
  for _, value in ipairs(levels(t, dstart, dused, bstart, bused)) do
    table.insert(result, value)
  end
  return result
end
local function save(t, dstart, dused, bstart, bused)
  redis.call('HSET', KEYS[1], 't', int(t), 'ds', int(dstart), 'du', int(dused), 'bs', int(bstart), 'bu', int(bused))
  local expiry = math.max(math.ceil(t / 1000000), day_end, budget_end) + 60
  redis.call('EXPIREAT', KEYS[1], int(expiry))
end
local nt, nds, ndu, nbs, nbu = tat, ds, du, bs, bu
if mode == 'reserve' then
  local kind, retry = 0, -1
  local function reject(k, r)
    if kind == 0 then
      kind, retry = k, r
    elseif retry >= 0 and r >= 0 then
      retry = math.max(retry, r)
    else
      retry = -1
    end
  end
  if budget > 0 then
    local used = used_in(bs, bu, budget_start)
    if cost > budget then reject(3, -1)
    elseif used + cost > budget then reject(3, budget_end * 1000000 - now) end
    nbs, nbu = budget_start, used + cost
  end
  if tpd > 0 then
    local used = used_in(ds, du, day_start)
    if tokens > tpd then reject(2, -1)
    elseif used + tokens > tpd then reject(2, day_end * 1000000 - now) end
    nds, ndu = day_start, used + tokens
  end
  if tpm > 0 then
    nt = math.max(tat, now) + bucket_cost(tokens)
    if tokens > tpm then reject(1, -1)
    elseif nt - now > minute then reject(1, nt - minute - now) end
  end
  if kind ~= 0 then
    return reply(0, kind, retry, tat, ds, du, bs, bu)
  end
  save(nt, nds, ndu, nbs, nbu)
  return reply(1, 0, -1, nt, nds, ndu, nbs, nbu)
end
local function correct(stored_start, stored_used, reserved_in, start, reserved, actual)
  if reserved_in >= 0 then
    if reserved_in == stored_start then
      return stored_start, math.max(stored_used + actual - reserved, 0)
    end
    return stored_start, stored_used
  end
  return start, used_in(stored_start, stored_used, start) + actual
end
if tpm > 0 then
  nt = math.max(math.max(tat, now) + bucket_cost(actual_tokens) - bucket_cost(tokens), 0)
end
if tpd > 0 then
  nds, ndu = correct(ds, du, reserved_day, day_start, tokens, actual_tokens)
end
if budget > 0 then
  nbs, nbu = correct(bs, bu, reserved_budget, budget_start, cost, actual_cost)
end
save(nt, nds, ndu, nbs, nbu)
return reply(1, 0, -1, nt, nds, ndu, nbs, nbu)
"#;
