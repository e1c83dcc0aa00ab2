//! Counters shared by the nodes of a cluster, kept in Redis.
//!
//! Every check is one Lua script that reads the key, applies the algorithm and writes the key
//! back, so Redis runs it atomically and N nodes enforce one limit together. The scripts mirror
//! the Rust algorithms in this module's siblings. They read the time with `TIME` on the Redis
//! server, so nodes with skewed clocks agree, and the `now` that callers pass is ignored. Scripts
//! work in microseconds, because Lua numbers are doubles and nanoseconds since the epoch do not
//! fit their 53-bit mantissa. Every key gets an expiry at the point where its state no longer
//! matters, so Redis drops idle keys on its own.
//!
//! Scripts run with `EVALSHA`; the `redis` crate loads a script with `SCRIPT LOAD` and retries
//! when the server replies `NOSCRIPT`, such as after a restart. The connection is a
//! [`ConnectionManager`], which reconnects on its own after a failure. When Redis cannot be
//! reached at start, the first connection is retried on later requests, at most once per
//! [`RECONNECT_INTERVAL`]. Each operation is bounded by [`RedisSettings::timeout`], after which it
//! fails and the limit's `on_backend_error` applies. After [`PAUSE_AFTER_FAILURES`] failures in a
//! row, operations fail at once for [`RETRY_AFTER_FAILURE`], so an outage costs requests no
//! waiting, and the first operation after that pause tries Redis again. A single slow operation
//! under load does not start a pause.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{Algorithm, Concurrency, CounterError, CounterFuture, Counters, Decision, Grant};

/// Minimum time between two attempts to open the first connection.
pub const RECONNECT_INTERVAL: Duration = Duration::from_secs(1);
/// Time after [`PAUSE_AFTER_FAILURES`] failed operations in a row during which further operations
/// fail at once instead of waiting on Redis, so that an outage does not add the timeout to every
/// limited request.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_millis(500);
/// Failed operations in a row that start a pause of [`RETRY_AFTER_FAILURE`].
pub const PAUSE_AFTER_FAILURES: u64 = 3;
/// Minimum time between two warnings about failed Redis operations.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// How to reach Redis and how to name keys in it.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// A URL such as `redis://127.0.0.1:6379`.
    pub url: String,
    /// Prefix of every key this node writes, such as `portcullis:rl:`.
    pub key_prefix: String,
    /// Time one operation may take before it counts as failed.
    pub timeout: Duration,
}

/// Counters in Redis, shared by every node that uses the same server and key prefix.
pub struct RedisCounters {
    client: redis::Client,
    /// `host:port` of the server, for logs; the URL may hold a password.
    address: String,
    key_prefix: String,
    timeout: Duration,
    connection: Mutex<Option<ConnectionManager>>,
    connect_lock: tokio::sync::Mutex<Option<Instant>>,
    runtime: tokio::runtime::Handle,
    gcra: redis::Script,
    window: redis::Script,
    quota: redis::Script,
    acquire_slot: redis::Script,
    health: Health,
}

/// Failure state: the counts behind rate-limited warnings and the pause after failures.
#[derive(Default)]
struct Health {
    /// Failed operations since the last warning.
    failures_since_warning: AtomicU64,
    /// Whether the last operation failed, so that a success can log the recovery once.
    failing: std::sync::atomic::AtomicBool,
    /// Failed operations since the last success.
    consecutive_failures: AtomicU64,
    last_warning: Mutex<Option<Instant>>,
    /// Until when operations fail at once, after [`PAUSE_AFTER_FAILURES`] failures.
    paused_until: Mutex<Option<Instant>>,
}

impl RedisCounters {
    /// Creates the counters and tries to connect once. A failed first connection is logged
    /// and retried on later operations. Must be called within a Tokio runtime.
    pub async fn connect(settings: RedisSettings) -> Result<Arc<Self>, CounterError> {
        let client = redis::Client::open(settings.url.as_str()).map_err(|error| CounterError {
            backend: "redis",
            message: format!("invalid Redis URL: {error}"),
        })?;
        let address = client.get_connection_info().addr.to_string();
        let counters = Arc::new(RedisCounters {
            client,
            address,
            key_prefix: settings.key_prefix,
            timeout: settings.timeout,
            connection: Mutex::new(None),
            connect_lock: tokio::sync::Mutex::new(None),
            runtime: tokio::runtime::Handle::current(),
            gcra: script(GCRA_SCRIPT),
            window: script(WINDOW_SCRIPT),
            quota: calendar_script(QUOTA_SCRIPT),
            acquire_slot: script(ACQUIRE_SLOT_SCRIPT),
            health: Health::default(),
        });
        match counters.connection().await {
            Ok(_) => {
                tracing::info!(redis.addr = %counters.address, "rate-limit counters connected to Redis")
            }
            Err(error) => {
                tracing::warn!(redis.addr = %counters.address, %error, "cannot connect to Redis for rate-limit counters yet; retrying on later requests")
            }
        }
        Ok(counters)
    }

    /// Returns a connection, opening the first one when there is none yet.
    async fn connection(&self) -> Result<ConnectionManager, CounterError> {
        if let Some(connection) = self.lock_connection().clone() {
            return Ok(connection);
        }
        let mut last_attempt = self.connect_lock.lock().await;
        if let Some(connection) = self.lock_connection().clone() {
            return Ok(connection);
        }
        if last_attempt.is_some_and(|at| at.elapsed() < RECONNECT_INTERVAL) {
            return Err(self.error("not connected; waiting before the next connection attempt"));
        }
        *last_attempt = Some(Instant::now());
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout)
            .set_number_of_retries(2)
            .set_max_delay(1_000);
        let manager = tokio::time::timeout(
            self.timeout * 2,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await
        .map_err(|_| self.error("connection timed out"))?
        .map_err(|error| self.error(&error.to_string()))?;
        *self.lock_connection() = Some(manager.clone());
        Ok(manager)
    }

    fn lock_connection(&self) -> std::sync::MutexGuard<'_, Option<ConnectionManager>> {
        self.connection
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn error(&self, message: &str) -> CounterError {
        CounterError {
            backend: "redis",
            message: format!("{message} (Redis at {})", self.address),
        }
    }

    /// Runs `script` on `key` with `args`, bounded by the timeout, and records the outcome.
    pub(crate) async fn run<T: redis::FromRedisValue>(
        &self,
        script: &redis::Script,
        key: &str,
        args: &[String],
    ) -> Result<T, CounterError> {
        let paused = *self
            .health
            .paused_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if paused.is_some_and(|until| Instant::now() < until) {
            return Err(self.error("unavailable after a recent failure; retrying shortly"));
        }
        // One bound for the whole operation, including the wait for a first connection.
        let operation = async {
            let mut connection = self.connection().await?;
            let mut invocation = script.key(format!("{}{key}", self.key_prefix));
            for arg in args {
                invocation.arg(arg);
            }
            invocation
                .invoke_async(&mut connection)
                .await
                .map_err(|error| self.error(&error.to_string()))
        };
        let result = match tokio::time::timeout(self.timeout, operation).await {
            Ok(result) => result,
            Err(_) => Err(self.error(&format!(
                "operation timed out after {} ms",
                self.timeout.as_millis()
            ))),
        };
        self.record(result.as_ref().err());
        result
    }

    /// Logs failures at most once per [`WARN_INTERVAL`] and the first success after them.
    fn record(&self, error: Option<&CounterError>) {
        let health = &self.health;
        let Some(error) = error else {
            health.consecutive_failures.store(0, Ordering::Relaxed);
            if health.failing.swap(false, Ordering::Relaxed) {
                tracing::info!(redis.addr = %self.address, "Redis rate-limit counters recovered");
            }
            return;
        };
        health.failing.store(true, Ordering::Relaxed);
        let in_a_row = health.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if in_a_row >= PAUSE_AFTER_FAILURES {
            *health
                .paused_until
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some(Instant::now() + RETRY_AFTER_FAILURE);
        }
        let failures = health
            .failures_since_warning
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        let mut last = health
            .last_warning
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_none_or(|at| at.elapsed() >= WARN_INTERVAL) {
            *last = Some(Instant::now());
            health.failures_since_warning.store(0, Ordering::Relaxed);
            tracing::warn!(redis.addr = %self.address, %error, failures, "Redis rate-limit counter operations failed; each limit applies its on_backend_error setting");
        }
    }

    /// Applies up to `count` requests and converts the script's reply.
    async fn apply(
        &self,
        key: &str,
        algorithm: &Algorithm,
        count: u64,
    ) -> Result<Grant, CounterError> {
        let count = count.max(1).to_string();
        let reply: Vec<i64> = match algorithm {
            Algorithm::Gcra(gcra) => {
                let interval = (gcra.emission_interval() / 1_000).max(1);
                let args = [
                    interval.to_string(),
                    (interval * gcra.burst).to_string(),
                    gcra.burst.to_string(),
                    count,
                ];
                self.run(&self.gcra, key, &args).await?
            }
            Algorithm::SlidingWindow(window) => {
                let args = [
                    (window.window_nanos() / 1_000).max(1).to_string(),
                    window.limit.to_string(),
                    count,
                ];
                self.run(&self.window, key, &args).await?
            }
            Algorithm::Quota(quota) => {
                let period = match quota.period {
                    super::Period::Day => "day",
                    super::Period::Month => "month",
                };
                let args = [quota.limit.to_string(), period.to_string(), count];
                self.run(&self.quota, key, &args).await?
            }
        };
        let [granted, remaining, reset_us, retry_us, valid_us] = reply[..] else {
            return Err(self.error("a rate-limit script returned an unexpected reply"));
        };
        let micros = |value: i64| Duration::from_micros(u64::try_from(value).unwrap_or(0));
        let granted = u64::try_from(granted).unwrap_or(0);
        Ok(Grant {
            granted,
            decision: Decision {
                allowed: granted > 0,
                remaining: u64::try_from(remaining).unwrap_or(0),
                reset_after: micros(reset_us),
                retry_after: (retry_us >= 0).then(|| micros(retry_us)),
            },
            valid_for: micros(valid_us),
        })
    }
}

impl Counters for RedisCounters {
    fn backend(&self) -> &'static str {
        "redis"
    }

    fn address(&self) -> &str {
        &self.address
    }

    fn acquire<'a>(
        &'a self,
        key: &'a str,
        algorithm: &'a Algorithm,
        _now: u64,
    ) -> CounterFuture<'a> {
        Box::pin(async move { Ok(self.apply(key, algorithm, 1).await?.decision) })
    }

    fn acquire_batch<'a>(
        &'a self,
        key: &'a str,
        algorithm: &'a Algorithm,
        count: u64,
        _now: u64,
    ) -> CounterFuture<'a, Grant> {
        Box::pin(self.apply(key, algorithm, count))
    }

    fn acquire_slot<'a>(
        &'a self,
        key: &'a str,
        limit: &'a Concurrency,
        _now: u64,
    ) -> CounterFuture<'a, (Decision, Option<u64>)> {
        Box::pin(async move {
            let lease: u64 = rand::random();
            let ttl_us = u64::try_from(limit.lease_ttl.as_micros()).unwrap_or(u64::MAX);
            let args = [
                limit.limit.to_string(),
                ttl_us.to_string(),
                lease.to_string(),
            ];
            let reply: Vec<i64> = self.run(&self.acquire_slot, key, &args).await?;
            let [admitted, remaining] = reply[..] else {
                return Err(self.error("the concurrency script returned an unexpected reply"));
            };
            let decision = Decision {
                allowed: admitted == 1,
                remaining: u64::try_from(remaining).unwrap_or(0),
                reset_after: Duration::ZERO,
                retry_after: None,
            };
            Ok((decision, decision.allowed.then_some(lease)))
        })
    }

    fn release_slot(&self, key: &str, lease: u64) {
        let connection = self.lock_connection().clone();
        let Some(mut connection) = connection else {
            // No connection means the slot was never taken in Redis.
            return;
        };
        let key = format!("{}{key}", self.key_prefix);
        let timeout = self.timeout;
        let address = self.address.clone();
        self.runtime.spawn(async move {
            let mut command = redis::cmd("ZREM");
            command.arg(&key).arg(lease.to_string());
            let release = command.query_async::<i64>(&mut connection);
            match tokio::time::timeout(timeout, release).await {
                Ok(Ok(_)) => {}
                // The lease expires after its TTL, so a lost release costs one slot until then.
                Ok(Err(error)) => {
                    tracing::debug!(redis.addr = %address, %error, "cannot release a concurrency slot in Redis")
                }
                Err(_) => {
                    tracing::debug!(redis.addr = %address, "releasing a concurrency slot in Redis timed out")
                }
            }
        });
    }
}

pub(crate) fn script(body: &str) -> redis::Script {
    redis::Script::new(&format!("{CLOCK_PRELUDE}\n{body}"))
}

/// Creates a script whose body may call `period_bounds(period)` of [`CALENDAR_LUA`].
pub(crate) fn calendar_script(body: &str) -> redis::Script {
    script(&format!("{CALENDAR_LUA}\n{body}"))
}

/// Reads the server clock in microseconds. Integers are written with `%d`, because Redis
/// converts other Lua numbers to text in a form that may lose digits.
const CLOCK_PRELUDE: &str = r#"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local function int(value) return string.format('%d', value) end
"#;

/// GCRA. ARGV: emission interval (us), burst span (us), burst, count.
/// Returns {granted, remaining, reset_after_us, retry_after_us or -1, valid_for_us}.
const GCRA_SCRIPT: &str = r#"
local interval = tonumber(ARGV[1])
local span = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local count = tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - span
if now < allow_at then
  return {0, 0, tat - now, allow_at - now, 0}
end
local more = math.floor((now + span - new_tat) / interval)
if more > count - 1 then more = count - 1 end
if more < 0 then more = 0 end
local final = new_tat + more * interval
local remaining = burst - math.ceil((final - now) / interval)
if remaining < 0 then remaining = 0 end
redis.call('SET', KEYS[1], int(final), 'PX', int(math.ceil((final - now) / 1000) + 1))
return {1 + more, remaining, final - now, -1, span}
"#;

/// Sliding window. ARGV: window (us), limit, count.
// NOTE: The script weighs the previous window with floating point where the Rust version uses
// integers, so at the exact instant where one more request starts to fit the two can differ by one.
/// Returns {granted, remaining, reset_after_us, retry_after_us or -1, valid_for_us}.
const WINDOW_SCRIPT: &str = r#"
local w = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local count = tonumber(ARGV[3])
local index = math.floor(now / w)
local elapsed = now - index * w
local stored = redis.call('HMGET', KEYS[1], 'i', 'c', 'p')
local stored_index = tonumber(stored[1])
local current = tonumber(stored[2]) or 0
local previous = tonumber(stored[3]) or 0
if stored_index == nil then
  current, previous = 0, 0
elseif stored_index + 1 == index then
  previous, current = current, 0
elseif stored_index ~= index then
  current, previous = 0, 0
end
local weight = (w - elapsed) / w
local free = math.floor(limit - (previous * weight + current) + 1e-9)
if free < 0 then free = 0 end
local granted = math.min(free, count)
current = current + granted
local until_end = w - elapsed
redis.call('HSET', KEYS[1], 'i', int(index), 'c', int(current), 'p', int(previous))
redis.call('PEXPIRE', KEYS[1], int(math.ceil((until_end + w) / 1000) + 1))
if granted == 0 then
  local retry = -1
  if current < limit and previous > 0 then
    local fade_until = w - math.ceil((limit - current - 1) * w / previous)
    if fade_until > 0 and fade_until < w then
      retry = math.max(fade_until - elapsed, 1)
    end
  end
  if retry < 0 then
    local into_next = 0
    if current > 0 then into_next = w - math.min(math.floor((limit - 1) * w / current), w) end
    retry = until_end + into_next
  end
  return {0, 0, until_end, retry, 0}
end
local remaining = math.floor(limit - (previous * weight + current) + 1e-9)
if remaining < 0 then remaining = 0 end
return {granted, remaining, until_end, -1, until_end}
"#;

/// The UTC calendar: `period_bounds(period)` returns the start and end, in seconds since the
/// epoch, of the `day` or `month` that contains `now`. Needs the clock prelude.
const CALENDAR_LUA: &str = r#"
local function civil_from_days(days)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local month = mp < 10 and mp + 3 or mp - 9
  local year = yoe + era * 400
  if month <= 2 then year = year + 1 end
  return year, month
end
local function days_from_civil(year, month, day)
  if month <= 2 then year = year - 1 end
  local era = math.floor(year / 400)
  local yoe = year - era * 400
  local mp = month > 2 and month - 3 or month + 9
  local doy = math.floor((153 * mp + 2) / 5) + day - 1
  return era * 146097 + yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy - 719468
end
local function period_bounds(period)
  local day = math.floor(math.floor(now / 1000000) / 86400)
  if period == 'month' then
    local year, month = civil_from_days(day)
    local start = days_from_civil(year, month, 1) * 86400
    if month == 12 then year, month = year + 1, 1 else month = month + 1 end
    return start, days_from_civil(year, month, 1) * 86400
  end
  return day * 86400, day * 86400 + 86400
end
"#;

/// Calendar quota. ARGV: limit, "day" or "month", count.
/// Returns {granted, remaining, reset_after_us, retry_after_us or -1, valid_for_us}.
const QUOTA_SCRIPT: &str = r#"
local limit = tonumber(ARGV[1])
local period = ARGV[2]
local count = tonumber(ARGV[3])
local start, finish = period_bounds(period)
local stored = redis.call('HMGET', KEYS[1], 's', 'c')
local used = 0
if tonumber(stored[1]) == start then used = tonumber(stored[2]) or 0 end
local granted = math.min(math.max(limit - used, 0), count)
used = used + granted
local until_end = finish * 1000000 - now
redis.call('HSET', KEYS[1], 's', int(start), 'c', int(used))
redis.call('EXPIREAT', KEYS[1], int(finish + 60))
if granted == 0 then
  return {0, 0, until_end, until_end, 0}
end
return {granted, limit - used, until_end, -1, until_end}
"#;

/// Concurrency slot. A sorted set of lease ids scored by their expiry (us).
// NOTE: A lease is not renewed, so a response that streams for longer than `lease_ttl` loses its
// slot in Redis before it ends, and the limit can then admit one request too many.
/// ARGV: limit, lease TTL (us), lease id. Returns {admitted (0 or 1), remaining}.
const ACQUIRE_SLOT_SCRIPT: &str = r#"
local limit = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', int(now))
local in_flight = redis.call('ZCARD', KEYS[1])
if in_flight >= limit then
  return {0, 0}
end
redis.call('ZADD', KEYS[1], int(now + ttl), ARGV[3])
redis.call('PEXPIRE', KEYS[1], int(math.ceil(ttl / 1000) + 1000))
return {1, limit - in_flight - 1}
"#;
